"""Fit results to a FITS table joined to allStar, for TOPCAT or astropy (`export_fits`).

One row per fitted spectrum, in the results file's order:

  APOGEE_ID, TELESCOPE, FIELD   the star (carried from obs.h5 by `fit_labels`; absent when the
                                fitted file had no such datasets)
  ROW                           the spectrum's row in its split of the fitted file
  FIT_<LABEL>, FIT_<LABEL>_ERR  the 25 fitted labels and their formal 1σ errors (FIT_TEFF in K,
                                FIT_LOGG in dex, FIT_VTURB / FIT_VMACRO in km/s, FIT_<X>_H in
                                dex, FIT_C12_C13 a ratio; `labels.LABEL_NAMES` upper-cased)
  FIT_CHI2_R, FIT_CHI2, FIT_MEAN_NORM_RESID, FIT_N_PIX, FIT_N_ITER, FIT_N_EVALS,
  FIT_CONVERGED, FIT_START, FIT_FLAGS, FIT_FLAG_NAMES, (FIT_RV, FIT_RV_ERR)

With an allStar file: ALLSTAR_ROW (its row, −1 for none), ALLSTAR_MATCH (how the row was
found: "APOGEE_ID+TELESCOPE+FIELD", or APOGEE_ID+TELESCOPE / APOGEE_ID where those are unique
in the catalogue, `catalog.Matcher`; "" for none) and every allStar column but its three key
columns, masked (NaN, blank, TNULL) where no row matched. Only the matched rows of allStar are
read (memory-mapped). astropy is imported here and by the modules that read FITS only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cyclestar_jax import plots
from cyclestar_jax.apogee import catalog
from cyclestar_jax.fileio import atomic_write
from cyclestar_jax.fitting.results import ID_FIELDS, FitResult, read_ids, read_results
from cyclestar_jax.labels import LABEL_NAMES, label_index

# Fitted quantities besides the labels: FITS column → FitResult attribute.
_FIT_FIELDS = {"FIT_CHI2_R": "chi2_r", "FIT_CHI2": "chi2", "FIT_MEAN_NORM_RESID":
               "mean_norm_resid", "FIT_N_PIX": "n_pix_fit", "FIT_N_ITER": "n_iter",
               "FIT_N_EVALS": "n_evals", "FIT_CONVERGED": "converged", "FIT_FLAGS": "flags"}


def fit_columns(res: FitResult, rows: np.ndarray, ids: dict | None) -> dict[str, np.ndarray]:
  """The table's columns of the fits (module docstring), in order: {name: [N] array}."""
  cols: dict[str, np.ndarray] = {}
  for k in ID_FIELDS if ids else ():
    cols[k.upper()] = np.asarray(ids[k], str)
  cols["ROW"] = np.asarray(rows, np.int64)
  for j, name in enumerate(LABEL_NAMES[:res.y.shape[1]]):
    cols[f"FIT_{name.upper()}"] = res.y[:, j]
    cols[f"FIT_{name.upper()}_ERR"] = res.y_err[:, j]
  for col, attr in _FIT_FIELDS.items():
    cols[col] = np.asarray(getattr(res, attr))
  cols["FIT_START"] = np.array([res.start_names[s] if s >= 0 else "" for s in res.start], str)
  cols["FIT_FLAG_NAMES"] = np.array(["|".join(res.flag_names(i)) for i in range(len(res))], str)
  if res.rv is not None:
    cols["FIT_RV"], cols["FIT_RV_ERR"] = res.rv, res.rv_err
  return cols


def join_allstar(path: str | os.PathLike, ids: dict[str, np.ndarray]):
  """The allStar rows of the stars `ids` ({name: [N] str}) as an astropy Table [N] (masked
  where none matched), with ALLSTAR_ROW and ALLSTAR_MATCH first; and the matched count.

  Raises:
    FileNotFoundError; ValueError naming the file and the missing key column.
  """
  # Deferred import (astropy: heavy, only for FITS files).
  from astropy.io import fits
  from astropy.table import Column, MaskedColumn, Table

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--allstar {path}: no such file")
  try:
    hdul = fits.open(path, memmap=True)
  except OSError as e:
    raise ValueError(f"--allstar {path}: not a FITS file ({e})") from None
  with hdul:
    if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
      raise ValueError(f"--allstar {path}: HDU 1 is not a table; expected an allStar catalogue")
    data = hdul[1].data
    names = {n.upper(): n for n in data.columns.names}
    for k in catalog.KEY_COLUMNS:
      if k not in names:
        raise ValueError(f"--allstar {path}: join key column {k} missing (the join is on "
                         f"{' + '.join(catalog.KEY_COLUMNS)})")
    keys = [catalog._strings(data[names[k]]) for k in catalog.KEY_COLUMNS]
    m = catalog.Matcher(*keys)
    found = [m.match(a, t, f) for a, t, f in zip(*(ids[k] for k in ID_FIELDS), strict=True)]
    row = np.array([-1 if r is None else r for r, _ in found], np.int64)
    sub = Table(data[np.where(row >= 0, row, 0)])
  miss = row < 0
  out = Table([Column(row, name="ALLSTAR_ROW"),
               Column(np.array([h for _, h in found], str), name="ALLSTAR_MATCH")])
  for name in sub.colnames:
    if name.upper() in catalog.KEY_COLUMNS:
      continue
    col = sub[name]
    mask = np.broadcast_to(miss.reshape((-1,) + (1,) * (col.ndim - 1)), col.shape)
    out.add_column(MaskedColumn(col, name=name, mask=mask) if miss.any() else col)
  return out, int((~miss).sum())


