"""A fit does not depend on the batch it runs in, and the batch is sized to the work.

A small random emulator made nearly quadratic over the box (`test_fitting._tame`, so that χ² has
one minimum and no kinks near it), one device, so that batch sizes 1, 7 and 64 run 1, 7 and 16
slots: three differently shaped vmapped programs whose float32 rounding differs.
"""

import jax
import numpy as np
import pytest
from test_fitting import _emulator, _mock, _tame

from cyclestar_jax import fitting as F


@pytest.fixture(scope="module")
def tame():
  return _tame(_emulator(0))


def test_slots_and_chunks_are_sized_to_the_work(tame):
  """A small job compiles the power-of-two slots it needs, not `batch_size` (default 1,024)."""
  x, err, _, y_cat = _mock(tame, 3, seed=2)
  one = F.LabelFitter(tame, F.FitConfig(method="emulator"), devices=jax.local_devices()[:1])
  assert one.slots_per_device == 1024 and one.chunk_rows(3) == 4
  res = one.fit(x, err, y_start=y_cat)  # 3 spectra × 2 starts = 6 jobs → 8 slots
  assert one.compiled_slots == (8,) and res.converged.all()
  many = F.LabelFitter(tame, F.FitConfig(method="emulator", chunk_size=100))
  n_dev = many.n_dev
  assert many.chunk_rows(1) == n_dev and many.chunk_rows(3 * n_dev) == 4 * n_dev
  assert many.chunk_rows(10**6) == n_dev * -(-100 // n_dev)
  assert [many.slots_for(j) for j in (0, 1, 3, 4, 5, 10**6)] == [
      1, 1, 4, 4, 8, -(-1024 // n_dev)]
  assert many.compiled_slots == ()


def test_fit_does_not_depend_on_the_batch(tame):
  """Batch sizes 1, 7 and 64: labels within 1% of their formal errors, χ² within 1e-5."""
  x, err, _, y_cat = _mock(tame, 6)
  dev = jax.local_devices()[:1]
  res, slots = {}, {}
  for b in (1, 7, 64):
    fitter = F.LabelFitter(tame, F.FitConfig(method="emulator", batch_size=b), devices=dev)
    res[b] = fitter.fit(x, err, y_start=y_cat)
    slots[b] = fitter.compiled_slots
  assert slots == {1: (1,), 7: (7,), 64: (16,)}
  ref = res[1]
  assert ref.converged.all() and not np.any(ref.flags & ~F.FLAGS["AT_BOUND"])
  for b in (7, 64):
    dy = np.abs(res[b].y - ref.y) / ref.y_err
    assert dy.max() < 0.01, (b, dy.max(axis=1))
    np.testing.assert_allclose(res[b].chi2, ref.chi2, rtol=1e-5)
    np.testing.assert_array_equal(res[b].start, ref.start)
