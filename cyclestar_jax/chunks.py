"""Evaluating a jitted function over many rows in fixed-size, zero-padded chunks.

A jitted function compiles once per input shape. `map_chunks` feeds it rows in chunks of one
size (`chunk_rows`: the chunk size when there are more rows, else the next power of two), the
last chunk zero-padded to that size, and keeps only the real rows of each output, so repeated
calls over sets of varying size compile only a few shapes. Used by `Emulator.predict`,
`emulator_train.evaluate_mse`, `chain.ModelChain.predict` and the main job's evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def chunk_rows(n: int, chunk_size: int) -> int:
  """Rows per call for `n` rows: `chunk_size` if n > chunk_size, else the smallest power of
  two ≥ n (at most `chunk_size`)."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
  if n > chunk_size:
    return chunk_size
  return min(chunk_size, 1 << max(n - 1, 0).bit_length())


def _pad_rows(a, size: int):
  """Zero rows appended to `a` [m, ...] up to [size, ...] (a jax.Array stays on its device)."""
  m = a.shape[0]
  if m == size:
    return a
  widths = ((0, size - m),) + ((0, 0),) * (a.ndim - 1)
  return jnp.pad(a, widths) if isinstance(a, jax.Array) else np.pad(a, widths)


def map_chunks(fn: Callable[..., Any], arrays: Sequence, chunk_size: int) -> Any:
  """`fn(*chunks)` over row chunks of `arrays`, outputs concatenated on the host.

  Args:
    fn: maps arrays [size, ...] (one per input) to an array [size, ...], or a pytree (e.g. a
      dict) of them, row by row (row i of every output depends only on row i of the inputs),
      e.g. a jitted network.
    arrays: inputs with the same number of rows N (NumPy or JAX arrays).
    chunk_size: the most rows per call (see `chunk_rows`).

  Returns:
    NumPy array [N, ...] (or the same pytree of them): the outputs of the real rows.
  """
  n = int(arrays[0].shape[0])
  if any(int(a.shape[0]) != n for a in arrays):
    raise ValueError(f"map_chunks: inputs differ in rows: {[a.shape for a in arrays]}")
  size = chunk_rows(n, chunk_size)
  if n == 0:  # one padded call tells the output's row shape and dtype
    return jax.tree.map(lambda r: np.asarray(r)[:0], fn(*(_pad_rows(a, 1) for a in arrays)))
  out = None
  for start in range(0, n, size):
    parts = [a[start:start + size] for a in arrays]
    m = int(parts[0].shape[0])
    r = jax.tree.map(lambda v, m=m: np.asarray(v)[:m], fn(*(_pad_rows(q, size) for q in parts)))
    if out is None:
      out = jax.tree.map(lambda v: np.empty((n,) + v.shape[1:], v.dtype), r)

    def put(dst, src, start=start, m=m):
      dst[start:start + m] = src

    jax.tree.map(put, out, r)
  return out
