"""report.md of the main job: each metric beside the paper's number and the target, and, on the
mock world, the labels against the truth; where a target is missed, it says so."""

from __future__ import annotations

from pathlib import Path

from cyclestar_jax.pipeline.stages import EMULATOR_TRAINING, FIT_METHODS, FIT_TITLES

# (key in metrics.json, description, paper on real APOGEE, target check or None, format)
_ROWS = (
    ("synth_rec_bias", "synthetic reconstruction: bias (relative)", "< 0.1 %",
     lambda v, p: abs(v) < 1e-3, "{:+.3%}"),
    ("synth_rec_scatter", "synthetic reconstruction: scatter", "≈ 0.4 %",
     lambda v, p: v <= (0.004 if p == "paper" else 0.01), "{:.3%}"),
    ("synth_cycle_bias", "synthetic cycle: bias", "< 0.1 %", lambda v, p: abs(v) < 1e-3,
     "{:+.3%}"),
    ("synth_cycle_scatter", "synthetic cycle: scatter", "≈ 0.4 %",
     lambda v, p: v <= (0.004 if p == "paper" else 0.01), "{:.3%}"),
    ("obs_rec_norm_bias", "observed reconstruction: normalized bias", "≈ 0", None, "{:+.3f}"),
    ("obs_rec_norm_scatter", "observed reconstruction: normalized scatter", "≈ 1",
     lambda v, p: 0.9 <= v <= 1.1 if p == "paper" else None, "{:.3f}"),
    ("obs_cycle_norm_bias", "observed cycle: normalized bias", "≈ 0", None, "{:+.3f}"),
    ("obs_cycle_norm_scatter", "observed cycle: normalized scatter", "≈ 1", None, "{:.3f}"),
    ("fit_emulator_mask_chi2r", "Eq. 9 fit with The Payne's mask: median χ²_R (within 5σ)", "—",
     None, "{:.3f}"),
    ("fit_emulator_chi2r", "Eq. 9 fit (Payne): median χ²_R (within 5σ)", "1.97", None, "{:.3f}"),
    ("fit_synth_chi2r", "Eq. 10 fit: median χ²_R, synthetic domain (error 0.005)", "—", None,
     "{:.3f}"),
    ("fit_csn_chi2r", "Eq. 11 fit (Cycle-StarNet): median χ²_R (within 5σ)", "1.22",
     lambda v, p: v <= 1.40 if p == "paper" else None, "{:.3f}"),
    ("chi2r_ratio_eq9_over_eq11", "χ²_R ratio Eq. 9 / Eq. 11", "1.6",
     lambda v, p: v >= (1.8 if p == "paper" else 1.3), "{:.2f}"),
    ("fit_emulator_mean_norm_resid", "Eq. 9 fit: mean normalized residual", "0.16", None,
     "{:+.3f}"),
    ("fit_csn_mean_norm_resid", "Eq. 11 fit: mean normalized residual", "−0.01",
     lambda v, p: abs(v) <= 0.05, "{:+.3f}"),
    ("paired_untransferred_chi2r", "paired val: x_synth vs x_obs, median χ²_R (no transfer)",
     "—", None, "{:.3f}"),
    ("paired_transfer_chi2r", "paired val: x_synth→obs vs x_obs, median χ²_R", "—",
     None, "{:.3f}"),
)


# What was tried where Eq. 11's labels are not closer than Eq. 9's, by preset: only the preset
# the research was done on has a note (the other presets' reports give the verdict alone).
RESEARCH_NOTES = {
    "cpu": ("What was tried for the label scatter on the cpu preset (Payne-like grid for the "
            "emulator, fits by free-label set and from the truth, the grid term, z_sh 12 "
            "against 25 over two training seeds) and what each gave: benchmarks/README.md, "
            "sections \"Why the labels suffered\", \"The grid term and a wider z_sh\" and "
            "\"z_sh 25 against 12, two seeds\"."),
}


def _fmt(fmt: str, v) -> str:
  try:
    return fmt.format(v)
  except (TypeError, ValueError):
    return str(v)


def _check(fn, v, preset) -> str:
  if fn is None or v is None:
    return ""
  ok = fn(v, preset)
  return "" if ok is None else ("yes" if ok else "**no**")


