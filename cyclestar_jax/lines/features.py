"""Spectral features as pixel ranges: the paper's strong-feature rule, features recovered by the
transfer, and detection scores against the features the mock world removed (paper §4.2).

Coordinates: a `Features` table always holds pixel ranges of the emulator's 7214-pixel APOGEE
grid, end exclusive (a Python slice), like `resources.kurucz_response()`. Functions that read
spectra or derivatives on the networks' 7167 pixels (the grid's pixels 47:) take `offset`
(default `N_DROP` = 47) to place what they find on the 7214 grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cyclestar_jax import labels as _labels
from cyclestar_jax import mock, resources
from cyclestar_jax.resources import N_DROP, N_PIX, N_PIX_NET

# Abundance labels [X/H] (positions 3..22 of the 25): the only candidates for owning a line.
ABUNDANCE_LABELS: tuple[int, ...] = tuple(range(_labels.ABUNDANCE_SLICE.start,
                                                _labels.ABUNDANCE_SLICE.stop))
# Paper §4.2.1: a pixel whose derivative (normalized flux per dex) is below STRONG_PER_DEX marks
# a strong feature; contiguous neighbours below MEMBER_PER_DEX belong to it.
STRONG_PER_DEX = -0.1
MEMBER_PER_DEX = -0.02
# Recovered features: T_synth→obs(Payne(Y)) − Payne(Y) below RECOVERY_THRESHOLD (raw normalized
# flux) somewhere in a run, the run widened to neighbours below RECOVERY_GROW. Why −0.02: five
# times the paper's recovery error of a trained model (0.35–0.41 % of the flux, Table 1), so a
# well-trained transfer's own error rarely crosses it; 2.4 σ of one pixel of a median mock
# observation (S/N 120, σ ≈ 0.008), though the transfer is a denoised model, not one noisy star;
# and shallower than every feature removed at the reference giant (the shallowest is 0.026 deep
# there; −0.03 would miss it). RECOVERY_GROW (a quarter of it) mirrors the paper's 5:1 ratio of
# its two derivative thresholds, so a recovered range covers the line's wings too.
RECOVERY_THRESHOLD = -0.02
RECOVERY_GROW = -0.005


@dataclasses.dataclass(frozen=True)
class Features:
  """A table of F spectral features.

  Attributes:
    start: [F] int, first pixel on the 7214-pixel grid.
    end: [F] int, one past the last pixel (exclusive).
    label: [F] int, position in the 25 labels of the element that owns the feature (3..22), or
      −1 when unknown (features found without an element, e.g. `recovered_features`).
  """

  start: np.ndarray
  end: np.ndarray
  label: np.ndarray

  def __post_init__(self):
    start = np.asarray(self.start, np.int64).reshape(-1)
    end = np.asarray(self.end, np.int64).reshape(-1)
    label = np.broadcast_to(np.asarray(self.label, np.int64), start.shape).copy()
    if end.shape != start.shape or np.any(end < start):
      raise ValueError(f"features need end >= start, same shapes: {start.shape}, {end.shape}")
    object.__setattr__(self, "start", start)
    object.__setattr__(self, "end", end)
    object.__setattr__(self, "label", label)

  def __len__(self) -> int:
    return len(self.start)

  def select(self, keep) -> Features:
    """The features where `keep` [F] (bool or indices) says so."""
    return Features(self.start[keep], self.end[keep], self.label[keep])

  @property
  def element(self) -> list[str]:
    """Element names [F] ("?" for unknown owners)."""
    return [_labels.LABEL_NAMES[j][:-2] if j in ABUNDANCE_LABELS else "?" for j in self.label]

  def network_ranges(self, offset: int = N_DROP, n_pix: int = N_PIX_NET
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) [F] on a grid that starts at pixel `offset` and has `n_pix` pixels (the
    networks' 7167 by default), clipped to it; a feature wholly outside has start == end."""
    start = np.clip(self.start - offset, 0, n_pix)
    return start, np.clip(self.end - offset, start, n_pix)

  def pixel_mask(self, n_pix: int = N_PIX) -> np.ndarray:
    """Boolean [n_pix] union of the features' pixels on the 7214 grid."""
    mask = np.zeros(n_pix, bool)
    for a, b in zip(self.start, self.end, strict=True):
      mask[a:b] = True
    return mask


def kurucz_features() -> Features:
  """The 415 strong features of the real Kurucz responses (`refdata`), owner = [X/H] label."""
  r = resources.kurucz_response()
  return Features(r["feature_start"], r["feature_end"],
                  np.asarray(r["label_index"])[r["feature_element"]])


