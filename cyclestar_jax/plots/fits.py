"""Fitted spectra and their residuals (Figs. 7, 8, 9)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from cyclestar_jax import metrics
from cyclestar_jax.metrics import CLIP
from cyclestar_jax.plots._base import (
  _as_2d,
  _band_chips,
  _bottom_legend,
  _chip_grid,
  _diverging_cmap,
  _figure,
  _finite_limits,
  _hline_chips,
  _kiel_axes,
  _marker_size,
  _plain_log_axis,
  _plot_chips,
  _row_title,
  _save,
  _signed,
  _stat_text,
  _sym_limit,
  _tex,
  _wave_xlabel,
  chip_slices,
  percentile_band,
)


def _chi2_text(r: np.ndarray) -> str:
  """χ²_R of one spectrum's normalized residuals r [P], clipped and with all pixels."""
  c5 = float(metrics.chi2_r_per_star(r[None])[0])
  call = float(metrics.chi2_r_per_star(r[None], clip=None)[0])
  return f"χ²_R = {c5:.2f} (|r| ≤ {CLIP:g}), {call:.2f} (all pixels)"


def fig_fit_example(wave: np.ndarray, x: np.ndarray, x_err: np.ndarray, x_msk: np.ndarray,
                    models: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                    text: str = "") -> str:
  """Paper Fig. 7: one observed spectrum, two best-fit models and their normalized residuals.

  Args:
    wave: [P] Å.
    x, x_err: [P] observed flux and reported error (raw flux).
    x_msk: [P] bool, True = good pixel; masked pixels are drawn grey and not counted.
    models: {legend name: [P] best-fit model} of two models, e.g. {"Eq. 9 (Payne)": ...,
      "Eq. 11 (Cycle-StarNet)": ...} (NaN outside the pixels a model covers).
    path: output PNG.
    text: free text for the top panel (e.g. the star's true and fitted labels).

  Residual panels show (x − model)/σ with χ²_R printed (|r| ≤ 5 and all pixels).
  """
  wave = np.asarray(wave, np.float64)
  x, err = np.asarray(x, np.float64), np.asarray(x_err, np.float64)
  good = np.asarray(x_msk, bool) & np.isfinite(err) & (err > 0)
  if len(models) != 2:
    raise ValueError(f"fig_fit_example draws two models, got {len(models)}: {list(models)}")
  models = {name: np.asarray(m, np.float64) for name, m in models.items()}
  fig = _figure(12.5, 7.2)
  grid = _chip_grid(fig, wave, 3, height_ratios=[1.5, 1.0, 1.0])
  top = grid[0]
  handles = [_plot_chips(top, wave, np.where(good, x, np.nan), color="k", lw=0.8,
                         label="observed"),
             _plot_chips(top, wave, np.where(good, np.nan, x), color="0.65", lw=0.6,
                         label="observed, masked")]
  colours = ("C0", "C3")
  for (name, m), c in zip(models.items(), colours, strict=True):
    handles.append(_plot_chips(top, wave, m, color=c, lw=0.6, alpha=0.9, label=name))
  top[0].set_ylabel("normalized flux")
  lo, hi = _finite_limits(np.where(good, x, np.nan), *models.values(), pad=0.05,
                          default=(0.0, 1.2))
  top[0].set_ylim(lo, hi + 0.12 * (hi - lo))  # room for the text box above the continuum
  _bottom_legend(fig, handles)
  if text:
    _stat_text(top[0], text)
  resid = {name: metrics.normalized_residual(x, m, err, good) for name, m in models.items()}
  lim = max(_sym_limit(*resid.values(), pad=1.15), 3.0)
  for axes, (name, r), c in zip(grid[1:], resid.items(), colours, strict=True):
    _plot_chips(axes, wave, r, color=c, lw=0.5)
    _hline_chips(axes, 0.0, color="k", lw=0.6)
    for s in (-1.0, 1.0):
      _hline_chips(axes, s, color="0.4", lw=0.6, ls=":")
    axes[0].set_ylim(-lim, lim)
    axes[0].set_ylabel("(x − model)/σ")
    _row_title(axes, f"{name}:   {_chi2_text(r)}")
  _wave_xlabel(grid[-1])
  return _save(fig, path)


