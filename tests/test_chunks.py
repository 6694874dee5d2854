"""`chunks.map_chunks`: fixed-size padded chunks, real rows kept, pytree outputs, few shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclestar_jax.chunks import chunk_rows, map_chunks


def test_chunk_rows():
  assert [chunk_rows(n, 8) for n in (0, 1, 2, 3, 5, 8, 9, 100)] == [1, 1, 2, 4, 8, 8, 8, 8]
  with pytest.raises(ValueError, match="chunk_size"):
    chunk_rows(4, 0)


def test_rows_and_shapes():
  shapes = []

  def fn(a, b):
    shapes.append(a.shape)
    return 2 * a + b[:, :1]

  a = np.arange(22.0).reshape(11, 2)
  b = np.ones((11, 3))
  out = map_chunks(fn, [a, b], 4)
  np.testing.assert_array_equal(out, 2 * a + 1)
  assert shapes == [(4, 2)] * 3  # 11 rows: three chunks of 4, the last one padded
  with pytest.raises(ValueError, match="differ in rows"):
    map_chunks(fn, [a, b[:5]], 4)


def test_pytree_outputs_and_empty():
  f = jax.jit(lambda x: {"sum": jnp.sum(x, axis=1), "twice": 2 * x})
  x = np.arange(15.0, dtype=np.float32).reshape(5, 3)
  out = map_chunks(f, [x], 2)
  np.testing.assert_array_equal(out["sum"], x.sum(1))
  np.testing.assert_array_equal(out["twice"], 2 * x)
  empty = map_chunks(f, [x[:0]], 2)
  assert empty["sum"].shape == (0,) and empty["twice"].shape == (0, 3)