def label_table(m: dict) -> list[str]:
  """Fitted − true of Teff, log g, [Fe/H] per method (bias ± scatter), and the box edge."""
  lines = ["| method | Teff (K) | log g (dex) | [Fe/H] (dex) | at box edge | converged |",
           "| --- | --- | --- | --- | --- | --- |"]
  for stem in FIT_METHODS:
    f = m["fits"][stem]
    e = f.get("label_errors", {})
    cells = []
    for k, fmt in (("Teff", "{:+.0f} ± {:.0f}"), ("logg", "{:+.2f} ± {:.2f}"),
                   ("Fe_H", "{:+.3f} ± {:.3f}")):
      cells.append(fmt.format(e[k]["bias"], e[k]["scatter"]) if k in e else "—")
    lines.append(f"| {FIT_TITLES[stem]} | " + " | ".join(cells)
                 + f" | {f['at_box_edge_fraction']:.0%} | {f['converged_fraction']:.0%} |")
  return lines


def catalogue_table(m: dict) -> list[str]:
  """Markdown: fitted − catalogue of Teff, log g, [Fe/H], [Mg/H] per method on the user's data
  (`catalogue_differences`, no truth there); [] without it."""
  diff = m.get("catalogue_differences")
  if not diff:
    return []
  fmts = (("Teff", "{:+.0f} ± {:.0f}"), ("logg", "{:+.2f} ± {:.2f}"),
          ("Fe_H", "{:+.3f} ± {:.3f}"), ("Mg_H", "{:+.3f} ± {:.3f}"))
  lines = ["", "## Labels against the catalogue (fitted − catalogue: mean ± scatter)", "",
           "The catalogue's labels are not the truth (ASPCAP's own fit with its own models): "
           "figures/fitted_vs_catalogue.png shows them against the catalogue's Teff.", "",
           "| method | Teff (K) | log g (dex) | [Fe/H] (dex) | [Mg/H] (dex) |",
           "| --- | --- | --- | --- | --- |"]
  for title, e in diff.items():
    cells = [f.format(e[k]["bias"], e[k]["scatter"]) if e.get(k, {}).get("n") else "—"
             for k, f in fmts]
    lines.append(f"| {title} | " + " | ".join(cells) + " |")
  return lines


def _gap_sentence(untransferred: float, transferred: float, floor: float) -> str:
  """How much of the gap between no transfer and the floor the transfer closes."""
  if untransferred <= floor:
    return "no gap to close."
  f = (untransferred - transferred) / (untransferred - floor)
  return (f"the transfer closes {f:.0%} of the gap." if f >= 0 else
          f"**the transfer is worse than no transfer** (by {-f:.0%} of the gap).")


def verdicts(m: dict) -> list[str]:
  """Plain sentences: where the run meets the issue's targets and where it falls short."""
  out = []
  preset = m.get("preset")
  ratio = m.get("chi2r_ratio_eq9_over_eq11")
  want = 1.8 if preset == "paper" else 1.3
  if ratio is not None:
    out.append(f"- χ²_R ratio Eq. 9 / Eq. 11 = {ratio:.2f} (target ≥ {want}): "
               + ("met." if ratio >= want else "**not met**."))
  pt, p0 = m.get("paired_transfer_chi2r"), m.get("paired_untransferred_chi2r")
  if pt is not None and p0 is not None:
    out.append(f"- On the paired validation stars the transfer gives χ²_R {pt:.2f} against "
               f"{p0:.2f} for no transfer and {m.get('mock_floor_chi2r', 1.24):.2f} for the "
               "instrument's own noise-free spectrum (the mock's floor): "
               + _gap_sentence(p0, pt, m.get("mock_floor_chi2r", 1.24)))
  le = m.get("label_errors")
  if le:
    a, b = le[FIT_TITLES["eq9"]], le[FIT_TITLES["eq11"]]
    better = [k for k in ("Teff", "logg", "Fe_H") if b[k]["scatter"] < a[k]["scatter"]]
    out.append("- Labels against the truth (scatter, Eq. 11 vs Eq. 9): "
               + ", ".join(f"{k} {b[k]['scatter']:.3g} vs {a[k]['scatter']:.3g}"
                           for k in ("Teff", "logg", "Fe_H"))
               + (": Eq. 11 closer for all three." if len(better) == 3 else
                  ": **Eq. 11 closer for none of them**." if not better else
                  f": **Eq. 11 closer only for {', '.join(better)}**."))
    sens = (m.get("label_sensitivity") or {}).get("labels")
    if sens and "csn_gain" in sens["Teff"]:
      keys = ("Teff", "logg", "Fe_H")
      out.append("- Label sensitivity (Teff, log g, [Fe/H]; 1 = full): Eq. 11's model "
                 "T_synth→obs∘Payne responds with gains "
                 + ", ".join(f"{sens[k]['csn_gain']:.2f}" for k in keys)
                 + " of the truth's, Eq. 9's Payne with "
                 + ", ".join(f"{sens[k]['payne_truth_gain']:.2f}" for k in keys)
                 + "; the synthetic round trip T_synth→synth keeps "
                 + ", ".join(f"{sens[k]['autoencoder_gain']:.2f}" for k in keys)
                 + " of Payne's. A gain g amplifies the fitted label's errors by about 1/g "
                 "(section \"Label sensitivity\").")
    if len(better) < 3 and preset in RESEARCH_NOTES:
      out.append(f"- {RESEARCH_NOTES[preset]}")
    edge = m["fits"]["eq11"]["at_box_edge_fraction"]
    out.append(f"- Eq. 11 fits ending at the emulator's box edge: {edge:.0%} (target < 10 %): "
               + ("met." if edge < 0.1 else "**not met**."))
  return out


