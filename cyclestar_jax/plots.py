"""Every figure of the project (paper Figs. 5–11, training curves, Table 1, diagnostics).

Conventions (all functions):
  - inputs are NumPy arrays (anything `np.asarray` accepts) and an output path; the return value
    is that path. PNG at 150 dpi, written atomically (`fileio.save_figure`): a figure on disk is
    either the previous one or the new one, never half written.
  - Matplotlib is imported lazily and only through its object-oriented API (`Figure` with the
    Agg canvas, never `pyplot`): no display is needed, no global backend is switched and no
    figure stays alive in a pyplot registry after the call.
  - Wavelengths are vacuum Å. Spectra may have any number of pixels P ≤ 7214 as long as `wave`
    [P] is given: the APOGEE chips are found from the gaps in `wave` (jumps > 5 Å) and drawn
    as side-by-side panels whose widths follow their wavelength spans.
  - Statistics follow DESIGN.md §4: bias = mean residual, scatter = half the 16–84 percentile
    width, χ²_R = mean squared normalized residual over pixels with |r| ≤ 5 (also with all
    pixels where stated). NaN marks pixels that do not count (masked, not modelled).
  - Relative residuals of the synthetic domain are (pred − x)/x; normalized residuals of
    reconstructions are (pred − x)/σ; fit residuals are (x − model)/σ as in the paper's Fig. 8.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cyclestar_jax import metrics
from cyclestar_jax.fileio import save_figure
from cyclestar_jax.labels import LABEL_NAMES, LABEL_TEX, LABEL_UNITS, label_index
from cyclestar_jax.metrics import CLIP

DPI = 150
CHIP_GAP_A = 5.0  # Å: a jump in the wavelength grid larger than this (and 10 steps) parts chips
WAVE_LABEL = "wavelength (Å)"
TEFF_LABEL = r"$T_\mathrm{eff}$ (K)"
LOGG_LABEL = r"$\log g$ (dex)"
GROUP_COLOURS = {"synthetic": "C0", "observed": "C3"}
ZOOMS = ((15_330.0, 15_400.0), (15_950.0, 16_020.0), (16_700.0, 16_770.0))  # Å, mock examples


# ---------------------------------------------------------------------------------------------
# Helpers: figures, chips, statistics.


def _figure(width: float, height: float, *, constrained: bool = True) -> Any:
  """A new Matplotlib `Figure` (inches) on an Agg canvas, constrained layout by default."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Any, path: str | os.PathLike) -> str:
  """Write `fig` atomically as a 150-dpi PNG (or the format of the suffix); returns the path."""
  save_figure(fig, path, dpi=DPI)
  return os.fspath(path)


def chip_slices(wave: np.ndarray) -> list[slice]:
  """Pixel ranges of the chips of a wavelength grid [P] Å: split where it jumps > 5 Å.

  A jump must also exceed 10 median pixel steps, so a coarse grid is not cut at every pixel.
  On the full APOGEE grid these are `resources.CHIP_EDGES`; on the networks' 7167 pixels or
  any other sub-grid the same rule gives its chips. A grid without gaps is one chip.
  """
  wave = np.asarray(wave, np.float64)
  if wave.size < 2:
    return [slice(0, wave.size)]
  step = np.abs(np.diff(wave))
  cuts = np.flatnonzero(step > max(CHIP_GAP_A, 10.0 * float(np.nanmedian(step)))) + 1
  edges = [0, *cuts.tolist(), wave.size]
  return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _wave_ticks(lo: float, hi: float, max_ticks: int = 7) -> np.ndarray:
  """Round wavelength ticks (Å) inside [lo, hi], away from both edges.

  Keeping ticks 8% of the span off the edges stops the labels of neighbouring chip panels
  from colliding.
  """
  span = max(hi - lo, 1e-9)
  steps = [m * 10.0**e for e in range(-2, 5) for m in (1, 2, 2.5, 5)]
  step = next((st for st in steps if span / st <= max_ticks), steps[-1])
  margin = 0.08 * span
  first = np.ceil((lo + margin) / step) * step
  return np.arange(first, hi - margin + 1e-9 * span, step)


