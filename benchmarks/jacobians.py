"""Derivative spectra of the full chain, reduced on the device: label sets per second, as JSON.

  python -m benchmarks.jacobians [--n 256] [--chunk-per-device 32[,128,...]] [--repeats 3]
                                 [--config kurucz_to_apogee_1] [--no-recovery] [--out FILE]

For `--n` APOGEE-like label sets (`mock.sample_labels`) with a random per-star z_sp, times
`lines.reduce_label_sets` over the chain Payne → T_synth→obs: both Jacobians [7167, 25] of every
label set by `vmap(jacfwd)` of `chain.py`'s functions, split over the local devices, reduced on
the device to the per-feature attributions of the 415 Kurucz strong features (sums, scores,
winners, binned accuracy) and, unless `--no-recovery`, the recovery error (which reads a
[n, 7214] truth array from the host, so the host-to-device copy is timed too). Networks are the
config's (Table 2 by default) with random weights and a random full-size emulator
(25 → 300 → 300 → 7214): speed does not depend on the values. One chunk to compile (reported
as `first_s`: compilation + one chunk), then `--repeats` runs over all `--n`; the median is
reported with the device. Target: 100,000
label sets in ≤ 20 s on one H200.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np

from benchmarks._common import emit_json
from cyclestar_jax import config, lines, networks
from cyclestar_jax.chain import ModelChain
from cyclestar_jax.checkpoint import CycleModel
from cyclestar_jax.emulator import Emulator, create_emulator_params
from cyclestar_jax.labels import label_box
from cyclestar_jax.mock import WorldConfig, population
from cyclestar_jax.networks import count_params
from cyclestar_jax.resources import N_PIX


def make_chain(config_name: str, seed: int = 0) -> ModelChain:
  """Random Table-2 (or `config_name`) networks and a random full-size emulator whose box is
  that of a large APOGEE-like label sample."""
  cfg = config.get_config(config_name)
  nets = networks.make_networks(cfg)
  gen = nets.init(jax.random.PRNGKey(seed))[0]
  y_min, y_max = label_box(population.sample_labels(20_000, np.random.default_rng(seed)))
  em = Emulator(params=create_emulator_params(jax.random.PRNGKey(seed + 1)), y_min=y_min,
                y_max=y_max)
  return ModelChain(em, CycleModel(nets, gen))


def run(n: int = 256, chunks_per_device: tuple[int, ...] = (32,), repeats: int = 3,
        config_name: str = "kurucz_to_apogee_1", recovery: bool = True, seed: int = 0) -> dict:
  """Times the reduction for each chunk size; returns the JSON-ready dict."""
  chain = make_chain(config_name, seed)
  rng = np.random.default_rng(seed + 2)
  y = population.sample_labels(n, rng).astype(np.float32)
  z = rng.normal(size=(n, *chain.nets.cfg.zsp_shape)).astype(np.float32)
  feats = lines.kurucz_features()
  reducers = {"attribution": lines.attribution_reducer(feats)}
  extras = None
  if recovery:
    pix = lines.removed_features(WorldConfig(experiment="new_lines")).pixel_mask()
    reducers["recovery"] = lines.recovery_reducer(pix)
    extras = {"x_true": rng.uniform(0.5, 1.0, (n, N_PIX)).astype(np.float32)}
  dev = jax.local_devices()
  out = {"benchmark": "jacobians", "device": str(dev[0]), "platform": dev[0].platform,
         "n_devices": len(dev), "jax": jax.__version__, "host": platform.node(),
         "cpu_count": os.cpu_count(), "config": config_name,
         "n_params_gen": count_params(chain.cycle.gen_params),
         "n_params_emulator": count_params(chain.emulator.params), "n": n,
         "n_features": len(feats), "recovery": recovery, "repeats": repeats, "runs": []}
  for cpd in chunks_per_device:
    def once(m=n, cpd=cpd):
      ex = None if extras is None else {k: v[:m] for k, v in extras.items()}
      return lines.reduce_label_sets(chain, y[:m], z[:m], reducers, extras=ex,
                                     chunk_per_device=cpd)

    t = time.perf_counter()
    res = once(min(n, cpd * len(dev)))  # one chunk: compiles the program every chunk runs
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      once()
      times.append(time.perf_counter() - t)
    med = statistics.median(times)
    out["runs"].append({"chunk_per_device": cpd, "first_s": first, "median_s": med,
                        "times_s": times, "label_sets_per_s": n / med,
                        "seconds_per_100k": 1e5 * med / n,
                        "check_mean_abs_score": float(np.abs(
                            res["attribution"]["mean_score"]).mean())})
  return out


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=256, help="label sets (default 256; GPU: 100000)")
  p.add_argument("--chunk-per-device", default="32",
                 help="comma-separated label sets per device and call (default 32)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--config", default="kurucz_to_apogee_1", help="network preset or .ini")
  p.add_argument("--no-recovery", action="store_true", help="attribution reducer only")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  args = p.parse_args(argv)
  res = run(n=args.n, chunks_per_device=tuple(int(c) for c in args.chunk_per_device.split(",")),
            repeats=args.repeats, config_name=args.config, recovery=not args.no_recovery)
  return emit_json(res, args.out)


if __name__ == "__main__":
  main()
