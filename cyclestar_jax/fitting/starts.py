"""Start points of the fits (`FitConfig.starts`), in scaled label space θ ∈ [−0.5, 0.5].

The catalogue labels when given ("catalogue"), the population median ("median": the median of
the catalogue labels given, else the centre of the box) and `n_grid` points of a small (Teff,
log g, [Fe/H]) grid around it ("grid"). A start whose χ² is not finite is retried from the
fallbacks: the median, then the first four grid points. Starts are clipped to |θ| ≤ 0.49 (at
±0.5 the sine's derivative is zero and the label would not move). Held labels (not in
`free_labels`) take the catalogue value, the median when a star has none.
"""

from __future__ import annotations

import numpy as np

from cyclestar_jax.fitting.config import FitConfig
from cyclestar_jax.labels import N_LABELS, label_index, scale_labels

# Order of the grid starts (scaled Teff, log g, [Fe/H] offsets from the median).
GRID = ((-0.25, 0.25, 0.0), (0.25, -0.25, 0.0), (-0.25, -0.25, 0.0), (0.25, 0.25, 0.0),
        (0.0, 0.0, -0.25), (0.0, 0.0, 0.25), (-0.25, 0.25, -0.25), (0.25, -0.25, 0.25))
N_FALLBACK = 5  # retries of a non-finite start: the median, then four grid points
START_CLIP = 0.49  # starts are clipped to |θ| ≤ this (sin' vanishes at ±0.5)


def start_names(cfg: FitConfig) -> tuple[str, ...]:
  """The name of each start column, e.g. ("catalogue", "median", "grid0", ...)."""
  names: list[str] = []
  for kind in cfg.starts:
    names += [f"grid{i}" for i in range(cfg.n_grid)] if kind == "grid" else [kind]
  return tuple(names)


def default_median(y_start: np.ndarray | None, y_min: np.ndarray, y_max: np.ndarray
                   ) -> np.ndarray:
  """The "median" start [n_labels] (physical): median of the finite catalogue rows y_start
  [N, n_labels], else the centre of the box [y_min, y_max]."""
  centre = 0.5 * (np.asarray(y_min, np.float64) + np.asarray(y_max, np.float64))
  if y_start is None:
    return centre
  y_start = np.asarray(y_start, np.float64)
  ok = np.all(np.isfinite(y_start), axis=1)
  return np.median(y_start[ok], axis=0) if ok.any() else centre


def _key_labels(n_lab: int) -> list[int]:
  """Indices of Teff, log g, [Fe/H] (the first three labels of a non-standard emulator)."""
  if n_lab == N_LABELS:
    return [label_index(k) for k in ("Teff", "logg", "Fe_H")]
  return list(range(min(3, n_lab)))


def theta_starts(cfg: FitConfig, y_start: np.ndarray | None, y_median: np.ndarray, n: int,
                 y_min: np.ndarray, y_max: np.ndarray, free: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Start points of n spectra.

  Args:
    cfg: the starts and n_grid, fit_rv.
    y_start: [n, n_labels] physical catalogue labels (NaN rows allowed) or None.
    y_median: [n_labels] physical median start.
    n: spectra.
    y_min, y_max: [n_labels] the emulator's box.
    free: [n_par] 1/0 fitted parameters (n_par = n_labels + fit_rv).

  Returns:
    (theta [n, K, n_par] starts, fallbacks [n, N_FALLBACK, n_par], valid [n, K] bool: the
    start exists, i.e. the catalogue has the star); a radial velocity starts at 0.
  """
  y_min, y_max = np.asarray(y_min), np.asarray(y_max)
  n_lab = len(y_min)
  med = np.clip(scale_labels(y_median, y_min, y_max), -START_CLIP, START_CLIP)
  if y_start is not None:
    cat = scale_labels(y_start, y_min, y_max)
    cat_ok = np.all(np.isfinite(cat), axis=1)
    cat = np.clip(np.where(np.isfinite(cat), cat, med), -START_CLIP, START_CLIP)
  else:
    cat, cat_ok = np.broadcast_to(med, (n, n_lab)), np.zeros(n, bool)
  fixed = np.where(cat_ok[:, None], cat, med)
  key = _key_labels(n_lab)

  def grid_point(i):
    t = np.array(med, np.float64)
    for j, off in zip(key, GRID[i], strict=False):
      t[j] = np.clip(t[j] + off, -START_CLIP, START_CLIP)
    return np.broadcast_to(t, (n, n_lab))

  starts, valid = [], []
  for kind in cfg.starts:
    if kind == "catalogue":
      starts.append(cat)
      valid.append(cat_ok)
    elif kind == "median":
      starts.append(np.broadcast_to(med, (n, n_lab)))
      valid.append(np.ones(n, bool))
    else:
      for i in range(cfg.n_grid):
        starts.append(grid_point(i))
        valid.append(np.ones(n, bool))
  fallback = [np.broadcast_to(med, (n, n_lab))] + [grid_point(i) for i in range(N_FALLBACK - 1)]
  free_lab = np.asarray(free)[:n_lab].astype(bool)
  theta = np.where(free_lab, np.stack(starts, axis=1), fixed[:, None, :])
  fb = np.where(free_lab, np.stack(fallback, axis=1), fixed[:, None, :])
  if cfg.fit_rv:
    theta = np.concatenate([theta, np.zeros(theta.shape[:2] + (1,))], axis=2)
    fb = np.concatenate([fb, np.zeros(fb.shape[:2] + (1,))], axis=2)
  return theta, fb, np.stack(valid, axis=1)
