"""Which element owns each recovered feature (paper §4.2.2, Fig. 12, 14).

For a feature f (pixels p ∈ f) and an abundance label j, the attribution is the derivative
difference summed over the feature,

    A_fj = Σ_{p ∈ f} ΔD_pj,   ΔD = ∂T_synth→obs(Payne(Y))/∂Y − ∂Payne(Y)/∂Y   (per dex),

negative when the line the transfer added deepens with the abundance. Ranking labels by raw A_fj
lets labels that change many lines a little win everywhere: O (through CO: more O locks C into
CO, and the network may spread that over every molecular band) and the electron donors Mg, Si,
Fe (every line weakens through the continuum opacity). So labels are ranked by

    S_fj = (A_fj / n_f) / max(b_j, floor),   b_j = median_p |ΔD_pj| over the whole spectrum,

the feature's mean difference in units of the label's own typical per-pixel difference (a
signal-to-background ratio). A label that responds a little everywhere has a large b_j, so a
feature must stand out from its background to count for it; a label that owns few lines has
b_j ≈ 0 outside them. The median rather than a mean or rms: a label's own missing lines are what
we look for and cover a small share of the 7167 pixels, so they do not inflate its background
(an rms would penalize Fe or C for owning many missing lines). It is the difference's background,
not the derivative's: the lines both models share cancel. The floor (default 2e-3 per dex, a
tenth of the paper's −0.02 per dex membership threshold) keeps labels with essentially no
response (b_j at the network's numerical noise) from turning noise into large scores; where
every b_j is below it, the ranking is that of the raw sums. Candidates are the 20 abundances
only (not Teff, log g, vturb, C12/C13, vmacro). Labels are ranked most negative S first; the
first is the predicted element. C and N (molecular, degenerate, Fig. 14) are scored apart:
`attribution_accuracy` counts them in a C/N confusion table (`cn_confusion`), not in the
accuracy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cyclestar_jax import labels as _labels
from cyclestar_jax.lines.derivatives import Reducer
from cyclestar_jax.lines.features import ABUNDANCE_LABELS, Features
from cyclestar_jax.lines.recovery import TeffLoggBins

BACKGROUND_FLOOR = 2e-3  # per dex: floor of a label's background b_j
C_LABEL, N_LABEL = _labels.label_index("C_H"), _labels.label_index("N_H")
CN_LABELS = (C_LABEL, N_LABEL)


def feature_sums(values: jax.Array, start: jax.Array, end: jax.Array) -> jax.Array:
  """Σ over each feature's pixels: values [..., P, C], start/end [F] (pixels of this grid, end
  exclusive) → [..., F, C], by a cumulative sum (O(P) however many features)."""
  c = jnp.cumsum(values, axis=-2)
  c = jnp.concatenate([jnp.zeros_like(c[..., :1, :]), c], axis=-2)
  return jnp.take(c, end, axis=-2) - jnp.take(c, start, axis=-2)


@functools.partial(jax.jit, static_argnames=("candidates", "floor"))
def attribution_scores(d_payne: jax.Array, d_synth_to_obs: jax.Array, start: jax.Array,
                       end: jax.Array, *, candidates: tuple[int, ...] = ABUNDANCE_LABELS,
                       floor: float = BACKGROUND_FLOOR) -> dict[str, jax.Array]:
  """Attributions and ranking scores (module docstring) of features in derivative spectra.

  Args:
    d_payne, d_synth_to_obs: [..., P, 25] derivatives per physical unit on the same P pixels.
    start, end: [F] feature ranges on those pixels (`Features.network_ranges`).
    candidates: the C label positions that may own a feature.
    floor: floor of the background b_j (per dex).

  Returns:
    {"attribution": A [..., F, C] (per dex, summed over pixels), "score": S [..., F, C]
    (dimensionless; 0 for features with no pixels), "background": b [..., C] (per dex)}.
  """
  delta = (d_synth_to_obs - d_payne)[..., jnp.asarray(candidates)]
  attr = feature_sums(delta, start, end)
  background = jnp.median(jnp.abs(delta), axis=-2)
  n_f = (end - start).astype(delta.dtype)
  score = attr / jnp.maximum(n_f, 1.0)[:, None] / jnp.maximum(background, floor)[..., None, :]
  return {"attribution": attr, "score": score, "background": background}


def rank_labels(score: np.ndarray, candidates: tuple[int, ...] = ABUNDANCE_LABELS) -> np.ndarray:
  """Label positions [..., F, C] of each feature's candidates, most negative score first."""
  return np.asarray(candidates)[np.argsort(np.asarray(score), axis=-1, kind="stable")]


