"""The line-identification job's analysis (paper §4.2): derivative spectra of many label sets,
reduced on the devices → recovery errors, attributions, detections (metrics.json's numbers) and
Figs. 12–14.

Label sets: drawn from the mock's population (`mock.sample_labels`), each with its true
noise-free spectrum for the recovery error; their z_sp is that of the observed test star
nearest in (Teff, log g, [Fe/H]) (`lines.DEFAULT_ZSP`), and the report shows how little the
attributions move with the mean z_sp instead. The reference star is a solar K giant
(Teff 4750 K, log g 2.5, all [X/H] 0).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from cyclestar_jax import h5io, lines, mock, plots, sensitivity
from cyclestar_jax.chain import ModelChain
from cyclestar_jax.emulator import load_emulator
from cyclestar_jax.fitting import load_cycle_model
from cyclestar_jax.labels import LABEL_NAMES, abundance_fe_correlation, label_index
from cyclestar_jax.pipeline import curve, stages
from cyclestar_jax.pipeline.presets import Preset
from cyclestar_jax.resources import N_DROP, wavelength

REFERENCE_STAR = {"Teff": 4750.0, "logg": 2.5, "vturb": 1.5, "C12_C13": 15.0, "vmacro": 5.0}
NEAR_REFERENCE = (250.0, 0.3)  # label sets within ±ΔTeff K and ±Δlog g dex count as "near"
FIG12_ELEMENTS = ("Mg_H", "Si_H", "Fe_H", "C_H")


def reference_labels(y_median: np.ndarray) -> np.ndarray:
  """The solar K giant [25]: REFERENCE_STAR's values, every [X/H] 0 ([Fe/H] 0)."""
  y = np.array(y_median, np.float64)
  for j, name in enumerate(LABEL_NAMES):
    if name.endswith("_H"):
      y[j] = 0.0
  for k, v in REFERENCE_STAR.items():
    y[label_index(k)] = v
  return y


