"""The main job (paper §4.1): mock world (or your files) → emulator → Cycle-StarNet → label fits
by Eq. 9, 10 and 11 → evaluation → OUT/report.md, OUT/metrics.json, OUT/figures/.

  python -m experiments.apogee [--preset smoke|cpu|long|paper] [--out runs/apogee] [--n-iter N]
      [--synth S.h5 --obs O.h5 [--grid G.h5]] [--emulator PATH] [--model RUN_DIR|GEN.npz]
      [--pretrained | --train] [--overwrite]

Every stage is kept in OUT; running the same command again skips the stages already done and
resumes an interrupted training. With no option on a CPU, the package's pretrained weights
(`cyclestar_jax.pretrained`) are used on the default mock world: data, fits and report in
minutes (runs/apogee_pretrained); `--train` (or any --preset) trains instead: with no --preset,
`paper` on a GPU, `cpu` on a CPU. The logic is in `cyclestar_jax.pipeline`.
"""

from __future__ import annotations

import argparse
import sys

from cyclestar_jax.cli import add_job_args, add_pretrained_args, check_job_args, parser, run_main


def parse_args(argv=None) -> argparse.Namespace:
  p = parser(__doc__.splitlines()[0])
  add_job_args(p, job="apogee")
  p.add_argument("--synth", default=None, help="your synthetic-domain HDF5 file (with --obs)")
  p.add_argument("--obs", default=None, help="your observed-domain HDF5 file (with --synth)")
  p.add_argument("--grid", default=None,
                 help="with --synth: synthetic spectra at labels that vary each element on its "
                      "own (The Payne's training grid); the emulator learns them instead of "
                      "--synth")
  p.add_argument("--emulator", default=None, help="a trained emulator instead of training one")
  p.add_argument("--model", default=None,
                 help="a trained Cycle-StarNet (run directory or generator .npz) instead of "
                 "training one")
  add_pretrained_args(p)
  p.add_argument("--allow-older-checkpoint", action="store_true",
                 help="when the model's newest checkpoint cannot be loaded, use the newest "
                      "one that can (else refused); the report names the step used")
  args = p.parse_args(argv)
  check_job_args(p, args)
  return args


def wants_pretrained(args: argparse.Namespace) -> bool:
  """--pretrained, or nothing asked that the pretrained weights cannot give: no --train, no
  preset, schedule, files or models of the user's, a CPU, weights in the package and the
  mock world they were trained on (another --seed trains)."""
  from cyclestar_jax import pipeline, pretrained

  asked = (args.train, args.preset, args.n_iter, args.train_limit_s, args.synth, args.obs,
           args.grid, args.emulator, args.model)
  return args.pretrained or pretrained.MAIN.wanted(
      asked=any(a not in (None, False) for a in asked), seed=args.seed,
      on_cpu=pipeline.default_preset() == "cpu")


def main(argv=None) -> dict:
  args = parse_args(argv)
  from cyclestar_jax import pipeline

  if wants_pretrained(args):
    return pipeline.run(args.out or "runs/apogee_pretrained", seed=args.seed,
                        options=pipeline.RunOptions(overwrite=args.overwrite,
                                                    progress=not args.no_progress),
                        pretrained=True)
  preset = args.preset or pipeline.default_preset()
  out = args.out or f"runs/apogee_{preset}"
  if args.preset is None:
    print(f"preset: {preset} (no --preset given; {'a GPU' if preset == 'paper' else 'a CPU'} "
          f"was found)")
  inputs = pipeline.Inputs(synth=args.synth, obs=args.obs, grid=args.grid,
                           emulator=args.emulator, model=args.model)
  options = pipeline.RunOptions(overwrite=args.overwrite, train_limit_s=args.train_limit_s,
                                progress=not args.no_progress)
  return pipeline.run(out, preset=preset, n_iter=args.n_iter, seed=args.seed, inputs=inputs,
                      options=options, allow_older_checkpoint=args.allow_older_checkpoint)


def cli(argv=None) -> int:
  """The main job's command line: user errors as one line, exit 2 (`cli.run_main`)."""
  return run_main(main, argv, prog="apogee")


if __name__ == "__main__":
  sys.exit(cli())
