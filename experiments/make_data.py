"""Make the mock APOGEE world's data files: DIR/synth.h5, DIR/obs.h5, DIR/payne_grid.h5 (the
emulator's training grid) and DIR/examples.png.

  python -m experiments.make_data --out runs/mock [--experiment apogee|new_lines]
      [--n-train N] [--n-val N] [--n-test N] [--seed S] [--masked-fraction F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cyclestar_jax import cli, mock, plots, rundir
from cyclestar_jax.fileio import atomic_write_text

OUTPUTS = ("synth.h5", "obs.h5", "payne_grid.h5", "make_data.json", "examples.png")


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.parser(cli.description(__doc__))
  p.add_argument("--out", required=True, type=Path, help="output folder")
  p.add_argument("--experiment", default="apogee", choices=["apogee", "new_lines"],
                 help="the paper's APOGEE transfer (§4.1) or missing-line (§4.2) experiment")
  p.add_argument("--n-train", type=int, default=mock.DataSizes.n_train,
                 help="training stars per domain")
  p.add_argument("--n-val", type=int, default=mock.DataSizes.n_val,
                 help="validation stars (the same stars in both files)")
  p.add_argument("--n-test", type=int, default=mock.DataSizes.n_test, help="test stars per domain")
  p.add_argument("--seed", type=int, default=0, help="seed of the whole world")
  p.add_argument("--masked-fraction", type=float, default=None,
                 help="new_lines: fraction of strong features removed (default: the paper's)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace data files already in --out (else refused)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  if args.masked_fraction is not None and args.experiment != "new_lines":
    p.error("--masked-fraction applies to --experiment new_lines only")
  for k in ("n_train", "n_val", "n_test"):
    if getattr(args, k) < 1:
      p.error(f"--{k.replace('_', '-')} must be at least 1")
  if args.masked_fraction is not None and not 0 <= args.masked_fraction <= 1:
    p.error(f"--masked-fraction must be in [0, 1], got {args.masked_fraction}")
  if args.out.exists() and not args.out.is_dir():
    p.error(f"--out {args.out} is a file, expected a folder")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  world = mock.WorldConfig(experiment=args.experiment, seed=args.seed,
                           masked_fraction=args.masked_fraction)
  sizes = mock.DataSizes(args.n_train, args.n_val, args.n_test)
  rundir.check_out_folder(args.out)
  with rundir.folder_lock(args.out):
    rundir.check_replace(args.out, OUTPUTS, args.overwrite)
    rundir.clean_temporary(args.out)
    summary = mock.make_data(args.out, world, sizes, progress=not args.no_progress)
    plots.plot_examples(mock.example_spectra(args.out / "synth.h5", args.out / "obs.h5"),
                        args.out / "examples.png")
    atomic_write_text(args.out / "make_data.json", json.dumps(summary, indent=2))
  seconds = summary["synth_seconds"] + summary["obs_seconds"] + summary["payne_grid_seconds"]
  print(f"wrote {args.out}/synth.h5 ({summary['synth_mb']:.0f} MB), obs.h5 "
        f"({summary['obs_mb']:.0f} MB) and payne_grid.h5 ({summary['payne_grid_mb']:.0f} MB, "
        f"the emulator's training grid): {args.experiment}, {sizes.n_train}/{sizes.n_val}/"
        f"{sizes.n_test} train/val/test stars per domain, seed {args.seed}, in {seconds:.0f} s; "
        "examples.png")
  return summary


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