def label_sets(n: int, em, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """n label sets [n, 25] drawn from the mock's population (clipped to the emulator's box) and
  their true noise-free spectra [n, 7214]."""
  y = np.clip(mock.sample_labels(n, rng=seed + 7), em.y_min, em.y_max)
  return y, np.asarray(mock.truth_spectrum(y), np.float32)


def model_analysis(mc: ModelChain, world, x_obs: np.ndarray, y_obs: np.ndarray, y: np.ndarray,
                   x_true: np.ndarray, *, progress: bool = False) -> dict:
  """The §4.2 numbers of one trained model: recovery errors and attributions over the label sets
  y [n, 25] (true spectra x_true [n, 7214]), and the reference star's derivative spectra and
  attribution against the mock world's own derivatives.

  Args:
    mc: the emulator and the trained Cycle-StarNet.
    world: the mock world (missing-line mode).
    x_obs, y_obs: [m, 7214] observed test spectra and [m, 25] their true labels (each label
      set takes the z_sp of the nearest, `lines.zsp_for_labels`).
    y, x_true: the label sets and their true spectra (`label_sets`).
    progress: a progress bar over the label sets' derivatives.

  Returns:
    {"rec", "att" (the reducers' outputs), "seconds" (of the reduction), "near" [n] bool,
    "per_element", "z_obs", "y_ref", "ds" (the reference star's derivative spectra), "ref_att",
    "ref_acc", "ceiling" (the ranking on the world's derivatives), "response"
    (`lines.owner_response`), "ranking_check"}.
  """
  em = mc.emulator
  removed = lines.removed_features(world)
  pix = mock.masked_pixels(world)
  z_obs = lines.encode_observed(mc, x_obs)
  z = lines.zsp_for_labels(y, y_obs, z_obs, em.y_min, em.y_max)
  t0 = time.perf_counter()
  red = lines.reduce_label_sets(
      mc, y, z, {"recovery": lines.recovery_reducer(pix),
                 "attribution": lines.attribution_reducer(removed)}, extras={"x_true": x_true},
      progress=progress)
  seconds = time.perf_counter() - t0
  att = red["attribution"]
  # Near the reference star, and the reference star itself.
  y_ref = reference_labels(np.median(y, axis=0))
  near = ((np.abs(y[:, label_index("Teff")] - y_ref[label_index("Teff")]) <= NEAR_REFERENCE[0])
          & (np.abs(y[:, label_index("logg")] - y_ref[label_index("logg")]) <= NEAR_REFERENCE[1]))
  true = removed.label
  per_element = {}
  on_grid = (att["winner"] >= 0).all(axis=0) if len(y) else np.ones(len(true), bool)
  for j in sorted(set(true.tolist())):
    cols = (true == j) & on_grid  # features inside the 47 dropped pixels count nowhere
    w = att["winner"][:, cols]
    wn = att["winner"][near][:, cols]
    per_element[LABEL_NAMES[j]] = {
        "n_features": int(cols.sum()), "accuracy_all": float(np.mean(w == j)),
        "accuracy_near_reference": float(np.mean(wn == j)) if len(wn) else float("nan")}
  z_ref = lines.zsp_for_labels(y_ref[None], y_obs, z_obs, em.y_min, em.y_max)
  ds = lines.derivative_spectra(mc, y_ref[None], z_ref)
  ref_att = lines.attribute_features(ds["d_payne"][0], ds["d_synth_to_obs"][0], removed)
  # The mock world's own derivatives: the ceiling of the ranking, and the model's response.
  dw = {k: v[0, N_DROP:] for k, v in mock.derivative_spectra(y_ref[None], world).items()}
  ceiling = lines.attribute_features(dw["d_synth"], dw["d_truth"], removed)
  return {
      "rec": red["recovery"], "att": att, "seconds": seconds, "near": near,
      "per_element": per_element, "z_obs": z_obs, "y_ref": y_ref, "ds": ds,
      "ref_att": ref_att, "ref_acc": lines.attribution_accuracy(true, ref_att["predicted"]),
      "ceiling": ceiling,
      "response": lines.owner_response(ds["d_synth_to_obs"][0] - ds["d_payne"][0],
                                       dw["d_truth"] - dw["d_synth"], removed),
      "ranking_check": _ranking_check(true, ref_att, ceiling)}


def curve_row(mc: ModelChain, world, x_obs: np.ndarray, y_obs: np.ndarray, y: np.ndarray,
              x_true: np.ndarray) -> dict[str, float]:
  """The line-identification numbers of one checkpoint, for the curve along the training
  (`benchmarks.line_curve`): `model_analysis`'s recovery errors (%), attribution accuracies
  (pooled, Fe's, the reference star's by both rankings) and Fe's owner response (the added Fe
  lines' median response to [Fe/H] over the truth's), and the label gains of
  `pipeline.curve.gains_row` on the first `curve.N_CURVE_STARS` observed stars."""
  a = model_analysis(mc, world, x_obs, y_obs, y, x_true)
  rec, fe = a["rec"], a["per_element"].get("Fe_H", {})
  n = curve.N_CURVE_STARS
  return {
      "recovery_error_pct": float(rec["recovered"]),
      "no_recovery_error_pct": float(rec["no_recovery"]),
      "attribution_accuracy": float(a["att"]["accuracy"]),
      "attribution_fe": float(fe.get("accuracy_all", float("nan"))),
      "attribution_reference_star": float(a["ref_acc"]["accuracy"]),
      "attribution_reference_star_fe_raw_sums": float(a["ranking_check"]["fe_accuracy"]),
      "fe_own_response_ratio": float(a["response"].get("Fe_H", {}).get("own_ratio", float("nan"))),
      **curve.gains_row(mc.emulator, mc.cycle, x_obs[:n], y_obs[:n], world)}


def analyse(paths: stages.RunPaths, preset: Preset, world, obs_path: Path,
            emulator_path: Path, model_dir: Path, *, seed: int = 0,
            progress: bool = False) -> dict:
  """Derivative spectra → the §4.2 metrics and Figs. 12–14 (module docstring)."""
  em = load_emulator(emulator_path)
  mc = ModelChain(em, load_cycle_model(model_dir))
  removed = lines.removed_features(world)
  with h5io.SpectraFile(obs_path) as f:
    n_obs = min(preset.n_eval, f.n("test"))
    x_obs = f.read("test", 0, n_obs).x
    y_obs = f.extra("labels_true", "test", 0, n_obs)
  y, x_true = label_sets(preset.n_fit, em, seed)
  a = model_analysis(mc, world, x_obs, y_obs, y, x_true, progress=progress)
  rec, att, near, ds, ref_att = a["rec"], a["att"], a["near"], a["ds"], a["ref_att"]
  true = removed.label
  found = lines.recovered_features(ds["synth_to_obs"][0], ds["payne"][0])
  detection = lines.detection_scores(found, removed)
  n_sens = min(256, len(y))
  sens = lines.zsp_choice_sensitivity(mc, y[:n_sens], y_obs, a["z_obs"],
                                      lines.attribution_reducer(removed))
  x_true_ref = np.asarray(mock.truth_spectrum(a["y_ref"][None]))[0]
  n_lab = min(sensitivity.N_STARS, len(y_obs))
  label_sens = sensitivity.label_sensitivity(mc, y_obs[:n_lab], x_obs[:n_lab], world)
  seconds = a["seconds"]
  metrics = {
      "n_label_sets": int(len(y)), "derivative_seconds": seconds,
      "label_sets_per_s": len(y) / seconds, "device": str(jax.devices()[0]),
      "n_removed_features": int(len(removed)),
      "recovery_error_pct": float(rec["recovered"]),
      "no_recovery_error_pct": float(rec["no_recovery"]),
      "recovery_ratio": float(rec["recovered"] / rec["no_recovery"]),
      "recovery_error_binned_pct": np.asarray(rec["recovered_binned"]).tolist(),
      "no_recovery_error_binned_pct": np.asarray(rec["no_recovery_binned"]).tolist(),
      "bins": {"teff_edges": list(rec["bins"].teff_edges),
               "logg_edges": list(rec["bins"].logg_edges)},
      "attribution_accuracy": float(att["accuracy"]),
      "attribution_accuracy_near_reference": _pooled(att["winner"][near], true),
      "attribution_accuracy_reference_star": float(a["ref_acc"]["accuracy"]),
      "attribution_per_element": a["per_element"],
      "attribution_accuracy_true_derivatives": float(
          lines.attribution_accuracy(true, a["ceiling"]["predicted"])["accuracy"]),
      "owner_response_reference_star": a["response"],
      "attribution_reference_star_raw_sums": a["ranking_check"],
      "abundance_fe_correlation": abundance_fe_correlation(y),
      "cn_confusion": np.asarray(att["cn_confusion"]).tolist(),
      "cn_confusion_rows_cols": "rows: true C, true N; columns: predicted C, N, other",
      "cn_group_accuracy": float(att["cn_group_accuracy"]),
      "detection": {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist())
                    for k, v in detection.items()},
      "recovery_threshold": float(lines.RECOVERY_THRESHOLD),
      "zsp_choice": lines.DEFAULT_ZSP,
      "zsp_sensitivity": {k: v for k, v in sens.items() if k not in ("results",)},
      "n_near_reference": int(near.sum()),
      "label_sensitivity": label_sens,
  }
  figs = _figures(paths, ds, x_true_ref, removed, ref_att, rec, metrics)
  metrics["figures"] = [str(Path(p).relative_to(paths.out)) for p in figs]
  return metrics


