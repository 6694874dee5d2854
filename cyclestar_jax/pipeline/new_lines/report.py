"""report.md of the line-identification job (paper §4.2) from its metrics.json dict: the
recovery error, the attributions beside the issue's targets, why they fall short (the mock
world's own derivatives), the label sensitivity and the figures."""

from __future__ import annotations

from cyclestar_jax.pipeline.report import grid_note, pretrained_lines, sensitivity_table
from cyclestar_jax.pretrained.export import line_curve_table

FE_ATTRIBUTION_TARGET = {"cpu": 0.6, "paper": 0.8}  # the Fe attribution targets
# What was tried where a preset misses the Fe target, by preset: only the preset the research
# was done on has a note (the other presets' reports say "not met" alone).
RESEARCH_NOTES = {
    "cpu": ("What was tried on the cpu preset (λ weights, 6,000 against 3,000 iterations, z_sh "
            "25, the Payne-like grid for the emulator, the grid term with and without its cycle "
            "and at λ_grid 10, two training seeds, other rankings) and what each gave: "
            "benchmarks/README.md, sections from \"new_lines: the critics won\" on."),
}


def fe_attribution_line(fe: dict, preset: str | None) -> str:
  """The summary's line on the Fe features (`attribution_per_element["Fe_H"]`) against the
  preset's target (the cpu preset's for a preset without one), with the preset's research note
  (`RESEARCH_NOTES`) where the target is missed."""
  text = (f"- Fe features ({fe.get('n_features', 0)}): "
          f"{fe.get('accuracy_all', float('nan')):.0%} (target ≥ 60 % cpu, ≥ 80 % paper)")
  if fe.get("accuracy_all", 0.0) >= FE_ATTRIBUTION_TARGET.get(preset,
                                                              FE_ATTRIBUTION_TARGET["cpu"]):
    return text
  note = RESEARCH_NOTES.get(preset)
  return text + ": **not met**." + (f" {note}" if note else "")


def _r_range(m: dict) -> str:
  """The range of the label sets' Pearson r of each abundance with [Fe/H], for the report."""
  r = list(m.get("abundance_fe_correlation", {}).values())
  return f"{min(r):.2f} to {max(r):.2f}" if r else "not computed"


def curve_reading(rows: list[dict]) -> str:
  """What a line-identification curve (`benchmarks.line_curve` rows, oldest first) says about
  the training's length: where the recovery error flattened (within 2 % of its best) and how
  far the Fe attribution rose after that."""
  best = min(r["recovery_error_pct"] for r in rows)
  flat = next(r for r in rows if r["recovery_error_pct"] <= 1.02 * best)
  last = rows[-1]
  text = (f"The recovery error flattened by iteration {flat['step']:,} "
          f"({flat['recovery_error_pct']:.2f} %); the Fe attribution went from "
          f"{flat['attribution_fe']:.0%} there to {last['attribution_fe']:.0%} at "
          f"{last['step']:,}")
  if len(rows) >= 2 and last["attribution_fe"] > rows[-2]["attribution_fe"]:
    per = (last["attribution_fe"] - rows[-2]["attribution_fe"]) / (last["step"] - rows[-2]["step"])
    text += (f", still rising ({100 * per * 2000:+.0f} points per 2,000 iterations at the end): "
             "a line identification is trained long enough when its attribution stops rising, "
             "not when the χ² or the recovery error do")
  return text + "."


def pretrained_curve_lines(m: dict) -> list[str]:
  """The pretrained weights' curve along their training, with what it says (`curve_reading`)."""
  rows = (m.get("pretrained") or {}).get("curve") or []
  if not rows:
    return []
  return (["", "## The pretrained weights along their training", "",
           "Each kept checkpoint of the run that made them (`benchmarks.line_curve`, fewer "
           "label sets than this report):", ""] + line_curve_table(rows) + [curve_reading(rows)])


