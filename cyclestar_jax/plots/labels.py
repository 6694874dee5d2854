"""Latent spaces and labels (Figs. 10, 11, label accuracy)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from cyclestar_jax.labels import LABEL_NAMES, label_index
from cyclestar_jax.plots._base import (
  GROUP_COLOURS,
  _axis_label,
  _bias_scatter,
  _figure,
  _finite_limits,
  _kiel_axes,
  _label_tex,
  _label_unit,
  _marker_size,
  _save,
  _signed,
  _stat_text,
  _sym_limit,
)


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
  # Deferred import (matplotlib: heavy, only when drawing).
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


def fig_catalogue_residuals(catalogue: np.ndarray, fits: Mapping[str, np.ndarray],
                            path: str | os.PathLike, *,
                            names: Sequence[str] = ("Teff", "logg", "Fe_H", "Mg_H")) -> str:
  """Fitted minus catalogue labels against the catalogue's Teff, one panel per label (real
  data, where the truth is unknown).

  Args:
    catalogue: [N, 25] catalogue labels in `labels.LABEL_NAMES` order (NaN: missing).
    fits: method → [N, 25] fitted labels, same stars and order.
    path: output PNG.
    names: labels to show, one panel each (default Teff, log g, [Fe/H], [Mg/H]).

  Every method is drawn in its own colour in each panel, with its median and scatter (half the
  16–84 width) of fitted − catalogue over the stars that have both, and the star count.
  """
  cat = np.asarray(catalogue, np.float64)
  teff = cat[:, label_index("Teff")]
  idx = [label_index(n) for n in names]
  rows, cols = _grid_shape(len(idx))
  fig = _figure(4.2 * cols + 0.4, 3.0 * rows + 0.5)
  axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
  for ax, j in zip(axes, idx, strict=False):
    name = LABEL_NAMES[j]
    diffs = {m: np.asarray(f, np.float64)[:, j] - cat[:, j] for m, f in fits.items()}
    lim = _sym_limit(*diffs.values(), pad=1.25, floor=1e-6)
    fmt = ".0f" if name == "Teff" else ".3f"
    unit = _label_unit(name)
    unit_txt = f" {unit}" if unit and unit != "ratio" else ""
    text = []
    for k, (method, d) in enumerate(diffs.items()):
      ok = np.isfinite(d) & np.isfinite(teff)
      ax.scatter(teff[ok], np.clip(d[ok], -lim, lim), s=max(_marker_size(int(ok.sum())), 12.0),
                 c=f"C{k}", lw=0, alpha=0.7, label=method, rasterized=True)
      med = float(np.median(d[ok])) if ok.any() else np.nan
      _, scatter = _bias_scatter(d[ok])
      text.append(f"{method}: median {_signed(med, fmt)}, scatter {scatter:{fmt}}{unit_txt} "
                  f"({int(ok.sum())})")
    ax.axhline(0.0, color="0.4", lw=0.7, ls="--")
    ax.set_ylim(-lim, lim * (1.0 + 0.2 * len(diffs)))  # room for the text above the points
    ax.set_xlim(*_finite_limits(teff))  # the same Teff axis in every panel
    ax.set_xlabel(_axis_label("Teff", prefix="catalogue "))
    ax.set_ylabel(_axis_label(name, prefix="fitted − catalogue "))
    _stat_text(ax, "\n".join(text), fontsize=7.5)
  for ax in axes[len(idx):]:
    ax.set_visible(False)
  if len(fits) > 1:
    axes[0].legend(loc="lower left", fontsize=7.5)
  fig.suptitle(f"fitted − catalogue labels ({len(cat)} star{'s' * (len(cat) != 1)})",
               fontsize=11)
  return _save(fig, path)


def _running_median(x: np.ndarray, y: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray,
                                                                             np.ndarray]:
  """Median of y in `n_bins` equal-count bins of x → (bin centres, medians)."""
  order = np.argsort(x)
  parts = np.array_split(order, n_bins)
  xs = np.array([np.median(x[p]) for p in parts if p.size])
  ys = np.array([np.median(y[p]) for p in parts if p.size])
  return xs, ys


def fig_label_sensitivity(gains: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                          names: Sequence[str] = LABEL_NAMES, n_stars: int | None = None) -> str:
  """Per-label gain of model derivative spectra against reference ones (`sensitivity`).

  Args:
    gains: legend entry → [len(names)] gains (1: the model responds to the label as fully as
      the reference; 0: not at all), one bar per label and entry.
    path: output PNG.
    names: the labels, in the order of the gains.
    n_stars: stars behind each median (for the title).
  """
  entries = list(gains.items())
  k = max(len(entries), 1)
  x = np.arange(len(names))
  fig = _figure(max(8.0, 0.42 * len(names) + 1.5), 4.4)
  ax = fig.subplots()
  width = 0.8 / k
  for i, (entry, g) in enumerate(entries):
    ax.bar(x + (i - (k - 1) / 2) * width, np.clip(np.asarray(g, np.float64), -0.5, 2.0), width,
           color=f"C{i}", label=entry)
  ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
  ax.axhline(0.0, color="0.3", lw=0.6)
  ax.set_xticks(x, [_label_tex(n) for n in names], rotation=60, fontsize=8)
  ax.set_xlim(-0.6, len(names) - 0.4)
  ax.set_ylim(-0.5, 2.0)
  ax.set_ylabel("gain ⟨∂M/∂y, ∂R/∂y⟩ / ⟨∂R/∂y, ∂R/∂y⟩")
  ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(k, 3),
            frameon=False)
  fig.suptitle("label sensitivity of the models (median over "
               f"{n_stars if n_stars is not None else 'the'} stars; 1 = full, clipped to "
               "[−0.5, 2])", fontsize=10)
  return _save(fig, path)
