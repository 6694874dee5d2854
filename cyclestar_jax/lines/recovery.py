"""Missing-line recovery error (Table 1, Fig. 13; docs/metrics_and_figures.md) and Teff–log g bins.

Recovery error of one star: mean over the masked pixels of |x − x_true| / x_true, in %, with
x = T_synth→obs(Payne(Y)) (the recovery) or x = Payne(Y) (no recovery: the untransferred
synthetic spectrum, the baseline), on the 7167 network pixels. Every star has the same masked
pixels, so the mean over stars equals the mean over all (star, pixel) pairs: the paper's number.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cyclestar_jax import labels as _labels
from cyclestar_jax.lines.derivatives import Reducer
from cyclestar_jax.resources import N_DROP

_TEFF, _LOGG = _labels.label_index("Teff"), _labels.label_index("logg")


@dataclasses.dataclass(frozen=True)
class TeffLoggBins:
  """A Teff × log g grid of bins (Fig. 13); bin i·n_logg + k holds teff_edges[i:i+2] ×
  logg_edges[k:k+2] (left-closed); stars outside the grid get index n_bins.

  Attributes:
    teff_edges: increasing Teff edges in K.
    logg_edges: increasing log g edges in dex.
  """

  teff_edges: tuple[float, ...] = tuple(float(t) for t in np.arange(3500.0, 7001.0, 250.0))
  logg_edges: tuple[float, ...] = tuple(float(g) for g in np.arange(0.5, 5.01, 0.5))

  @property
  def shape(self) -> tuple[int, int]:
    """(n_teff, n_logg) bins."""
    return len(self.teff_edges) - 1, len(self.logg_edges) - 1

  @property
  def n_bins(self) -> int:
    return self.shape[0] * self.shape[1]

  def index(self, y) -> jax.Array:
    """Bin index [...] of physical labels [..., 25] (jnp; n_bins outside the grid)."""
    t = jnp.searchsorted(jnp.asarray(self.teff_edges), y[..., _TEFF], side="right") - 1
    g = jnp.searchsorted(jnp.asarray(self.logg_edges), y[..., _LOGG], side="right") - 1
    n_t, n_g = self.shape
    inside = (t >= 0) & (t < n_t) & (g >= 0) & (g < n_g)
    return jnp.where(inside, t * n_g + g, self.n_bins)


def relative_error_percent(x: jax.Array, x_true: jax.Array, pixel_mask: jax.Array) -> jax.Array:
  """Mean over masked pixels of |x − x_true| / x_true × 100: x, x_true [..., P], mask [P] bool
  → [...] (NaN if the mask is empty)."""
  m = jnp.asarray(pixel_mask, x.dtype)
  return 100.0 * jnp.sum(jnp.abs(x - x_true) / x_true * m, axis=-1) / jnp.sum(m)


def binned_mean(values: np.ndarray, y: np.ndarray, bins: TeffLoggBins
                ) -> tuple[np.ndarray, np.ndarray]:
  """Mean of per-star values [N] in each bin of labels y [N, 25]: (means, counts) [n_teff, n_logg]
  (NaN mean in empty bins)."""
  idx = np.asarray(bins.index(jnp.asarray(y, jnp.float32)))
  sums = np.bincount(idx, np.asarray(values, np.float64), bins.n_bins + 1)[:-1]
  counts = np.bincount(idx, minlength=bins.n_bins + 1)[:-1]
  with np.errstate(invalid="ignore", divide="ignore"):
    return (np.where(counts > 0, sums / counts, np.nan).reshape(bins.shape),
            counts.reshape(bins.shape))


def _summary(per_star: dict[str, np.ndarray], bin_sums: dict, bin_n: np.ndarray,
             bins: TeffLoggBins) -> dict:
  out = {"n": int(bin_n.sum()), "bins": bins, "per_star": per_star,
         "bin_counts": bin_n[:-1].reshape(bins.shape).astype(np.int64)}
  for k, v in per_star.items():
    out[k] = float(np.mean(v)) if len(v) else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
      b = np.where(bin_n[:-1] > 0, bin_sums[k][:-1] / bin_n[:-1], np.nan)
    out[f"{k}_binned"] = b.reshape(bins.shape)
  return out


def recovery_errors(x_recovered: np.ndarray, x_synth: np.ndarray, x_true: np.ndarray,
                    pixel_mask: np.ndarray, y: np.ndarray,
                    bins: TeffLoggBins | None = None) -> dict:
  """Recovery errors of spectra already in memory (the host version of `recovery_reducer`).

  Args:
    x_recovered, x_synth, x_true: [N, P] raw flux (transfer, Payne, truth) on the same pixels.
    pixel_mask: [P] bool, the masked pixels.
    y: [N, 25] physical labels (for the bins).
    bins: default `TeffLoggBins()`.

  Returns:
    {"recovered", "no_recovery": overall mean %, "recovered_binned", "no_recovery_binned"
    [n_teff, n_logg], "bin_counts", "per_star": {"recovered", "no_recovery": [N] %}, "n",
    "bins"}.
  """
  bins = TeffLoggBins() if bins is None else bins
  xt = jnp.asarray(x_true)
  per_star = {"recovered": np.asarray(relative_error_percent(jnp.asarray(x_recovered), xt,
                                                             pixel_mask)),
              "no_recovery": np.asarray(relative_error_percent(jnp.asarray(x_synth), xt,
                                                               pixel_mask))}
  idx = np.asarray(bins.index(jnp.asarray(y, jnp.float32)))
  bin_sums = {k: np.bincount(idx, v.astype(np.float64), bins.n_bins + 1)
              for k, v in per_star.items()}
  return _summary(per_star, bin_sums, np.bincount(idx, minlength=bins.n_bins + 1), bins)


def recovery_reducer(pixel_mask: np.ndarray, bins: TeffLoggBins | None = None) -> Reducer:
  """A `Reducer` of the missing-line recovery error; reads the extra "x_true" [N, 7214] (the
  truth on the emulator grid, e.g. `mock.truth_spectrum`) and no derivatives.

  Args:
    pixel_mask: [7214] bool, the pixels removed from the synthetic domain
      (`mock.masked_pixels(world)`); compared on its network pixels 47:.
    bins: default `TeffLoggBins()`.

  Returns:
    A reducer whose result is `recovery_errors`' dict.
  """
  bins = TeffLoggBins() if bins is None else bins
  mask = jnp.asarray(np.asarray(pixel_mask, bool)[N_DROP:])

  def fn(batch):
    xt = batch["x_true"][:, N_DROP:]
    v, seg = batch["valid"], bins.index(batch["y"])
    rows = {"recovered": relative_error_percent(batch["synth_to_obs"], xt, mask),
            "no_recovery": relative_error_percent(batch["payne"], xt, mask)}
    sums = {k: jax.ops.segment_sum(v * r, seg, bins.n_bins + 1) for k, r in rows.items()}
    sums["n"] = jax.ops.segment_sum(v, seg, bins.n_bins + 1)
    return sums, rows

  def finalize(sums, rows):
    n = np.asarray(sums.pop("n"))
    return _summary({k: np.asarray(v) for k, v in rows.items()}, sums, n, bins)

  return Reducer(fn=fn, finalize=finalize, needs_jacobians=False)
