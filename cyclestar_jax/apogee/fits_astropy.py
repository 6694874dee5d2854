"""astropy's FITS reader behind `fitsio.FitsImages`'s interface, for compressed files
(`.fits.gz`) the fast reader does not read. The only spectra module that imports astropy."""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.io import fits

from cyclestar_jax.apogee import fitsio


class AstropyImages:
  """`header(i)`, `shape(i)`, `rows(i, rows)` of a FITS file opened by astropy."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._hdul = fits.open(path, memmap=False)
    except OSError as e:
      raise fitsio.NotFitsError(f"{path}: not a FITS file ({e})") from None

  def _hdu(self, index: int):
    if index >= len(self._hdul):
      raise fitsio.FitsFormatError(f"{self.path}: HDU {index} missing")
    return self._hdul[index]

  def header(self, index: int) -> dict[str, Any]:
    h = self._hdu(index).header
    out = {k: h[k] for k in h if k and k not in ("COMMENT", "HISTORY")}
    if index > 0 and isinstance(self._hdu(index), fits.ImageHDU):
      out["XTENSION"] = "IMAGE"
    return out

  def shape(self, index: int) -> tuple[int, ...]:
    return tuple(self._hdu(index).shape)

  def rows(self, index: int, rows=None) -> np.ndarray:
    data = np.asarray(self._hdu(index).data)
    data = data[None] if data.ndim == 1 else data
    return data if rows is None else data[list(rows)]

  def close(self) -> None:
    self._hdul.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()
