"""The main job's evaluation (paper §4.1.2–4.1.5, docs/metrics_and_figures.md): every number of
metrics.json and every figure, from the run folder's stages.

Domains and pixels: reconstruction statistics on the first `n_eval` test spectra of each domain
(the networks' 7167 pixels); fit statistics on the `n_fit` fitted test stars, each method's
best model against the observed spectrum on the same 7167 pixels with the observed errors
(floored at 0.005, pixels with error > 0.05 or flagged left out), except Eq. 10, which is
compared in the synthetic domain (x_obs→synth against Payne(y), error 0.005 everywhere).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cyclestar_jax import chain, fitting, h5io, metrics, mock, plots, sensitivity
from cyclestar_jax.chunks import map_chunks
from cyclestar_jax.data import observed_errors
from cyclestar_jax.emulator import load_emulator
from cyclestar_jax.labels import LABEL_NAMES, label_index
from cyclestar_jax.metrics_log import elapsed_by_step, read_metrics
from cyclestar_jax.pipeline import curve
from cyclestar_jax.pipeline.stages import FIT_METHODS, FIT_TITLES, RunPaths
from cyclestar_jax.resources import ERROR_FLOOR, ERROR_MASK_THRESHOLD, N_DROP, wavelength
from cyclestar_jax.validation import decide_paired_val

MOCK_FLOOR_CHI2 = 1.24  # χ²_R of the instrument's own noise-free spectrum (docs/mock_world.md)
KEY_LABELS = ("Teff", "logg", "Fe_H")


def _observed_weights(sp) -> tuple[np.ndarray, np.ndarray]:
  """(σ floored, good mask) of observed spectra on the 7167 network pixels."""
  err, good = observed_errors(sp.x_err, sp.x_msk, error_floor=ERROR_FLOOR,
                                 error_mask_threshold=ERROR_MASK_THRESHOLD)
  return err[:, N_DROP:], good[:, N_DROP:]


CHUNK = 64  # spectra per jitted call of the evaluation


def reconstructions(cycle, x_synth: np.ndarray, x_obs: np.ndarray) -> dict[str, np.ndarray]:
  """Raw-flux reconstructions [N, 7167] of paired-in-position test batches of both domains:
  `synth_rec` (x_synth→synth), `synth_cycle` (x_synth→obs→synth), `obs_rec`, `obs_cycle`,
  `synth_to_obs`, `obs_to_synth`; latents `zsh_synth`, `zsh_obs` [N, L, C]."""
  n = min(len(x_synth), len(x_obs))
  return map_chunks(functools.partial(_reconstruct, cycle), [x_synth[:n], x_obs[:n]], CHUNK)


@jax.jit
def _reconstruct(cycle, xs: jax.Array, xo: jax.Array) -> dict[str, jax.Array]:
  """`reconstructions` of one chunk: raw spectra [B, 7214] of each domain."""
  nets, gen = cycle.nets, cycle.gen_params
  out = nets.cycle_forward(gen, chain.standardize(xs[:, N_DROP:]),
                           chain.standardize(xo[:, N_DROP:]))
  raw = {k: chain.unstandardize(out[v]) for k, v in (
      ("synth_rec", "x_synthsynth"), ("synth_cycle", "x_synthobssynth"),
      ("obs_rec", "x_obsobs"), ("obs_cycle", "x_obssynthobs"),
      ("synth_to_obs", "x_synthobs"), ("obs_to_synth", "x_obssynth"))}
  return {**raw, "zsh_synth": out["zsh_synth"], "zsh_obs": out["zsh_obs"]}


def domain_metrics(rec: dict, sp_synth, sp_obs) -> dict[str, float]:
  """The reconstruction statistics of metrics.json (relative for synth, normalized for obs)."""
  n = len(rec["synth_rec"])
  xs = sp_synth.x[:n, N_DROP:]
  err, good = _observed_weights(sp_obs)
  xo = sp_obs.x[:n, N_DROP:]
  out = {}
  for key, pred in (("synth_rec", rec["synth_rec"]), ("synth_cycle", rec["synth_cycle"])):
    s = metrics.bias_scatter(metrics.relative_residual(pred, xs))
    out[f"{key}_bias"], out[f"{key}_scatter"] = s["bias"], s["scatter"]
  for key, pred in (("obs_rec", rec["obs_rec"]), ("obs_cycle", rec["obs_cycle"])):
    s = metrics.bias_scatter(metrics.normalized_residual(pred, xo, err[:n], good[:n]))
    out[f"{key}_norm_bias"], out[f"{key}_norm_scatter"] = s["bias"], s["scatter"]
  return out


def paired_transfer(cycle, sp_synth_val, sp_obs_val) -> dict[str, float]:
  """On the paired val split (row i = the same star): χ²_R of x_synth→obs against x_obs
  (median over stars, |r| ≤ 5 and all pixels) beside the untransferred x_synth."""
  n = min(len(sp_synth_val), len(sp_obs_val))
  rec = reconstructions(cycle, sp_synth_val.x[:n], sp_obs_val.x[:n])
  err, good = _observed_weights(sp_obs_val)
  xo = sp_obs_val.x[:n, N_DROP:]
  r_t = metrics.normalized_residual(rec["synth_to_obs"], xo, err[:n], good[:n])
  r_0 = metrics.normalized_residual(sp_synth_val.x[:n, N_DROP:], xo, err[:n], good[:n])
  q_t, q_0 = metrics.fit_quality(r_t), metrics.fit_quality(r_0)
  return {"paired_transfer_chi2r": q_t["chi2r"], "paired_transfer_chi2r_all": q_t["chi2r_all"],
          "paired_transfer_mean_norm_resid": q_t["mean_norm_resid"],
          "paired_untransferred_chi2r": q_0["chi2r"],
          "paired_untransferred_chi2r_all": q_0["chi2r_all"],
          # pooled over the stars' pixels, as the trainer's validation (the training curve)
          "paired_transfer_chi2_pooled": metrics.pooled_chi2(r_t),
          "paired_untransferred_chi2_pooled": metrics.pooled_chi2(r_0), "paired_n": n,
          "mock_floor_chi2r": MOCK_FLOOR_CHI2}


def fit_models(stem: str, y: np.ndarray, x_obs: np.ndarray, em, cycle) -> np.ndarray:
  """Best-fit model spectra [N, 7167] of one method at fitted labels y [N, 25] (NaN rows
  stay NaN): Payne(y) for Eq. 9/10, T_synth→obs(Payne(y), z_sp of the star) for Eq. 11."""
  mc = chain.ModelChain(em, cycle)
  ok = np.all(np.isfinite(y), axis=1)
  y_safe = np.where(ok[:, None], y, 0.5 * (np.asarray(em.y_min) + np.asarray(em.y_max)))
  y_safe = y_safe.astype(np.float32)
  if FIT_METHODS[stem][0] == "obs":
    model = map_chunks(functools.partial(_eq11_model, mc), [y_safe, x_obs], CHUNK)
  else:
    model = map_chunks(functools.partial(_payne_model, mc), [y_safe], CHUNK)
  return np.where(ok[:, None], model, np.nan)


@jax.jit
def _eq11_model(mc: chain.ModelChain, y: jax.Array, x_obs: jax.Array) -> jax.Array:
  """T_synth→obs(Payne(y), E_sp(x_obs)) [B, 7167] for labels [B, 25] and spectra [B, 7214]."""
  return mc.synth_to_obs(y, mc.encode_split(x_obs))


@jax.jit
def _payne_model(mc: chain.ModelChain, y: jax.Array) -> jax.Array:
  """Payne(y) on the network pixels [B, 7167]."""
  return mc.payne(y)[:, N_DROP:]


def obs_to_synth(cycle, x_obs: np.ndarray) -> np.ndarray:
  """x_obs→synth [N, 7167] raw flux (Eq. 10's data)."""
  return map_chunks(functools.partial(_obs_to_synth, cycle), [x_obs], CHUNK)


@jax.jit
def _obs_to_synth(cycle, x_obs: jax.Array) -> jax.Array:
  zsh, _ = cycle.nets.encode_obs(cycle.gen_params, chain.standardize(x_obs[:, N_DROP:]))
  return chain.unstandardize(cycle.nets.decode_synth(cycle.gen_params, zsh))


def fit_metrics(paths: RunPaths, sp_test, em, cycle, y_true: np.ndarray | None
                ) -> tuple[dict, dict]:
  """Fit statistics of each method (χ²_R, mean normalized residual, label errors against the
  truth, fits at the box edge) and the arrays the figures need."""
  err, good = _observed_weights(sp_test)
  out, arrays = {}, {"resid": {}, "model": {}, "y": {}, "chi2r": {}}
  x_os = None
  for stem in FIT_METHODS:
    res, rows, _ = fitting.read_results(paths.fit_file(stem))
    n = len(res)
    xo = sp_test.x[:n]
    model = fit_models(stem, res.y, xo, em, cycle)
    if FIT_METHODS[stem][0] == "synth":
      x_os = obs_to_synth(cycle, xo) if x_os is None else x_os
      r = metrics.normalized_residual(x_os, model, np.full_like(x_os, ERROR_FLOOR),
                                      good[:n])
    else:  # data minus model, (x − model)/σ: the paper's Fig. 8 and `fitting.FitResult`
      r = metrics.normalized_residual(xo[:, N_DROP:], model, err[:n], good[:n])
    q = metrics.fit_quality(r)
    at_edge = (res.flags & fitting.FLAGS["AT_BOUND"]) > 0
    m = {"chi2r": q["chi2r"], "chi2r_all": q["chi2r_all"],
         "mean_norm_resid": q["mean_norm_resid"], "n": n,
         "converged_fraction": float(np.mean(res.converged)),
         "at_box_edge_fraction": float(np.mean(at_edge)),
         "median_iterations": float(np.median(res.n_iter)),
         "domain": "synthetic (error 0.005)" if FIT_METHODS[stem][0] == "synth" else "observed"}
    if y_true is not None:
      m["label_errors"] = metrics.label_errors(res.y, y_true[:n])
    out[stem] = m
    arrays["resid"][stem], arrays["model"][stem] = r, model
    arrays["y"][stem], arrays["chi2r"][stem] = res.y, metrics.chi2_r_per_star(r)
  return out, arrays


def tsne_panels(rec: dict, sp_synth, sp_obs, n: int, seed: int = 0) -> dict:
  """Fig. 10: 2-D t-SNE embeddings (scikit-learn) of the spectra of both domains and of their
  shared latents z_sh: {title: (emb [2n, 2], group [2n])}."""
  # Deferred import (scikit-learn: heavy, only for t-SNE).
  from sklearn.manifold import TSNE

  n = min(n, len(rec["zsh_synth"]))
  group = np.array(["synthetic"] * n + ["observed"] * n)
  perplexity = float(max(5, min(30, (2 * n - 1) // 3)))

  def embed(a):
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(a, np.float64).reshape(2 * n, -1))

  spectra = np.concatenate([sp_synth.x[:n, N_DROP:], sp_obs.x[:n, N_DROP:]])
  z = np.concatenate([rec["zsh_synth"][:n], rec["zsh_obs"][:n]])
  x_so = np.concatenate([rec["synth_to_obs"][:n], sp_obs.x[:n, N_DROP:]])
  return {"spectra: x_synth, x_obs": (embed(spectra), group),
          "shared latent z_sh": (embed(z), group),
          "x_synth→obs, x_obs": (embed(x_so), np.array(["synthetic→obs"] * n
                                                       + ["observed"] * n))}


def training_curve(model_dir: Path) -> dict[str, list[float]]:
  """Paired validation χ² against training minutes and iterations (from metrics.jsonl); empty
  lists for a model without a training log (a generator .npz, e.g. pretrained weights)."""
  out = {"step": [], "minutes": [], "chi2": [], "chi2_all": [], "bias": []}
  log = Path(model_dir) / "metrics.jsonl"
  if not log.is_file():
    return out
  m = read_metrics(log)
  steps_t = {k: v / 60 for k, v in elapsed_by_step(log).items()}
  for d in m["val"]:
    if "val_paired_obs_chi2" not in d:
      continue
    s = d["step"]
    t = steps_t.get(s, max((v for k, v in steps_t.items() if k <= s), default=0.0))
    out["step"].append(s)
    out["minutes"].append(t)
    out["chi2"].append(d["val_paired_obs_chi2"])
    out["chi2_all"].append(d["val_paired_obs_chi2_all"])
    out["bias"].append(d["val_paired_obs_bias"])
  return out


@dataclasses.dataclass(frozen=True)
class FigureInputs:
  """What `make_figures` draws: the evaluation's spectra, reconstructions, fits and curves.

  Attributes:
    sp_synth, sp_obs: test spectra of the two domains (`h5io.Spectra`, the first n_eval).
    rec: their `reconstructions`.
    arrays: `fit_metrics`'s per-star arrays {"y", "model", "resid", "chi2r"}: {stem: array}.
    y_true: [n_fit, 25] true labels of the fitted stars (the mock world), else None.
    tsne: `tsne_panels`, or None.
    curve: `training_curve`.
    paired: `paired_transfer`'s statistics ({} without a paired val split).
    sensitivity: `label_sensitivity`, or None.
  """

  sp_synth: Any
  sp_obs: Any
  rec: dict
  arrays: dict
  y_true: np.ndarray | None
  tsne: dict | None
  curve: dict
  paired: dict
  sensitivity: dict | None = None


def make_figures(paths: RunPaths, inputs: FigureInputs) -> list[str]:
  """The paper's Figs. 5–11 (and label errors, label sensitivity, training curve) into
  OUT/figures/."""
  rec, sp_synth, sp_obs, arrays = inputs.rec, inputs.sp_synth, inputs.sp_obs, inputs.arrays
  y_true, tsne, curve, paired = inputs.y_true, inputs.tsne, inputs.curve, inputs.paired
  sensitivity = inputs.sensitivity

  fig = paths.figures
  fig.mkdir(parents=True, exist_ok=True)
  wave = wavelength()[N_DROP:]
  n = len(rec["synth_rec"])
  out = [plots.fig_synthetic_residuals(
      wave, sp_synth.x[:n, N_DROP:], rec["synth_rec"], rec["synth_cycle"],
      fig / "fig5_synthetic_residuals.png", title="synthetic test spectra")]
  err, good = _observed_weights(sp_obs)
  out.append(plots.fig_observed_residuals(
      wave, sp_obs.x[:n, N_DROP:], err[:n], good[:n], rec["obs_rec"], rec["obs_cycle"],
      fig / "fig6_observed_residuals.png", title="observed test spectra"))
  # Fig. 7: the coolest fitted giant (log g < 3.5), both models.
  y_ref = y_true if y_true is not None else arrays["y"]["eq11"]
  n_fit = len(arrays["y"]["eq11"])
  giants = np.where(y_ref[:n_fit, label_index("logg")] < 3.5)[0]
  pool = giants if len(giants) else np.arange(n_fit)
  i = int(pool[np.argmin(y_ref[pool, label_index("Teff")])])
  e_fit, g_fit = _observed_weights(sp_obs)
  t, g, fe = (label_index(k) for k in KEY_LABELS)
  text = (f"test star {i}" + (f": true Teff {y_ref[i, t]:.0f} K, log g {y_ref[i, g]:.2f}, "
                              f"[Fe/H] {y_ref[i, fe]:+.2f}" if y_true is not None else ""))
  for stem in ("eq9", "eq11"):
    yy = arrays["y"][stem][i]
    text += f"\n{FIT_TITLES[stem]}: {yy[t]:.0f} K, {yy[g]:.2f}, {yy[fe]:+.2f}"
  out.append(plots.fig_fit_example(
      wave, sp_obs.x[i, N_DROP:], e_fit[i], g_fit[i],
      {FIT_TITLES[s]: arrays["model"][s][i] for s in ("eq9", "eq11")},
      fig / "fig7_fit_example.png", text=text))
  order = np.argsort(y_ref[:n_fit, t])
  out.append(plots.fig_fit_residuals(
      wave, arrays["resid"]["eq9"][order], arrays["resid"]["eq11"][order],
      fig / "fig8_fit_residuals.png", name_a=FIT_TITLES["eq9"], name_b=FIT_TITLES["eq11"]))
  out.append(plots.fig_kiel_chi2(
      y_ref[:n_fit, t], y_ref[:n_fit, g], arrays["chi2r"]["eq9"], arrays["chi2r"]["eq11"],
      fig / "fig9_kiel_chi2.png", name_a=FIT_TITLES["eq9"], name_b=FIT_TITLES["eq11"]))
  if tsne is not None:
    out.append(plots.fig_tsne(tsne, fig / "fig10_tsne.png"))
  panels = {FIT_TITLES[s]: (arrays["y"][s][:, t], arrays["y"][s][:, g]) for s in FIT_METHODS}
  out.append(plots.fig_kiel_methods(
      panels, fig / "fig11_kiel_methods.png",
      truth=None if y_true is None else (y_true[:n_fit, t], y_true[:n_fit, g])))
  if y_true is not None:
    out.append(plots.fig_label_errors(
        y_true[:n_fit], {FIT_TITLES[s]: arrays["y"][s] for s in FIT_METHODS},
        fig / "label_errors.png", names=KEY_LABELS))
  if sensitivity is not None:
    lab = sensitivity["labels"]
    out.append(plots.fig_label_sensitivity(
        {title: [lab[n][key] for n in LABEL_NAMES] for key, title in SENSITIVITY_BARS
         if key in lab["Teff"]},
        fig / "label_sensitivity.png", n_stars=sensitivity["n"]))
  if curve["step"]:
    out.append(plots.fig_training_curve(
        {"x_synth→obs vs x_obs (val, paired)": (curve["minutes"], curve["chi2"])},
        fig / "training_curve.png", floor=MOCK_FLOOR_CHI2 if y_true is not None else None,
        baseline=paired.get("paired_untransferred_chi2_pooled")))
  return out


SENSITIVITY_BARS = (("payne_gain", "Payne vs its synthetic world (the emulator alone)"),
                    ("payne_truth_gain", "Payne vs truth (Eq. 9's model)"),
                    ("autoencoder_gain", "T_synth→synth∘Payne vs Payne"),
                    ("transfer_gain", "T_synth→obs∘Payne vs Payne"),
                    ("csn_gain", "T_synth→obs∘Payne vs truth (Eq. 11's model)"))


def label_sensitivity(em, cycle, sp_test, y: np.ndarray, world: dict | None) -> dict:
  """`sensitivity.label_sensitivity` at the first `sensitivity.N_STARS` fitted test stars, at
  labels y (the truth with the mock `world`'s settings; else the catalogue's, truth-free)."""
  n = min(sensitivity.N_STARS, len(y))
  return sensitivity.label_sensitivity(
      chain.ModelChain(em, cycle), y[:n], sp_test.x[:n],
      None if world is None else mock.WorldConfig.from_json_dict(world))


def evaluate(paths: RunPaths, synth_path: Path, obs_path: Path, emulator_path: Path,
             model_dir: Path, *, n_eval: int, n_tsne: int | None = None) -> dict:
  """All numbers of metrics.json (except the run's bookkeeping) and the figures."""
  em = load_emulator(emulator_path)
  cycle = fitting.load_cycle_model(model_dir)
  with h5io.SpectraFile(synth_path) as fs, h5io.SpectraFile(obs_path) as fo:
    n = min(n_eval, fs.n("test"), fo.n("test"))
    sp_synth, sp_obs_eval = fs.read("test", 0, n), fo.read("test", 0, n)
    n_fit = len(fitting.read_results(paths.fit_file("eq11"))[0])
    sp_test = fo.read("test", 0, n_fit)
    y_true = (fo.extra("labels_true", "test", 0, n_fit)
              if "labels_true" in fo.extra_names("test") else None)
    world = fo.attrs.get("world") if y_true is not None else None
    y_sens = y_true if y_true is not None else sp_test.y  # the catalogue's on the user's data
    # The files' `paired_splits` say whether val row i is the same star in both (paper mode's
    # halves are not); files without it: equal val row counts (`validation.decide_paired_val`).
    paired_ok = _paired_val(synth_path, obs_path)
    sp_sv = fs.read("val", 0, min(256, fs.n("val"))) if paired_ok else None
    sp_ov = fo.read("val", 0, min(256, fo.n("val"))) if paired_ok else None
  rec = reconstructions(cycle, sp_synth.x, sp_obs_eval.x)
  out = domain_metrics(rec, sp_synth, sp_obs_eval)
  out["n_eval"] = int(len(rec["synth_rec"]))
  paired = paired_transfer(cycle, sp_sv, sp_ov) if paired_ok else {}
  out.update(paired)
  fits, arrays = fit_metrics(paths, sp_test, em, cycle, y_true)
  out["fits"] = fits
  for stem, key in (("eq9", "emulator"), ("eq10", "synth"), ("eq11", "csn")):
    out[f"fit_{key}_chi2r"] = fits[stem]["chi2r"]
    out[f"fit_{key}_chi2r_all"] = fits[stem]["chi2r_all"]
    out[f"fit_{key}_mean_norm_resid"] = fits[stem]["mean_norm_resid"]
  out["fit_emulator_mask_chi2r"] = fits["eq9_mask"]["chi2r"]
  out["chi2r_ratio_eq9_over_eq11"] = out["fit_emulator_chi2r"] / out["fit_csn_chi2r"]
  if y_true is not None:
    out["label_errors"] = {FIT_TITLES[s]: fits[s]["label_errors"] for s in FIT_METHODS}
  out["n_test"] = int(n_fit)
  if y_sens is not None and np.isfinite(y_sens).all():
    out["label_sensitivity"] = label_sensitivity(em, cycle, sp_test, y_sens, world)
  tsne = tsne_panels(rec, sp_synth, sp_obs_eval, n_tsne or out["n_eval"])
  curve = training_curve(model_dir)
  out["training_curve"] = curve
  if y_sens is not None and np.isfinite(y_sens).all():
    rows = gain_curve(model_dir, em, sp_test, y_sens, world)
    if rows:
      out["sensitivity_curve"] = {"rows": rows, "source": "this run's checkpoints"}
  figures = make_figures(paths, FigureInputs(sp_synth, sp_obs_eval, rec, arrays, y_true, tsne,
                                             curve, paired, out.get("label_sensitivity")))
  figures += gain_curve_figure(paths, out.get("sensitivity_curve"))
  if y_true is None and sp_test.y is not None:  # real data: against the catalogue instead
    out["catalogue_differences"] = {
        FIT_TITLES[s]: metrics.label_errors(arrays["y"][s], sp_test.y) for s in FIT_METHODS}
    figures.append(catalogue_figure(paths, sp_test.y, arrays["y"]))
  out["figures"] = [str(Path(p).relative_to(paths.out)) for p in figures]
  return json.loads(json.dumps(out, default=float))


def gain_curve_figure(paths: RunPaths, sens_curve: dict | None) -> list[str]:
  """figures/label_gain_curve.png from metrics.json's `sensitivity_curve` ([] without one)."""
  if not sens_curve or not sens_curve.get("rows"):
    return []
  paths.figures.mkdir(parents=True, exist_ok=True)
  return [plots.fig_gain_curve(sens_curve["rows"], paths.figures / "label_gain_curve.png",
                               eq9=sens_curve.get("eq9"))]


MAX_CURVE_POINTS = 6  # checkpoints in the report's gain curve (~6 s each on a 2-core CPU)


def gain_curve(model_dir: Path, em, sp_test, y: np.ndarray, world: dict | None) -> list[dict]:
  """`curve.sensitivity_curve` at up to `MAX_CURVE_POINTS` kept checkpoints of a training run
  (evenly spaced, the newest always), at the first `curve.N_CURVE_STARS` test stars; [] for
  a generator file or a run with fewer than two checkpoints kept."""
  steps = curve.kept_steps(model_dir) if Path(model_dir).is_dir() else []
  if len(steps) < 2:
    return []
  k = len(steps)
  pick = sorted({steps[round(i * (k - 1) / (MAX_CURVE_POINTS - 1))]
                 for i in range(MAX_CURVE_POINTS)}) if k > MAX_CURVE_POINTS else steps
  n = min(curve.N_CURVE_STARS, len(y))
  return curve.sensitivity_curve(
      model_dir, em, sp_test.x[:n], y[:n],
      None if world is None else mock.WorldConfig.from_json_dict(world), steps=pick)


def _paired_val(synth_path: Path, obs_path: Path) -> bool:
  """Whether row i of both val splits is the same star (`validation.decide_paired_val`)."""
  with warnings.catch_warnings():  # the trainer has said it already
    warnings.simplefilter("ignore")
    return decide_paired_val(synth_path, obs_path)[0]


def catalogue_figure(paths: RunPaths, y_cat: np.ndarray, y_fit: dict) -> str:
  """fitted − catalogue labels against the catalogue's Teff (Eq. 9 and Eq. 11) into
  OUT/figures/fitted_vs_catalogue.png (the user's data, where the truth is unknown)."""
  paths.figures.mkdir(parents=True, exist_ok=True)
  return plots.fig_catalogue_residuals(
      y_cat, {FIT_TITLES[s]: y_fit[s] for s in ("eq9", "eq11")},
      paths.figures / "fitted_vs_catalogue.png")


__all__ = ["evaluate", "LABEL_NAMES"]
