"""Write a finished run on the mock world as the package's pretrained weights.

  python -m experiments.export_pretrained RUN_DIR [--step N] [--curve CURVE.json] [--out DIR]

RUN_DIR is an `experiments.apogee` or `experiments.new_lines` run folder on the mock world (e.g.
`--preset long`); its generator (the moving average of checkpoint N, default the newest) and
emulator are written in float32 to DIR (default: the job's folder in the package,
`cyclestar_jax/pretrained/` or `cyclestar_jax/pretrained/new_lines/`) as generator.npz,
emulator.npz and README.md, with the commands, the mock world, the run's metrics and, with
`--curve`, the curve along the training (`benchmarks.label_curve`'s or
`benchmarks.line_curve`'s). The logic is `cyclestar_jax.pretrained.export.export_run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cyclestar_jax import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.parser(__doc__.splitlines()[0])
  p.add_argument("run_dir", type=Path,
                 help="a finished experiments.apogee or experiments.new_lines run on the mock "
                      "world")
  p.add_argument("--step", type=int, default=None, help="checkpoint to ship; None: the newest")
  p.add_argument("--curve", type=Path, default=None,
                 help="benchmarks.label_curve's (main job) or benchmarks.line_curve's (line "
                      "identification) JSON for this run (its rows are shipped)")
  p.add_argument("--out", type=Path, default=None,
                 help="output folder; None: the job's folder in the package")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  from cyclestar_jax import pretrained
  from cyclestar_jax.pretrained import export

  for what, path in (("RUN_DIR", args.run_dir / "run.json"), ("--curve", args.curve)):
    if path is not None and not path.is_file():
      raise FileNotFoundError(f"{what} {path}: no such file")
  curve = json.loads(args.curve.read_text()) if args.curve else None
  out = args.out or pretrained.Weights(export.run_job(args.run_dir)).dir
  meta = export.export_run(args.run_dir, step=args.step, curve=curve,
                           curve_file=None if args.curve is None else str(args.curve),
                           out_dir=out)
  print(f"wrote {out}: step {meta['step']} of the {meta['job']} job's {meta['preset']} "
        f"preset, {len(meta['curve'])} curve rows")
  return meta


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
