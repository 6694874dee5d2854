"""The apStar wavelength grid and The Payne's 7,214 pixels on it.

apStar/asStar spectra are on one log-linear vacuum grid of NWAVE = 8575 pixels,
log10 λ_i = CRVAL1 + CDELT1 · (i + 1 − CRPIX1) with CRVAL1 = 4.179, CDELT1 = 6e-6, CRPIX1 = 1.
The Payne's (and the reference files') 7,214 pixels are the apStar indices
[322:3242] + [3648:6048] + [6412:8306], one slice per chip. (The 7,514-pixel ranges of
ASPCAP/astroNN, [246:3274] + [3585:6080] + [6344:8335], are another grid.)
"""

from __future__ import annotations

import functools

import numpy as np

from cyclestar_jax import resources

APSTAR_NWAVE = 8575
APSTAR_CRVAL1 = 4.179
APSTAR_CDELT1 = 6e-6
PAYNE_SLICES: tuple[tuple[int, int], ...] = ((322, 3242), (3648, 6048), (6412, 8306))
GRID_RTOL = 1e-6  # largest relative wavelength difference accepted against `resources`


@functools.cache
def _payne_indices() -> np.ndarray:
  idx = np.concatenate([np.arange(a, b) for a, b in PAYNE_SLICES])
  idx.setflags(write=False)
  return idx


def payne_indices() -> np.ndarray:
  """apStar pixel indices [7214] (int) of The Payne's grid, in order."""
  return _payne_indices()


def log_linear_wavelength(crval1: float, cdelt1: float, n: int, crpix1: float = 1.0
                          ) -> np.ndarray:
  """Wavelengths [n] in Å of a log-linear FITS axis (pixel i, 0-based, at CRPIX1 − 1)."""
  i = np.arange(int(n), dtype=np.float64)
  return 10.0 ** (float(crval1) + float(cdelt1) * (i + 1.0 - float(crpix1)))


def grid_deviation(wavelength_at_payne: np.ndarray) -> float:
  """Largest |λ / λ_resources − 1| over the 7,214 pixels."""
  ref = resources.wavelength()
  return float(np.max(np.abs(np.asarray(wavelength_at_payne, np.float64) / ref - 1.0)))


@functools.lru_cache(maxsize=64)
def _apstar_deviation(crval1: float, cdelt1: float) -> float:
  wave = log_linear_wavelength(crval1, cdelt1, APSTAR_NWAVE)
  return grid_deviation(wave[payne_indices()])


def check_apstar_grid(path: str, keys: dict) -> float:
  """Checks that header keywords CRVAL1, CDELT1, NWAVE (or NAXIS1), CRPIX1 give The Payne's
  pixels at `payne_indices()`.

  Args:
    path: the file, for messages.
    keys: header values; `NWAVE` may be missing when `NAXIS1` is given.

  Returns:
    The largest relative wavelength deviation (≤ GRID_RTOL).

  Raises:
    ValueError naming the file and the keyword that does not give the grid.
  """
  for k in ("CRVAL1", "CDELT1"):
    if not isinstance(keys.get(k), (int, float)) or isinstance(keys.get(k), bool):
      raise ValueError(f"{path}: header keyword {k} missing or not a number ({keys.get(k)!r}); "
                       "expected the apStar log-linear grid (CRVAL1 4.179, CDELT1 6e-6)")
  nwave = keys.get("NWAVE", keys.get("NAXIS1"))
  if nwave != APSTAR_NWAVE:
    raise ValueError(f"{path}: header keyword NWAVE = {nwave!r}; expected {APSTAR_NWAVE} "
                     "(the apStar grid)")
  crpix = keys.get("CRPIX1", 1)
  if crpix != 1:
    raise ValueError(f"{path}: header keyword CRPIX1 = {crpix!r}; expected 1")
  dev = _apstar_deviation(float(keys["CRVAL1"]), float(keys["CDELT1"]))
  if dev > GRID_RTOL:
    key = "CRVAL1" if abs(keys["CRVAL1"] - APSTAR_CRVAL1) > 1e-9 else "CDELT1"
    raise ValueError(
        f"{path}: header keyword {key} = {keys[key]!r} does not give the apStar grid "
        f"(wavelengths off by {dev:.2e} relative, > {GRID_RTOL:g}; expected CRVAL1 "
        f"{APSTAR_CRVAL1}, CDELT1 {APSTAR_CDELT1:g})")
  return dev


def map_to_payne(path: str, wavelength: np.ndarray) -> np.ndarray:
  """Indices [7214] into `wavelength` [n] (Å) of The Payne's pixels, each within GRID_RTOL.

  Raises:
    ValueError naming the file when any of the 7,214 wavelengths is not on the given axis.
  """
  wave = np.asarray(wavelength, np.float64)
  ref = resources.wavelength()
  if wave.ndim != 1 or wave.size < 2 or np.any(np.diff(wave) <= 0):
    raise ValueError(f"{path}: the header's wavelength axis is not increasing")
  j = np.clip(np.searchsorted(wave, ref), 1, wave.size - 1)
  j = np.where(np.abs(wave[j - 1] - ref) < np.abs(wave[j] - ref), j - 1, j)
  dev = np.abs(wave[j] / ref - 1.0)
  if np.any(dev > GRID_RTOL):
    n_off = int(np.sum(dev > GRID_RTOL))
    raise ValueError(f"{path}: {n_off} of The Payne's 7214 wavelengths are not on the header's "
                     f"wavelength axis (CRVAL1/CDELT1/NAXIS1; > {GRID_RTOL:g} relative)")
  return j
