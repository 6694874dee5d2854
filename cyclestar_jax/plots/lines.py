"""Figures of the line identification (paper Figs. 12–14)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from cyclestar_jax.labels import LABEL_NAMES, label_index
from cyclestar_jax.plots._base import _figure, _save, chip_slices

_ELEMENT_COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8")


def _feature_spans(ax, removed, wave: np.ndarray, offset: int, colours: dict, alpha=0.25):
  """Shade each removed feature's wavelength range, coloured by its element."""
  for a, b, j in zip(removed.start, removed.end, removed.label, strict=True):
    a, b = a - offset, b - offset
    if b <= 0 or a >= len(wave):
      continue
    a, b = max(a, 0), min(b, len(wave)) - 1
    ax.axvspan(wave[a], wave[b], color=colours.get(int(j), "0.7"), alpha=alpha, lw=0)


@dataclasses.dataclass(frozen=True)
class LineStar:
  """The star of Fig. 12 (`fig_line_identification`), on the pixels of the figure's `wave`.

  Attributes:
    payne: [P] Payne(Y), the synthetic spectrum (raw flux, features removed).
    transfer: [P] T_synth→obs(Payne(Y)) (raw flux).
    truth: [P] the true spectrum (raw flux).
    d_diff: [P, 25] derivative differences ∂T/∂label − ∂Payne/∂label, per dex.
  """

  payne: np.ndarray
  transfer: np.ndarray
  truth: np.ndarray
  d_diff: np.ndarray


def fig_line_identification(wave: np.ndarray, star: LineStar, removed, path: str | os.PathLike,
                            *, elements: Sequence[str], title: str = "",
                            offset: int = 47) -> str:
  """Fig. 12 for one star: the synthetic spectrum Payne(Y), T_synth→obs(Payne(Y)) against the
  truth, their difference with the removed features shaded by element, and the derivative
  differences ∂T/∂[X/H] − ∂Payne/∂[X/H] of `elements`, on the chip with most removed features.

  Args:
    wave: [P] Å.
    star: its spectra and derivative differences (`LineStar`).
    removed: `lines.Features` (7214 grid; `offset` = first pixel of `wave`).
  """
  x_payne, x_transfer, x_true, d_diff = star.payne, star.transfer, star.truth, star.d_diff
  chips = chip_slices(wave)
  counts = [int(np.sum((removed.start - offset >= c.start) & (removed.start - offset < c.stop)))
            for c in chips]
  c = chips[int(np.argmax(counts))]
  w = wave[c]
  idx = [label_index(e) for e in elements]
  colours = {j: _ELEMENT_COLOURS[k % len(_ELEMENT_COLOURS)] for k, j in enumerate(idx)}
  n_rows = 3 + len(elements)
  fig = _figure(11.0, 1.5 * n_rows + 1.0)
  axes = fig.subplots(n_rows, 1, sharex=True)
  ax = axes[0]
  ax.plot(w, x_payne[c], color="0.4", lw=0.7, label="Payne(Y): synthetic, features removed")
  ax.set_ylabel("flux")
  ax.legend(loc="lower left", fontsize=8)
  ax = axes[1]
  ax.plot(w, x_true[c], color="k", lw=0.7, label="truth")
  ax.plot(w, x_transfer[c], color="C3", lw=0.7, label="T_synth→obs(Payne(Y))")
  ax.set_ylabel("flux")
  ax.legend(loc="lower left", fontsize=8, ncol=2)
  ax = axes[2]
  ax.plot(w, x_transfer[c] - x_payne[c], color="C3", lw=0.7)
  _feature_spans(ax, removed.select(np.isin(removed.label, idx)), wave[c], offset + c.start,
                 colours)
  _feature_spans(ax, removed.select(~np.isin(removed.label, idx)), wave[c], offset + c.start,
                 {}, alpha=0.12)
  ax.set_ylabel("T(Payne) − Payne")
  handles = [ax.axvspan(np.nan, np.nan, color=colours[j], alpha=0.3, label=LABEL_NAMES[j][:-2])
             for j in idx]
  ax.legend(handles=handles, loc="lower left", fontsize=8, ncol=len(idx),
            title="removed features", title_fontsize=8)
  for k, (e, j) in enumerate(zip(elements, idx, strict=True)):
    ax = axes[3 + k]
    ax.plot(w, d_diff[c, j], color=colours[j], lw=0.7)
    _feature_spans(ax, removed.select(removed.label == j), wave[c], offset + c.start, colours)
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_ylabel(f"Δ∂/∂[{e[:-2]}/H]\n(per dex)", fontsize=8)
  axes[-1].set_xlabel("wavelength (Å)")
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def fig_recovery_map(recovered: np.ndarray, baseline: np.ndarray, teff_edges, logg_edges,
                     path: str | os.PathLike) -> str:
  """Fig. 13: mean recovery error (%) over the masked pixels per Teff–log g bin, transferred
  and without recovery, on one colour scale (NaN: empty bins)."""
  # Deferred import (matplotlib: heavy, only when drawing).
  import matplotlib.colors as mcolors

  fig = _figure(11.0, 4.5)
  axes = fig.subplots(1, 2, sharey=True)
  vals = np.concatenate([np.ravel(recovered), np.ravel(baseline)])
  vals = vals[np.isfinite(vals) & (vals > 0)]
  norm = mcolors.LogNorm(vmin=max(vals.min(), 1e-3), vmax=vals.max()) if vals.size else None
  for ax, arr, name in zip(axes, (recovered, baseline),
                           ("T_synth→obs(Payne(Y)) (recovered)", "Payne(Y) (no recovery)"),
                           strict=True):
    im = ax.pcolormesh(np.asarray(teff_edges), np.asarray(logg_edges), np.asarray(arr).T,
                       norm=norm, cmap="viridis")
    ax.set_xlim(max(teff_edges), min(teff_edges))
    ax.set_ylim(max(logg_edges), min(logg_edges))
    ax.set_xlabel("Teff (K)")
    finite = np.asarray(arr)[np.isfinite(arr)]
    ax.set_title(f"{name}: median bin {np.median(finite):.3f} %" if finite.size else name,
                 fontsize=9)
  axes[0].set_ylabel("log g (dex)")
  fig.colorbar(im, ax=axes, label="mean |x − x_true| / x_true over masked pixels (%)")
  return _save(fig, path)