def _header(attrs: dict, allstar: str | None, n_matched: int | None) -> dict:
  h = {"FITMETH": str(attrs.get("method", "")), "FITEQ": str(attrs.get("equation", "")),
       "OBSFILE": str(attrs.get("obs_file", "")), "SPLIT": str(attrs.get("split", "")),
       "EMULATOR": str(attrs.get("emulator", ""))}
  if allstar is not None:
    h.update(ALLSTAR=os.fspath(allstar), NMATCHED=n_matched)
  return h


def export_fits(results: str | os.PathLike, out: str | os.PathLike,
                allstar: str | os.PathLike | None = None, *, overwrite: bool = False) -> dict:
  """Writes the results file as a FITS table (module docstring), atomically.

  Args:
    results: a `fitting.save_results` file. out: the FITS file. allstar: an allStar file to
      join on (APOGEE_ID, TELESCOPE, FIELD). overwrite: replace an existing `out`.

  Returns:
    {"rows", "matched" (None without allstar), "out", "columns"}.

  Raises:
    FileExistsError, FileNotFoundError, ValueError (one line naming the file and field),
    checked before allStar is read.
  """
  # Deferred import (astropy: heavy, only for FITS files).
  from astropy.io import fits
  from astropy.table import Table, hstack

  out = Path(out)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  if out.is_dir():
    raise IsADirectoryError(f"{out}: is a directory; --out must name a FITS file")
  if not Path(results).is_file():
    raise FileNotFoundError(f"{results}: no such results file")
  res, rows, attrs = read_results(results)
  ids = read_ids(results)
  if allstar is not None and ids is None:
    raise ValueError(f"{results}: no apogee_id/telescope/field datasets (the fitted file had "
                     "no such datasets, e.g. not made by prepare_apogee), so --allstar has no "
                     "join key; export without --allstar")
  table = Table(fit_columns(res, rows, ids))
  n_matched = None
  if allstar is not None:
    joined, n_matched = join_allstar(allstar, ids)
    table = hstack([table, joined], join_type="exact")
  hdu = fits.table_to_hdu(table)
  for k, v in _header(attrs, allstar, n_matched).items():
    hdu.header[k] = v
  hdu.header["COMMENT"] = ("cyclestar_jax fit results: FIT_* are the fitted labels (Teff K, "
                           "logg and abundances dex, vturb/vmacro km/s) and their 1-sigma errors")
  atomic_write(out, lambda f: fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(f))
  return {"rows": len(table), "matched": n_matched, "out": str(out),
          "columns": len(table.colnames)}


def plot_vs_catalogue(results: str | os.PathLike, png: str | os.PathLike) -> str | None:
  """The fitted − catalogue figure (`plots.fig_catalogue_residuals`) of a results file whose
  fits started from catalogue labels (`labels_start`); None when it has none with a Teff."""
  res, _, attrs = read_results(results)
  if res.y_start is None or not np.isfinite(res.y_start[:, label_index("Teff")]).any():
    return None
  title = str(attrs.get("method_title") or f"{attrs.get('equation', '')} ({res.method})")
  return plots.fig_catalogue_residuals(res.y_start, {title.strip(): res.y}, png)


def summary_text(s: dict) -> str:
  """One line of `export_fits`'s summary."""
  joined = "" if s["matched"] is None else f", {s['matched']} joined to allStar"
  return f"wrote {s['out']}: {s['rows']} rows{joined}, {s['columns']} columns"


__all__ = ["export_fits", "fit_columns", "join_allstar", "plot_vs_catalogue", "summary_text"]