def removed_features(world) -> Features:
  """The features the mock world removed from its missing-line synthetic domain
  (`mock.removed_features(world)`, a `mock.WorldConfig`), with their owners."""
  r = mock.removed_features(world)
  return Features(r["start"], r["end"], r["label"])


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start, end exclusive) [R] of the runs of contiguous True pixels of `mask` [P]."""
  m = np.concatenate([[False], np.asarray(mask, bool), [False]]).astype(np.int8)
  edges = np.diff(m)
  return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def grow_runs(seed: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start, end) [R] of the contiguous runs of `member | seed` [P] that hold a `seed` pixel."""
  seed = np.asarray(seed, bool)
  start, end = runs(np.asarray(member, bool) | seed)
  c = np.concatenate([[0], np.cumsum(seed)])
  keep = c[end] > c[start]
  return start[keep], end[keep]


def strong_features(jacobian: np.ndarray, *, candidates: tuple[int, ...] = ABUNDANCE_LABELS,
                    strong: float = STRONG_PER_DEX, member: float = MEMBER_PER_DEX,
                    offset: int = N_DROP) -> Features:
  """The paper's strong features of each element in one star's derivative spectra.

  Args:
    jacobian: [P, 25] d flux / d label (normalized flux per dex for abundances), e.g.
      `derivative_spectra(...)["d_payne"][i]` on the 7167 network pixels.
    candidates: labels to search (default the 20 abundances).
    strong, member: the thresholds (per dex) of a feature's seed pixel and of its members.
    offset: the grid pixel of the Jacobian's first pixel (47 on network pixels, 0 on 7214).

  Returns:
    `Features` on the 7214 grid, owner = the label, sorted by start then label. A blend can
    appear once per element that reaches the seed threshold.
  """
  jac = np.asarray(jacobian)
  out = []
  for j in candidates:
    s, e = grow_runs(jac[:, j] < strong, jac[:, j] < member)
    out.append((s + offset, e + offset, np.full(len(s), j)))
  start, end, label = (np.concatenate(v) for v in zip(*out, strict=True))
  order = np.lexsort((label, start))
  return Features(start[order], end[order], label[order])


def recovered_features(x_synth_to_obs: np.ndarray, x_payne: np.ndarray, *,
                       threshold: float = RECOVERY_THRESHOLD, grow: float = RECOVERY_GROW,
                       offset: int = N_DROP) -> Features:
  """Features the transfer added: runs where T_synth→obs(Payne(Y)) − Payne(Y) < `threshold`.

  Args:
    x_synth_to_obs, x_payne: [P] raw normalized flux of one star on the same pixels (the 7167
      network pixels by default).
    threshold: flux difference a run must reach (default −0.02, see `RECOVERY_THRESHOLD`).
    grow: the run is widened to contiguous pixels with a difference below this.
    offset: the grid pixel of the inputs' first pixel.

  Returns:
    `Features` on the 7214 grid with unknown owner (label −1).
  """
  diff = np.asarray(x_synth_to_obs) - np.asarray(x_payne)
  s, e = grow_runs(diff < threshold, diff < grow)
  return Features(s + offset, e + offset, -1)


def overlaps(a: Features, b: Features) -> np.ndarray:
  """Boolean [len(a), len(b)]: whether the pixel ranges share at least one pixel."""
  return (a.start[:, None] < b.end[None, :]) & (b.start[None, :] < a.end[:, None])


def detection_scores(found: Features, truth: Features) -> dict:
  """Precision and recall of found features against true ones, by overlap of pixel ranges.

  A found feature is a true positive if it overlaps any true feature (precision = their share
  of the found ones); a true feature is recovered if any found feature overlaps it (recall =
  their share of the true ones). NaN where a denominator is zero.

  Returns:
    {"precision", "recall", "n_found", "n_truth", "n_true_positive", "n_recovered",
    "recovered": bool [len(truth)], "spurious": bool [len(found)]}.
  """
  ov = overlaps(found, truth)
  hit, recovered = ov.any(axis=1), ov.any(axis=0)
  return {
      "precision": float(hit.mean()) if len(found) else float("nan"),
      "recall": float(recovered.mean()) if len(truth) else float("nan"),
      "n_found": len(found), "n_truth": len(truth), "n_true_positive": int(hit.sum()),
      "n_recovered": int(recovered.sum()), "recovered": recovered, "spurious": ~hit,
  }
