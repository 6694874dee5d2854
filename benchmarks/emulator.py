"""Emulator speed: spectra per second, and jacfwd over all labels, printed as JSON.

  python -m benchmarks.emulator [--n 100000] [--batch 10000] [--jac-batch 1000] [--repeats 3]
                                [--emulator PATH] [--out FILE]

For `--n` random label sets inside the training box, times
- `forward`: flux [n, n_pix] from physical labels (jitted `Emulator.__call__`, `--batch` label
  sets per call, results left on the device);
- `predict`: the same through `Emulator.predict` (box check, chunking, copy to host NumPy);
- `jacfwd`: ∂flux/∂labels [n, n_pix, n_labels] with `vmap(jacfwd(emulator))`, `--jac-batch`
  label sets per call, each block reduced on the device (max |∂flux/∂y| per pixel and label) so
  that the 10⁵ × 7214 × 25 derivatives (72 GB) are never kept.
Each is run once to compile (excluded), then `--repeats` times; the median wall time is
reported with the device. Weights are random unless `--emulator` names a file (speed does not
depend on the values).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import emit_json
from cyclestar_jax.emulator import Emulator, create_emulator_params, load_emulator
from cyclestar_jax.labels import N_LABELS
from cyclestar_jax.networks import count_params


def _blocks(y: np.ndarray, batch: int) -> list[jax.Array]:
  """Label blocks [batch, n_labels] on the device, the last one padded (one compiled shape)."""
  pad = (-len(y)) % batch
  y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)]) if pad else y
  return [jax.device_put(jnp.asarray(b, jnp.float32)) for b in np.split(y, len(y) // batch)]


def _time(fn, repeats: int) -> dict:
  jax.block_until_ready(fn())  # warm-up: compilation excluded
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return {"median_s": statistics.median(times), "times_s": times}


def run(n: int = 100_000, batch: int = 10_000, jac_batch: int = 1000, repeats: int = 3,
        emulator: Emulator | None = None, seed: int = 0, skip_predict: bool = False) -> dict:
  """Runs the three timings; returns the JSON-ready dict."""
  if emulator is None:
    params = create_emulator_params(jax.random.PRNGKey(seed))
    emulator = Emulator(params=params, y_min=np.zeros(N_LABELS), y_max=np.ones(N_LABELS))
  y_min, y_max = np.asarray(emulator.y_min), np.asarray(emulator.y_max)
  rng = np.random.default_rng(seed)
  y = y_min + (y_max - y_min) * rng.uniform(0.0, 1.0, (n, len(y_min)))
  batch, jac_batch = min(batch, n), min(jac_batch, n)

  forward = jax.jit(lambda em, yb: em(yb))
  blocks = _blocks(y, batch)

  def run_forward():
    return [forward(emulator, b) for b in blocks]

  out = {"benchmark": "emulator", "device": str(jax.devices()[0]),
         "platform": jax.devices()[0].platform, "jax": jax.__version__,
         "host": platform.node(), "cpu_count": os.cpu_count(),
         "n_params": count_params(emulator.params), "n_pix": emulator.n_pix, "n": n,
         "batch": batch, "jac_batch": jac_batch, "repeats": repeats}
  t = _time(run_forward, repeats)
  out["forward"] = {**t, "spectra_per_s": n / t["median_s"]}

  if not skip_predict:
    t = _time(lambda: emulator.predict(y, chunk_size=batch), repeats)
    out["predict"] = {**t, "spectra_per_s": n / t["median_s"]}

  @jax.jit
  def jac_block(em, yb):
    jac = jax.vmap(jax.jacfwd(em))(yb)  # [B, n_pix, n_labels]
    return jnp.max(jnp.abs(jac), axis=0)

  jblocks = _blocks(y, jac_batch)

  def run_jac():
    acc = jnp.zeros((emulator.n_pix, len(y_min)))
    for b in jblocks:
      acc = jnp.maximum(acc, jac_block(emulator, b))
    return acc

  t = _time(run_jac, repeats)
  out["jacfwd"] = {**t, "label_sets_per_s": n / t["median_s"],
                   "seconds_per_100k": 1e5 * t["median_s"] / n}
  return out


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=100_000, help="label sets (default 100,000)")
  p.add_argument("--batch", type=int, default=10_000, help="label sets per forward call")
  p.add_argument("--jac-batch", type=int, default=1000, help="label sets per jacfwd call")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--emulator", default=None, help="emulator file (default: random weights)")
  p.add_argument("--skip-predict", action="store_true", help="skip the host-side predict timing")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  args = p.parse_args(argv)
  em = load_emulator(args.emulator) if args.emulator else None
  res = run(n=args.n, batch=args.batch, jac_batch=args.jac_batch, repeats=args.repeats,
            emulator=em, skip_predict=args.skip_predict)
  return emit_json(res, args.out)


if __name__ == "__main__":
  main()
