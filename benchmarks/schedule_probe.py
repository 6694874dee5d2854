"""A training-schedule probe of the main job's networks: train a variant of a preset's
Cycle-StarNet (learning rate, its decays, the generator's moving average, the grid term) on a
finished run's data, from scratch or from another run's checkpoint, then score Eq. 11's labels
against the mock world's truth at chosen steps (`benchmarks.label_curve.fit_row`), with the
label gains and the trainer's paired χ², as JSON.

  python -m benchmarks.schedule_probe OUT --data RUN_DIR --n-iter 3000 [--preset cpu]
      [--lr 1e-3] [--bounds 1500,2250] [--decay 0.5] [--ema 0.998] [--grid 3]
      [--from MODEL_DIR:STEP] [--fit-steps 2000,3000] [--n 256] [--max-iter 100]

RUN_DIR is an `experiments.apogee` run on the mock world (its data/ and emulator/ are used; all
probes of a table should share one emulator). `--from` copies one checkpoint of another training
(`RUN/model:STEP`) and goes on from it: the learning-rate schedule is a function of the step, so
a probe that differs from a finished run only after step S need not repeat the first S
iterations. OUT/probe.json keeps the options and one row per fitted step; a rerun with the same
options (but --n-iter and --fit-steps) trains on from OUT's newest checkpoint and fits only the
steps not yet there; other options are refused. Measurements: benchmarks/README.md ("The cpu
preset's 15 minutes").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from benchmarks.label_curve import fit_row, load_test_stars
from cyclestar_jax import checkpoint, trainer
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.metrics_log import read_metrics
from cyclestar_jax.pipeline import curve
from cyclestar_jax.pipeline.presets import PRESETS


def probe_config(args: argparse.Namespace):
  """The preset's Cycle-StarNet config with the probe's schedule: lr for every optimizer,
  decays by `decay` at `bounds` (none: a constant lr), EMA decay, grid term (autoencoder only)."""
  bounds = tuple(int(b) for b in args.bounds.split(",") if b) or (10**9,)
  return dataclasses.replace(
      PRESETS[args.preset].cycle, n_iter=args.n_iter, lr_encoder=args.lr, lr_decoder=args.lr,
      lr_critic=args.lr, lr_boundaries_gen=bounds, lr_boundaries_critic=bounds,
      lr_decay_gen=args.decay, lr_decay_critic=args.decay, gen_ema_decay=args.ema,
      lambda_grid=args.grid, grid_cycle=False)


def seed_from(model: Path, source: str) -> None:
  """model/checkpoints/STEP and the metrics log from `source` ("MODEL_DIR:STEP")."""
  src, step = source.rsplit(":", 1)
  src_ckpt = Path(src) / "checkpoints" / step
  if not src_ckpt.is_dir():
    raise SystemExit(f"--from {source}: no checkpoint {src_ckpt}")
  (model / "checkpoints").mkdir(parents=True)
  shutil.copytree(src_ckpt, model / "checkpoints" / step)
  # The whole log: the trainer drops its lines after the step it resumes from.
  shutil.copyfile(Path(src) / "metrics.jsonl", model / "metrics.jsonl")


# Options that may change between the runs of one probe folder: more steps to fit, a longer run.
FREE_ARGS = ("fit_steps", "n_iter")


def open_probe(out_json: Path, model: Path, args: argparse.Namespace) -> dict:
  """OUT/probe.json's content, written first for a new probe; a rerun must have the same options
  but `FREE_ARGS` (its rows and checkpoints were made with them), else SystemExit."""
  ident = {k: str(v) for k, v in vars(args).items() if k not in FREE_ARGS}
  if out_json.is_file():
    done = json.loads(out_json.read_text())
    diff = {k: (done["args"].get(k), v) for k, v in ident.items() if done["args"].get(k) != v}
    if diff:
      raise SystemExit(f"{out_json}: made with other options (was, now): {diff}; choose another "
                       "OUT")
    return done
  if (model / "checkpoints").is_dir():
    raise SystemExit(f"{model / 'checkpoints'} exists without {out_json}: not a probe folder; "
                     "choose another OUT")
  done = {"args": ident, "rows": {}}
  args.out.mkdir(parents=True, exist_ok=True)
  atomic_write_text(out_json, json.dumps(done, indent=1))
  return done


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("out", type=Path)
  ap.add_argument("--data", type=Path, required=True, help="a finished mock-world run folder")
  ap.add_argument("--preset", default="cpu", choices=("cpu", "long"))
  ap.add_argument("--n-iter", type=int, required=True)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--bounds", default="", help="comma-separated decay steps (none: constant)")
  ap.add_argument("--decay", type=float, default=0.5, help="lr factor at each bound")
  ap.add_argument("--ema", type=float, default=0.998, help="the generator's EMA decay")
  ap.add_argument("--grid", type=float, default=0.0, help="λ_grid (the data's payne_grid.h5)")
  ap.add_argument("--from", dest="source", default=None, metavar="MODEL_DIR:STEP")
  ap.add_argument("--fit-steps", default="", help="steps to fit (default: --n-iter)")
  ap.add_argument("--n", type=int, default=256, help="test stars fitted")
  ap.add_argument("--max-iter", type=int, default=100, help="Eq. 11 L-BFGS steps")
  ap.add_argument("--ckpt-every", type=int, default=500)
  args = ap.parse_args()
  data = args.data / "data"
  for f in ("synth.h5", "obs.h5") + (("payne_grid.h5",) if args.grid else ()):
    if not (data / f).is_file():
      raise SystemExit(f"--data {args.data}: no {data / f}")
  model, out_json = args.out / "model", args.out / "probe.json"
  done = open_probe(out_json, model, args)
  if args.source and not (model / "checkpoints").is_dir():
    seed_from(model, args.source)

  cfg = probe_config(args)
  loop = dataclasses.replace(PRESETS[args.preset].loop, keep=1000, ckpt_every=args.ckpt_every)
  files = trainer.TrainFiles(data / "synth.h5", data / "obs.h5",
                             data / "payne_grid.h5" if args.grid else None)
  t0 = time.perf_counter()
  res = trainer.train(cfg, files, model, loop, resume=(model / "checkpoints").is_dir())
  print(f"trained to step {res['step']} in {time.perf_counter() - t0:.0f} s", flush=True)

  em, sp, y_true, world = load_test_stars(args.data, args.n)
  done["it_per_s"] = [(d["step"], d["it_per_s"])
                      for d in read_metrics(model / "metrics.jsonl")["train"] if "it_per_s" in d]
  chi2, ns = curve.paired_chi2_by_step(model), curve.N_CURVE_STARS
  for step in [int(s) for s in args.fit_steps.split(",") if s] or [args.n_iter]:
    if str(step) in done["rows"]:
      continue
    cycle = checkpoint.load_cycle_model(model, step=step)
    row = {"step": step, "paired_val_chi2": chi2.get(step),
           **curve.gains_row(em, cycle, sp.x[:ns], y_true[:ns], world),
           **fit_row("eq11", em, cycle, sp, y_true, args.max_iter)}
    done["rows"][str(step)] = row
    atomic_write_text(out_json, json.dumps(done, indent=1))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
