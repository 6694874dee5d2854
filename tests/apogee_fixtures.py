"""Builders of SDSS-like test files shared by the APOGEE tests: the real DR17 file's path, mock
DR17-layout apStar files (a known continuum multiplied into normalized spectra, mask bits on the
co-add), and mock allStar tables with DR17 column names."""

from pathlib import Path

import numpy as np
from astropy.table import Table

from cyclestar_jax import resources
from cyclestar_jax.apogee.writefits import StarRows, apstar_header, on_apstar_grid, write_apstar
from cyclestar_jax.labels import ELEMENTS, N_LABELS, label_index

REAL = Path(__file__).parent / "data" / "apStar-dr17-2M17335483-2753043.fits"
SKY, BADPIX, PERSIST_LOW = 1 << 12, 1 << 0, 1 << 11
# allStar's X_FE columns in DR17 (no GE_FE): every element of the labels but Fe and Ge.
ALLSTAR_ELEMENTS = tuple(e.upper() for e in ELEMENTS if e not in ("Fe", "Ge"))


def smooth_continuum(scale: float) -> np.ndarray:
  """A known smooth continuum [7214] in flux units (a reddened-star slope and a bend)."""
  w = resources.wavelength()
  return scale * (w / 16000.0) ** -3 * (1 + 0.03 * ((w - 16000.0) / 1000.0) ** 2)


def write_star(path, x, x_err, flags, snr, apogee_id, n_visits, rng, field="mock"):
  """One DR17-layout apStar file of normalized flux x [7214] times a known continuum, with
  APOGEE_PIXMASK `flags` [7214] on the co-add row; rows as DR17 writes them."""
  cont = smooth_continuum(rng.uniform(200, 2000))
  flux, err = on_apstar_grid(x * cont, 1.0), on_apstar_grid(x_err * cont, 1.0)
  mask = on_apstar_grid(flags, 0).astype(np.int32)
  n_rows = 1 if n_visits == 1 else n_visits + 2
  rows = StarRows(np.repeat(flux[None], n_rows, 0), np.repeat(err[None], n_rows, 0),
                  np.repeat(mask[None], n_rows, 0))
  if n_rows > 1:
    rows.flux[1] *= 1.05  # the global co-add: not what is read
    rows.mask[1] = 0
    rows.flux[2:] *= 1 + 0.02 * rng.normal(size=rows.flux[2:].shape)
    rows.mask[2:] = rng.choice([0, SKY, BADPIX], size=rows.mask[2:].shape, p=[0.9, 0.05, 0.05])
  return write_apstar(path, rows, apstar_header(apogee_id, snr=snr, nvisits=n_visits,
                                                field=field))


def write_allstar(path, n=3, drop=()):
  """A small allStar table with DR17 column names (GE_FE absent, as in DR17)."""
  rng = np.random.default_rng(0)
  cols = {"APOGEE_ID": [f"2M{i:04d}" for i in range(n)], "TELESCOPE": ["apo25m"] * n,
          "FIELD": ["mock"] * n, "SNR": np.full(n, 100.0), "STARFLAG": np.zeros(n, np.int64),
          "ASPCAPFLAG": np.zeros(n, np.int64), "EXTRATARG": np.zeros(n, np.int16),
          "VSCATTER": np.zeros(n), "TEFF": rng.uniform(4000, 5000, n),
          "LOGG": rng.uniform(1, 3, n), "VMICRO": np.full(n, 1.5), "VMACRO": np.full(n, 6.0),
          "FE_H": rng.uniform(-0.5, 0.2, n), "FE_H_FLAG": np.zeros(n, np.int32)}
  for el in ("C", "N", "O", "NA", "MG", "AL", "SI", "P", "S", "K", "CA", "TI", "V", "CR", "MN",
             "CO", "NI", "CU"):
    cols[f"{el}_FE"] = rng.uniform(-0.2, 0.3, n)
    cols[f"{el}_FE_FLAG"] = np.zeros(n, np.int32)
  for k in drop:
    cols.pop(k)
  Table(cols).write(path, overwrite=True)
  return cols


def allstar_columns(keys, labels, *, teff_offset: float = 0.0, logg_offset: float = 0.0
                    ) -> dict[str, np.ndarray]:
  """allStar columns (DR17 names) of rows with catalogue labels [N, 25]: TEFF_SPEC, LOGG_SPEC
  the labels' Teff, log g; the calibrated TEFF, LOGG offset from them; X_FE = [X/H] − [Fe/H];
  no C12/C13, no GE_FE (DR17); flags 0, SNR 100, ASPCAP_CHI2 5, VSINI NaN (giants).

  Args:
    keys: [(APOGEE_ID, TELESCOPE, FIELD)] of the N rows. labels: [N, 25] physical.
  """
  y = np.asarray(labels, np.float64)
  n = len(y)
  assert y.shape == (n, N_LABELS)
  col = lambda name: y[:, label_index(name)]  # noqa: E731
  cols = {"APOGEE_ID": [k[0] for k in keys], "TELESCOPE": [k[1] for k in keys],
          "FIELD": [k[2] for k in keys], "SNR": np.full(n, 100.0),
          "STARFLAG": np.zeros(n, np.int64), "ASPCAPFLAG": np.zeros(n, np.int64),
          "EXTRATARG": np.zeros(n, np.int16), "VSCATTER": np.zeros(n),
          "TEFF": col("Teff") + teff_offset, "LOGG": col("logg") + logg_offset,
          "TEFF_SPEC": col("Teff"), "LOGG_SPEC": col("logg"), "VMICRO": col("vturb"),
          "VMACRO": col("vmacro"), "VSINI": np.full(n, np.nan), "ASPCAP_CHI2": np.full(n, 5.0),
          "FE_H": col("Fe_H"), "FE_H_FLAG": np.zeros(n, np.int32)}
  for el in ALLSTAR_ELEMENTS:
    cols[f"{el}_FE"] = col(f"{el.title()}_H") - col("Fe_H")
    cols[f"{el}_FE_FLAG"] = np.zeros(n, np.int32)
  return cols


def write_table(path, cols: dict) -> Path:
  """Writes allStar-like columns as a FITS table (HDU 1)."""
  Table({k: np.asarray(v) for k, v in cols.items()}).write(path, overwrite=True)
  return Path(path)
