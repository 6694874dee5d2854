"""normalization.png: a few stars' raw co-add with the fitted continuum, and the normalized
spectrum with the masked pixels marked, per chip."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cyclestar_jax import resources
from cyclestar_jax.apogee.normalize import CHIPS
from cyclestar_jax.apogee.spectra import Star
from cyclestar_jax.fileio import save_figure


def plot_normalization(stars: Sequence[Star], path: str | os.PathLike) -> str:
  """Two rows per star (raw flux + continuum; normalized flux, masked pixels in red), one
  column per chip; Cannon continuum pixels used by the fit are marked on the raw flux.

  Returns:
    The path written (PNG, atomically).
  """
  # Deferred import (matplotlib: heavy, only when drawing).
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  wave = resources.wavelength()
  cont_pix = resources.continuum_pixels()
  n = max(len(stars), 1)
  fig = Figure(figsize=(15, 2.6 * 2 * n), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(2 * n, 3, squeeze=False, sharex="col")
  for k, star in enumerate(stars):
    h = star.header
    good = star.norm.x_msk
    with np.errstate(invalid="ignore", divide="ignore"):
      x = star.flux / star.norm.continuum
    for c, (name, (a, b)) in enumerate(zip(CHIPS, resources.CHIP_EDGES, strict=True)):
      w = wave[a:b]
      ax = axes[2 * k, c]
      ax.plot(w, np.where(good[a:b], star.flux[a:b], np.nan), lw=0.5, color="k")
      ax.plot(w, star.norm.continuum[a:b], lw=1.2, color="C1", label="continuum (Chebyshev 4)")
      sel = cont_pix[a:b] & good[a:b]
      ax.plot(w[sel], star.flux[a:b][sel], ".", ms=2, color="C0", label="continuum pixels")
      if c == 0:
        ax.set_ylabel("flux (10⁻¹⁷ erg/s/cm²/Å)", fontsize=8)
      ax.set_title(f"{h.apogee_id} {h.telescope} {h.field}  S/N {h.snr:.0f}  {name} chip",
                   fontsize=8)
      ax = axes[2 * k + 1, c]
      ax.plot(w, np.where(good[a:b], x[a:b], np.nan), lw=0.5, color="k")
      bad = ~good[a:b]
      y_bad = np.clip(np.nan_to_num(x[a:b][bad], nan=1.0), 0.0, 1.3)
      ax.plot(w[bad], y_bad, "|", ms=5, color="C3", label=f"masked ({bad.sum()} px)")
      ax.axhline(1.0, lw=0.6, color="C1")
      ax.set_ylim(0.3, 1.25)
      ax.legend(loc="lower left", fontsize=7)
      if c == 0:
        ax.set_ylabel("normalized flux", fontsize=8)
    axes[0, 0].legend(loc="lower left", fontsize=7)
  for ax in axes[-1]:
    ax.set_xlabel("vacuum wavelength (Å)")
  return os.fspath(save_figure(fig, path, dpi=110))
