"""Shared pieces of the figures: the Agg figure, chips, statistics, axis labels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cyclestar_jax import metrics
from cyclestar_jax.fileio import save_figure
from cyclestar_jax.labels import LABEL_TEX, LABEL_UNITS

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
  # Deferred import (matplotlib: heavy, only when drawing).
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
  # Deferred import (matplotlib: heavy, only when drawing).
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
  """Per-pixel 16th, 50th and 84th percentile over spectra of r [N, P], NaN-aware → [3, P].

  Non-finite values are left out of each pixel's percentiles (a pixel with none finite gives
  NaN); the values are `np.nanpercentile`'s (linear interpolation), computed by one sort of the
  whole array instead of NumPy's per-pixel loop (1.2 s → 0.05 s for 256 × 7214).
  """
  r = _as_2d(r)
  if r.shape[0] == 0:
    return np.full((3, r.shape[1]), np.nan, np.float32)
  if np.isfinite(r).all():
    return np.percentile(r, [16, 50, 84], axis=0)
  s = np.sort(np.where(np.isfinite(r), r, np.inf), axis=0)  # the left-out values sort last
  n = np.isfinite(r).sum(axis=0)  # [P] values per pixel
  pos = np.array([0.16, 0.50, 0.84])[:, None] * np.maximum(n - 1, 0)[None, :]  # [3, P]
  lo = np.floor(pos).astype(np.intp)
  hi = np.minimum(lo + 1, np.maximum(n - 1, 0)[None, :])
  a = np.take_along_axis(s, lo, axis=0).astype(np.float64)
  b = np.take_along_axis(s, hi, axis=0).astype(np.float64)
  frac = pos - lo
  with np.errstate(invalid="ignore"):
    out = np.where(frac > 0, a + frac * (b - a), a)
  return np.where(n[None, :] > 0, out, np.nan)


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

def _diverging_cmap() -> Any:
  """Blue–white–red colour map with masked (NaN) pixels light grey."""
  # Deferred import (matplotlib: heavy, only when drawing).
  import matplotlib

  return matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.82")


def _kiel_axes(ax: Any, teff_lim: tuple[float, float], logg_lim: tuple[float, float]) -> None:
  """Kiel-diagram orientation: Teff increasing to the left, log g increasing downward."""
  ax.set_xlim(teff_lim[1], teff_lim[0])
  ax.set_ylim(logg_lim[1], logg_lim[0])
  ax.set_xlabel(TEFF_LABEL)
  ax.set_ylabel(LOGG_LABEL)
