"""Train Cycle-StarNet on a synthetic and an observed reference-format HDF5 file.

  python -m experiments.train --synth runs/mock/synth.h5 --obs runs/mock/obs.h5 \
      --config kurucz_to_apogee_1 --out runs/k2a [--resume] [--n-iter N]

`--config` is a preset (`smoke`: seconds on a CPU; `kurucz_to_apogee_1`, `new_lines_1`: the
paper's two experiments) or the path of an authors'-format `.ini` file. Writes OUT/metrics.jsonl,
OUT/checkpoints/, OUT/training_progress.png, OUT/config.json; the loop is
`cyclestar_jax.trainer.train`. Uses every local device (data parallel); for several hosts run
the same command on each after `jax.distributed.initialize()` (see `cyclestar_jax.parallel`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from cyclestar_jax import config, trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--synth", default="runs/mock/synth.h5", help="synthetic-domain HDF5 file")
  p.add_argument("--obs", default="runs/mock/obs.h5", help="observed-domain HDF5 file")
  p.add_argument("--config", default="kurucz_to_apogee_1",
                 help=f"preset {config.preset_names()} or an .ini file")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
  p.add_argument("--n-iter", type=int, default=None, help="iterations (default: the config's)")
  p.add_argument("--batch-size", type=int, default=None, help="override the config's batch")
  p.add_argument("--seed", type=int, default=None, help="override the config's seed")
  p.add_argument("--log-every", type=int, default=100)
  p.add_argument("--val-every", type=int, default=1000)
  p.add_argument("--ckpt-every", type=int, default=1000)
  p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  cfg = config.get_config(args.config)
  overrides = {k: v for k, v in (("batch_size", args.batch_size), ("seed", args.seed))
               if v is not None}
  cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
  summary = trainer.train(cfg, args.synth, args.obs, args.out, resume=args.resume,
                          n_iter=args.n_iter, log_every=args.log_every,
                          val_every=args.val_every, ckpt_every=args.ckpt_every,
                          keep=args.keep, progress=not args.no_progress)
  print(json.dumps({"step": summary["step"], "out": summary["out_dir"],
                    **{k: summary["train"].get(k) for k in ("rec_synth", "rec_obs", "cc_synth",
                                                            "cc_obs", "it_per_s")}}))
  return summary


if __name__ == "__main__":
  main()