def _chip_grid(fig: Any, wave: np.ndarray, n_rows: int,
               height_ratios: Sequence[float] | None = None,
               cbar_rows: int = 0) -> list[list[Any]]:
  """`n_rows` rows of chip panels, one column per chip (widths ∝ its Å span).

  Columns share their wavelength axis (x labels on the last row only), rows share their y axis
  (y tick labels on the first chip only). With `cbar_rows` > 0 a narrow column on the right
  holds a colour-bar axes spanning the first `cbar_rows` rows, returned as a last one-element
  row.
  """
  chips = chip_slices(wave)
  spans = [max(float(np.ptp(wave[c])), 1e-3) for c in chips]
  widths = spans + ([0.012 * sum(spans)] if cbar_rows else [])
  gs = fig.add_gridspec(n_rows, len(widths), height_ratios=height_ratios, width_ratios=widths)
  engine = fig.get_layout_engine()
  if engine is not None and hasattr(engine, "set"):
    engine.set(wspace=0.008 if len(chips) > 1 else None)
  rows: list[list[Any]] = []
  for r in range(n_rows):
    row: list[Any] = []
    for k, c in enumerate(chips):
      ax = fig.add_subplot(gs[r, k], sharex=rows[0][k] if rows else None,
                           sharey=row[0] if row else None)
      w = wave[c]
      if w.size > 1:
        ax.set_xlim(w[0], w[-1])
        ax.set_xticks(_wave_ticks(float(w.min()), float(w.max())))
      if k > 0:
        ax.tick_params(labelleft=False)
      if r < n_rows - 1:
        ax.tick_params(labelbottom=False)
      row.append(ax)
    rows.append(row)
  if cbar_rows:
    rows.append([fig.add_subplot(gs[:cbar_rows, -1])])
  return rows


