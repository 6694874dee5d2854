"""Fit stellar labels to observed spectra (paper §4.1.3: Eq. 9, 10 or 11), batched on all devices.

  python -m experiments.fit_labels --model DIR --obs FILE --out FILE [--method obs|synth|emulator]
      [--split test] [--emulator PATH] [--start 0] [--stop N] [--starts catalogue,median]
      [--resume | --overwrite] [--chunk-rows N] ...   (--help lists every option and default)

`--model` is a trained Cycle-StarNet run directory for `obs` (Eq. 11, the default) and `synth`
(Eq. 10), with the emulator found beside it (`emulator.npz` or `emulator/`) unless `--emulator`
names one; for `emulator` (Eq. 9) it is the emulator file or directory itself. Writes OUT (HDF5:
labels, formal errors, χ²_R, iterations, converged, flags; the stars' apogee_id, telescope,
field when --obs has them, as prepare_apogee writes) and OUT with suffix .csv (every label with
its error), then prints a JSON summary and one summary line; `experiments.export_fits` turns OUT
into a FITS table joined to allStar.

A job: the output path is checked before any work (exit code 2 with one line naming the
problem; `--debug` shows the traceback); results are written chunk by chunk to OUT.parts/, so an
interrupted run (even kill -9) loses at most the chunk in flight and `--resume` continues it,
giving the file an uninterrupted run writes; an existing OUT is kept unless `--overwrite`.
Several processes (`--coordinator HOST:PORT --num-processes N --process-id I`, or
`--distributed` where JAX detects the cluster) share the chunks; process 0 writes OUT. The logic
is in `cyclestar_jax.fitting.fit_file`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cyclestar_jax import cli, parallel
from cyclestar_jax.fitting import METHODS, FitConfig, FitJob, LBFGSOptions, fit_file, read_results
from cyclestar_jax.fitting.job import summarize, summary_line

_DEFAULTS = FitConfig()


def _names(text: str | None) -> tuple[str, ...] | None:
  return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = cli.parser(__doc__.split("\n")[0])
  p.add_argument("--model", required=True,
                 help="Cycle-StarNet run directory (obs/synth) or emulator file/dir (emulator)")
  p.add_argument("--obs", required=True, help="observed spectra, reference-format HDF5")
  p.add_argument("--out", required=True, help="results file (HDF5); a .csv summary goes beside")
  p.add_argument("--split", default="test", help="split of the file")
  p.add_argument("--method", choices=METHODS, default="obs",
                 help="obs: Eq. 11; synth: Eq. 10; emulator: Eq. 9")
  p.add_argument("--emulator", default=None, help="emulator for obs/synth (default: in --model)")
  p.add_argument("--start", type=int, default=0, help="first row of the split")
  p.add_argument("--stop", type=int, default=None, help="row after the last (None: all)")
  p.add_argument("--starts", default=",".join(_DEFAULTS.starts),
                 help="comma-separated start kinds: catalogue, median, grid")
  p.add_argument("--n-grid", type=int, default=_DEFAULTS.n_grid, help="grid starts (≤ 8)")
  p.add_argument("--free-labels", default=None,
                 help="comma-separated labels to fit (None: all); others held at the "
                      "catalogue values")
  p.add_argument("--fit-rv", action="store_true", help="Eq. 9 only: fit a radial velocity")
  p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size,
                 help="most fits run side by side over all devices")
  p.add_argument("--chunk-size", type=int, default=_DEFAULTS.chunk_size,
                 help="most spectra per device call")
  p.add_argument("--chunk-rows", type=int, default=None,
                 help="spectra per results chunk (None: as the device call)")
  p.add_argument("--max-iter", type=int, default=_DEFAULTS.lbfgs.max_iter,
                 help="accepted L-BFGS steps per start")
  p.add_argument("--tol", type=float, default=_DEFAULTS.lbfgs.tol,
                 help="relative χ² decrease the L-BFGS model expects, below which a fit has "
                      "converged")
  p.add_argument("--precondition", action="store_true",
                 help="scale each label by the Gauss-Newton Hessian's diagonal at the start "
                      "(lower χ² within a step cap; more weak labels on the box edge)")
  p.add_argument("--resume", action="store_true",
                 help="continue an interrupted job from OUT.parts/")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing OUT (and discard OUT.parts/)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  cli.add_distributed_args(p)
  args = p.parse_args(argv)
  cli.check_distributed_args(p, args)
  if args.resume and args.overwrite:
    p.error("--resume and --overwrite exclude each other")
  return args


def build_config(args: argparse.Namespace) -> FitConfig:
  return FitConfig(method=args.method, starts=_names(args.starts), n_grid=args.n_grid,
                   free_labels=_names(args.free_labels), fit_rv=args.fit_rv,
                   batch_size=args.batch_size, chunk_size=args.chunk_size,
                   lbfgs=LBFGSOptions(max_iter=args.max_iter, tol=args.tol,
                                      precondition=args.precondition, max_evals=max(
                       _DEFAULTS.lbfgs.max_evals, 2 * args.max_iter)))


def main(argv: list[str] | None = None) -> dict | None:
  """Run the fit; errors propagate (`run_cli` turns them into one line and exit code 2).

  Returns:
    The summary (`fitting.job.summarize`, plus out and method) on process 0, else None.
  """
  args = parse_args(argv)
  parallel.initialize_from_args(args)
  t = time.perf_counter()
  job = FitJob(args.obs, args.out, build_config(args), model_dir=args.model,
               emulator_path=args.emulator, split=args.split, start=args.start, stop=args.stop,
               chunk_rows=args.chunk_rows)
  res = fit_file(job, progress=not args.no_progress, resume=args.resume,
                 overwrite=args.overwrite)
  if res is None:
    return None
  attrs = read_results(args.out)[2]
  summary = {"out": args.out, "method": args.method,
             "checkpoint_step": (None if attrs.get("checkpoint_step") is None
                                 else int(attrs["checkpoint_step"])),
             **summarize(res, time.perf_counter() - t)}
  print(json.dumps(summary))
  print(summary_line(summary, args.out), flush=True)
  return summary


def run_cli(argv: list[str] | None = None) -> int:
  """`main` as a command: 0 on success; a user error is one line `fit_labels: error: ...` (and a
  hint) on stderr with exit code 2 (the traceback only with --debug), see `cli.run_main`."""
  return cli.run_main(main, argv, prog="fit_labels")


if __name__ == "__main__":
  sys.exit(run_cli())
