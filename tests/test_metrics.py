"""The §4 statistics against hand-computed numbers."""

import numpy as np
import pytest

from cyclestar_jax import metrics


def test_half_width_and_bias_by_hand():
  r = np.arange(101, dtype=float)  # percentiles 16 and 84 are 16 and 84
  assert metrics.half_width_16_84(r) == pytest.approx(34.0)
  assert metrics.bias_scatter(np.array([1.0, np.nan, 3.0]))["bias"] == pytest.approx(2.0)
  assert np.isnan(metrics.half_width_16_84(np.array([np.nan])))


def test_relative_and_normalized_residuals():
  x = np.array([[1.0, 0.5, 0.8]])
  pred = np.array([[1.01, 0.5, 0.4]])
  np.testing.assert_allclose(metrics.relative_residual(pred, x), [[0.01, 0.0, -0.5]])
  err = np.array([[0.01, 0.1, 0.0]])
  msk = np.array([[True, False, True]])
  r = metrics.normalized_residual(pred, x, err, msk)
  np.testing.assert_allclose(r[0, 0], 1.0)
  assert np.isnan(r[0, 1]) and np.isnan(r[0, 2])  # masked; zero error


def test_chi2_r_clipped_and_all():
  r = np.array([[1.0, -1.0, 2.0, 10.0], [np.nan, np.nan, np.nan, np.nan]])
  c = metrics.chi2_r_per_star(r)
  assert c[0] == pytest.approx((1 + 1 + 4) / 3)  # |r| = 10 left out
  assert np.isnan(c[1])
  assert metrics.chi2_r_per_star(r, clip=None)[0] == pytest.approx((1 + 1 + 4 + 100) / 4)
  q = metrics.fit_quality(r)
  assert q["n"] == 1 and q["chi2r"] == pytest.approx(2.0)
  assert q["mean_norm_resid"] == pytest.approx(3.0)
  # pooled: every pixel of every star together (a star with more pixels weighs more)
  r2 = np.array([[1.0, 3.0, 9.0, np.nan], [2.0, np.nan, np.nan, np.nan]])
  assert metrics.pooled_chi2(r2) == pytest.approx((1 + 9 + 4) / 3)
  assert metrics.pooled_chi2(r2, clip=None) == pytest.approx((1 + 9 + 81 + 4) / 4)
  assert np.isnan(metrics.pooled_chi2(np.full((2, 3), np.nan)))


def test_label_errors():
  y_true = np.zeros((4, 2))
  y_fit = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [np.nan, 2.0]])
  e = metrics.label_errors(y_fit, y_true, names=("a", "b"))
  assert e["a"] == {"bias": 1.0, "scatter": 0.0, "n": 3}
  assert e["b"]["bias"] == pytest.approx(0.5)
