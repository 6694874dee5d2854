"""Figures of the mock world (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cyclestar_jax import h5io, resources  # noqa: E402
from cyclestar_jax.fileio import save_figure  # noqa: E402
from cyclestar_jax.mock import world as _world  # noqa: E402

ZOOMS = ((15_330.0, 15_400.0), (15_950.0, 16_020.0), (16_700.0, 16_770.0))  # Å


def _pick_cool_giant(obs: h5io.Spectra, y_true: np.ndarray) -> int:
  """Index of a cool, high-S/N giant (gap largest there), else the first star."""
  score = np.where((y_true[:, 0] < 4400) & (y_true[:, 1] < 2.5), obs.snr, -np.inf)
  return int(np.argmax(score)) if np.isfinite(score).any() else 0


def plot_examples(synth_path, obs_path, out_png, *, split: str = "test") -> Path:
  """Fig. 7-like view of the gap: an observed spectrum and synthetic spectra of similar labels.

  Panels: the whole band; three zooms with the observed flux (masked pixels grey), the
  synthetic-domain model at the observed star's true labels, the nearest synthetic star of the
  file, and below each zoom the observed minus synthetic difference with the error band.
  """
  with h5io.SpectraFile(obs_path) as fo, h5io.SpectraFile(synth_path) as fs:
    n = min(fo.n(split), 256)
    obs = fo.read(split, 0, n)
    y_true = fo.extra("labels_true", split, 0, n)
    world = _world.WorldConfig.from_json_dict(fo.attrs["world"])
    i = _pick_cool_giant(obs, y_true)
    ns = min(fs.n(split), 2048)
    syn = fs.read(split, 0, ns)
  key = np.array([1 / 150.0, 1 / 0.3, 1 / 0.1])
  d = ((syn.y[:, [0, 1, 18]] - y_true[i, [0, 1, 18]]) * key) ** 2
  j = int(np.argmin(d.sum(1)))
  model = np.asarray(_world.synthetic_spectrum(y_true[i][None], world))[0]
  wl = resources.wavelength()
  good = obs.x_msk[i] if obs.x_msk is not None else np.ones_like(wl, bool)

  fig = plt.figure(figsize=(15, 9))
  gs = fig.add_gridspec(3, 3, height_ratios=[1.0, 1.4, 0.6], hspace=0.35, wspace=0.18)
  top = fig.add_subplot(gs[0, :])
  for lo, hi in resources.CHIP_EDGES:
    sl = slice(lo, hi)
    top.plot(wl[sl], np.where(good[sl], obs.x[i, sl], np.nan), "k", lw=0.4)
    top.plot(wl[sl], model[sl], "C3", lw=0.4, alpha=0.8)
  for a, b in ZOOMS:
    top.axvspan(a, b, color="C0", alpha=0.15)
  yt = y_true[i]
  top.set_title(f"observed star: Teff {yt[0]:.0f} K, log g {yt[1]:.2f}, [Fe/H] {yt[18]:+.2f}, "
                f"S/N {obs.snr[i]:.0f}  (black: observed, red: synthetic domain at the same "
                f"labels)", fontsize=10)
  top.set_ylim(0.3, 1.15)
  top.set_ylabel("normalized flux")
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
    diff = np.where(good, obs.x[i] - model, np.nan)
    dx.plot(wl[sel], diff[sel], "k", lw=0.7)
    err = obs.x_err[i] if obs.x_err is not None else np.zeros_like(wl)
    dx.fill_between(wl[sel], -err[sel], err[sel], color="C0", alpha=0.3, lw=0)
    dx.axhline(0, color="0.5", lw=0.5)
    dx.set_ylim(-0.15, 0.15)
    dx.set_xlabel("wavelength (Å)")
    if k == 0:
      ax.set_ylabel("normalized flux")
      dx.set_ylabel("obs − synth")
      ax.legend(fontsize=7, loc="lower left")
  fig.suptitle(f"mock world ({world.experiment}): the synthetic gap", fontsize=12)
  out_png = Path(out_png)
  save_figure(fig, out_png, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return out_png
