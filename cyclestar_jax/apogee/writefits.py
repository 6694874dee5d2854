"""Writing apStar-layout FITS files (astropy): for the tests, the mock world's round trip and
the benchmark. Not needed to read SDSS's files.

  write_apstar(path, StarRows(flux, err, mask), header, one_d=False)

`on_apstar_grid` puts spectra on The Payne's 7,214 pixels onto the 8,575-pixel apStar grid.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from cyclestar_jax.apogee import grid


@dataclasses.dataclass(frozen=True, eq=False)
class StarRows:
  """The image rows of an apStar file: flux, err [R, 8575] float, mask [R, 8575] int."""

  flux: np.ndarray
  err: np.ndarray
  mask: np.ndarray


def on_apstar_grid(values: np.ndarray, fill: float | np.ndarray = np.nan) -> np.ndarray:
  """[..., 7214] → [..., 8575]: The Payne's pixels in place, `fill` elsewhere."""
  values = np.asarray(values)
  out = np.empty(values.shape[:-1] + (grid.APSTAR_NWAVE,), values.dtype)
  out[...] = fill
  out[..., grid.payne_indices()] = values
  return out


def apstar_header(apogee_id: str, *, snr: float, nvisits: int, field: str = "mock",
                  **extra: Any) -> dict[str, Any]:
  """A primary header's keywords as SDSS writes them (CRVAL1 4.179, CDELT1 6e-6, NWAVE 8575)."""
  return {"CRVAL1": grid.APSTAR_CRVAL1, "CDELT1": grid.APSTAR_CDELT1, "CRPIX1": 1,
          "CTYPE1": "LOG-LINEAR", "DC-FLAG": 1, "NWAVE": grid.APSTAR_NWAVE, "FIELD": field,
          "OBJID": apogee_id, "SNR": float(snr), "NVISITS": int(nvisits), "STARFLAG": 0,
          "VSCATTER": 0.0, **extra}


def write_apstar(path: str | os.PathLike, rows: StarRows, header: dict[str, Any], *,
                 one_d: bool = False, flux_dtype=np.float32, n_hdus: int = 7) -> str:
  """Writes an apStar-layout file: HDU0 header only, HDUs 1-3 flux / error / mask, HDUs 4-7
  sky, sky error, telluric, telluric error (zeros) as SDSS does.

  Args:
    path: the file. rows: `StarRows` [R, 8575]. header: primary keywords (`apstar_header`).
    one_d: write a single row as a 1-D image (single-visit stars before DR17).
    flux_dtype: float32 as SDSS; float64 as the real test file. n_hdus: image HDUs after the
      primary (7; fewer writes a damaged file for tests).
  """
  # Deferred import (astropy: heavy, only for FITS files).
  from astropy.io import fits

  h0 = fits.Header()
  for k, v in header.items():
    h0[k] = v
  hdus = [fits.PrimaryHDU(header=h0)]
  images = [np.asarray(rows.flux, flux_dtype), np.asarray(rows.err, flux_dtype),
            np.asarray(rows.mask)]
  images += [np.zeros_like(images[0]) for _ in range(4)]
  for im in images[:n_hdus]:
    im = im[0] if one_d else im
    h = fits.Header()
    for k in ("CRVAL1", "CDELT1", "CRPIX1", "CTYPE1"):
      if k in header:
        h[k] = header[k]
    hdus.append(fits.ImageHDU(im, header=h))
  fits.HDUList(hdus).writeto(path, overwrite=True)
  return os.fspath(path)