def curve_table(m: dict, max_rows: int = 12) -> list[str]:
  """Markdown: the paired transfer χ² against training iterations and minutes (at most
  `max_rows` validations, evenly spaced, the last always kept); [] without paired validation."""
  c = m.get("training_curve") or {}
  n = len(c.get("step", []))
  if not n:
    return []
  keep = (range(n) if n <= max_rows else
          sorted({round(i * (n - 1) / (max_rows - 1)) for i in range(max_rows)}))
  base = m.get("paired_untransferred_chi2_pooled")
  out = ["", "## Training curve (paired val stars: x_synth→obs against x_obs)", "",
         "How the transfer improved with training time. χ² (within 5σ) and with all pixels are "
         "means over the val batch's pixels (the trainer's validation), not the medians over "
         "stars of the metrics table" + (f"; untransferred on the same definition: {base:.3g}, "
                                         f"mock floor {m.get('mock_floor_chi2r', 1.24):.3g}."
                                         if base is not None else "."), "",
         "| iteration | minutes | χ² (within 5σ) | χ² (all pixels) | mean normalized "
         "residual |",
         "| --- | --- | --- | --- | --- |"]
  for i in keep:
    out.append(f"| {c['step'][i]} | {c['minutes'][i]:.1f} | {c['chi2'][i]:.3f} | "
               f"{c['chi2_all'][i]:.3f} | {c['bias'][i]:+.3f} |")
  return out


# Above this |r| of an abundance with [Fe/H] over the emulator's training labels, its partial
# derivatives are poorly determined (the mock's population: 0.87–1.0; its Payne grid: ≤ 0.8).
EMULATOR_CORRELATION_WARN = 0.9


def emulator_note(m: dict) -> list[str]:
  """Markdown: what the emulator (The Payne) learnt from, and a warning when its training labels
  tie the abundances to [Fe/H] too tightly for Eq. 9–11 to separate them; [] if unknown."""
  src, r = m.get("emulator_training"), m.get("emulator_abundance_fe_correlation")
  if not src:
    return []
  text = f"Emulator (The Payne) trained on `{src}`"
  if src == EMULATOR_TRAINING:
    text += (" (the mock world's synthetic physics at grid labels like The Payne's, every "
             "abundance varied independently of [Fe/H]; the Cycle-StarNet synthetic domain "
             "keeps the population's labels, as in the paper)")
  if r is not None and r == r:  # not NaN
    text += f"; the largest |r| of an abundance with [Fe/H] over its training labels is {r:.2f}"
    if r > EMULATOR_CORRELATION_WARN:
      text += (f". **Above {EMULATOR_CORRELATION_WARN}, the emulator cannot tell the elements "
               "apart and every fitted abundance (and with them Teff and log g) suffers**: train "
               "it on a grid whose abundances vary independently, as The Payne's, and pass "
               "`--emulator`")
  return [text + ".", ""]


