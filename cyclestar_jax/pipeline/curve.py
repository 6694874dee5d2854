"""The label-sensitivity curve of a training run: a stopping signal that needs no truth.

The trainer's paired χ² flattens long before Eq. 11's labels stop improving (benchmarks/README.md,
"Training length"): the χ² measures how well T_synth→obs reproduces spectra, not how faithfully
it passes each label's lines. The transfer's label gain (`sensitivity`: the least-squares scale
of ∂T_synth→obs(Payne(y))/∂y_j in ∂Payne/∂y_j) measures the latter, and needs only the emulator,
the model and observed spectra. A fit moves label j by about 1/gain_j times the true change, so
the training is long enough for label j when its gain has stopped rising.

`sensitivity_curve` computes the gains at every kept checkpoint of a run (and, on the mock, the
gains against the world's truth); `label_errors_row` scores fits against the truth, for the
benchmark that checks whether the gains track the label errors (`benchmarks/label_curve.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cyclestar_jax import chain, checkpoint, metrics, sensitivity
from cyclestar_jax.metrics_log import read_metrics

CURVE_LABELS = ("Teff", "logg", "Fe_H")
N_CURVE_STARS = 8  # stars per checkpoint (~6 s of derivative spectra each on a 2-core CPU)
PAIRED_CHI2_KEY = "val_paired_obs_chi2"  # the trainer's pooled paired val χ² (metrics.jsonl)


def kept_steps(model_dir: str | Path) -> list[int]:
  """Steps of the complete checkpoints of a training run folder, oldest first."""
  ckpt = Path(model_dir) / "checkpoints"
  if not ckpt.is_dir():
    return []
  return sorted(int(p.name) for p in ckpt.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file())


def paired_chi2_by_step(model_dir: str | Path) -> dict[int, float]:
  """{step: the trainer's paired val χ²} from a run's metrics.jsonl ({} without paired val)."""
  path = Path(model_dir) / "metrics.jsonl"
  if not path.is_file():
    return {}
  return {int(d["step"]): float(d[PAIRED_CHI2_KEY]) for d in read_metrics(path)["val"]
          if PAIRED_CHI2_KEY in d}


def checkpoint_order(model_dir: str | Path, every: int, steps: list[int] | None = None
                     ) -> list[int]:
  """The checkpoints a curve visits: `steps` in their order (each must be kept, else
  ValueError naming the missing ones), or None: every kept multiple of `every`, oldest first."""
  kept = kept_steps(model_dir)
  if steps is not None and set(steps) - set(kept):
    raise ValueError(f"{model_dir}: no checkpoint at --steps {sorted(set(steps) - set(kept))}; "
                     f"kept: {kept}")
  return [k for k in kept if k % every == 0] if steps is None else list(steps)


def add_rows(done: dict, model_dir: str | Path, steps: list[int], row_fn):
  """Extend a curve's `done["rows"]` (a previous output, possibly empty) with a row for each
  of `steps` not already there: {"step", "paired_val_chi2" (the trainer's), **row_fn(step)}.
  The rows stay sorted by step; yields `done` after each new row, so the caller can save as
  it goes."""
  rows = {r["step"]: r for r in done.get("rows", [])}
  chi2 = paired_chi2_by_step(model_dir)
  for step in steps:
    if step in rows:
      continue
    rows[step] = {"step": step, "paired_val_chi2": chi2.get(step), **row_fn(step)}
    done["rows"] = [rows[k] for k in sorted(rows)]
    yield done
  done["rows"] = [rows[k] for k in sorted(rows)]


def gains_row(em, cycle, x_obs: np.ndarray, y: np.ndarray, world=None) -> dict[str, float]:
  """Label gains of one model at the labels y [n, 25] of observed spectra x_obs [n, 7214]:
  `<label>_transfer_gain` (truth-free: T_synth→obs∘Payne against Payne) and, with the mock
  `world`, `<label>_csn_gain` (against the world's truth), for `CURVE_LABELS`."""
  s = sensitivity.label_sensitivity(chain.ModelChain(em, cycle), y, x_obs, world)
  row = {}
  for name in CURVE_LABELS:
    lab = s["labels"][name]
    row[f"{name}_transfer_gain"] = lab["transfer_gain"]
    if "csn_gain" in lab:
      row[f"{name}_csn_gain"] = lab["csn_gain"]
  return row


def sensitivity_curve(model_dir: str | Path, em, x_obs: np.ndarray, y: np.ndarray, world=None,
                      *, steps: list[int] | None = None) -> list[dict]:
  """`gains_row` at each kept checkpoint (or `steps`) of a training run, with its paired χ².

  Args:
    model_dir: the Cycle-StarNet run folder (checkpoints/, metrics.jsonl, config.json).
    em: the emulator.
    x_obs, y: [n, 7214] observed spectra and [n, 25] their labels (the truth on the mock, the
      catalogue's on real data); `N_CURVE_STARS` of them are enough.
    world: the mock `WorldConfig` (adds the gains against the truth), or None.
    steps: the checkpoints to use (default: every kept one).

  Returns:
    [{"step", "paired_val_chi2" (None without paired val), "<label>_transfer_gain", ...}],
    oldest first.
  """
  chi2 = paired_chi2_by_step(model_dir)
  out = []
  for step in kept_steps(model_dir) if steps is None else steps:
    cycle = checkpoint.load_cycle_model(model_dir, step=step)
    out.append({"step": int(step), "paired_val_chi2": chi2.get(int(step)),
                **gains_row(em, cycle, x_obs, y, world)})
  return out


def label_errors_row(y_fit: np.ndarray, y_true: np.ndarray, at_edge: np.ndarray
                     ) -> dict[str, float]:
  """Bias and scatter (half the 16–84 width) of fitted − true per `CURVE_LABELS` label, and
  the share of fits at the emulator's box edge."""
  errs = metrics.label_errors(y_fit, y_true)
  row = {"at_box_edge": float(np.mean(at_edge))}
  for name in CURVE_LABELS:
    row[f"{name}_bias"] = errs[name]["bias"]
    row[f"{name}_scatter"] = errs[name]["scatter"]
  return row