def fig_cn_features(wave: np.ndarray, d_diff: np.ndarray, cn, path: str | os.PathLike, *,
                    confusion: np.ndarray | None = None, offset: int = 47,
                    max_panels: int = 6) -> str:
  """Fig. 14: derivative differences with respect to [C/H] and [N/H] around removed C and N
  features (molecular, degenerate), up to `max_panels`; the C/N confusion table in the title."""
  j_c, j_n = label_index("C_H"), label_index("N_H")
  n = min(max_panels, len(cn))
  fig = _figure(11.0, 2.0 * max(n, 1) + 1.0)
  axes = np.atleast_1d(fig.subplots(max(n, 1), 1))
  for k in range(n):
    ax = axes[k]
    a, b = int(cn.start[k]) - offset, int(cn.end[k]) - offset
    lo, hi = max(a - 15, 0), min(b + 15, len(wave))
    ax.plot(wave[lo:hi], d_diff[lo:hi, j_c], color="C0", lw=0.9, label="Δ∂/∂[C/H]")
    ax.plot(wave[lo:hi], d_diff[lo:hi, j_n], color="C1", lw=0.9, label="Δ∂/∂[N/H]")
    ax.axvspan(wave[max(a, 0)], wave[min(b, len(wave)) - 1], color="0.8", alpha=0.5, lw=0)
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_ylabel("per dex", fontsize=8)
    ax.set_title(f"removed {LABEL_NAMES[int(cn.label[k])][:-2]} feature", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
  axes[-1].set_xlabel("wavelength (Å)")
  if confusion is not None:
    fig.suptitle("C/N confusion (rows true C, N; columns predicted C, N, other): "
                 f"{np.asarray(confusion).tolist()}", fontsize=9)
  return _save(fig, path)
