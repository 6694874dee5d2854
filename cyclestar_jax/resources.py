"""Reference data shipped with the package (APOGEE grid, masks, Kurucz responses).

Everything here is read from the package's own `refdata/` folder (see `refdata/README.md` for the
origin and licence of each file); nothing reads outside the installed package.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

N_PIX = 7214  # pixels of the APOGEE / Payne wavelength grid
N_DROP = 47  # leading pixels the networks drop (docs/method.md, 'Pixels and standardization')
N_PIX_NET = N_PIX - N_DROP  # 7167 pixels seen by the networks
ERROR_FLOOR = 0.005  # raw-flux floor of errors, and the synthetic domain's error (docs/method.md)
ERROR_MASK_THRESHOLD = 0.05  # observed pixels with a raw error above it are masked (docs/method.md)
# Chips: blue 0..2919, green 2920..5319, red 5320..7213 (inclusive pixel ranges).
CHIP_EDGES = ((0, 2920), (2920, 5320), (5320, N_PIX))


def _path(name: str):
  return resources.files("cyclestar_jax").joinpath("refdata", name)


@functools.cache
def _npz(name: str) -> dict[str, np.ndarray]:
  with _path(name).open("rb") as f:
    with np.load(f, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}


def wavelength() -> np.ndarray:
  """The APOGEE vacuum wavelength grid in Å, shape [7214], float64, log-linear (6e-6 dex)."""
  return _npz("apogee_wavelength.npz")["wavelength"].copy()


def payne_mask() -> np.ndarray:
  """The Payne's fitting mask, shape [7214], bool; True = masked (Kurucz deviates > 2%)."""
  return _npz("apogee_mask.npz")["apogee_mask"].copy()


def continuum_pixels() -> np.ndarray:
  """The Cannon's 529 APOGEE continuum pixels, shape [7214], bool."""
  return _npz("cannon_cont_pixels_apogee.npz")["pixels_cannon"].copy()


def kurucz_response() -> dict[str, np.ndarray]:
  """Real Kurucz flux responses of a solar K giant to +0.05 dex in each of 20 elements.

  Keys: `gradient` [20, 7214] (flux change per +0.05 dex), `element_names` [20],
  `label_index` [20] (position in the 25-label vector), `feature_element`, `feature_start`,
  `feature_end` (exclusive, a Python slice), `feature_masked` [415], `total_mask` [7214],
  `wavelength` [7214].
  """
  return {k: v.copy() for k, v in _npz("kurucz_line_response.npz").items()}


@functools.cache
def spectra_mean_std() -> tuple[float, float]:
  """Scalar mean and standard deviation used to standardize spectra (docs/method.md)."""
  with _path("mean_and_std_PAYNE_specs.npy").open("rb") as f:
    mean, std = np.load(f, allow_pickle=False)
  return float(mean), float(std)
