"""Paper Fig. 12 for one reference star: which lines the transfer added, and whose they are."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cyclestar_jax.lines.attribution import (
    BACKGROUND_FLOOR,
    attribute_features,
    attribution_accuracy,
)
from cyclestar_jax.lines.features import (
    ABUNDANCE_LABELS,
    RECOVERY_GROW,
    RECOVERY_THRESHOLD,
    Features,
    detection_scores,
    overlaps,
    recovered_features,
    strong_features,
)
from cyclestar_jax.resources import N_DROP


def identify_lines(spectra: Mapping[str, np.ndarray], removed: Features, *, star: int = 0,
                   threshold: float = RECOVERY_THRESHOLD, grow: float = RECOVERY_GROW,
                   candidates: tuple[int, ...] = ABUNDANCE_LABELS,
                   floor: float = BACKGROUND_FLOOR) -> dict:
  """Line identification for one star of `derivative_spectra`' output.

  Args:
    spectra: `derivative_spectra(chain, y, z_sp)` ("payne", "synth_to_obs" [n, P], "d_payne",
      "d_synth_to_obs" [n, P, 25], P = 7167 network pixels).
    removed: the features the synthetic domain lacks, with owners (`removed_features(world)`).
    star: which row of `spectra`.
    threshold, grow: of `recovered_features`.
    candidates, floor: of `attribute_features`.

  Returns:
    {"strong_payne", "strong_synth_to_obs": the paper's strong features of each element in
    either model's derivatives (`strong_features`); "recovered": features the transfer added
    (`recovered_features`); "detection": `detection_scores(recovered, removed)`;
    "removed_attribution": `attribute_features` on the removed features' own pixel ranges with
    `attribution_accuracy` as "accuracy"; "recovered_attribution": the same on the recovered
    ranges, each recovered feature's owner taken from the removed feature it overlaps most
    ("owner" [R], −1 for spurious ones)}.
  """
  d_p, d_so = spectra["d_payne"][star], spectra["d_synth_to_obs"][star]
  x_p, x_so = spectra["payne"][star], spectra["synth_to_obs"][star]
  found = recovered_features(x_so, x_p, threshold=threshold, grow=grow, offset=N_DROP)
  on_removed = attribute_features(d_p, d_so, removed, candidates=candidates, floor=floor)
  on_removed["accuracy"] = attribution_accuracy(removed.label, on_removed["predicted"])
  on_found = attribute_features(d_p, d_so, found, candidates=candidates, floor=floor)
  owner = _best_overlap_owner(found, removed)
  on_found["owner"] = owner
  on_found["accuracy"] = attribution_accuracy(owner, on_found["predicted"])
  return {"strong_payne": strong_features(d_p, candidates=candidates, offset=N_DROP),
          "strong_synth_to_obs": strong_features(d_so, candidates=candidates, offset=N_DROP),
          "recovered": found, "detection": detection_scores(found, removed),
          "removed_attribution": on_removed, "recovered_attribution": on_found}


def _best_overlap_owner(found: Features, truth: Features) -> np.ndarray:
  """Owner [len(found)] of the true feature each found one shares most pixels with (−1: none)."""
  if not len(found) or not len(truth):
    return np.full(len(found), -1)
  shared = (np.minimum(found.end[:, None], truth.end[None]) -
            np.maximum(found.start[:, None], truth.start[None]))
  shared = np.where(overlaps(found, truth), shared, 0)
  best = np.argmax(shared, axis=1)
  return np.where(shared.max(axis=1) > 0, truth.label[best], -1)
