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
from cyclestar_jax.pipeline import stages
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


def analyse(paths: stages.RunPaths, preset: Preset, world, obs_path: Path,
            emulator_path: Path, model_dir: Path, *, seed: int = 0) -> dict:
  """Derivative spectra → the §4.2 metrics and Figs. 12–14 (module docstring)."""
  em = load_emulator(emulator_path)
  mc = ModelChain(em, load_cycle_model(model_dir))
  removed = lines.removed_features(world)
  pix = mock.masked_pixels(world)
  with h5io.SpectraFile(obs_path) as f:
    n_obs = min(preset.n_eval, f.n("test"))
    x_obs = f.read("test", 0, n_obs).x
    y_obs = f.extra("labels_true", "test", 0, n_obs)
  z_obs = lines.encode_observed(mc, x_obs)
  y = mock.sample_labels(preset.n_fit, rng=seed + 7)
  y = np.clip(y, em.y_min, em.y_max)
  x_true = np.asarray(mock.truth_spectrum(y), np.float32)
  z = lines.zsp_for_labels(y, y_obs, z_obs, em.y_min, em.y_max)
  t0 = time.perf_counter()
  red = lines.reduce_label_sets(
      mc, y, z, {"recovery": lines.recovery_reducer(pix),
                 "attribution": lines.attribution_reducer(removed)}, extras={"x_true": x_true})
  seconds = time.perf_counter() - t0
  rec, att = red["recovery"], red["attribution"]
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
  ref_acc = lines.attribution_accuracy(true, ref_att["predicted"])
  # The mock world's own derivatives: the ceiling of the ranking, and the model's response.
  dw = {k: v[0, N_DROP:] for k, v in mock.derivative_spectra(y_ref[None], world).items()}
  ceiling = lines.attribute_features(dw["d_synth"], dw["d_truth"], removed)
  response = lines.owner_response(ds["d_synth_to_obs"][0] - ds["d_payne"][0],
                                  dw["d_truth"] - dw["d_synth"], removed)
  ranking_check = _ranking_check(true, ref_att, ceiling)
  found = lines.recovered_features(ds["synth_to_obs"][0], ds["payne"][0])
  detection = lines.detection_scores(found, removed)
  n_sens = min(256, len(y))
  sens = lines.zsp_choice_sensitivity(mc, y[:n_sens], y_obs, z_obs,
                                      lines.attribution_reducer(removed))
  x_true_ref = np.asarray(mock.truth_spectrum(y_ref[None]))[0]
  n_lab = min(sensitivity.N_STARS, len(y_obs))
  label_sens = sensitivity.label_sensitivity(mc, y_obs[:n_lab], x_obs[:n_lab], world)
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
      "attribution_accuracy_reference_star": float(ref_acc["accuracy"]),
      "attribution_per_element": per_element,
      "attribution_accuracy_true_derivatives": float(
          lines.attribution_accuracy(true, ceiling["predicted"])["accuracy"]),
      "owner_response_reference_star": response,
      "attribution_reference_star_raw_sums": ranking_check,
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