def _wave_xlabel(axes: Sequence[Any]) -> None:
  """"wavelength (Å)" under the middle chip panel of the bottom row."""
  axes[len(axes) // 2].set_xlabel(WAVE_LABEL)


def _bottom_legend(fig: Any, handles: Sequence[Any], max_cols: int = 6) -> None:
  """One legend for the whole figure, below the axes (it covers no data)."""
  fig.legend(handles=list(handles), loc="outside lower center", fontsize=8.5, frameon=False,
             ncol=min(len(handles), max_cols))


def _row_title(axes: Sequence[Any], text: str, fontsize: float = 9.0) -> None:
  """A left-aligned title over a row of chip panels (statistics go here: they cover no data)."""
  axes[0].set_title(_tex(text), loc="left", fontsize=fontsize, pad=3)


def _tex(text: str) -> str:
  """Plain-text χ²_R written as Matplotlib mathtext ($\\chi^2_R$) for figure text."""
  return text.replace("χ²_R", r"$\chi^2_R$")


def _plain_log_axis(axis: Any) -> None:
  """Log-scale axis with ticks at 1, 2, 5 × 10^k labelled as plain numbers (0.2, 0.5, 1, 2)."""
  from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

  axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
  axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_locator(NullLocator())


def _signed(v: float, fmt: str) -> str:
  """`v` formatted with an explicit sign and a typographic minus (no "−0.00")."""
  text = format(v, "+" + fmt)
  if np.isfinite(v) and float(text) == 0.0:
    text = format(0.0, "+" + fmt)
  return text.replace("-", "−")


def _plot_chips(axes: Sequence[Any], wave: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
  """Plot y [P] against wave [P] chip by chip on `axes`; returns the first line (for legends)."""
  first = None
  for ax, c in zip(axes, chip_slices(wave), strict=True):
    (line,) = ax.plot(wave[c], y[c], **kw)
    kw.pop("label", None)
    first = first or line
  return first


def _band_chips(axes: Sequence[Any], wave: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                **kw: Any) -> Any:
  """`fill_between` chip by chip; returns the first patch (for legends)."""
  first = None
  for ax, c in zip(axes, chip_slices(wave), strict=True):
    patch = ax.fill_between(wave[c], lo[c], hi[c], lw=0, **kw)
    kw.pop("label", None)
    first = first or patch
  return first


def _hline_chips(axes: Sequence[Any], y: float, **kw: Any) -> None:
  for ax in axes:
    ax.axhline(y, **kw)


def _as_2d(a: Any) -> np.ndarray:
  """Spectra as float32 [N, P] (a single spectrum [P] becomes [1, P])."""
  a = np.asarray(a, np.float32)
  return a[None] if a.ndim == 1 else a


def percentile_band(r: np.ndarray) -> np.ndarray:
  """Per-pixel 16th, 50th and 84th percentile over spectra of r [N, P], NaN-aware → [3, P]."""
  r = _as_2d(r)
  if r.shape[0] == 0:
    return np.full((3, r.shape[1]), np.nan, np.float32)
  if np.isfinite(r).all():
    return np.percentile(r, [16, 50, 84], axis=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
    return np.nanpercentile(np.where(np.isfinite(r), r, np.nan), [16, 50, 84], axis=0)


def _bias_scatter(r: np.ndarray) -> tuple[float, float]:
  """(bias, scatter) of the finite values of r, as `metrics.bias_scatter` defines them."""
  d = metrics.bias_scatter(r)
  return d["bias"], d["scatter"]


def _stat_text(ax: Any, text: str, *, loc: str = "upper left", fontsize: float = 8.5) -> None:
  """A statistic written inside an axes on a translucent white box."""
  x, ha = (0.015, "left") if "left" in loc else (0.985, "right")
  y, va = (0.96, "top") if "upper" in loc else (0.04, "bottom")
  ax.text(x, y, _tex(text), transform=ax.transAxes, ha=ha, va=va, fontsize=fontsize, zorder=10,
          bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.7", "alpha": 0.85})


def _sym_limit(*bands: np.ndarray, floor: float = 1e-6, pad: float = 1.3) -> float:
  """Symmetric y limit that holds the 2–98 percentile of the finite values of all bands."""
  v = np.concatenate([np.asarray(b, np.float64).ravel() for b in bands])
  v = v[np.isfinite(v)]
  if v.size == 0:
    return 1.0
  return max(float(np.percentile(np.abs(v), 98)) * pad, floor)


def _label_tex(name: str) -> str:
  return LABEL_TEX.get(name, name)


def _label_unit(name: str) -> str:
  unit = LABEL_UNITS.get(name, "")
  return "dex" if unit.startswith("dex") else unit


def _axis_label(name: str, prefix: str = "") -> str:
  unit = _label_unit(name)
  return f"{prefix}{_label_tex(name)}" + (f" ({unit})" if unit and unit != "ratio" else "")


def _finite_limits(*arrays: np.ndarray, pad: float = 0.04,
                   default: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
  """(lo, hi) over the finite values of all arrays, widened by `pad` of the range."""
  v = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else []
  v = np.asarray(v)[np.isfinite(v)]
  if v.size == 0:
    return default
  lo, hi = float(v.min()), float(v.max())
  d = (hi - lo) * pad or max(abs(lo) * 0.05, 1e-3)
  return lo - d, hi + d


def _marker_size(n: int) -> float:
  """Scatter marker area (pt²) that keeps N points readable: large for few, small for many."""
  return float(np.clip(3000.0 / max(n, 1), 1.0, 25.0))


# ---------------------------------------------------------------------------------------------
# Spectra and reconstruction residuals (Figs. 5, 6).


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


def _residual_figure(wave: np.ndarray, example: Mapping[str, tuple[np.ndarray, dict]],
                     rows: Sequence[tuple[str, np.ndarray]], *, scale: float, unit: str,
                     ylabel: str, extra_stats: Sequence[str] | None, title: str,
                     unit_lines: bool, path: str | os.PathLike) -> str:
  """Shared layout of Figs. 5 and 6: an example spectrum, then one residual row per model.

  Each residual row shows the per-pixel median and 16–84% band of r [N, P] (times `scale`) with
  bias and scatter (and `extra_stats[i]`) printed; `unit_lines` draws ±1 reference lines.
  """
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
  return _residual_figure(wave, example, rows, scale=100.0, unit="%",
                          ylabel="(pred − x)/x (%)", extra_stats=None,
                          title=title or "Reconstruction of the synthetic domain",
                          unit_lines=False, path=path)


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
  return _residual_figure(wave, example, rows, scale=1.0, unit="", ylabel="(pred − x)/σ",
                          extra_stats=extra,
                          title=title or "Reconstruction of the observed domain",
                          unit_lines=True, path=path)


# ---------------------------------------------------------------------------------------------
# Fitting (Figs. 7, 8, 9).


def _chi2_text(r: np.ndarray) -> str:
  """χ²_R of one spectrum's normalized residuals r [P], clipped and with all pixels."""
  c5 = float(metrics.chi2_r_per_star(r[None])[0])
  call = float(metrics.chi2_r_per_star(r[None], clip=None)[0])
  return f"χ²_R = {c5:.2f} (|r| ≤ {CLIP:g}), {call:.2f} (all pixels)"


def fig_fit_example(wave: np.ndarray, x: np.ndarray, x_err: np.ndarray, x_msk: np.ndarray,
                    model_a: np.ndarray, model_b: np.ndarray, path: str | os.PathLike, *,
                    name_a: str = "Eq. 9 (Payne)", name_b: str = "Eq. 11 (Cycle-StarNet)",
                    text: str = "") -> str:
  """Paper Fig. 7: one observed spectrum, two best-fit models and their normalized residuals.

  Args:
    wave: [P] Å.
    x, x_err: [P] observed flux and reported error (raw flux).
    x_msk: [P] bool, True = good pixel; masked pixels are drawn grey and not counted.
    model_a, model_b: [P] best-fit models (NaN outside the pixels a model covers).
    path: output PNG.
    name_a, name_b: legend names of the two models.
    text: free text for the top panel (e.g. the star's true and fitted labels).

  Residual panels show (x − model)/σ with χ²_R printed (|r| ≤ 5 and all pixels).
  """
  wave = np.asarray(wave, np.float64)
  x, err = np.asarray(x, np.float64), np.asarray(x_err, np.float64)
  good = np.asarray(x_msk, bool) & np.isfinite(err) & (err > 0)
  models = {name_a: np.asarray(model_a, np.float64), name_b: np.asarray(model_b, np.float64)}
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
  for (name, r), c in zip(rs.items(), ("C0", "C3"), strict=True):
    band = percentile_band(r)
    handles.append(_band_chips(prof, wave, band[0], band[2], color=c, alpha=0.25,
                               label=f"{name}: 16–84%"))
    handles.append(_plot_chips(prof, wave, band[1], color=c, lw=0.5, label=f"{name}: median"))
  _hline_chips(prof, 0.0, color="k", lw=0.6)
  for s in (-1.0, 1.0):
    _hline_chips(prof, s, color="0.4", lw=0.6, ls=":")
  lim = max(_sym_limit(*[percentile_band(r)[[0, 2]] for r in rs.values()], pad=1.15), 2.0)
  prof[0].set_ylim(-lim, lim)
  prof[0].set_ylabel("(x − model)/σ")
  _row_title(prof, "per pixel over all spectra")
  _bottom_legend(fig, handles)
  _wave_xlabel(grid[-1])
  return _save(fig, path)


def _diverging_cmap() -> Any:
  """Blue–white–red colour map with masked (NaN) pixels light grey."""
  import matplotlib

  return matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.82")


def _kiel_axes(ax: Any, teff_lim: tuple[float, float], logg_lim: tuple[float, float]) -> None:
  """Kiel-diagram orientation: Teff increasing to the left, log g increasing downward."""
  ax.set_xlim(teff_lim[1], teff_lim[0])
  ax.set_ylim(logg_lim[1], logg_lim[0])
  ax.set_xlabel(TEFF_LABEL)
  ax.set_ylabel(LOGG_LABEL)


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


# ---------------------------------------------------------------------------------------------
# Latent spaces and labels (Figs. 10, 11, label accuracy).


def _group_colour(group: str, groups: Sequence[str]) -> str:
  if group in GROUP_COLOURS:
    return GROUP_COLOURS[group]
  others = [g for g in groups if g not in GROUP_COLOURS]
  return f"C{(2 + others.index(group)) % 10}"


def fig_tsne(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike) -> str:
  """Paper Fig. 10: 2-D t-SNE projections, one scatter per panel coloured by domain.

  Args:
    panels: title → (emb [N, 2], group [N] of strings, e.g. "synthetic" / "observed").
    path: output PNG.

  Points are drawn in a random (seeded) order so neither group hides the other; colours are the
  same group-for-group in every panel.
  """
  from matplotlib.lines import Line2D

  groups = sorted({str(g) for _, grp in panels.values() for g in np.asarray(grp).ravel()})
  n = max(len(panels), 1)
  fig = _figure(3.9 * n + 0.3, 4.3)
  axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
  rng = np.random.default_rng(0)
  for ax, (title, (emb, grp)) in zip(axes, panels.items(), strict=False):
    emb, grp = np.asarray(emb, np.float64).reshape(-1, 2), np.asarray(grp).astype(str)
    ok = np.isfinite(emb).all(axis=1)
    order = rng.permutation(np.flatnonzero(ok))
    colours = [_group_colour(g, groups) for g in grp[order]]
    ax.scatter(emb[order, 0], emb[order, 1], c=colours, s=_marker_size(len(order)), lw=0,
               alpha=0.7, rasterized=True)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.tick_params(labelbottom=False, labelleft=False, length=0)
    counts = ", ".join(f"{g}: {int((grp[ok] == g).sum())}" for g in groups if (grp == g).any())
    _stat_text(ax, counts, loc="lower left", fontsize=7.5)
  handles = [Line2D([], [], ls="", marker="o", ms=6, color=_group_colour(g, groups), label=g)
             for g in groups]
  if handles:
    axes[0].legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.9)
  return _save(fig, path)


def _grid_shape(n: int) -> tuple[int, int]:
  """Rows and columns for n panels (2×2 for four, as the paper's Fig. 11; else up to 3 wide)."""
  if n == 4:
    return 2, 2
  cols = min(n, 3)
  return -(-n // cols), cols


def fig_kiel_methods(panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     path: str | os.PathLike, *,
                     truth: tuple[np.ndarray, np.ndarray] | None = None) -> str:
  """Paper Fig. 11: Kiel diagrams of the labels found by each method (plus the truth).

  Args:
    panels: ordered title → (teff [N] K, logg [N] dex).
    path: output PNG.
    truth: optional (teff [N], logg [N]) true labels, drawn as an extra panel; where a method has
      as many stars, its Teff and log g bias and scatter against the truth are printed.

  All panels share the same axis limits.
  """
  items = [(k, (np.asarray(t, np.float64), np.asarray(g, np.float64)))
           for k, (t, g) in panels.items()]
  if truth is not None:
    t_true, g_true = (np.asarray(a, np.float64) for a in truth)
    items.append(("truth", (t_true, g_true)))
  n = max(len(items), 1)
  rows, cols = _grid_shape(n)
  fig = _figure(3.9 * cols + 0.4, 3.5 * rows + 0.2)
  axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
  teff_lim = _finite_limits(*[t for _, (t, _) in items], default=(3000.0, 7000.0))
  logg_lim = _finite_limits(*[g for _, (_, g) in items], default=(0.0, 5.0))
  for k, (ax, (title, (t, g))) in enumerate(zip(axes, items, strict=False)):
    ok = np.isfinite(t) & np.isfinite(g)
    is_truth = truth is not None and k == len(items) - 1
    ax.scatter(t[ok], g[ok], s=_marker_size(int(ok.sum())), c="0.35" if is_truth else "k",
               lw=0, alpha=0.6, rasterized=True)
    _kiel_axes(ax, teff_lim, logg_lim)
    ax.set_title(title, fontsize=10)
    lines = [f"N = {int(ok.sum())}"]
    if truth is not None and not is_truth and t.shape == t_true.shape:
      bt, st = _bias_scatter(t - t_true)
      bg, sg = _bias_scatter(g - g_true)
      lines += [f"Δ$T_\\mathrm{{eff}}$ = {_signed(bt, '.0f')} ± {st:.0f} K",
                f"Δ$\\log g$ = {_signed(bg, '.2f')} ± {sg:.2f} dex"]
    _stat_text(ax, "\n".join(lines), loc="upper left", fontsize=8)
  for ax in axes[len(items):]:
    ax.set_visible(False)
  for k, ax in enumerate(axes[:len(items)]):  # outer labels only
    if k % cols:
      ax.set_ylabel("")
    if k + cols < len(items):  # a panel below
      ax.set_xlabel("")
    else:
      ax.tick_params(labelbottom=True)
  return _save(fig, path)


def fig_label_errors(truth: np.ndarray, fits: Mapping[str, np.ndarray], path: str | os.PathLike,
                     *, names: Sequence[str] = ("Teff", "logg", "Fe_H")) -> str:
  """Fitted minus true labels against the true value, per label and fitting method.

  Args:
    truth: [N, 25] true labels in `labels.LABEL_NAMES` order (physical units).
    fits: method → [N, 25] fitted labels, same stars and order.
    path: output PNG.
    names: labels to show, one row each (any spelling `labels.label_index` accepts).

  One column per method, rows share their y range (2–98% of all methods); a running median
  (≥ 40 stars) and bias ± scatter (half the 16–84 width) per panel.
  """
  truth = np.asarray(truth, np.float64)
  idx = [label_index(n) for n in names]
  methods = list(fits.items())
  rows, cols = max(len(idx), 1), max(len(methods), 1)
  fig = _figure(3.6 * cols + 0.5, 2.5 * rows + 0.4)
  axes = fig.subplots(rows, cols, squeeze=False, sharey="row", sharex="row")
  for i, j in enumerate(idx):
    name = LABEL_NAMES[j]
    t = truth[:, j]
    errs = [np.asarray(f, np.float64)[:, j] - t for _, f in methods]
    lim = _sym_limit(*errs, pad=1.25, floor=1e-6)
    for k, ((method, _), e) in enumerate(zip(methods, errs, strict=True)):
      ax = axes[i, k]
      ok = np.isfinite(e) & np.isfinite(t)
      ax.scatter(t[ok], np.clip(e[ok], -lim, lim), s=_marker_size(int(ok.sum())),
                 c=f"C{k}", lw=0, alpha=0.6, rasterized=True)
      if ok.sum() >= 40:
        xb, yb = _running_median(t[ok], e[ok])
        ax.plot(xb, yb, color="k", lw=1.2, label="running median")
      ax.axhline(0.0, color="0.4", lw=0.7, ls="--")
      ax.set_ylim(-lim, lim)
      bias, scatter = _bias_scatter(e)
      unit = _label_unit(name)
      fmt = ".0f" if name == "Teff" else ".3f"
      unit_txt = f" {unit}" if unit and unit != "ratio" else ""
      _stat_text(ax, f"bias = {_signed(bias, fmt)}{unit_txt}\nscatter = {scatter:{fmt}}{unit_txt}",
                 fontsize=8)
      if i == 0:
        ax.set_title(method, fontsize=10)
      if k == 0:
        ax.set_ylabel(_axis_label(name, prefix="Δ"))
      ax.set_xlabel(_axis_label(name, prefix="true "))
  fig.suptitle("fitted − true labels", fontsize=11)
  return _save(fig, path)


def _running_median(x: np.ndarray, y: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray,
                                                                             np.ndarray]:
  """Median of y in `n_bins` equal-count bins of x → (bin centres, medians)."""
  order = np.argsort(x)
  parts = np.array_split(order, n_bins)
  xs = np.array([np.median(x[p]) for p in parts if p.size])
  ys = np.array([np.median(y[p]) for p in parts if p.size])
  return xs, ys


# ---------------------------------------------------------------------------------------------
# Training and Table 1.


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


def fig_recovery_vs_fraction(fractions: np.ndarray,
                             errors: np.ndarray | Mapping[str, np.ndarray],
                             path: str | os.PathLike, *,
                             baseline: float | np.ndarray | None = None) -> str:
  """Paper Table 1 as a plot: missing-line recovery error against the masked fraction.

  Args:
    fractions: [F] fraction of features masked, in [0, 1] or in % (values > 1).
    errors: [F] mean |x_recovered − x_true|/x_true over masked pixels in %, or a dict
      method → [F] for several methods.
    path: output PNG.
    baseline: the error without recovery (the masked synthetic spectrum against the truth), a
      number or [F], dashed.

  Logarithmic y axis; each point's value is written next to it.
  """
  f = np.asarray(fractions, np.float64)
  pct = f * 100.0 if np.nanmax(np.abs(f), initial=0.0) <= 1.0 else f
  curves = dict(errors) if isinstance(errors, Mapping) else {"Cycle-StarNet": errors}
  fig = _figure(6.5, 4.3)
  ax = fig.subplots()
  vals = []
  for k, (name, e) in enumerate(curves.items()):
    e = np.asarray(e, np.float64)
    ax.plot(pct, e, "o-", ms=4, lw=1.3, color=f"C{k}", label=name)
    vals.append(e)
    for xi, yi in zip(pct, e, strict=True):
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
  return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Diagnostics moved here from the trainer, the emulator trainer and the mock world.


def plot_progress(metrics_path: str | os.PathLike, png_path: str | os.PathLike) -> str | None:
  """Training progress like the paper's Fig. B1: distances (top), adversarial losses (bottom).

  Reads the trainer's metrics.jsonl; with paired validation lines a third panel shows the paired
  transfer residuals. Returns the figure path, or None if there is nothing to plot yet.
  """
  from cyclestar_jax.trainer import read_metrics

  metrics = read_metrics(metrics_path)
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
    residual: [N, n_pix] emulator − truth in normalized flux.
    path: output PNG (written atomically).
    wavelength: [n_pix] Å; default the APOGEE grid (if n_pix is 7214) or pixel index.
    title: figure title.
    targets: (median, 99th percentile) target levels; default `emulator_train`'s
      TARGET_MEDIAN_ABS and TARGET_P99_ABS (1e-3, 1e-2).
  """
  from cyclestar_jax import resources

  if targets is None:
    from cyclestar_jax.emulator_train import TARGET_MEDIAN_ABS, TARGET_P99_ABS

    targets = (TARGET_MEDIAN_ABS, TARGET_P99_ABS)

  abs_res = np.abs(np.asarray(residual, np.float32))
  n_pix = abs_res.shape[1]
  in_a = wavelength is not None or n_pix == resources.N_PIX
  if wavelength is None:
    wavelength = resources.wavelength() if n_pix == resources.N_PIX else np.arange(n_pix)
  wavelength = np.asarray(wavelength, np.float64)
  chips = chip_slices(wavelength) if in_a else [slice(0, n_pix)]
  q = np.percentile(abs_res, [1, 16, 50, 84, 99], axis=0)
  floor = max(float(q[q > 0].min()) if (q > 0).any() else 1e-8, 1e-8)
  q = np.maximum(q, floor)
  fig = _figure(12, 2.6 * len(chips) + 0.6)
  axes = fig.subplots(len(chips), 1, squeeze=False)[:, 0]
  names = ("blue", "green", "red") if len(chips) == 3 else ("",) * len(chips)
  for ax, c, name in zip(axes, chips, names, strict=True):
    wl = wavelength[c]
    ax.fill_between(wl, q[0, c], q[4, c], color="C0", alpha=0.2, lw=0, label="1–99%")
    ax.fill_between(wl, q[1, c], q[3, c], color="C0", alpha=0.45, lw=0, label="16–84%")
    ax.plot(wl, q[2, c], color="C0", lw=0.6, label="median")
    for level, lab in zip(targets, ("targets: median, 99%", None), strict=True):
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


def _pick_cool_giant(snr: np.ndarray, y_true: np.ndarray) -> int:
  """Index of a cool, high-S/N giant (the gap is largest there), else the first star."""
  score = np.where((y_true[:, 0] < 4400) & (y_true[:, 1] < 2.5), snr, -np.inf)
  return int(np.argmax(score)) if np.isfinite(score).any() else 0


def plot_examples(synth_path: str | os.PathLike, obs_path: str | os.PathLike,
                  out_png: str | os.PathLike, *, split: str = "test") -> Path:
  """Mock world, Fig. 7-like view of the gap: an observed spectrum and synthetic spectra.

  Reads the two mock data files. Panels: the whole band; three zooms (`ZOOMS`, Å) with the
  observed flux (masked pixels grey), the synthetic-domain model at the observed star's true
  labels, the nearest synthetic star of the file, and below each zoom the observed minus
  synthetic difference with the ±σ error band.
  """
  from cyclestar_jax import h5io, resources
  from cyclestar_jax.mock import world as _world

  with h5io.SpectraFile(obs_path) as fo, h5io.SpectraFile(synth_path) as fs:
    n = min(fo.n(split), 256)
    obs = fo.read(split, 0, n)
    y_true = fo.extra("labels_true", split, 0, n)
    world = _world.WorldConfig.from_json_dict(fo.attrs["world"])
    snr = obs.snr if obs.snr is not None else np.zeros(n)
    i = _pick_cool_giant(snr, y_true)
    ns = min(fs.n(split), 2048)
    syn = fs.read(split, 0, ns)
  key = np.array([1 / 150.0, 1 / 0.3, 1 / 0.1])
  d = ((syn.y[:, [0, 1, 18]] - y_true[i, [0, 1, 18]]) * key) ** 2
  j = int(np.argmin(d.sum(1)))
  model = np.asarray(_world.synthetic_spectrum(y_true[i][None], world))[0]
  wl = resources.wavelength()
  good = obs.x_msk[i].astype(bool) if obs.x_msk is not None else np.ones_like(wl, bool)

  fig = _figure(15, 9, constrained=False)
  gs = fig.add_gridspec(3, 3, height_ratios=[1.0, 1.4, 0.6], hspace=0.35, wspace=0.18)
  top = fig.add_subplot(gs[0, :])
  for c in chip_slices(wl):
    top.plot(wl[c], np.where(good[c], obs.x[i, c], np.nan), "k", lw=0.4)
    top.plot(wl[c], model[c], "C3", lw=0.4, alpha=0.8)
  for a, b in ZOOMS:
    top.axvspan(a, b, color="C0", alpha=0.15)
  yt = y_true[i]
  top.set_title(f"observed star: Teff {yt[0]:.0f} K, log g {yt[1]:.2f}, [Fe/H] {yt[18]:+.2f}, "
                f"S/N {snr[i]:.0f}  (black: observed, red: synthetic domain at the same "
                f"labels)", fontsize=10)
  top.set_ylim(0.3, 1.15)
  top.set_ylabel("normalized flux")
  top.set_xlabel(WAVE_LABEL)
  err = obs.x_err[i] if obs.x_err is not None else np.zeros_like(wl)
  for k, (a, b) in enumerate(ZOOMS):
    ax = fig.add_subplot(gs[1, k])
    dx = fig.add_subplot(gs[2, k], sharex=ax)
    sel = (wl >= a) & (wl <= b)
    ok = sel & good
    ax.plot(wl[ok], obs.x[i, ok], "k.", ms=2.5, label="observed")
    ax.plot(wl[sel & ~good], np.clip(obs.x[i, sel & ~good], 0.2, 1.2), "x", color="0.6",
            ms=3, label="masked")
    ax.plot(wl[sel], model[sel], "C3", lw=1, label="synthetic, same labels")
    ys = syn.y[j]
    ax.plot(wl[sel], syn.x[j, sel], "C0", lw=0.8, alpha=0.7,
            label=f"nearest synthetic star ({ys[0]:.0f} K, {ys[1]:.1f}, {ys[18]:+.2f})")
    ax.set_xlim(a, b)
    ax.set_ylim(0.3, 1.12)
    ax.tick_params(labelbottom=False)
    diff = np.where(good, obs.x[i] - model, np.nan)
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
  fig.suptitle(f"mock world ({world.experiment}): the synthetic gap", fontsize=12)
  out_png = Path(out_png)
  save_figure(fig, out_png, dpi=DPI, bbox_inches="tight")
  return out_png
