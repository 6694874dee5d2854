"""Line identification (paper §4.2): mock world in missing-line mode → emulator → Cycle-StarNet
(new_lines_1) → derivative spectra → recovery errors, attributions, Figs. 12–14.

  python -m experiments.new_lines [--preset smoke|cpu|long|paper] [--out runs/new_lines_<preset>]
      [--n-iter N] [--masked-fraction F] [--pretrained | --train] [--overwrite]
  python -m experiments.new_lines --sweep 0.1:0.9:0.1 [--preset P] [--out DIR]

`--sweep start:stop:step` runs the job for each masked fraction (DIR/f0.10, ...) and writes
paper Table 1 (DIR/table1.md, table1.csv, table1.png, sweep.json); resumable per fraction.

With no option on a CPU, the package's pretrained line-identification weights
(`cyclestar_jax.pretrained.NEW_LINES`, a long run's) are used on the mock world they were trained
on: data, derivatives and report in minutes (runs/new_lines_pretrained); `--train` (or any
--preset, --n-iter, --masked-fraction, --sweep) trains instead.

Same run-folder conventions as experiments.apogee. The logic is in
`cyclestar_jax.pipeline.new_lines` (the sweep: `cyclestar_jax.pipeline.new_lines.sweep`).
"""

from __future__ import annotations

import argparse
import sys

from cyclestar_jax.cli import add_job_args, add_pretrained_args, check_job_args, parser, run_main


def parse_args(argv=None) -> argparse.Namespace:
  p = parser(__doc__.splitlines()[0])
  add_job_args(p, job="new_lines")
  p.add_argument("--masked-fraction", type=float, default=None,
                 help="fraction of each element's strong features removed; None: the paper's "
                      "own 30 %% selection")
  p.add_argument("--sweep", default=None, metavar="START:STOP:STEP",
                 help="Table 1: one run per masked fraction START, START+STEP, ... ≤ STOP, "
                      "each in (0, 1) (--out None: runs/new_lines_sweep_<preset>)")
  add_pretrained_args(p)
  args = p.parse_args(argv)
  check_job_args(p, args)
  f = args.masked_fraction
  if f is not None and not 0 < f < 1:
    p.error(f"--masked-fraction must be in (0, 1) (a fraction of each element's features "
            f"removed), got {f}")
  return args


def wants_pretrained(args: argparse.Namespace) -> bool:
  """--pretrained, or nothing asked that the pretrained weights cannot give: no --train, no
  preset, schedule, masked fraction or sweep, a CPU, weights in the package and the mock world
  they were trained on (another --seed trains)."""
  from cyclestar_jax import pipeline, pretrained

  asked = (args.train, args.preset, args.n_iter, args.train_limit_s, args.masked_fraction,
           args.sweep)
  return args.pretrained or pretrained.NEW_LINES.wanted(
      asked=any(a not in (None, False) for a in asked), seed=args.seed,
      on_cpu=pipeline.default_preset() == "cpu")


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.sweep is not None and args.masked_fraction is not None:
    raise ValueError("--sweep and --masked-fraction exclude each other: --sweep "
                     "START:STOP:STEP sets the fractions itself")
  from cyclestar_jax import pipeline
  from cyclestar_jax.pipeline import new_lines

  if wants_pretrained(args):
    if args.preset is not None or args.sweep is not None or args.train_limit_s is not None:
      raise ValueError("--preset/--sweep/--train-limit-s train models: not with --pretrained")
    job = new_lines.Job(n_iter=args.n_iter, seed=args.seed,
                        masked_fraction=args.masked_fraction)
    return new_lines.run(args.out or "runs/new_lines_pretrained", job,
                         pipeline.RunOptions(overwrite=args.overwrite,
                                             progress=not args.no_progress), pretrained=True)
  preset = args.preset or pipeline.default_preset()
  options = pipeline.RunOptions(overwrite=args.overwrite, train_limit_s=args.train_limit_s,
                                progress=not args.no_progress)
  if args.sweep is not None:
    from cyclestar_jax.pipeline.new_lines import sweep

    fractions = sweep.parse_sweep(args.sweep)
    return sweep.sweep(args.out or f"runs/new_lines_sweep_{preset}", fractions, preset=preset,
                       n_iter=args.n_iter, seed=args.seed, spec=args.sweep, options=options)
  job = new_lines.Job(preset=preset, n_iter=args.n_iter, seed=args.seed,
                      masked_fraction=args.masked_fraction)
  return new_lines.run(args.out or f"runs/new_lines_{preset}", job, options)


if __name__ == "__main__":
  sys.exit(run_main(main, prog="new_lines"))
