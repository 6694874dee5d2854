"""Shared bits of the benchmark scripts."""

from __future__ import annotations

import json

import numpy as np

from cyclestar_jax import data, resources


def emit_json(result: dict, out: str | None = None) -> dict:
  """Print a benchmark's result as JSON and, if `out` is given, also write it there."""
  text = json.dumps(result, indent=1)
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text + "\n")
  return result


def random_batches(n: int, b: int, n_pix: int, seed: int) -> list[dict[str, np.ndarray]]:
  """n batches of b random standardized spectra per domain (timing does not depend on values)."""
  rng = np.random.default_rng(seed)
  mean, std = resources.spectra_mean_std()
  out = []
  for _ in range(n):
    batch = {}
    for d in data.DOMAINS:
      raw = 1.0 - 0.1 * rng.random((b, n_pix), np.float32)  # flux below the continuum
      batch[f"x_{d}"] = (raw - mean) / std
      batch[f"x_{d}_err"] = np.full((b, n_pix), 0.01 / std, np.float32)
      batch[f"x_{d}_msk"] = (rng.random((b, n_pix)) > 0.02).astype(np.float32)
    out.append({k: v.astype(np.float32) for k, v in batch.items()})
  return out