def attribute_features(d_payne: np.ndarray, d_synth_to_obs: np.ndarray, features: Features, *,
                       candidates: tuple[int, ...] = ABUNDANCE_LABELS,
                       floor: float = BACKGROUND_FLOOR) -> dict[str, np.ndarray]:
  """Attribute features in full derivative spectra of a few stars (`derivative_spectra`).

  Args:
    d_payne, d_synth_to_obs: [..., 7167, 25] on the network pixels.
    features: the features (7214 grid; parts outside the network pixels are dropped).

  Returns:
    `attribution_scores`' arrays as NumPy, plus "ranking" [..., F, C] (label positions, most
    negative score first), "predicted" [..., F] (its first column; −1 for a feature with no
    pixel on these pixels) and "predicted_raw_sums" [..., F] (the winner by the raw sums A, no
    background: where it differs from "predicted", the model's attribution is ambiguous).
  """
  start, end = features.network_ranges(n_pix=np.shape(d_payne)[-2])
  out = attribution_scores(jnp.asarray(d_payne), jnp.asarray(d_synth_to_obs), jnp.asarray(start),
                           jnp.asarray(end), candidates=candidates, floor=floor)
  out = {k: np.asarray(v) for k, v in out.items()}
  out["ranking"] = rank_labels(out["score"], candidates)
  out["predicted"] = np.where(end == start, -1, out["ranking"][..., 0])
  out["predicted_raw_sums"] = np.where(end == start, -1,
                                       rank_labels(out["attribution"], candidates)[..., 0])
  return out


def _weighted_sum(v: jax.Array, x: jax.Array) -> jax.Array:
  """Σ_b v_b x_b: v [b], x [b, ...] (elementwise, not a matmul: exact float32 on any device)."""
  return jnp.sum(v.reshape(-1, *([1] * (x.ndim - 1))) * x, axis=0)


def attribution_reducer(features: Features, *, candidates: tuple[int, ...] = ABUNDANCE_LABELS,
                        floor: float = BACKGROUND_FLOOR, bins: TeffLoggBins | None = None,
                        keep_scores: bool = False) -> Reducer:
  """A `Reducer` attributing every feature in every label set, on the devices.

  Args:
    features: F features (7214 grid), with their true owners in `label` for the accuracy (−1
      where unknown: those count in no accuracy).
    candidates, floor: as `attribution_scores`.
    bins: Teff–log g bins of the per-bin accuracy (default `TeffLoggBins()`).
    keep_scores: also return S [N, F, C] per label set (4 bytes × N·F·C: only for small N).

  Returns:
    A reducer whose result holds "n" (label sets), "mean_attribution" and "mean_score"
    [F, C], "win_fraction" [F, C] (share of label sets where the label ranks first),
    "predicted" [F] (the most frequent winner), "feature_accuracy" [F] (share of label sets
    won by the true owner), "winner" [N, F] (label positions; −1 for features with no pixel on
    the network pixels, which count in no accuracy), "score" [N, F, C] with
    keep_scores, "candidates", "bins", and `attribution_accuracy`'s summary over all (label set,
    feature) pairs ("accuracy", "n_scored", "cn_confusion", ...) with "binned_accuracy"
    [n_teff, n_logg] (non-C/N features; NaN for empty bins).
  """
  bins = TeffLoggBins() if bins is None else bins
  cand = np.asarray(candidates)
  true = np.asarray(features.label)
  scored = jnp.asarray((true >= 0) & ~np.isin(true, CN_LABELS))  # features in the accuracy
  true_j = jnp.asarray(true)

  def fn(batch):
    start, end = features.network_ranges(n_pix=batch["d_payne"].shape[-2])  # at trace time
    s = attribution_scores(batch["d_payne"], batch["d_synth_to_obs"], jnp.asarray(start),
                           jnp.asarray(end), candidates=candidates, floor=floor)
    v = batch["valid"]
    empty = jnp.asarray(end == start)  # features wholly outside these pixels: no winner (−1)
    win = jnp.argmin(s["score"], axis=-1)  # [b, F] candidate index
    winner = jnp.where(empty[None], -1, jnp.asarray(cand)[win])
    scored_f = scored & ~empty
    correct = (winner == true_j[None]) & scored_f[None]
    seg = bins.index(batch["y"])
    sums = {
        "n": v.sum(),
        "attr": _weighted_sum(v, s["attribution"]),
        "score": _weighted_sum(v, s["score"]),
        "wins": _weighted_sum(v, jax.nn.one_hot(win, len(cand), dtype=v.dtype)),
        "bin_correct": jax.ops.segment_sum(v * correct.sum(-1), seg, bins.n_bins + 1),
        "bin_n": jax.ops.segment_sum(v, seg, bins.n_bins + 1),
        "bin_pairs": jax.ops.segment_sum(v * scored_f.sum(), seg, bins.n_bins + 1),
    }
    rows = {"winner": winner.astype(jnp.int8)}
    if keep_scores:
      rows["score"] = s["score"]
    return sums, rows

  def finalize(sums, rows):
    n = float(sums["n"])
    win_frac = sums["wins"] / max(n, 1.0)
    bin_acc = np.full(bins.n_bins, np.nan)
    filled = sums["bin_pairs"][:-1] > 0
    bin_acc[filled] = sums["bin_correct"][:-1][filled] / sums["bin_pairs"][:-1][filled]
    column = {int(j): i for i, j in enumerate(cand)}
    feat_acc = np.array([win_frac[f, column[t]] if t in column else np.nan
                         for f, t in enumerate(true.tolist())])
    winners = np.asarray(rows["winner"], np.int64)
    known = np.where((winners < 0).any(axis=0), -1, true)  # empty features count nowhere
    out = {"n": int(n), "candidates": cand, "bins": bins,
           "mean_attribution": sums["attr"] / max(n, 1.0),
           "mean_score": sums["score"] / max(n, 1.0),
           "win_fraction": win_frac, "predicted": cand[np.argmax(sums["wins"], axis=-1)],
           "feature_accuracy": feat_acc, "winner": winners,
           "binned_accuracy": bin_acc.reshape(bins.shape),
           **attribution_accuracy(known, winners)}
    if keep_scores:
      out["score"] = np.asarray(rows["score"])
    return out

  return Reducer(fn=fn, finalize=finalize, needs_jacobians=True)


