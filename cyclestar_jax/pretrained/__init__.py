"""Pretrained weights of the main job on the default mock world, shipped with the package.

`generator.npz` (Cycle-StarNet's generator, the training's moving average, float32, written by
`checkpoint.save_generator_npz`) and `emulator.npz` (The Payne's layout, float32) come from one
CPU run of `python -m experiments.apogee --preset long` and `python -m
experiments.export_pretrained` on that run (the generator's `metadata_json` holds the
commands, the step, the mock world and the data sizes, the run's metrics and its label curve;
`README.md` beside them says the same for people). `python -m experiments.apogee` on a CPU uses
them on that mock world: it makes the data (the world is deterministic: the same seed and
sizes give the same spectra), fits and reports in minutes instead of training for an hour.

They fit only the world they were trained on: `check_world` refuses another seed, other
settings or other data sizes, and the pipeline refuses them for the user's own files.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from functools import cache
from pathlib import Path

import jax
import numpy as np

from cyclestar_jax import checkpoint, emulator, h5io, mock
from cyclestar_jax.fileio import atomic_write_text

# CYCLESTAR_PRETRAINED_DIR points the loader at another folder of weights (written by
# `export_run`), e.g. weights a group trained on its own mock world.
DIR = Path(os.environ.get("CYCLESTAR_PRETRAINED_DIR") or Path(__file__).parent)
GENERATOR = DIR / "generator.npz"
EMULATOR = DIR / "emulator.npz"


class PretrainedError(ValueError):
  """The pretrained weights cannot be used for this run (the message says why)."""


def available() -> bool:
  """Whether the package ships both files."""
  return GENERATOR.is_file() and EMULATOR.is_file()


@cache
def metadata() -> dict:
  """The generator's `metadata_json`: "commands", "preset", "step", "seed", "sizes"
  {train, val, test}, "world" (the mock `WorldConfig` as a dict), "metrics", "curve"."""
  if not available():
    raise PretrainedError(f"{DIR}: no pretrained weights in this installation (generator.npz "
                          "and emulator.npz); train with --train or --preset cpu")
  return checkpoint.generator_metadata(GENERATOR)


def _normalized(d: dict) -> dict:
  """A dict as JSON would give it back (tuples → lists), for comparing settings."""
  return json.loads(json.dumps(d))


def check_world(seed: int, sizes) -> None:
  """Refuse (PretrainedError naming the first difference) a mock world other than the
  weights' own: the default `WorldConfig` with this seed, data of these `mock.DataSizes`."""
  meta = metadata()
  want = _normalized(dataclasses.asdict(mock.WorldConfig(seed=seed)))
  have = meta.get("world", {})
  for key in sorted(set(want) | set(have)):
    if want.get(key) != have.get(key):
      raise PretrainedError(
          f"{GENERATOR}: the pretrained weights were trained on the mock world with {key} = "
          f"{have.get(key)!r}, this run's has {want.get(key)!r}; train with --train (or a "
          "--preset)")
  have = {k: v for k, v in (meta.get("sizes") or {}).items() if k != "train"}
  want = {k: v for k, v in _normalized(sizes.as_dict()).items() if k != "train"}
  if have != want:  # the evaluation's stars (the training split is not remade, see eval_sizes)
    raise PretrainedError(f"{GENERATOR}: the pretrained weights were evaluated on {have} stars "
                          f"per split, this run asks for {want}")


def eval_sizes(sizes):
  """The mock data a run with pretrained weights makes: the val and test splits of `sizes`
  (`mock.DataSizes`), no training split. The world seeds every split and block on its own, so
  these spectra equal those of the run that made the weights."""
  return dataclasses.replace(sizes, n_train=0)


def describe() -> str:
  """One line for the console and the report: what the weights are and where they come from."""
  meta = metadata()
  return (f"pretrained weights ({meta.get('preset')} preset, {meta.get('step')} iterations on "
          f"the mock world of seed {meta.get('seed')}; {meta.get('made_on', 'a CPU')})")


