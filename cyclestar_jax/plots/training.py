"""Training curves, Table 1, and the diagnostics of the trainer and the emulator trainer."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cyclestar_jax import resources
from cyclestar_jax.plots._base import (
    WAVE_LABEL,
    _bottom_legend,
    _figure,
    _label_tex,
    _plain_log_axis,
    _save,
    _tex,
    chip_slices,
)


def fig_training_curve(series: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       path: str | os.PathLike, *, floor: float | None = None,
                       baseline: float | None = None,
                       ylabel: str = "paired χ²_R (|r| ≤ 5)",
                       xlabel: str = "training time (min)") -> str:
  """A validation metric against training time or iterations, one line per run.

  Args:
    series: run name → (x [T] minutes or iterations, y [T] metric).
    path: output PNG.
    floor: the best any model can do (e.g. χ²_R against the noise-free instrument), dashed.
    baseline: the value without transfer, dashed.
    ylabel, xlabel: axis labels (pass xlabel="iterations" for iteration counts).

  The y axis is logarithmic when the values span more than a factor 20.
  """
  fig = _figure(7.0, 4.3)
  ax = fig.subplots()
  ys = []
  for k, (name, (x, y)) in enumerate(series.items()):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ax.plot(x, y, "o-" if x.size <= 30 else "-", ms=3.5, lw=1.3, color=f"C{k}", label=name)
    ys.append(y)
  if floor is not None:
    ax.axhline(floor, color="k", ls="--", lw=1.0, label=f"floor (best possible) = {floor:.3g}")
  if baseline is not None:
    ax.axhline(baseline, color="C3", ls="--", lw=1.0, label=f"no transfer = {baseline:.3g}")
  v = np.concatenate([*ys, [floor or np.nan, baseline or np.nan]])
  v = v[np.isfinite(v) & (v > 0)]
  if v.size and v.max() / v.min() > 20:
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(_tex(ylabel))
  ax.grid(alpha=0.3, lw=0.5)
  ax.legend(fontsize=8, framealpha=0.9)
  return _save(fig, path)


def fig_gain_curve(rows: list[dict], path: str | os.PathLike, *,
                   labels: tuple[str, ...] = ("Teff", "logg", "Fe_H"),
                   eq9: Mapping[str, float] | None = None) -> str:
  """The label-sensitivity curve of a training (`pipeline.curve`): a stopping signal.

  Left: each label's gain of T_synth→obs∘Payne against Payne (solid: needs no truth) and,
  where present, against the truth (dashed), with the trainer's paired val χ² on a second axis.
  Right (when the rows carry `<label>_scatter`): Eq. 11's label scatter against the truth over
  Eq. 9's (`eq9`), below 1 where Eq. 11 is the better fit.

  Args:
    rows: [{"step", "paired_val_chi2", "<label>_transfer_gain", "<label>_csn_gain",
      "<label>_scatter"}], oldest first.
    path: output PNG.
    labels: label names to draw.
    eq9: Eq. 9's {"<label>_scatter"} on the same stars.
  """
  step = np.array([r["step"] for r in rows], np.float64)
  scored = eq9 is not None and all(f"{k}_scatter" in r for r in rows for k in labels)
  fig = _figure(11.0 if scored else 6.5, 4.2)
  axes = fig.subplots(1, 2 if scored else 1)
  ax = axes[0] if scored else axes
  for k, name in enumerate(labels):
    g = [r.get(f"{name}_transfer_gain", np.nan) for r in rows]
    ax.plot(step, g, "o-", ms=3.5, color=f"C{k}", label=_tex(f"{_label_tex(name)}: vs Payne"))
    if all(f"{name}_csn_gain" in r for r in rows):
      ax.plot(step, [r[f"{name}_csn_gain"] for r in rows], "s--", ms=3, color=f"C{k}",
              alpha=0.7, label=_tex(f"{_label_tex(name)}: vs truth"))
  ax.axhline(1.0, color="k", lw=0.8, ls=":")
  ax.set_xlabel("iterations")
  ax.set_ylabel(_tex("gain of T_synth→obs∘Payne (1 = full response)"))
  chi2 = [r.get("paired_val_chi2") for r in rows]
  if any(c is not None for c in chi2):
    ax2 = ax.twinx()
    ax2.plot(step, [np.nan if c is None else c for c in chi2], "k-", lw=1.0, alpha=0.5,
             label="paired val χ² (right axis)")
    ax2.set_ylabel(_tex("paired val χ²"))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, framealpha=0.9, loc="lower right")
  else:
    ax.legend(fontsize=7, framealpha=0.9, loc="lower right")
  ax.grid(alpha=0.3, lw=0.5)
  ax.set_title("label sensitivity along the training", fontsize=9)
  if scored:
    ax = axes[1]
    for k, name in enumerate(labels):
      ratio = [r[f"{name}_scatter"] / eq9[f"{name}_scatter"] for r in rows]
      ax.plot(step, ratio, "o-", ms=3.5, color=f"C{k}", label=_tex(_label_tex(name)))
    ax.axhline(1.0, color="k", lw=0.9, ls="--", label="Eq. 9 (The Payne)")
    ax.set_xlabel("iterations")
    ax.set_ylabel("Eq. 11 label scatter / Eq. 9's (vs the truth)")
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(fontsize=8, framealpha=0.9)
    ax.set_title("labels against the truth (mock world)", fontsize=9)
  return _save(fig, path)


def fig_recovery_vs_fraction(fractions: np.ndarray,
                             errors: np.ndarray | Mapping[str, Any],
                             path: str | os.PathLike, *,
                             baseline: float | np.ndarray | None = None,
                             title: str = "") -> str:
  """Paper Table 1 as a plot: missing-line recovery error against the masked fraction.

  Args:
    fractions: [F] fraction of features masked, in [0, 1] or in % (values > 1).
    errors: [F] mean |x_recovered − x_true|/x_true over masked pixels in %, or a dict
      name → [F] for several curves, or name → (fractions [G], errors [G]) for a curve on
      its own fractions (e.g. every row of the paper's Table 1 beside a coarser sweep).
    path: output PNG.
    baseline: the error without recovery (the masked synthetic spectrum against the truth), a
      number or [F], dashed.
    title: figure title.

  Logarithmic y axis; each point's value is written next to it.
  """
  def percent(f) -> np.ndarray:
    f = np.asarray(f, np.float64)
    return f * 100.0 if np.nanmax(np.abs(f), initial=0.0) <= 1.0 else f

  pct = percent(fractions)
  curves = dict(errors) if isinstance(errors, Mapping) else {"Cycle-StarNet": errors}
  fig = _figure(6.5, 4.3)
  ax = fig.subplots()
  vals = []
  for k, (name, e) in enumerate(curves.items()):
    x = pct
    if isinstance(e, tuple):
      x, e = percent(e[0]), e[1]
    e = np.asarray(e, np.float64)
    ax.plot(x, e, "o-", ms=4, lw=1.3, color=f"C{k}", label=name)
    vals.append(e)
    for xi, yi in zip(x, e, strict=True):
      if np.isfinite(yi) and yi > 0:
        ax.annotate(f"{yi:.2f}", (xi, yi), textcoords="offset points",
                    xytext=(0, 6 if k % 2 == 0 else -11), ha="center", fontsize=7,
                    color=f"C{k}")
  if baseline is not None:
    b = np.broadcast_to(np.asarray(baseline, np.float64), pct.shape)
    ax.plot(pct, b, "--", color="0.4", lw=1.0, label="no recovery (masked synthetic)")
    vals.append(b)
  v = np.concatenate(vals) if vals else np.array([])
  if (v[np.isfinite(v)] > 0).any():
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
  ax.set_xlabel("features masked in the synthetic spectra (%)")
  ax.set_ylabel("recovery error in masked pixels (%)")
  ax.grid(alpha=0.3, lw=0.5, which="both")
  ax.legend(fontsize=8, framealpha=0.9)
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, path)


def plot_progress(metrics: Mapping[str, list[dict]], png_path: str | os.PathLike) -> str | None:
  """Training progress like the paper's Fig. B1: distances (top), adversarial losses (bottom).

  Args:
    metrics: the trainer's log, {"train": [lines], "val": [lines]}
      (`metrics_log.read_metrics` of a run's metrics.jsonl); with paired validation lines a
      third panel shows the paired transfer residuals.
    png_path: output PNG.

  Returns the figure path, or None if there is nothing to plot yet.
  """
  m = metrics["train"]
  if not m:
    return None
  steps = [d["step"] for d in m]
  paired = [d for d in metrics["val"] if "val_paired_obs_bias" in d]
  fig = _figure(8, 9 if paired else 6.5)
  axes = fig.subplots(3 if paired else 2, 1, sharex=True)
  top, bottom = axes[0], axes[1]
  for k, label in (("rec_synth", r"$X_{synth\to synth}$"),
                   ("cc_synth", r"$X_{synth\to obs\to synth}$"),
                   ("rec_obs", r"$X_{obs\to obs}$"), ("cc_obs", r"$X_{obs\to synth\to obs}$")):
    top.plot(steps, [d[k] for d in m], label=label)
  top.set_yscale("log")
  _plain_log_axis(top.yaxis)
  top.set_ylabel("distance (Eq. 3, 7)")
  top.legend(fontsize=8, ncol=2)
  for k, label in (("gen_synth", r"gen $X_{obs\to synth}$"), ("gen_obs", r"gen $X_{synth\to obs}$"),
                   ("dis_real_synth", r"$C_{synth}(X_{true})$"),
                   ("dis_fake_synth", r"$C_{synth}(X_{fake})$"),
                   ("dis_real_obs", r"$C_{obs}(X_{true})$"),
                   ("dis_fake_obs", r"$C_{obs}(X_{fake})$")):
    bottom.plot(steps, [d[k] for d in m], label=label)
  bottom.set_ylabel("BCE (Eq. 4)")
  bottom.legend(fontsize=8, ncol=3)
  if paired:  # paired validation: x_synth→obs vs x_obs (normalized), x_obs→synth vs x_synth (%)
    ax, vs = axes[2], [d["step"] for d in paired]
    ax.plot(vs, [d["val_paired_obs_bias"] for d in paired], "o-", label="obs: bias (σ)")
    ax.plot(vs, [d["val_paired_obs_scatter"] for d in paired], "s-", label="obs: scatter (σ)")
    ax.plot(vs, [100 * d["val_paired_synth_bias"] for d in paired], "o--",
            label="synth: bias (%)")
    ax.plot(vs, [100 * d["val_paired_synth_scatter"] for d in paired], "s--",
            label="synth: scatter (%)")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylabel("paired val residuals")
    ax.legend(fontsize=8, ncol=2)
  axes[-1].set_xlabel("batch iterations")
  return _save(fig, png_path)


def plot_emulator_residuals(residual: np.ndarray, path: str | os.PathLike, *,
                            wavelength: np.ndarray | None = None, title: str = "",
                            targets: tuple[float, float] | None = None) -> Path:
  """PNG of |emulator − truth| against wavelength for the three APOGEE chips.

  Per pixel: the median |residual| over spectra (line) and its 16–84 and 1–99 percentile
  bands; dashed lines mark the targets for the median and the 99th percentile.

  Args:
    residual: [N, n_pix] emulator − truth in normalized flux; NaN marks pixels that do
      not count (masked), left out of the percentiles.
    path: output PNG (written atomically).
    wavelength: [n_pix] Å; default the APOGEE grid (if n_pix is 7214) or pixel index.
    title: figure title.
    targets: (median, 99th percentile) target levels, drawn dashed (`emulator_train`'s
      TARGET_MEDIAN_ABS and TARGET_P99_ABS); None: no target lines.
  """
  abs_res = np.abs(np.asarray(residual, np.float32))  # NaN (masked) pixels stay NaN
  n_pix = abs_res.shape[1]
  in_a = wavelength is not None or n_pix == resources.N_PIX
  if wavelength is None:
    wavelength = resources.wavelength() if n_pix == resources.N_PIX else np.arange(n_pix)
  wavelength = np.asarray(wavelength, np.float64)
  chips = chip_slices(wavelength) if in_a else [slice(0, n_pix)]
  with warnings.catch_warnings():  # a pixel masked in every spectrum has no percentile: NaN
    warnings.simplefilter("ignore", RuntimeWarning)
    q = np.nanpercentile(abs_res, [1, 16, 50, 84, 99], axis=0)
  floor = max(float(q[q > 0].min()) if (q > 0).any() else 1e-8, 1e-8)
  q = np.where(np.isnan(q), np.nan, np.maximum(q, floor))
  fig = _figure(12, 2.6 * len(chips) + 0.6)
  axes = fig.subplots(len(chips), 1, squeeze=False)[:, 0]
  names = ("blue", "green", "red") if len(chips) == 3 else ("",) * len(chips)
  for ax, c, name in zip(axes, chips, names, strict=True):
    wl = wavelength[c]
    ax.fill_between(wl, q[0, c], q[4, c], color="C0", alpha=0.2, lw=0, label="1–99%")
    ax.fill_between(wl, q[1, c], q[3, c], color="C0", alpha=0.45, lw=0, label="16–84%")
    ax.plot(wl, q[2, c], color="C0", lw=0.6, label="median")
    for level, lab in zip(targets or (), ("targets: median, 99%", None)[:len(targets or ())],
                          strict=True):
      ax.axhline(level, color="k", ls="--", lw=0.6, label=lab)
    ax.set_yscale("log")
    if wl.size > 1:
      ax.set_xlim(wl[0], wl[-1])
    ax.set_ylabel(f"|residual| ({name} chip)" if name else "|residual|")
  _bottom_legend(fig, axes[0].get_legend_handles_labels()[0])
  axes[-1].set_xlabel(WAVE_LABEL if in_a else "pixel")
  fig.suptitle(title or f"|emulator − truth| over {len(abs_res)} held-out spectra")
  path = Path(path)
  _save(fig, path)
  return path


def plot_emulator_run(residual: np.ndarray, summary: Mapping[str, Any],
                      path: str | os.PathLike) -> Path:
  """`residuals.png` of an emulator training run: `plot_emulator_residuals` with the targets
  and the held-out median and 99th percentile of `summary` (`emulator_train.train_emulator`'s
  metrics dict: "targets" {"median_abs", "p99_abs"}, "held_out" {"median_abs", "p99_abs"}).

  Args:
    residual: [N, n_pix] held-out emulator − truth (NaN: masked).
    summary: the run's metrics dict.
    path: output PNG.
  """
  held, targets = summary["held_out"], summary["targets"]
  return plot_emulator_residuals(
      residual, path, targets=(targets["median_abs"], targets["p99_abs"]),
      title=(f"|emulator − truth|, {len(residual)} held-out spectra: median "
             f"{held['median_abs']:.2e}, 99th percentile {held['p99_abs']:.2e}"))
