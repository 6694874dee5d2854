"""Fit stellar labels to observed spectra (paper §4.1.3: Eq. 9, 10 or 11), batched on all devices.

  python -m experiments.fit_labels --model DIR --obs FILE [--split test] \
      [--method obs|synth|emulator] --out FILE [--emulator PATH] [--start 0] [--stop N] \
      [--starts catalogue,median] [--n-grid 0] [--free-labels Teff,logg,Fe_H] [--fit-rv] \
      [--batch-size 1024] [--chunk-size 16384] [--max-iter 1000] [--tol 1e-7] [--no-progress]

`--model` is a trained Cycle-StarNet run directory for `obs` (Eq. 11, the default) and `synth`
(Eq. 10), with the emulator found beside it (`emulator.npz` or `emulator/`) unless `--emulator`
names one; for `emulator` (Eq. 9) it is the emulator file or directory itself. Writes OUT (HDF5:
labels, formal errors, χ²_R, iterations, converged, flags) and OUT with suffix .csv (a summary),
then prints a JSON summary. The logic is in `cyclestar_jax.fitting.fit_file`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from cyclestar_jax.fitting import FLAGS, METHODS, FitConfig, fit_file

_DEFAULTS = FitConfig()


def _names(text: str | None) -> tuple[str, ...] | None:
  return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True,
                 help="Cycle-StarNet run directory (obs/synth) or emulator file/dir (emulator)")
  p.add_argument("--obs", required=True, help="observed spectra, reference-format HDF5")
  p.add_argument("--split", default="test", help="split of the file (default: test)")
  p.add_argument("--method", choices=METHODS, default="obs",
                 help="obs: Eq. 11 (default); synth: Eq. 10; emulator: Eq. 9")
  p.add_argument("--out", required=True, help="results file (HDF5); a .csv summary goes beside")
  p.add_argument("--emulator", default=None, help="emulator for obs/synth (default: in --model)")
  p.add_argument("--start", type=int, default=0, help="first row of the split")
  p.add_argument("--stop", type=int, default=None, help="row after the last (default: all)")
  p.add_argument("--starts", default=",".join(_DEFAULTS.starts),
                 help="comma-separated start kinds: catalogue, median, grid")
  p.add_argument("--n-grid", type=int, default=_DEFAULTS.n_grid, help="grid starts (≤ 8)")
  p.add_argument("--free-labels", default=None,
                 help="comma-separated labels to fit (default: all); others held at the "
                      "catalogue values")
  p.add_argument("--fit-rv", action="store_true", help="Eq. 9 only: fit a radial velocity")
  p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size,
                 help="fits run side by side over all devices")
  p.add_argument("--chunk-size", type=int, default=_DEFAULTS.chunk_size,
                 help="spectra per device call")
  p.add_argument("--max-iter", type=int, default=_DEFAULTS.max_iter)
  p.add_argument("--tol", type=float, default=_DEFAULTS.tol,
                 help="relative χ² decrease below which a fit has converged")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> FitConfig:
  return FitConfig(method=args.method, starts=_names(args.starts), n_grid=args.n_grid,
                   free_labels=_names(args.free_labels), fit_rv=args.fit_rv,
                   batch_size=args.batch_size, chunk_size=args.chunk_size,
                   max_iter=args.max_iter, max_evals=max(_DEFAULTS.max_evals, 2 * args.max_iter),
                   tol=args.tol)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  t = time.perf_counter()
  res = fit_file(args.obs, args.out, method=args.method, model_dir=args.model,
                 emulator_path=args.emulator, split=args.split, start=args.start,
                 stop=args.stop, config=build_config(args), progress=not args.no_progress)
  wall = time.perf_counter() - t
  fitted = res.start >= 0
  summary = {
      "out": args.out, "method": args.method, "n": len(res), "n_fitted": int(fitted.sum()),
      "converged_fraction": float(res.converged[fitted].mean()) if fitted.any() else 0.0,
      "median_chi2_r": float(np.nanmedian(res.chi2_r)) if fitted.any() else None,
      "median_iterations": float(np.median(res.n_iter[fitted])) if fitted.any() else None,
      "flags": {k: int(np.count_nonzero(res.flags & b)) for k, b in FLAGS.items()},
      "wall_s": wall, "spectra_per_s": len(res) / wall if wall > 0 else None}
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  main()