def export_run(run_dir: str | Path, *, step: int | None = None, curve: dict | None = None,
               out_dir: str | Path = DIR) -> dict:
  """Write a main-job run's generator and emulator as pretrained weights (float32).

  Args:
    run_dir: a finished `experiments.apogee` run folder on the mock world (data/obs.h5,
      emulator/emulator.npz, model/, run.json, metrics.json).
    step: the checkpoint to ship (default: the newest, which the run's metrics.json scored).
    curve: `benchmarks.label_curve`'s output for this run (its rows go into the metadata).
    out_dir: where generator.npz, emulator.npz and README.md go (default: this package).

  Returns:
    The metadata written into generator.npz.
  """
  run_dir, out_dir = Path(run_dir), Path(out_dir)
  run = json.loads((run_dir / "run.json").read_text())
  ident = run["identity"]
  if ident.get("data") != "mock":
    raise PretrainedError(f"{run_dir}: not a run on the mock world (data = {ident.get('data')})")
  metrics_file = run_dir / "metrics.json"
  cycle = checkpoint.load_cycle_model(run_dir / "model", step=step)  # None: the newest valid
  with h5io.SpectraFile(run_dir / "data" / "obs.h5") as f:
    world = f.attrs["world"]
    sizes = {s: f.n(s) for s in ("train", "val", "test")}
  run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
  # The run's metrics belong to the shipped weights only if they scored that checkpoint.
  scored = (run_metrics.get("model_checkpoint") or {}).get("step") == cycle.step
  meta = {
      "commands": [f"python -m experiments.apogee --preset {ident['preset']} --out {run_dir}",
                   f"python -m experiments.export_pretrained {run_dir}"
                   + (f" --step {step}" if step is not None else "")],
      "preset": ident["preset"], "step": cycle.step, "seed": ident["seed"], "sizes": sizes,
      "world": _normalized(dict(world)),
      "made_on": f"{platform.machine()} CPU, {jax.device_count()} device(s), "
                 f"{datetime.date.today().isoformat()}",
      "metrics": _summary(run_metrics) if scored else {},
      # The label curve when measured, else the gains the run's own evaluation computed.
      "curve": (curve or {}).get("rows") or (run_metrics.get("sensitivity_curve") or {}).get(
          "rows", []),
      "curve_eq9": (curve or {}).get("eq9")}
  out_dir.mkdir(parents=True, exist_ok=True)
  em = emulator.load_emulator(run_dir / "emulator" / "emulator.npz")
  params32 = jax.tree.map(lambda a: np.asarray(a, np.float32), em.params)
  emulator.save_emulator(out_dir / EMULATOR.name, params32, em.y_min, em.y_max,
                         metadata={"pretrained_for": meta["commands"][0]})
  checkpoint.save_generator_npz(out_dir / GENERATOR.name, cycle, metadata=meta)
  atomic_write_text(out_dir / "README.md", render_readme(meta))
  metadata.cache_clear()
  return meta


def _summary(m: dict) -> dict:
  """The numbers of a run's metrics.json that the pretrained weights carry."""
  keys = ("fit_emulator_chi2r", "fit_csn_chi2r", "chi2r_ratio_eq9_over_eq11",
          "paired_transfer_chi2r", "train_iterations", "train_seconds")
  out = {k: m[k] for k in keys if k in m}
  out["labels"] = {stem: {name: m["fits"][stem]["label_errors"][name]
                          for name in ("Teff", "logg", "Fe_H")}
                   for stem in ("eq9", "eq11") if "label_errors" in m.get("fits", {}).get(stem, {})}
  out["at_box_edge"] = {stem: m["fits"][stem].get("at_box_edge_fraction")
                        for stem in ("eq9", "eq11") if stem in m.get("fits", {})}
  return out


def render_readme(meta: dict) -> str:
  """README.md of the pretrained weights: provenance, numbers, how they are used."""
  lines = ["# Pretrained weights of the main job (mock APOGEE world)", "",
           "`generator.npz`: Cycle-StarNet's generator (moving average of the training, float32); "
           "`emulator.npz`: The Payne (float32). Made on " + meta["made_on"] + " by:", "",
           "```bash", *meta["commands"], "```", "",
           f"Checkpoint {meta['step']} of the `{meta['preset']}` preset, mock world of seed "
           f"{meta['seed']}, {meta['sizes']} stars per split. `python -m experiments.apogee` "
           "on a CPU uses them on that world (and refuses them for any other data); `--train` "
           "trains from scratch.", ""]
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
  return "\n".join(lines)
