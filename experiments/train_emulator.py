"""Train The Payne emulator on the synthetic-domain spectra of a reference-format HDF5 file.

  python -m experiments.train_emulator --data runs/mock/payne_grid.h5 --out runs/mock/emulator \
      [--max-epochs 300] [--time-limit 1800] [--batch-size 512] [--lr 2e-3] [--patience 30]

Writes OUT/emulator.npz (The Payne's npz layout, loadable with
`cyclestar_jax.emulator.load_emulator`), OUT/checkpoint/ (orbax, best weights), OUT/metrics.json
(held-out median and 99th-percentile |emulator − truth|, per chip and per Teff bin) and
OUT/residuals.png. The logic is in `cyclestar_jax.emulator_train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from cyclestar_jax import cli, plots, rundir
from cyclestar_jax.emulator_train import EmulatorTrainConfig, train_emulator

_DEFAULTS = EmulatorTrainConfig()
OUTPUTS = ("emulator.npz", "metrics.json", "residuals.png", "checkpoint")  # what --out gets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = cli.parser(__doc__.split("\n")[0])
  p.add_argument("--data", default="runs/mock/payne_grid.h5",
                 help="reference-format HDF5 file with 'spectra train' and 'labels train' "
                      "(default: the mock world's emulator grid, runs/mock/payne_grid.h5: "
                      "abundances varied independently, as in The Payne's own training set)")
  p.add_argument("--out", default="runs/mock/emulator", help="output directory")
  p.add_argument("--max-epochs", type=int, default=_DEFAULTS.max_epochs,
                 help="passes over the training set (budget, with --time-limit)")
  p.add_argument("--time-limit", type=float, default=None,
                 help="wall-clock seconds for the training loop; the learning-rate schedule "
                      "then decays over this time if it ends before --max-epochs")
  p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size,
                 help="spectra per optimizer step")
  p.add_argument("--lr", type=float, default=_DEFAULTS.learning_rate, help="peak learning rate")
  p.add_argument("--final-lr-ratio", type=float, default=_DEFAULTS.final_lr_ratio,
                 help="learning rate at the end of the budget / peak")
  p.add_argument("--optimizer", choices=("adam", "radam"), default=_DEFAULTS.optimizer,
                 help="Adam, or RAdam as The Payne's MLP used")
  p.add_argument("--patience", type=int, default=_DEFAULTS.patience,
                 help="epochs without a better validation loss before stopping")
  p.add_argument("--hidden", type=int, default=_DEFAULTS.n_hidden,
                 help="neurons per hidden layer (reference: 300)")
  p.add_argument("--n-train", type=int, default=None, help="use only the first N training spectra")
  p.add_argument("--n-test", type=int, default=None, help="use only the first N test spectra")
  p.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                 help="initialisation and mini-batch order")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an emulator already in --out (else refused)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  for name in ("max_epochs", "batch_size", "patience", "hidden", "n_train", "n_test"):
    v = getattr(args, name)
    if v is not None and v < 1:
      p.error(f"--{name.replace('_', '-')} must be ≥ 1, got {v}")
  for name in ("time_limit", "lr", "final_lr_ratio"):
    v = getattr(args, name)
    if v is not None and not v > 0:
      p.error(f"--{name.replace('_', '-')} must be > 0, got {v}")
  return args


def build_config(args: argparse.Namespace) -> EmulatorTrainConfig:
  return dataclasses.replace(
      _DEFAULTS, max_epochs=args.max_epochs, time_limit_s=args.time_limit,
      batch_size=args.batch_size, learning_rate=args.lr, final_lr_ratio=args.final_lr_ratio,
      optimizer=args.optimizer, patience=args.patience, n_hidden=args.hidden,
      n_train=args.n_train, n_test=args.n_test, seed=args.seed)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  if not Path(args.data).is_file():
    raise FileNotFoundError(f"--data {args.data}: no such file")
  rundir.check_out_folder(args.out)
  with rundir.folder_lock(args.out):
    rundir.check_replace(args.out, OUTPUTS, args.overwrite)
    rundir.clean_temporary(args.out)
    summary, residual = train_emulator(args.data, args.out, build_config(args),
                                       progress=not args.no_progress)
    plots.plot_emulator_run(residual, summary, Path(args.out) / "residuals.png")
  held = summary["held_out"]
  print(json.dumps({"out": args.out, "median_abs": held["median_abs"],
                    "p99_abs": held["p99_abs"], "meets_targets": summary["meets_targets"],
                    **{k: summary["training"][k] for k in ("epochs", "best_epoch",
                                                           "stop_reason", "train_time_s")}}))
  return summary


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
