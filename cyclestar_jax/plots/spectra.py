"""Spectra and reconstruction residuals (Figs. 5, 6) and the mock world's example view."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cyclestar_jax import metrics
from cyclestar_jax.fileio import save_figure
from cyclestar_jax.metrics import CLIP
from cyclestar_jax.plots._base import (
    DPI,
    WAVE_LABEL,
    ZOOMS,
    _as_2d,
    _band_chips,
    _bias_scatter,
    _bottom_legend,
    _chip_grid,
    _figure,
    _hline_chips,
    _plot_chips,
    _row_title,
    _save,
    _signed,
    _sym_limit,
    _wave_xlabel,
    chip_slices,
    percentile_band,
)


def fig_spectra_panel(wave: np.ndarray, spectra: Mapping[str, np.ndarray],
                      path: str | os.PathLike, *, title: str = "",
                      ylabel: str = "normalized flux") -> str:
  """Several spectra on one set of chip panels, with a legend.

  Args:
    wave: [P] Å.
    spectra: name → [P] flux (NaN pixels are gaps in the line).
    path: output PNG.
    title: figure title.
    ylabel: y-axis label.
  """
  wave = np.asarray(wave, np.float64)
  fig = _figure(12, 3.6)
  (axes,) = _chip_grid(fig, wave, 1)
  handles = []
  for k, (name, y) in enumerate(spectra.items()):
    handles.append(_plot_chips(axes, wave, np.asarray(y, np.float64), lw=0.6, color=f"C{k}",
                               label=name))
  axes[0].set_ylabel(ylabel)
  if handles:
    _bottom_legend(fig, handles)
  _wave_xlabel(axes)
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, path)


@dataclasses.dataclass(frozen=True)
class _ResidualKind:
  """How a residual row is shown: r times `scale` in `unit`, axis label `ylabel`, ±1 reference
  lines when `unit_lines` (residuals normalized by σ)."""

  scale: float
  unit: str
  ylabel: str
  unit_lines: bool


_RELATIVE = _ResidualKind(100.0, "%", "(pred − x)/x (%)", unit_lines=False)  # Fig. 5
_NORMALIZED = _ResidualKind(1.0, "", "(pred − x)/σ", unit_lines=True)  # Fig. 6


def _residual_figure(wave: np.ndarray, example: Mapping[str, tuple[np.ndarray, dict]],
                     rows: Sequence[tuple[str, np.ndarray]], *, kind: _ResidualKind,
                     extra_stats: Sequence[str] | None, title: str,
                     path: str | os.PathLike) -> str:
  """Shared layout of Figs. 5 and 6: an example spectrum, then one residual row per model.

  Each residual row shows the per-pixel median and 16–84% band of r [N, P] (times
  `kind.scale`) with bias and scatter (and `extra_stats[i]`) printed.
  """
  scale, unit, ylabel, unit_lines = kind.scale, kind.unit, kind.ylabel, kind.unit_lines
  fig = _figure(12.5, 2.3 + 2.0 * len(rows))
  grid = _chip_grid(fig, wave, 1 + len(rows), height_ratios=[1.25] + [1.0] * len(rows))
  handles = [_plot_chips(grid[0], wave, y, label=name, **kw) for name, (y, kw) in example.items()]
  grid[0][0].set_ylabel("normalized flux")
  _row_title(grid[0], "example: spectrum 0")
  bands = [scale * percentile_band(r) for _, r in rows]
  lim = _sym_limit(*[b[[0, 2]] for b in bands])
  for i, ((name, r), band) in enumerate(zip(rows, bands, strict=True)):
    axes = grid[1 + i]
    b = _band_chips(axes, wave, band[0], band[2], color="C0", alpha=0.35, label="16–84%")
    m = _plot_chips(axes, wave, band[1], color="C3", lw=0.5, label="median")
    _hline_chips(axes, 0.0, color="k", lw=0.6)
    if unit_lines:
      for s in (-1.0, 1.0):
        _hline_chips(axes, s, color="0.4", lw=0.6, ls=":")
    axes[0].set_ylim(-lim, lim)
    axes[0].set_ylabel(ylabel)
    bias, scatter = _bias_scatter(r)
    text = (f"{name}:   bias = {_signed(scale * bias, '.3f')}{unit},   scatter = "
            f"{scale * scatter:.3f}{unit}   (N = {len(r)})")
    if extra_stats:
      text += f",   {extra_stats[i]}"
    _row_title(axes, text)
    if i == 0:
      handles += [m, b]
  _bottom_legend(fig, handles)
  _wave_xlabel(grid[-1])
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, path)


def fig_synthetic_residuals(wave: np.ndarray, x: np.ndarray, x_rec: np.ndarray,
                            x_cycle: np.ndarray, path: str | os.PathLike, *,
                            title: str = "") -> str:
  """Paper Fig. 5: reconstruction of the synthetic domain, relative residuals in %.

  Args:
    wave: [P] Å.
    x: [N, P] synthetic spectra, raw (normalized) flux.
    x_rec: [N, P] their reconstructions x_synth→synth.
    x_cycle: [N, P] their cycle reconstructions x_synth→obs→synth.
    path: output PNG.
    title: figure title.

  Top: spectrum 0 with both reconstructions; below: (pred − x)/x of all N spectra, per-pixel
  median and 16–84% band, for x_synth→synth and x_synth→obs→synth; bias and scatter in %.
  """
  wave = np.asarray(wave, np.float64)
  x, x_rec, x_cycle = _as_2d(x), _as_2d(x_rec), _as_2d(x_cycle)
  with np.errstate(divide="ignore", invalid="ignore"):
    r_rec = metrics.relative_residual(x_rec, x, x != 0)
    r_cyc = metrics.relative_residual(x_cycle, x, x != 0)
  example = {
      r"$X_\mathrm{synth}$": (x[0], {"color": "k", "lw": 0.9}),
      r"$X_{\mathrm{synth}\to\mathrm{synth}}$": (x_rec[0], {"color": "C1", "lw": 0.6}),
      r"$X_{\mathrm{synth}\to\mathrm{obs}\to\mathrm{synth}}$":
          (x_cycle[0], {"color": "C2", "lw": 0.6, "ls": "--"}),
  }  # fmt: skip
  rows = [(r"$X_{\mathrm{synth}\to\mathrm{synth}}$ vs $X_\mathrm{synth}$", r_rec),
          (r"$X_{\mathrm{synth}\to\mathrm{obs}\to\mathrm{synth}}$ vs $X_\mathrm{synth}$", r_cyc)]
  return _residual_figure(wave, example, rows, kind=_RELATIVE, extra_stats=None,
                          title=title or "Reconstruction of the synthetic domain", path=path)


def fig_observed_residuals(wave: np.ndarray, x: np.ndarray, x_err: np.ndarray,
                           x_msk: np.ndarray, x_rec: np.ndarray, x_cycle: np.ndarray,
                           path: str | os.PathLike, *, title: str = "") -> str:
  """Paper Fig. 6: reconstruction of the observed domain, normalized residuals (pred − x)/σ.

  Args:
    wave: [P] Å.
    x, x_err: [N, P] observed spectra and their reported errors, raw flux.
    x_msk: [N, P] bool, True = good pixel (others are left out).
    x_rec: [N, P] reconstructions x_obs→obs.
    x_cycle: [N, P] cycle reconstructions x_obs→synth→obs.
    path: output PNG.
    title: figure title.

  Bias, scatter and χ²_R (|r| ≤ 5, and all pixels) are printed per row.
  """
  wave = np.asarray(wave, np.float64)
  x, err, x_rec, x_cycle = _as_2d(x), _as_2d(x_err), _as_2d(x_rec), _as_2d(x_cycle)
  good = np.asarray(x_msk, bool).reshape(x.shape) & np.isfinite(err) & (err > 0)
  r_rec = metrics.normalized_residual(x_rec, x, err, good)
  r_cyc = metrics.normalized_residual(x_cycle, x, err, good)
  example = {
      r"$X_\mathrm{obs}$ (unmasked)": (np.where(good[0], x[0], np.nan), {"color": "k",
                                                                          "lw": 0.8}),
      r"$X_{\mathrm{obs}\to\mathrm{obs}}$": (x_rec[0], {"color": "C1", "lw": 0.6}),
      r"$X_{\mathrm{obs}\to\mathrm{synth}\to\mathrm{obs}}$":
          (x_cycle[0], {"color": "C2", "lw": 0.6, "ls": "--"}),
  }  # fmt: skip
  rows = [(r"$X_{\mathrm{obs}\to\mathrm{obs}}$ vs $X_\mathrm{obs}$", r_rec),
          (r"$X_{\mathrm{obs}\to\mathrm{synth}\to\mathrm{obs}}$ vs $X_\mathrm{obs}$", r_cyc)]
  extra = []
  for _, r in rows:
    q = metrics.fit_quality(r)
    extra.append(f"median χ²_R = {q['chi2r']:.2f} (|r| ≤ {CLIP:g}), {q['chi2r_all']:.2f} (all "
                 "pixels)")
  return _residual_figure(wave, example, rows, kind=_NORMALIZED, extra_stats=extra,
                          title=title or "Reconstruction of the observed domain", path=path)




def plot_examples(example: Mapping[str, Any], out_png: str | os.PathLike) -> Path:
  """Mock world, Fig. 7-like view of the gap: an observed spectrum and synthetic spectra.

  Panels: the whole band; three zooms (`ZOOMS`, Å) with the observed flux (masked pixels grey),
  the synthetic-domain model at the observed star's true labels, the nearest synthetic star of
  the file, and below each zoom the observed minus synthetic difference with the ±σ error band.

  Args:
    example: plain arrays (`mock.example_spectra` of the two mock data files):
      "wavelength" [n_pix] Å; "obs_flux", "obs_err" [n_pix] the observed spectrum and its σ;
      "good" [n_pix] bool, its unmasked pixels; "obs_labels" [25] its true labels (physical
      units); "snr" its S/N; "model_flux" [n_pix] the synthetic domain at those labels;
      "synth_flux" [n_pix] and "synth_labels" [25] the nearest synthetic star;
      "experiment" the mock world's experiment name.
    out_png: output PNG.
  """
  wl, obs_x, err, good = (np.asarray(example[k]) for k in ("wavelength", "obs_flux", "obs_err",
                                                          "good"))
  model, syn_x, ys, yt = (np.asarray(example[k]) for k in ("model_flux", "synth_flux",
                                                          "synth_labels", "obs_labels"))
  snr = float(example["snr"])

  fig = _figure(15, 9, constrained=False)
  gs = fig.add_gridspec(3, 3, height_ratios=[1.0, 1.4, 0.6], hspace=0.35, wspace=0.18)
  top = fig.add_subplot(gs[0, :])
  for c in chip_slices(wl):
    top.plot(wl[c], np.where(good[c], obs_x[c], np.nan), "k", lw=0.4)
    top.plot(wl[c], model[c], "C3", lw=0.4, alpha=0.8)
  for a, b in ZOOMS:
    top.axvspan(a, b, color="C0", alpha=0.15)
  top.set_title(f"observed star: Teff {yt[0]:.0f} K, log g {yt[1]:.2f}, [Fe/H] {yt[18]:+.2f}, "
                f"S/N {snr:.0f}  (black: observed, red: synthetic domain at the same "
                f"labels)", fontsize=10)
  top.set_ylim(0.3, 1.15)
  top.set_ylabel("normalized flux")
  top.set_xlabel(WAVE_LABEL)
  for k, (a, b) in enumerate(ZOOMS):
    ax = fig.add_subplot(gs[1, k])
    dx = fig.add_subplot(gs[2, k], sharex=ax)
    sel = (wl >= a) & (wl <= b)
    ok = sel & good
    ax.plot(wl[ok], obs_x[ok], "k.", ms=2.5, label="observed")
    ax.plot(wl[sel & ~good], np.clip(obs_x[sel & ~good], 0.2, 1.2), "x", color="0.6",
            ms=3, label="masked")
    ax.plot(wl[sel], model[sel], "C3", lw=1, label="synthetic, same labels")
    ax.plot(wl[sel], syn_x[sel], "C0", lw=0.8, alpha=0.7,
            label=f"nearest synthetic star ({ys[0]:.0f} K, {ys[1]:.1f}, {ys[18]:+.2f})")
    ax.set_xlim(a, b)
    ax.set_ylim(0.3, 1.12)
    ax.tick_params(labelbottom=False)
    diff = np.where(good, obs_x - model, np.nan)
    dx.plot(wl[sel], diff[sel], "k", lw=0.7)
    dx.fill_between(wl[sel], -err[sel], err[sel], color="C0", alpha=0.3, lw=0, label="±σ")
    dx.axhline(0, color="0.5", lw=0.5)
    dx.set_ylim(-0.15, 0.15)
    dx.set_xlabel(WAVE_LABEL)
    if k == 0:
      ax.set_ylabel("normalized flux")
      dx.set_ylabel("obs − synth")
      ax.legend(fontsize=7, loc="lower left")
      dx.legend(fontsize=7, loc="lower left")
  fig.suptitle(f"mock world ({example['experiment']}): the synthetic gap", fontsize=12)
  out_png = Path(out_png)
  save_figure(fig, out_png, dpi=DPI, bbox_inches="tight")
  return out_png