def grid_note(m: dict) -> list[str]:
  """Markdown: the grid term of the Cycle-StarNet training (`Config.lambda_grid`); [] when off."""
  grid = m.get("grid_file")
  lam = (m.get("cycle_config") or {}).get("lambda_grid", 0.0)
  if not grid or not lam:
    return []
  cycle = (m.get("cycle_config") or {}).get("grid_cycle", True)
  what = "synthetic autoencoder and synthetic cycle" if cycle else "synthetic autoencoder"
  return [f"Cycle-StarNet's {what} also learnt "
          f"`{Path(grid).name}` (λ_grid = {lam:g}; not in the paper): spectra whose abundances "
          "vary on their own, so that the shared latent keeps every label's direction and not "
          "only those along which the domains' stars vary together. No critic sees them.", ""]


def sensitivity_table(m: dict) -> list[str]:
  """Markdown: the label sensitivity of the models (`sensitivity`); [] without it."""
  sens = m.get("label_sensitivity")
  if not sens:
    return []
  lab = sens["labels"]
  truth = "csn_gain" in lab["Teff"]
  out = ["", "## Label sensitivity (derivative spectra)", "",
         f"At the {'true' if truth else 'catalogue'} labels of {sens['n']} test stars, the "
         "gain of each model's derivative spectrum ∂M/∂y against the reference's, "
         "⟨∂M/∂y, ∂R/∂y⟩ / ⟨∂R/∂y, ∂R/∂y⟩ (1: the model responds to the label fully; "
         "median over the stars; r: the correlation of their shapes). A fit moves a label "
         "by about 1/gain times its true change, so noise and model error reach the fitted "
         "label amplified by 1/gain. T_synth→synth is the synthetic spectrum's round trip "
         "through the shared latent, which every transfer passes: a gain lost there is lost "
         "for T_synth→obs too.", "",
         "The truth is the mock world's own noise-free physics; without it (the user's data) "
         "only the two columns against Payne exist.", "",
         "| label | Payne vs synthetic | Payne vs truth (Eq. 9) | T_synth→synth∘Payne vs Payne "
         "| T_synth→obs∘Payne vs Payne | T_synth→obs∘Payne vs truth (Eq. 11) | r (Eq. 11) |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
  cols = ("payne_gain", "payne_truth_gain", "autoencoder_gain", "transfer_gain", "csn_gain",
          "csn_r")
  for name, v in lab.items():
    out.append(f"| {name} | " + " | ".join(f"{v[c]:.2f}" if c in v else "—" for c in cols)
               + " |")
  return out


def gain_curve_table(m: dict) -> list[str]:
  """Markdown: the label gains (and, where scored, the labels) along the training
  (`pipeline.curve`); [] without `sensitivity_curve`."""
  sc = m.get("sensitivity_curve") or {}
  rows = sc.get("rows") or []
  if not rows:
    return []
  names = ("Teff", "logg", "Fe_H")
  truth = all(f"{k}_csn_gain" in rows[0] for k in names)
  scored = all(f"{k}_scatter" in rows[0] for k in names)
  head = "| iteration | paired val χ² | gain vs Payne: Teff / log g / [Fe/H] |"
  head += " gain vs truth |" if truth else ""
  head += " Eq. 11 scatter: Teff (K) / log g / [Fe/H] | at box edge |" if scored else ""
  out = ["", "## Label sensitivity along the training (a stopping signal)", "",
         "The paired χ² flattens long before the labels stop improving. The gain of "
         "T_synth→obs∘Payne against Payne (section above) needs no truth: a label's fit is "
         "limited by 1/gain, so the training is long enough for a label once its gain has "
         f"stopped rising. Source: {sc.get('source', 'the training checkpoints')}.", "",
         head, "|" + " --- |" * (head.count("|") - 1)]
  for r in rows:
    chi2 = "–" if r.get("paired_val_chi2") is None else f"{r['paired_val_chi2']:.3f}"
    line = (f"| {r['step']} | {chi2} | "
            + " / ".join(f"{r[f'{k}_transfer_gain']:.2f}" for k in names) + " |")
    if truth:
      line += " " + " / ".join(f"{r[f'{k}_csn_gain']:.2f}" for k in names) + " |"
    if scored:
      line += (f" {r['Teff_scatter']:.0f} / {r['logg_scatter']:.2f} / {r['Fe_H_scatter']:.3f} "
               f"| {r['at_box_edge']:.0%} |")
    out.append(line)
  e9 = sc.get("eq9")
  if scored and e9:
    out.append("| Eq. 9, same stars | | |" + (" |" if truth else "")
               + f" {e9['Teff_scatter']:.0f} / {e9['logg_scatter']:.2f} / "
               f"{e9['Fe_H_scatter']:.3f} | {e9['at_box_edge']:.0%} |")
  return out


_START_WORDS = {"catalogue": "the catalogue labels", "median": "the population median",
                "grid": "grid points"}


def _starts_words(starts) -> str:
  """["catalogue", "median"] → "the catalogue labels and the population median"."""
  return " and ".join(_START_WORDS.get(k, k) for k in starts)


def _checkpoint_lines(ck: dict) -> list[str]:
  """Which checkpoint the fits and figures used, and a fall-back to an older one."""
  if ck.get("step") is None:
    return []
  text = f"Model: checkpoint step {ck['step']}"
  if ck.get("skipped_newer"):
    text += (f", **an older checkpoint**: step(s) {ck['skipped_newer']} could not be loaded "
             "(--allow-older-checkpoint)")
  return [text + ".", ""]


def pretrained_lines(m: dict, script: str) -> list[str]:
  """A report's opening paragraph when the run used the package's pretrained weights
  (metrics.json's "pretrained"); `script` is the job's command (e.g. "experiments.apogee")."""
  pre = m.get("pretrained")
  if not pre:
    return []
  return [f"**This run used the package's {pre['description']}**, made by "
          + "; ".join(f"`{c}`" for c in pre["commands"])
          + f". Nothing was trained here: `python -m {script} --train` trains from scratch.", ""]


def render(m: dict) -> str:
  """The report's markdown text from metrics.json's dict."""
  preset = m.get("preset")
  lines = [f"# Cycle-StarNet main job (paper §4.1): preset `{preset}`", ""]
  lines += pretrained_lines(m, "experiments.apogee")
  lines += [f"Data: {m.get('data_description')}. Device: {m.get('device')}. "
            f"Cycle-StarNet: {m.get('train_iterations')} iterations in "
            f"{(m.get('train_seconds') or 0) / 60:.1f} min"
            + (f" ({m['schedule_note']})" if m.get("schedule_note") else "") + "; "
            f"{m.get('n_test')} test stars fitted by each method; reconstruction statistics "
            f"on {m.get('n_eval')} test spectra per domain.", ""]
  lines += _checkpoint_lines(m.get("model_checkpoint") or {})
  if m.get("mock"):
    lines += ["The data is the mock APOGEE world (README): numbers show whether the method "
              "works, not what real stars are. The paper's numbers are on real APOGEE; the "
              "mock's own floor of χ²_R is 1.24 (the reported errors are ~10 % too small), "
              "so absolute χ²_R values cannot match the paper's.", ""]
  lines += emulator_note(m) + grid_note(m)
  lines += ["## Summary", ""] + verdicts(m) + ["", "## Metrics", "",
                                               "| metric | this run | paper (APOGEE) | "
                                               "target met |", "| --- | --- | --- | --- |"]
  for key, desc, paper, check, fmt in _ROWS:
    if key in m:
      lines.append(f"| {desc} (`{key}`) | {_fmt(fmt, m[key])} | {paper} | "
                   f"{_check(check, m[key], preset)} |")
  if m.get("label_errors"):
    lines += ["", "## Labels against the truth (fitted − true: bias ± scatter)", ""]
    lines += label_table(m)
  lines += catalogue_table(m)
  fs = m.get("fit_settings")
  if fs:
    starts = fs.get("starts", ["catalogue", "median"])  # older metrics.json: both
    lines += ["", f"Fits: L-BFGS in the scaled label space, Eq. 9 and 10 from "
              f"{_starts_words(starts)}, ≤ {fs['max_iter']} accepted steps; Eq. 11 "
              f"from {_starts_words(fs['csn_starts'])}, "
              f"≤ {fs['csn_max_iter']} steps (a fit "
              "that reaches the cap counts as not converged)."]
  lines += sensitivity_table(m)
  lines += gain_curve_table(m)
  lines += curve_table(m)
  lines += ["", "χ²_R: per star, the mean of squared normalized residuals over its unmasked "
            "network pixels (7167) with |r| > 5 left out; the table gives the median over the "
            "test stars (`*_chi2r_all` in metrics.json: all pixels). Eq. 10 is compared in the "
            "synthetic domain with error 0.005.", "", "## Figures", ""]
  lines += [f"- [{p}]({p})" for p in m.get("figures", [])]
  if m.get("notes"):
    lines += ["", "## Notes", ""] + [f"- {n}" for n in m["notes"]]
  return "\n".join(lines) + "\n"