def _ranking_check(true: np.ndarray, model: dict, truth: dict) -> dict:
  """The reference star's attribution by raw sums against the background-normalized ranking
  (`lines.attribute_features`' "predicted_raw_sums" and "predicted"), for the model and the
  world's own derivatives. Non-C/N features only."""
  fe = label_index("Fe_H")
  scored = (true >= 0) & ~np.isin(true, lines.CN_LABELS) & (model["predicted"] >= 0)
  p, r = model["predicted"][scored], model["predicted_raw_sums"][scored]
  t = true[scored]
  agree = p == r
  return {
      "accuracy": float(lines.attribution_accuracy(true, model["predicted_raw_sums"])["accuracy"]),
      "fe_accuracy": float(np.mean(r[t == fe] == fe)) if (t == fe).any() else float("nan"),
      "fe_accuracy_normalized": (float(np.mean(p[t == fe] == fe)) if (t == fe).any()
                                 else float("nan")),
      "agreement": float(np.mean(agree)) if len(t) else float("nan"),
      "accuracy_where_agree": float(np.mean(p[agree] == t[agree])) if agree.any() else float("nan"),
      "true_derivatives_accuracy": float(
          lines.attribution_accuracy(true, truth["predicted_raw_sums"])["accuracy"])}


def _pooled(winner: np.ndarray, true: np.ndarray) -> float:
  """Accuracy over (label set, feature) pairs, C and N left out."""
  if len(winner) == 0:
    return float("nan")
  return float(lines.attribution_accuracy(true, winner)["accuracy"])


def _figures(paths, ds, x_true_ref, removed, ref_att, rec, m) -> list[str]:
  """Figs. 12–14 in paths.figures: the reference star's derivative spectra `ds` (batch of 1,
  network pixels), the recovery map of `rec`, the C/N features with m's confusion table;
  returns their paths."""
  fig = paths.figures
  fig.mkdir(parents=True, exist_ok=True)
  wave = wavelength()[N_DROP:]
  diff = ds["d_synth_to_obs"][0] - ds["d_payne"][0]  # [7167, 25]
  star = plots.LineStar(ds["payne"][0], ds["synth_to_obs"][0], x_true_ref[N_DROP:], diff)
  out = [plots.fig_line_identification(
      wave, star, removed, fig / "fig12_line_identification.png",
      elements=FIG12_ELEMENTS, title="solar K giant (Teff 4750 K, log g 2.5, [X/H] = 0)")]
  out.append(plots.fig_recovery_map(
      np.asarray(rec["recovered_binned"]), np.asarray(rec["no_recovery_binned"]),
      rec["bins"].teff_edges, rec["bins"].logg_edges, fig / "fig13_recovery_map.png"))
  cn = removed.select(np.isin(removed.label, [label_index("C_H"), label_index("N_H")]))
  out.append(plots.fig_cn_features(
      wave, diff, cn, fig / "fig14_cn_features.png",
      confusion=np.asarray(m["cn_confusion"])))
  return out
