"""Write a finished job run on the mock world as pretrained weights (export_pretrained).

`export_run` reads the run folder (run.json's identity says which job: the main job or the line
identification), writes the generator's moving average and the emulator in float32 with the
provenance (`metadata`), and renders README.md beside them (`render_readme`).
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import jax
import numpy as np

from cyclestar_jax import checkpoint, emulator, h5io
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.pretrained import PretrainedError, Weights, _normalized

_SCRIPTS = {"apogee": "experiments.apogee", "new_lines": "experiments.new_lines"}
_CURVE_SCRIPTS = {"apogee": "benchmarks.label_curve", "new_lines": "benchmarks.line_curve"}


def _identity(run_dir: Path) -> dict:
  """A run folder's identity (its run.json's)."""
  return json.loads((run_dir / "run.json").read_text())["identity"]


def run_job(run_dir: str | Path) -> str:
  """The job of a run folder (`pretrained.JOBS`), from its run.json."""
  return _identity(Path(run_dir)).get("job", "apogee")


def export_run(run_dir: str | Path, *, step: int | None = None, curve: dict | None = None,
               curve_file: str | None = None, out_dir: str | Path | None = None) -> dict:
  """Write a job run's generator and emulator as pretrained weights (float32).

  Args:
    run_dir: a finished `experiments.apogee` or `experiments.new_lines` run folder on the mock
      world (data/obs.h5, emulator/emulator.npz, model/, run.json, metrics.json).
    step: the checkpoint to ship (default: the newest, which the run's metrics.json scored).
    curve: the run's curve along the training (`benchmarks.label_curve`'s output for the main
      job, `benchmarks.line_curve`'s for the line identification); its rows go into the metadata.
    curve_file: where `curve` was read from, for the commands recorded.
    out_dir: where generator.npz, emulator.npz and README.md go (default: the job's folder in
      the package, `Weights(job).dir`).

  Returns:
    The metadata written into generator.npz.
  """
  run_dir = Path(run_dir)
  ident = _identity(run_dir)
  job = ident.get("job", "apogee")
  out_dir = Path(out_dir) if out_dir is not None else Weights(job).dir
  if ident.get("data", "mock") != "mock":
    raise PretrainedError(f"{run_dir}: not a run on the mock world (data = {ident.get('data')})")
  metrics_file = run_dir / "metrics.json"
  cycle = checkpoint.load_cycle_model(run_dir / "model", step=step)  # None: the newest valid
  with h5io.SpectraFile(run_dir / "data" / "obs.h5") as f:
    world = f.attrs["world"]
    sizes = {s: f.n(s) for s in ("train", "val", "test")}
  run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
  # The run's metrics belong to the shipped weights only if they scored that checkpoint.
  scored_step = ((run_metrics.get("model_checkpoint") or {}).get("step")
                 or run_metrics.get("train_iterations"))
  summary = _SUMMARIES[job](run_metrics) if scored_step == cycle.step else {}
  meta = {
      "job": job,
      "commands": [f"python -m {_SCRIPTS[job]} --preset {ident['preset']} --out {run_dir}"]
      + ([f"python -m {_CURVE_SCRIPTS[job]} {run_dir} --out {curve_file}"] if curve_file else [])
      + [f"python -m experiments.export_pretrained {run_dir}"
         + (f" --step {step}" if step is not None else "")
         + (f" --curve {curve_file}" if curve_file else "")],
      "preset": ident["preset"], "step": cycle.step, "seed": ident["seed"], "sizes": sizes,
      "world": _normalized(dict(world)),
      "made_on": f"{platform.machine()} CPU, {jax.device_count()} device(s), "
                 f"{datetime.date.today().isoformat()}",
      "metrics": summary,
      # The curve when measured, else the gains the main job's own evaluation computed.
      "curve": (curve or {}).get("rows") or (run_metrics.get("sensitivity_curve") or {}).get(
          "rows", []),
      "curve_eq9": (curve or {}).get("eq9")}
  out_dir.mkdir(parents=True, exist_ok=True)
  em = emulator.load_emulator(run_dir / "emulator" / "emulator.npz")
  params32 = jax.tree.map(lambda a: np.asarray(a, np.float32), em.params)
  emulator.save_emulator(out_dir / "emulator.npz", params32, em.y_min, em.y_max,
                         metadata={"pretrained_for": meta["commands"][0]})
  checkpoint.save_generator_npz(out_dir / "generator.npz", cycle, metadata=meta)
  atomic_write_text(out_dir / "README.md", render_readme(meta))
  return meta


def _main_summary(m: dict) -> dict:
  """The numbers of a main-job run's metrics.json that the pretrained weights carry."""
  keys = ("fit_emulator_chi2r", "fit_csn_chi2r", "chi2r_ratio_eq9_over_eq11",
          "paired_transfer_chi2r", "train_iterations", "train_seconds")
  out = {k: m[k] for k in keys if k in m}
  out["labels"] = {stem: {name: m["fits"][stem]["label_errors"][name]
                          for name in ("Teff", "logg", "Fe_H")}
                   for stem in ("eq9", "eq11") if "label_errors" in m.get("fits", {}).get(stem, {})}
  out["at_box_edge"] = {stem: m["fits"][stem].get("at_box_edge_fraction")
                        for stem in ("eq9", "eq11") if stem in m.get("fits", {})}
  return out


def _new_lines_summary(m: dict) -> dict:
  """The numbers of a line-identification run's metrics.json that the weights carry."""
  keys = ("recovery_error_pct", "no_recovery_error_pct", "attribution_accuracy",
          "attribution_accuracy_reference_star", "n_label_sets", "train_iterations",
          "train_seconds")
  out = {k: m[k] for k in keys if k in m}
  fe = (m.get("attribution_per_element") or {}).get("Fe_H")
  if fe:
    out["attribution_fe"] = fe["accuracy_all"]
  return out


_SUMMARIES = {"apogee": _main_summary, "new_lines": _new_lines_summary}


def render_readme(meta: dict) -> str:
  """README.md of a job's pretrained weights: provenance, numbers, how they are used."""
  job = meta.get("job", "apogee")
  title = {"apogee": "the main job", "new_lines": "the line identification"}[job]
  lines = [f"# Pretrained weights of {title} (mock APOGEE world)", "",
           "`generator.npz`: Cycle-StarNet's generator (moving average of the training, float32); "
           "`emulator.npz`: The Payne (float32). Made on " + meta["made_on"] + " by:", "",
           "```bash", *meta["commands"], "```", "",
           f"Checkpoint {meta['step']} of the `{meta['preset']}` preset, mock world of seed "
           f"{meta['seed']}, {meta['sizes']} stars per split. `python -m {_SCRIPTS[job]}` "
           "on a CPU uses them on that world (and refuses them for any other data); `--train` "
           "trains from scratch.", ""]
  return "\n".join(lines + (_main_readme(meta) if job == "apogee" else _new_lines_readme(meta)))


def _new_lines_readme(meta: dict) -> list[str]:
  """The line identification's numbers: the run's own analysis, then its curve."""
  s, lines = meta.get("metrics") or {}, []
  if s:
    lines += [f"The run's own analysis ({s.get('n_label_sets')} label sets): recovery error "
              f"{s['recovery_error_pct']:.3f} % of the removed lines' depth against "
              f"{s['no_recovery_error_pct']:.3f} % without; attribution "
              f"{s['attribution_accuracy']:.0%} (Fe {s.get('attribution_fe', float('nan')):.0%}"
              f", the reference star {s['attribution_accuracy_reference_star']:.0%}).", ""]
  rows = meta.get("curve") or []
  if rows:
    lines += ["Along the training (`benchmarks.line_curve`, fewer label sets):", ""]
    lines += line_curve_table(rows)
  return lines


def line_curve_table(rows: list[dict]) -> list[str]:
  """A line-identification curve (`benchmarks.line_curve` rows) as a markdown table, for the
  weights' README and the report of a run that used them."""
  out = ["| iterations | recovery error | attribution all / Fe / reference star | added Fe "
         "lines' ∂/∂[Fe/H], model / truth | gains, no truth: Teff / log g / [Fe/H] | paired "
         "val χ² |", "| --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    chi2 = "–" if r.get("paired_val_chi2") is None else f"{r['paired_val_chi2']:.2f}"
    out.append(f"| {r['step']} | {r['recovery_error_pct']:.2f} % | "
               f"{r['attribution_accuracy']:.0%} / {r['attribution_fe']:.0%} / "
               f"{r['attribution_reference_star']:.0%} | {r['fe_own_response_ratio']:.2f} | "
               + " / ".join(f"{r[f'{k}_transfer_gain']:.2f}" for k in ("Teff", "logg", "Fe_H"))
               + f" | {chi2} |")
  return out + [""]


def _main_readme(meta: dict) -> list[str]:
  """The main job's numbers: the run's own fits, then its label curve (or gains alone)."""
  lines = []
  labels = (meta.get("metrics") or {}).get("labels") or {}
  if labels:
    edge = meta["metrics"].get("at_box_edge", {})
    lines += ["The run's own fits of its first test stars against "
              "the mock's truth (bias ± scatter, scatter = half the 16–84 width):", "",
              "| method | Teff (K) | log g | [Fe/H] | at box edge |",
              "| --- | --- | --- | --- | --- |"]
    for stem, title in (("eq9", "Eq. 9 (The Payne)"), ("eq11", "Eq. 11 (Cycle-StarNet)")):
      e = labels.get(stem)
      if e:
        lines.append(f"| {title} | {e['Teff']['bias']:+.0f} ± {e['Teff']['scatter']:.0f} | "
                     f"{e['logg']['bias']:+.2f} ± {e['logg']['scatter']:.2f} | "
                     f"{e['Fe_H']['bias']:+.3f} ± {e['Fe_H']['scatter']:.3f} | "
                     f"{100 * (edge.get(stem) or 0):.0f} % |")
    lines.append("")
  rows = meta.get("curve") or []
  if rows and "Teff_scatter" not in rows[0]:
    lines += ["Label gains of T_synth→obs∘Payne against Payne (Teff / log g / [Fe/H]; 1 = full "
              "response; they need no truth) along the training:", "",
              "| iterations | gains | paired val χ² |", "| --- | --- | --- |"]
    for r in rows:
      chi2 = "–" if r.get("paired_val_chi2") is None else f"{r['paired_val_chi2']:.2f}"
      lines.append(f"| {r['step']} | " + " / ".join(
          f"{r[f'{k}_transfer_gain']:.2f}" for k in ("Teff", "logg", "Fe_H")) + f" | {chi2} |")
    lines.append("")
  elif rows:
    lines += ["Eq. 11 labels of the test stars against the truth along the training (bias ± "
              "scatter, scatter = half the 16–84 width):", "",
              "| iterations | Teff (K) | log g | [Fe/H] | at box edge | paired val χ² |",
              "| --- | --- | --- | --- | --- | --- |"]

    def cells(r: dict) -> str:  # a curve row's labels and box edge (`curve.label_errors_row`)
      return (f"{r['Teff_bias']:+.0f} ± {r['Teff_scatter']:.0f} | "
              f"{r['logg_bias']:+.2f} ± {r['logg_scatter']:.2f} | "
              f"{r['Fe_H_bias']:+.3f} ± {r['Fe_H_scatter']:.3f} | {100 * r['at_box_edge']:.1f} %")
    for r in rows:
      chi2 = "–" if r.get("paired_val_chi2") is None else f"{r['paired_val_chi2']:.2f}"
      lines.append(f"| {r['step']} | {cells(r)} | {chi2} |")
    e9 = meta.get("curve_eq9")
    if e9:
      lines.append(f"| Eq. 9, same stars, start and step cap | {cells(e9)} | |")
    lines.append("")
  return lines