def fig_fit_residuals(wave: np.ndarray, resid_a: np.ndarray, resid_b: np.ndarray,
                      path: str | os.PathLike, *, name_a: str, name_b: str) -> str:
  """Paper Fig. 8: normalized fit residuals of all test spectra for two fitting methods.

  Args:
    wave: [P] Å.
    resid_a, resid_b: [N, P] (x − model)/σ per spectrum and pixel, NaN where masked; spectra
      are drawn in the order given (sort them before, e.g. by Teff).
    path: output PNG.
    name_a, name_b: the two methods.

  One image per method (pixels along x, spectra along y, colour ±5, masked pixels grey) with the
  mean normalized residual and the median χ²_R printed, and a bottom row with the per-pixel
  median and 16–84% band of both.
  """
  # Deferred import (matplotlib: heavy, only when drawing).
  from matplotlib.colors import Normalize

  wave = np.asarray(wave, np.float64)
  rs = {name_a: _as_2d(resid_a), name_b: _as_2d(resid_b)}
  fig = _figure(13.0, 8.0)
  *grid, (cax,) = _chip_grid(fig, wave, 3, height_ratios=[1.3, 1.3, 1.0], cbar_rows=2)
  norm = Normalize(-CLIP, CLIP)
  image = None
  for axes, (name, r) in zip(grid[:2], rs.items(), strict=True):
    n = max(len(r), 1)
    for ax, c in zip(axes, chip_slices(wave), strict=True):
      w = wave[c]
      cmap = _diverging_cmap()
      image = ax.imshow(r[:, c], aspect="auto", cmap=cmap, norm=norm, interpolation="nearest",
                        extent=(w[0], w[-1], n - 0.5, -0.5), rasterized=True)
    axes[0].set_ylabel("spectrum (as ordered)")
    q = metrics.fit_quality(r)
    _row_title(axes, f"{name}:   mean (x − model)/σ = {_signed(q['mean_norm_resid'], '.3f')},"
                     f"   median χ²_R = {q['chi2r']:.2f} (|r| ≤ {CLIP:g}),   N = {q['n']}")
  cbar = fig.colorbar(image, cax=cax, extend="both")
  cbar.set_label("(x − model)/σ")
  prof = grid[2]
  handles = []
  bands = {name: percentile_band(r) for name, r in rs.items()}
  for (name, band), c in zip(bands.items(), ("C0", "C3"), strict=True):
    handles.append(_band_chips(prof, wave, band[0], band[2], color=c, alpha=0.25,
                               label=f"{name}: 16–84%"))
    handles.append(_plot_chips(prof, wave, band[1], color=c, lw=0.5, label=f"{name}: median"))
  _hline_chips(prof, 0.0, color="k", lw=0.6)
  for s in (-1.0, 1.0):
    _hline_chips(prof, s, color="0.4", lw=0.6, ls=":")
  lim = max(_sym_limit(*[band[[0, 2]] for band in bands.values()], pad=1.15), 2.0)
  prof[0].set_ylim(-lim, lim)
  prof[0].set_ylabel("(x − model)/σ")
  _row_title(prof, "per pixel over all spectra")
  _bottom_legend(fig, handles)
  _wave_xlabel(grid[-1])
  return _save(fig, path)


def fig_kiel_chi2(teff: np.ndarray, logg: np.ndarray, chi2_a: np.ndarray, chi2_b: np.ndarray,
                  path: str | os.PathLike, *, name_a: str, name_b: str) -> str:
  """Paper Fig. 9: Kiel diagrams of fitted labels coloured by χ²_R, one per fitting method.

  Args:
    teff: [N] K, logg: [N] dex — the labels to place each star (one set for both panels, or a
      pair of arrays (teff_a, teff_b) stacked as [2, N] for each method's own fitted labels).
    chi2_a, chi2_b: [N] χ²_R of each star's best fit under the two methods.
    path: output PNG.
    name_a, name_b: panel titles.

  Shared logarithmic colour scale (1st–99th percentile of both), the median χ²_R printed.
  """
  # Deferred import (matplotlib: heavy, only when drawing).
  from matplotlib.colors import LogNorm

  teff, logg = np.asarray(teff, np.float64), np.asarray(logg, np.float64)
  teffs = teff if teff.ndim == 2 else np.stack([teff, teff])
  loggs = logg if logg.ndim == 2 else np.stack([logg, logg])
  chis = [np.asarray(chi2_a, np.float64), np.asarray(chi2_b, np.float64)]
  pos = np.concatenate([c[np.isfinite(c) & (c > 0)] for c in chis])
  vmin, vmax = (np.percentile(pos, [1, 99]) if pos.size else (0.5, 5.0))
  vmin, vmax = float(vmin), float(max(vmax, vmin * 1.5))
  norm = LogNorm(vmin, vmax)
  teff_lim = _finite_limits(teffs, default=(3000.0, 7000.0))
  logg_lim = _finite_limits(loggs, default=(0.0, 5.0))
  fig = _figure(10.5, 4.6)
  axes = fig.subplots(1, 2, sharex=True, sharey=True)
  sc = None
  for ax, t, g, c, name in zip(axes, teffs, loggs, chis, (name_a, name_b), strict=True):
    ok = np.isfinite(t) & np.isfinite(g)
    bad = ok & ~(np.isfinite(c) & (c > 0))
    ok &= ~bad
    order = np.flatnonzero(ok)[np.argsort(c[ok])]  # worst fits drawn on top
    s = _marker_size(int(ok.sum()))
    if bad.any():
      ax.scatter(t[bad], g[bad], s=s, c="0.7", marker="x", lw=0.6, label=_tex("no χ²_R"))
      ax.legend(loc="lower left", fontsize=8)
    sc = ax.scatter(t[order], g[order], c=np.clip(c[order], vmin, vmax), s=s, cmap="viridis",
                    norm=norm, lw=0, rasterized=True)
    _kiel_axes(ax, teff_lim, logg_lim)
    ax.set_title(name, fontsize=10)
    med = float(np.median(c[ok])) if ok.any() else float("nan")
    _stat_text(ax, f"median χ²_R = {med:.2f}\nN = {int(ok.sum())}")
  axes[1].set_ylabel("")
  cbar = fig.colorbar(sc, ax=list(axes), pad=0.01, aspect=25, extend="both")
  cbar.set_label(r"$\chi^2_R$")
  _plain_log_axis(cbar.ax.yaxis)
  return _save(fig, path)
