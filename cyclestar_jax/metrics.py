"""The paper's §4 statistics, once (docs/metrics_and_figures.md), on the host in NumPy.

- Relative residual (synthetic domain): r = (x_pred − x)/x per pixel in raw flux.
- Normalized residual (observed domain): r = (x_pred − x)/σ over unmasked pixels (NaN elsewhere).
- Bias: mean of r over spectra and pixels; scatter: half the 16–84 percentile width.
- χ²_R of a star: mean of r² over its unmasked pixels with |r| ≤ 5 (`chi2_r`), and over every
  unmasked pixel (`chi2_r_all`).
- Label errors (mock only): fitted − true, bias (mean) and scatter (half 16–84 width) per label.

Every function ignores NaN, so masked pixels and unfitted stars are NaN in, left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cyclestar_jax.labels import LABEL_NAMES

# |r| above CLIP: an outlying pixel, left out of the clipped χ²_R (docs/metrics_and_figures.md).
CLIP = 5.0


def half_width_16_84(r: np.ndarray) -> float:
  """Half the 16–84 percentile width of the finite values of r (NaN if none)."""
  r = np.asarray(r, np.float64).ravel()
  r = r[np.isfinite(r)]
  if r.size == 0:
    return float("nan")
  lo, hi = np.percentile(r, [16.0, 84.0])
  return float(0.5 * (hi - lo))


def nanmean(r: np.ndarray) -> float:
  """Mean of the finite values of r (NaN if none), without NumPy's empty-slice warning."""
  r = np.asarray(r, np.float64).ravel()
  r = r[np.isfinite(r)]
  return float(r.mean()) if r.size else float("nan")


def relative_residual(x_pred: np.ndarray, x: np.ndarray,
                      x_msk: np.ndarray | None = None) -> np.ndarray:
  """(x_pred − x)/x [N, P] in raw flux; NaN where x_msk is False (if given)."""
  x = np.asarray(x, np.float64)
  r = (np.asarray(x_pred, np.float64) - x) / x
  return r if x_msk is None else np.where(np.asarray(x_msk, bool), r, np.nan)


def normalized_residual(x_pred: np.ndarray, x: np.ndarray, x_err: np.ndarray,
                        x_msk: np.ndarray | None = None) -> np.ndarray:
  """(x_pred − x)/σ [N, P]; NaN where masked, σ ≤ 0 or anything is not finite."""
  x_err = np.asarray(x_err, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    r = (np.asarray(x_pred, np.float64) - np.asarray(x, np.float64)) / x_err
  good = np.isfinite(r) & (x_err > 0)
  if x_msk is not None:
    good &= np.asarray(x_msk, bool)
  return np.where(good, r, np.nan)


def bias_scatter(r: np.ndarray) -> dict[str, float]:
  """{"bias": mean, "scatter": half the 16–84 width} of the finite residuals r."""
  return {"bias": nanmean(r), "scatter": half_width_16_84(r)}


def chi2_r_per_star(r: np.ndarray, *, clip: float | None = CLIP) -> np.ndarray:
  """χ²_R [N] of normalized residuals r [N, P]: mean r² over each row's finite pixels, those
  with |r| > clip left out (clip None: all pixels). NaN for a row with no pixel."""
  r = np.asarray(r, np.float64)
  ok = np.isfinite(r)
  if clip is not None:
    ok &= np.abs(np.where(ok, r, 0.0)) <= clip
  n = ok.sum(axis=1)
  s = np.where(ok, r * r, 0.0).sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def pooled_chi2(r: np.ndarray, *, clip: float | None = CLIP) -> float:
  """Mean r² over every finite pixel of every row of r [N, P] together (|r| > clip left out;
  None: all): the trainer's validation χ² (`validation.paired_metrics`), NaN if no pixel."""
  r = np.asarray(r, np.float64)
  ok = np.isfinite(r)
  if clip is not None:
    ok &= np.abs(np.where(ok, r, 0.0)) <= clip
  return float(np.mean(r[ok] ** 2)) if ok.any() else float("nan")


def mean_resid_per_star(r: np.ndarray) -> np.ndarray:
  """Mean normalized residual [N] of each row of r [N, P] over its finite pixels."""
  r = np.asarray(r, np.float64)
  ok = np.isfinite(r)
  n = ok.sum(axis=1)
  return np.where(n > 0, np.where(ok, r, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def fit_quality(r: np.ndarray) -> dict[str, float]:
  """Summary of one fit method over N stars from their normalized residuals r [N, P]:
  `chi2r` (median over stars of the clipped χ²_R), `chi2r_all` (median, all pixels),
  `mean_norm_resid` (mean over stars of each star's mean residual), `n` (stars with a value)."""
  c = chi2_r_per_star(r)
  return {"chi2r": float(np.nanmedian(c)) if np.isfinite(c).any() else float("nan"),
          "chi2r_all": float(np.nanmedian(chi2_r_per_star(r, clip=None)))
          if np.isfinite(c).any() else float("nan"),
          "mean_norm_resid": nanmean(mean_resid_per_star(r)),
          "n": int(np.isfinite(c).sum())}


def label_errors(y_fit: np.ndarray, y_true: np.ndarray,
                 names: Sequence[str] = LABEL_NAMES) -> dict[str, dict[str, float]]:
  """Fitted − true per label: {name: {"bias", "scatter", "n"}}; y_* [N, len(names)] in
  physical units (K for Teff, dex otherwise); rows with NaN fits are left out per label."""
  d = np.asarray(y_fit, np.float64) - np.asarray(y_true, np.float64)
  out = {}
  for j, name in enumerate(names):
    col = d[:, j]
    out[name] = {**bias_scatter(col), "n": int(np.isfinite(col).sum())}
  return out