def cn_confusion(true_labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
  """C/N confusion counts [2, 3]: rows true C, true N; columns predicted C, N, other.

  Args:
    true_labels: [F] owner label positions.
    predicted: [..., F] predicted label positions (one star, or [N, F] over label sets).
  """
  true = np.broadcast_to(np.asarray(true_labels), np.shape(predicted))
  pred = np.asarray(predicted)
  table = np.zeros((2, 3), np.int64)
  for i, t in enumerate(CN_LABELS):
    p = pred[true == t]
    table[i] = [(p == C_LABEL).sum(), (p == N_LABEL).sum(), (~np.isin(p, CN_LABELS)).sum()]
  return table


def attribution_accuracy(true_labels: np.ndarray, predicted: np.ndarray) -> dict:
  """Fig. 12's accuracy: share of features (× label sets) attributed to their true element.

  C and N features are left out of "accuracy" and counted in "cn_confusion" (Fig. 14); features
  with unknown owner (−1) count nowhere.

  Args:
    true_labels: [F] owner label positions.
    predicted: [..., F] predicted label positions.

  Returns:
    {"accuracy" (NaN if nothing scored), "n_scored", "n_correct", "cn_confusion" [2, 3]
    (`cn_confusion`), "cn_group_accuracy" (share of C/N features predicted as C or N)}.
  """
  true = np.broadcast_to(np.asarray(true_labels), np.shape(predicted))
  pred = np.asarray(predicted)
  scored = (true >= 0) & ~np.isin(true, CN_LABELS)
  n, n_ok = int(scored.sum()), int((pred[scored] == true[scored]).sum())
  table = cn_confusion(true_labels, predicted)
  n_cn = int(table.sum())
  return {"accuracy": n_ok / n if n else float("nan"), "n_scored": n, "n_correct": n_ok,
          "cn_confusion": table,
          "cn_group_accuracy": float(table[:, :2].sum() / n_cn) if n_cn else float("nan")}


def owner_response(delta_model: np.ndarray, delta_true: np.ndarray, features: Features, *,
                   candidates: tuple[int, ...] = ABUNDANCE_LABELS) -> dict[str, dict]:
  """How strongly the model's added lines respond to their owner, against the truth.

  For each feature f and candidate j, R_fj = Σ_{p ∈ f} ΔD_pj (the attribution A of the module
  docstring) of the model and of the truth (e.g. the mock world's exact derivatives,
  `mock.derivative_spectra`: ΔD = ∂truth/∂Y − ∂synthetic/∂Y). Summarized per owner element
  over its features (medians).

  Args:
    delta_model, delta_true: [P, 25] derivative differences (per physical unit) on the pixels
      of `features.network_ranges(P)`.
    features: the features, with owners in `label` (−1: skipped).
    candidates: the labels compared.

  Returns:
    {element label name: {"n_features", "own_model", "own_truth" (median R of the owner, per
    dex), "own_ratio" (own_model / own_truth), "top_model", "top_truth" (the candidate of most
    negative median R), "top_model_value"}}.
  """
  start, end = features.network_ranges(n_pix=np.shape(delta_model)[-2])
  cand = np.asarray(candidates)
  r_m = np.asarray(feature_sums(jnp.asarray(delta_model)[:, cand], jnp.asarray(start),
                                jnp.asarray(end)))
  r_t = np.asarray(feature_sums(jnp.asarray(delta_true)[:, cand], jnp.asarray(start),
                                jnp.asarray(end)))
  out = {}
  for j in sorted(set(np.asarray(features.label).tolist()) - {-1}):
    rows = (np.asarray(features.label) == j) & (end > start)
    if not rows.any() or j not in cand:
      continue
    k = int(np.flatnonzero(cand == j)[0])
    med_m, med_t = np.median(r_m[rows], axis=0), np.median(r_t[rows], axis=0)
    out[_labels.LABEL_NAMES[j]] = {
        "n_features": int(rows.sum()), "own_model": float(med_m[k]), "own_truth": float(med_t[k]),
        "own_ratio": float(med_m[k] / med_t[k]) if med_t[k] != 0 else float("nan"),
        "top_model": _labels.LABEL_NAMES[int(cand[np.argmin(med_m)])],
        "top_model_value": float(med_m.min()),
        "top_truth": _labels.LABEL_NAMES[int(cand[np.argmin(med_t)])]}
  return out
