"""Bad pixels and the continuum normalization of Ting et al. 2019 (The Payne), NumPy only.

Convention: spectra on The Payne's 7,214 pixels (`grid.payne_indices()`), flux and error in the
file's units (10⁻¹⁷ erg/s/cm²/Å for apStar); chips are `resources.CHIP_EDGES`.

Normalization (The Payne's `utils.get_apogee_continuum`): per chip, a Chebyshev series of
degree 4 in the pixel index scaled to [−1, 1] (x = 2 i / (n − 1) − 1, i the pixel within the
chip), fitted by least squares with weights 1/σ on the Cannon continuum pixels
(`resources.continuum_pixels()`, 241 / 108 / 180 per chip) that are good; flux and error are
divided by it. A chip with fewer than `min_continuum_pixels` good continuum pixels drops the star.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from cyclestar_jax import resources
from cyclestar_jax.apogee.config import ReadConfig
from cyclestar_jax.apogee.errors import StarRejected

CHIPS = ("blue", "green", "red")
ERR_MAX = 1e9  # errors at or above this are APOGEE's "no data" value


def bad_pixels(flux: np.ndarray, err: np.ndarray, bitmask: np.ndarray, bad_value: int
               ) -> np.ndarray:
  """Bad pixels [..., n] (True = bad): a bad APOGEE_PIXMASK bit, non-finite flux or error,
  error ≤ 0 or ≥ 1e9, flux ≤ 0.

  Args:
    flux, err: [..., n] raw flux and 1σ error. bitmask: [..., n] integer APOGEE_PIXMASK.
    bad_value: OR of the bad bits' values (`ReadConfig.bad_pixel_value`).
  """
  with np.errstate(invalid="ignore"):
    bad = (np.asarray(bitmask).astype(np.int64) & int(bad_value)) != 0
    bad |= ~np.isfinite(flux) | ~np.isfinite(err)
    bad |= ~(err > 0) | (err >= ERR_MAX) | ~(flux > 0)
  return bad


def chip_coordinate(n: int) -> np.ndarray:
  """x = 2 i / (n − 1) − 1 for i = 0 … n−1: a chip's pixel index on [−1, 1]."""
  return 2.0 * np.arange(n) / (n - 1) - 1.0


@functools.cache
def _chip_basis(chip: int, degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(Chebyshev basis [n, degree + 1] over the chip's pixels, its continuum pixels [n] bool,
  the chip's pixel slice as (a, b))."""
  a, b = resources.CHIP_EDGES[chip]
  v = np.polynomial.chebyshev.chebvander(chip_coordinate(b - a), degree)
  return v, resources.continuum_pixels()[a:b], np.array([a, b])


def fit_continuum(flux: np.ndarray, err: np.ndarray, good: np.ndarray, *, degree: int = 4,
                  min_pixels: int = 50) -> np.ndarray:
  """The per-chip Chebyshev continuum [7214] of one star (module docstring).

  Args:
    flux, err: [7214] raw flux and error. good: [7214] bool, True = usable pixel.
    degree: the Chebyshev degree. min_pixels: fewest good continuum pixels per chip.

  Raises:
    StarRejected("continuum", …) naming the chip with too few good continuum pixels, or whose
      fitted continuum is not positive everywhere.
  """
  out = np.empty(resources.N_PIX, np.float64)
  for chip, name in enumerate(CHIPS):
    basis, cont_pix, (a, b) = _chip_basis(chip, degree)
    sel = cont_pix & good[a:b]
    n_sel = int(sel.sum())
    if n_sel < min_pixels:
      raise StarRejected("continuum", f"{name} chip: {n_sel} good continuum pixels, fewer than "
                         f"{min_pixels}")
    w = 1.0 / np.asarray(err[a:b][sel], np.float64)
    vw = basis[sel] * w[:, None]
    # Normal equations: a (degree+1)² system, well conditioned for Chebyshev terms on [−1, 1].
    coef = np.linalg.solve(vw.T @ vw, vw.T @ (np.asarray(flux[a:b][sel], np.float64) * w))
    out[a:b] = basis @ coef
    if not np.all(out[a:b] > 0):
      raise StarRejected("continuum", f"{name} chip: the fitted continuum is not positive")
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class Normalized:
  """One star's normalized spectrum.

  Attributes:
    x: [7214] float32 normalized flux (1.0 at bad pixels).
    x_err: [7214] float32 normalized 1σ error (1.0 at bad pixels).
    x_msk: [7214] bool, True = good.
    continuum: [7214] float64 the fitted continuum in the file's flux units.
  """

  x: np.ndarray
  x_err: np.ndarray
  x_msk: np.ndarray
  continuum: np.ndarray


def check_masked_share(bad: np.ndarray, cfg: ReadConfig) -> None:
  """Raises StarRejected("masked") when more than `max_masked_fraction` of the pixels, or
  `max_masked_chip_fraction` of one chip's, are bad."""
  share = float(bad.mean())
  if share > cfg.max_masked_fraction:
    raise StarRejected("masked", f"{share:.0%} of the pixels masked (more than "
                       f"{cfg.max_masked_fraction:.0%})")
  for name, (a, b) in zip(CHIPS, resources.CHIP_EDGES, strict=True):
    s = float(bad[a:b].mean())
    if s > cfg.max_masked_chip_fraction:
      raise StarRejected("masked", f"{name} chip: {s:.0%} of its pixels masked (more than "
                         f"{cfg.max_masked_chip_fraction:.0%})")


def normalize_star(flux: np.ndarray, err: np.ndarray, bad: np.ndarray, cfg: ReadConfig
                   ) -> Normalized:
  """Masked-share cut, continuum fit and division for one star on the 7,214 pixels.

  Args:
    flux, err: [7214] raw flux and error. bad: [7214] bool (`bad_pixels`). cfg: the settings.

  Raises:
    StarRejected ("masked" or "continuum").
  """
  check_masked_share(bad, cfg)
  good = ~bad
  cont = fit_continuum(flux, err, good, degree=cfg.continuum_degree,
                       min_pixels=cfg.min_continuum_pixels)
  with np.errstate(invalid="ignore", divide="ignore"):
    x = np.where(good, flux / cont, 1.0).astype(np.float32)
    x_err = np.where(good, err / cont, 1.0).astype(np.float32)
  return Normalized(x=x, x_err=x_err, x_msk=good, continuum=cont)