def render(m: dict) -> str:
  """report.md of the line-identification job."""
  fe = m["attribution_per_element"].get("Fe_H", {})
  lines_ = [f"# Line identification (paper §4.2): preset `{m.get('preset')}`", ""]
  lines_ += pretrained_lines(m, "experiments.new_lines")
  lines_ += [f"{m.get('n_removed_features')} strong features removed from the synthetic domain "
            f"(mock world, {m.get('masked_fraction_note')}); Cycle-StarNet "
            f"{m.get('train_iterations')} iterations ({(m.get('train_seconds') or 0) / 60:.1f} "
            "min); "
            f"derivative spectra of {m['n_label_sets']} label sets in "
            f"{m['derivative_seconds']:.1f} s ({m['label_sets_per_s']:.0f} /s, "
            f"{m['device']}).{' ' + m['schedule_note'] if m.get('schedule_note') else ''}", ""]
  lines_ += grid_note(m)
  lines_ += ["## Summary", "",
            f"- Recovery error over the masked pixels: {m['recovery_error_pct']:.3f} % against "
            f"{m['no_recovery_error_pct']:.3f} % without recovery (ratio "
            f"{m['recovery_ratio']:.2f}; target ≤ 0.33 on the cpu preset; paper 0.35 % at 30 %).",
            f"- Attribution accuracy (all label sets, C/N left out): "
            f"{m['attribution_accuracy']:.0%}; near the reference star "
            f"{m['attribution_accuracy_near_reference']:.0%} ({m['n_near_reference']} label "
            f"sets); the reference star alone {m['attribution_accuracy_reference_star']:.0%}.",
            fe_attribution_line(fe, m.get("preset")),
            f"- C/N features: {m['cn_group_accuracy']:.0%} attributed to C or N; confusion "
            f"{m['cn_confusion']} ({m['cn_confusion_rows_cols']}).",
            f"- z_sp: '{m['zsp_choice']}' observed star; with the mean z_sp instead the top "
            f"label agrees for {m['zsp_sensitivity'].get('winner_agreement', float('nan')):.0%}"
            " of (label set, feature) pairs.",
            f"- Recovered-feature detection at the reference star (threshold "
            f"{m['recovery_threshold']} in flux): precision "
            f"{m['detection'].get('precision', float('nan')):.2f}, recall "
            f"{m['detection'].get('recall', float('nan')):.2f} "
            f"({m['detection'].get('n_found')} features found, "
            f"{m['detection'].get('n_truth')} removed).", "",
            "## Per element", "", "| element | features | accuracy (all) | near reference |",
            "| --- | --- | --- | --- |"]
  for k, v in m["attribution_per_element"].items():
    lines_.append(f"| {k[:-2]} | {v['n_features']} | {v['accuracy_all']:.0%} | "
                  f"{v['accuracy_near_reference']:.0%} |")
  resp = m.get("owner_response_reference_star", {})
  if resp:
    lines_ += ["", "## Why the attribution falls short (the mock world's own derivatives)", "",
               f"With the world's own derivative differences (∂truth/∂Y − ∂synthetic/∂Y) at "
               f"the reference star, the same ranking attributes "
               f"{m['attribution_accuracy_true_derivatives']:.0%} of the removed features: the "
               "method's ceiling here. The model's added lines respond to their element as "
               "below (median over the element's removed features of the derivative difference "
               "summed over the feature, per dex; 'strongest' is the abundance with the most "
               "negative median). The label sets tie every abundance to [Fe/H] (Pearson r "
               f"{_r_range(m)}), so a transfer can predict a missing line from other elements' "
               "lines.", "",
               "| element | features | own label: model | own label: truth | model / truth | "
               "strongest in the model | strongest in the truth |",
               "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, v in resp.items():
      lines_.append(f"| {k[:-2]} | {v['n_features']} | {v['own_model']:+.3f} | "
                    f"{v['own_truth']:+.3f} | {v['own_ratio']:.2f} | {v['top_model'][:-2]} "
                    f"({v['top_model_value']:+.3f}) | {v['top_truth'][:-2]} |")
  rc = m.get("attribution_reference_star_raw_sums")
  if rc:
    lines_ += ["", "The ranking divides each label's summed difference by its background (module "
               "`lines.attribution`), so that labels that change many lines a little do not "
               f"win everywhere. By raw sums instead, the reference star's attribution is "
               f"{rc['accuracy']:.0%} (Fe {rc['fe_accuracy']:.0%}, against "
               f"{rc['fe_accuracy_normalized']:.0%} normalized), and on the world's own "
               f"derivatives {rc['true_derivatives_accuracy']:.0%}. The two rankings agree on "
               f"{rc['agreement']:.0%} of the features and are right on "
               f"{rc['accuracy_where_agree']:.0%} of those: where they differ, the model's "
               "added line responds to several labels with similar strength, and no ranking "
               "can tell its owner."]
  lines_ += pretrained_curve_lines(m)
  lines_ += sensitivity_table(m)
  lines_ += ["", "## Figures", ""] + [f"- [{p}]({p})" for p in m.get("figures", [])]
  return "\n".join(lines_) + "\n"
