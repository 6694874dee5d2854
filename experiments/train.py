"""Train Cycle-StarNet on a synthetic and an observed reference-format HDF5 file.

  python -m experiments.train --synth runs/mock/synth.h5 --obs runs/mock/obs.h5 \\
      --config kurucz_to_apogee_1 --out runs/k2a [--resume] [--n-iter N]

`--config` is a preset (`smoke`: seconds on a CPU; `kurucz_to_apogee_1`, `new_lines_1`: the
paper's two experiments) or the path of an authors'-format `.ini` file. Writes OUT/metrics.jsonl,
OUT/checkpoints/, OUT/training_progress.png, OUT/config.json, OUT/run.json; the loop is
`cyclestar_jax.trainer.train`. Uses every local device (data parallel). The files must hold
7214-pixel spectra (`n_pix + 47` of the config). A user error (a bad file or option) prints one
line and exits with code 2 (`--debug` shows the traceback); a run stopped after
`--max-skipped` non-finite steps exits with code 1; a resumed run already at `--n-iter` says
so and prints its last metrics.

Several processes (several hosts, or several processes on one host): run the same command in
every process with `--coordinator HOST:PORT --num-processes N --process-id I` (I = 0 … N−1;
HOST:PORT is where process 0 listens), or with `--distributed` alone where JAX detects the
cluster (Slurm, Open MPI, Cloud TPU). Each process reads its share of every global batch; the
devices of all processes form one data-parallel mesh; `--out` must be one directory that every
process sees (checkpoints are written jointly); only process 0 writes metrics.jsonl,
config.json, the figure and the progress bar, and prints the summary. `--resume` works the
same way. Two processes with two CPU devices each on one machine (as `tests/test_multiprocess.py`
checks; on the CPU the processes exchange data with gloo):

  for i in 0 1; do
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m experiments.train \\
        --config smoke --synth S.h5 --obs O.h5 --out runs/mp \\
        --coordinator 127.0.0.1:12355 --num-processes 2 --process-id $i &
  done; wait
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

import jax

# Importing these starts no JAX backend, so jax.distributed can still be initialized in main.
from cyclestar_jax import (
    cli,
    config,
    parallel,
    rundir,
    trainer,
    validation,
)
from cyclestar_jax.pipeline import stages

_LOOP = trainer.LoopConfig()
DEFAULT_LAMBDA_GRID = 3.0  # --grid without --lambda-grid: the APOGEE experiment's λ_synth


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = cli.parser(__doc__.split("\n")[0])
  p.add_argument("--synth", default="runs/mock/synth.h5", help="synthetic-domain HDF5 file")
  p.add_argument("--obs", default="runs/mock/obs.h5", help="observed-domain HDF5 file")
  p.add_argument("--config", default="kurucz_to_apogee_1",
                 help=f"preset {config.preset_names()} or an .ini file")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
  p.add_argument("--n-iter", type=int, default=None,
                 help="total iterations; None = the config's n_iter")
  p.add_argument("--batch-size", type=int, default=None,
                 help="global batch per domain; None = the config's")
  p.add_argument("--seed", type=int, default=None, help="seed; None = the config's")
  p.add_argument("--grid", default=None,
                 help="synthetic spectra at labels that vary each element on its own (e.g. the "
                      "emulator's training grid): the synthetic autoencoder and cycle also learn "
                      "them (not in the paper; Config.lambda_grid)")
  p.add_argument("--lambda-grid", type=float, default=None,
                 help="weight of the grid batch's distances (default with --grid: 3, the "
                      "APOGEE experiment's λ_synth)")
  p.add_argument("--log-every", type=int, default=_LOOP.log_every,
                 help="iterations between metrics lines")
  p.add_argument("--val-every", type=int, default=_LOOP.val_every,
                 help="iterations between validations")
  p.add_argument("--val-rows", type=int, default=_LOOP.val_rows,
                 help="spectra per domain in the validation batch")
  p.add_argument("--ckpt-every", type=int, default=_LOOP.ckpt_every,
                 help="iterations between checkpoints")
  p.add_argument("--keep", type=int, default=_LOOP.keep, help="checkpoints kept")
  p.add_argument("--max-skipped", type=int, default=_LOOP.max_skipped,
                 help="stop after this many consecutive skipped (non-finite) steps")
  p.add_argument("--paired-val", choices=validation.PAIRED_VAL_OPTIONS, default="auto",
                 help="whether row i of the two val splits is the same star (adds val_paired_* "
                      "metrics); auto: the files' paired_splits attribute, else equal row "
                      "counts (with a warning)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--data-on-device", choices=("auto", "yes", "no"), default="auto",
                 help="hold the training splits on the devices (auto: when they fit) or stream "
                      "them from the files")
  p.add_argument("--steps-per-call", type=int, default=None,
                 help="iterations per compiled call with data on the devices; must divide "
                      "every interval; None = 1 on the CPU, 10 on a GPU with the default "
                      "intervals")
  cli.add_distributed_args(p)
  args = p.parse_args(argv)
  cli.check_distributed_args(p, args)
  if args.lambda_grid is not None and not (args.grid and args.lambda_grid > 0):
    p.error(f"--lambda-grid {args.lambda_grid}: give it with --grid, and > 0")
  if args.grid is not None and not Path(args.grid).is_file():
    p.error(f"--grid {args.grid}: no such file")
  for name in ("n_iter", "batch_size"):
    v = getattr(args, name)
    if v is not None and v < (0 if name == "n_iter" else 1):
      p.error(f"--{name.replace('_', '-')} must be ≥ {0 if name == 'n_iter' else 1}, got {v}")
  return args


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  parallel.initialize_from_args(args)
  cfg = config.get_config(args.config)
  lam = (args.lambda_grid or cfg.lambda_grid or DEFAULT_LAMBDA_GRID) if args.grid else None
  overrides = {k: v for k, v in (("batch_size", args.batch_size), ("seed", args.seed),
                                 ("lambda_grid", lam)) if v is not None}
  cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
  rundir.check_out_folder(args.out)
  lock = rundir.folder_lock(args.out) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    if jax.process_index() == 0:
      rundir.clean_temporary(args.out)
    summary = _train(args, cfg)
    if jax.process_index() == 0 and not summary["already_complete"]:
      stages.draw_training_progress(args.out)
  if jax.process_index() == 0:
    if summary["already_complete"]:
      print(f"{args.out}: run already complete at step {summary['step']} (--n-iter "
            f"{args.n_iter if args.n_iter is not None else cfg.n_iter}); nothing to train, "
            f"the last metrics follow")
    print(json.dumps({"step": summary["step"], "out": summary["out_dir"],
                      **{k: summary["train"].get(k) for k in ("rec_synth", "rec_obs",
                                                              "cc_synth", "cc_obs", "it_per_s")}}))
  return summary


def _train(args: argparse.Namespace, cfg: config.Config) -> dict:
  """`trainer.train` with the command's options."""
  loop = trainer.LoopConfig(
      log_every=args.log_every, val_every=args.val_every, ckpt_every=args.ckpt_every,
      steps_per_call=args.steps_per_call, val_rows=args.val_rows, keep=args.keep,
      max_skipped=args.max_skipped, n_iter=args.n_iter, data_on_device=args.data_on_device,
      paired_val=args.paired_val)
  return trainer.train(cfg, trainer.TrainFiles(args.synth, args.obs, args.grid), args.out, loop,
                       resume=args.resume, progress=not args.no_progress)


if __name__ == "__main__":
  sys.exit(cli.run_main(main, failures=(trainer.TrainingDiverged,)))
