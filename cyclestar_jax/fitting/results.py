"""Fit results: the `FitResult` rows, concatenation, and the results files (HDF5 + CSV).

Physical labels follow `labels.py` (Teff K, log g dex, ... in `LABEL_NAMES` order). Files are
written atomically (`fileio.atomic_write`): a reader sees the old file or the new one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from cyclestar_jax.fileio import atomic_write
from cyclestar_jax.fitting.config import FLAGS, METHOD_EQUATION, FitConfig
from cyclestar_jax.labels import LABEL_NAMES, N_LABELS, label_index

RESULTS_FORMAT = "cyclestar_jax.fit_results/1"
# The star's identity, carried from an input file that has it (`prepare_apogee`'s obs.h5):
# string datasets `<name> <split>` there, `<name>` [N] in the results, columns of the CSV.
ID_FIELDS = ("apogee_id", "telescope", "field")


@dataclasses.dataclass
class FitResult:
  """Best fits of N spectra (NaN rows for spectra that were not fitted).

  Attributes:
    y: [N, 25] physical labels (`LABEL_NAMES` order; fixed labels hold their given values).
    y_err: [N, 25] formal 1σ uncertainties (NaN for fixed labels and failed fits).
    rv, rv_err: [N] radial velocity and its 1σ, km/s (only with `fit_rv`, else None).
    chi2: [N] χ² at the optimum.
    chi2_r: [N] χ² / (n_pix_fit − n_free).
    mean_norm_resid: [N] mean of (x − model)/σ over the fitted pixels.
    n_pix_fit: [N] pixels with nonzero weight.
    n_iter: [N] accepted L-BFGS steps of the winning start.
    n_evals: [N] value-and-gradient evaluations of the winning start.
    converged: [N] bool, the winning start met the tolerance.
    flags: [N] int32 bit field (`FLAGS`).
    start: [N] int32 index of the winning start in `start_names` (−1 if none).
    start_names: the start of each job column, e.g. ("catalogue", "median").
    method: "obs", "synth" or "emulator".
    y_start: [N, 25] the catalogue labels given (or None).
    timing: wall-clock seconds (`wall_s`) and iterations of the device loop (`loop_iters`).
  """

  y: np.ndarray
  y_err: np.ndarray
  chi2: np.ndarray
  chi2_r: np.ndarray
  mean_norm_resid: np.ndarray
  n_pix_fit: np.ndarray
  n_iter: np.ndarray
  n_evals: np.ndarray
  converged: np.ndarray
  flags: np.ndarray
  start: np.ndarray
  start_names: tuple[str, ...]
  method: str
  rv: np.ndarray | None = None
  rv_err: np.ndarray | None = None
  y_start: np.ndarray | None = None
  timing: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(self.y.shape[0])

  def flag_names(self, i: int) -> list[str]:
    """Names of the flags set for spectrum i."""
    return [k for k, b in FLAGS.items() if int(self.flags[i]) & b]


ROW_FIELDS = ("y", "y_err", "chi2", "chi2_r", "mean_norm_resid", "n_pix_fit", "n_iter",
              "n_evals", "converged", "flags", "start", "rv", "rv_err", "y_start")


def allocate(n: int, n_labels: int, cfg: FitConfig, start_names) -> FitResult:
  """A `FitResult` of n unfitted rows (NaN labels, start −1, no flags)."""
  nan = lambda *s: np.full(s, np.nan)  # noqa: E731
  return FitResult(
      y=nan(n, n_labels), y_err=nan(n, n_labels), chi2=nan(n), chi2_r=nan(n),
      mean_norm_resid=nan(n), n_pix_fit=np.zeros(n, np.int32), n_iter=np.zeros(n, np.int32),
      n_evals=np.zeros(n, np.int32), converged=np.zeros(n, bool), flags=np.zeros(n, np.int32),
      start=np.full(n, -1, np.int32), start_names=tuple(start_names), method=cfg.method,
      rv=nan(n) if cfg.fit_rv else None, rv_err=nan(n) if cfg.fit_rv else None)


def concat_results(parts: Sequence[FitResult]) -> FitResult:
  """Rows of several `FitResult`s, in order (timings summed)."""
  first = parts[0]
  kw = {}
  for name in ROW_FIELDS:
    vals = [getattr(p, name) for p in parts]
    if any(v is None for v in vals):
      if name == "y_start" and not all(v is None for v in vals):
        vals = [np.full((len(p), p.y.shape[1]), np.nan) if v is None else v
                for p, v in zip(parts, vals, strict=True)]
      else:
        kw[name] = None
        continue
    kw[name] = np.concatenate(vals)
  timing: dict = {}
  for p in parts:
    for k, v in p.timing.items():
      timing[k] = timing.get(k, 0) + v
  return FitResult(start_names=first.start_names, method=first.method, timing=timing, **kw)


def label_names(n_lab: int) -> tuple[str, ...]:
  """Names of n_lab labels: `LABEL_NAMES` for 25, else label_0, label_1, ..."""
  return LABEL_NAMES if n_lab == N_LABELS else tuple(f"label_{i}" for i in range(n_lab))


def write_results_h5(path: str | os.PathLike, result: FitResult, rows: np.ndarray,
                     attrs: dict | None = None, ids: dict[str, np.ndarray] | None = None
                     ) -> Path:
  """The HDF5 part of `save_results` (atomic); `ids` ({name: [N] str}, `ID_FIELDS`) are
  written as string datasets."""
  datasets = {"labels": result.y, "labels_err": result.y_err, "chi2": result.chi2,
              "chi2_r": result.chi2_r, "mean_norm_resid": result.mean_norm_resid,
              "n_pix_fit": result.n_pix_fit, "n_iter": result.n_iter,
              "n_evals": result.n_evals, "converged": result.converged,
              "flags": result.flags, "start": result.start, "row": np.asarray(rows)}
  if result.rv is not None:
    datasets.update(rv=result.rv, rv_err=result.rv_err)
  if result.y_start is not None:
    datasets["labels_start"] = result.y_start
  file_attrs = {"format": RESULTS_FORMAT, "method": result.method,
                "equation": METHOD_EQUATION[result.method],
                "label_names": json.dumps(list(label_names(result.y.shape[1]))),
                "start_names": json.dumps(list(result.start_names)),
                "flags": json.dumps(FLAGS)}
  for k, v in (attrs or {}).items():
    file_attrs[k] = json.dumps(v, default=str) if isinstance(v, dict | list | tuple) else v

  def write(f):
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h:
      for k, v in datasets.items():
        h.create_dataset(k, data=np.asarray(v))
      for k, v in (ids or {}).items():
        h.create_dataset(k, data=np.asarray(v, dtype=object), dtype=h5py.string_dtype())
      for k, v in file_attrs.items():
        h.attrs[k] = v
    f.write(buf.getvalue())

  return atomic_write(path, write)


def _csv_columns(n_lab: int) -> list[int]:
  """Label order in the CSV: Teff, log g, [Fe/H] first, then the others in file order."""
  if n_lab != N_LABELS:
    return list(range(n_lab))
  key = [label_index(k) for k in ("Teff", "logg", "Fe_H")]
  return key + [i for i in range(n_lab) if i not in key]


def write_results_csv(path: str | os.PathLike, result: FitResult, rows: np.ndarray,
                      ids: dict[str, np.ndarray] | None = None) -> Path:
  """The CSV summary of `save_results` (atomic): one line per spectrum; `ids` ({name: [N]
  str}) are columns after `row`."""
  ids = ids or {}
  n_lab = result.y.shape[1]
  names = label_names(n_lab)
  order = _csv_columns(n_lab)
  key, rest = order[:3], order[3:]

  def labels(i, idx):
    return [f"{v:.6g}" for j in idx for v in (result.y[i, j], result.y_err[i, j])]

  def write(f):
    text = io.StringIO()
    wr = csv.writer(text)
    head = (["row"] + list(ids) + [c for i in key for c in (names[i], f"{names[i]}_err")]
            + ["chi2_r"] + [c for i in rest for c in (names[i], f"{names[i]}_err")])
    if result.rv is not None:
      head += ["rv", "rv_err"]
    head += ["mean_norm_resid", "chi2", "n_pix_fit", "n_iter", "n_evals", "converged", "start",
             "flags", "flag_names"]
    wr.writerow(head)
    for i in range(len(result)):
      line = ([int(rows[i])] + [str(v[i]) for v in ids.values()] + labels(i, key)
              + [f"{result.chi2_r[i]:.6g}"] + labels(i, rest))
      if result.rv is not None:
        line += [f"{result.rv[i]:.6g}", f"{result.rv_err[i]:.6g}"]
      line += [f"{result.mean_norm_resid[i]:.6g}", f"{result.chi2[i]:.8g}",
               int(result.n_pix_fit[i]), int(result.n_iter[i]), int(result.n_evals[i]),
               int(result.converged[i]), int(result.start[i]), int(result.flags[i]),
               "|".join(result.flag_names(i))]
      wr.writerow(line)
    f.write(text.getvalue().encode())

  return atomic_write(path, write)


def save_results(path: str | os.PathLike, result: FitResult, *, rows: np.ndarray | None = None,
                 attrs: dict | None = None, csv_path: str | os.PathLike | None = None,
                 ids: dict[str, np.ndarray] | None = None) -> tuple[Path, Path]:
  """Write a `FitResult` to HDF5 (atomically) and a CSV summary beside it.

  HDF5 datasets (N rows): `labels`, `labels_err` [N, 25]; `chi2`, `chi2_r`, `mean_norm_resid`,
  `n_pix_fit`, `n_iter`, `n_evals`, `converged`, `flags`, `start`, `row` [N]; `rv`, `rv_err`
  with a radial velocity; `labels_start` when catalogue labels were given. Attributes: `format`,
  `method`, `label_names`, `start_names`, `flags` (JSON {name: bit}) and `attrs`.

  With `ids` (the star's identity, `ID_FIELDS`, from `star_ids`): string datasets
  `apogee_id`, `telescope`, `field` [N], and CSV columns after `row`.

  CSV: one line per spectrum: row; the ids; Teff, log g, [Fe/H] with their errors; χ²_R; the
  other 22 labels with their errors (`LABEL_NAMES` order); rv, rv_err (with a radial velocity); mean
  normalized residual, χ², fitted pixels, iterations, evaluations, converged, winning start,
  flags and their names.

  Args:
    path: the HDF5 file.
    result: the fits.
    rows: [N] row of each spectrum in its input split (default 0..N−1).
    attrs: more file attributes (JSON-serializable values; dicts are stored as JSON).
    csv_path: the CSV (default: `path` with suffix `.csv`).
    ids: {name: [N] str} of the stars (None: none).

  Returns:
    (HDF5 path, CSV path).
  """
  path = Path(path)
  csv_path = path.with_suffix(".csv") if csv_path is None else Path(csv_path)
  rows = np.arange(len(result)) if rows is None else np.asarray(rows)
  for k, v in (ids or {}).items():
    if len(v) != len(result):
      raise ValueError(f"{path}: ids[{k!r}] has {len(v)} rows, the results {len(result)}")
  write_results_h5(path, result, rows, attrs, ids)
  write_results_csv(csv_path, result, rows, ids)
  return path, csv_path


def star_ids(obs_path: str | os.PathLike, split: str, start: int, stop: int
             ) -> dict[str, np.ndarray] | None:
  """The stars' identity ({name: [stop − start] str} of `ID_FIELDS`) of rows [start, stop) of
  an input file's split, or None when the file has none (not every field: none)."""
  with h5py.File(obs_path, "r") as h:
    names = [f"{k} {split}" for k in ID_FIELDS]
    if not all(n in h for n in names):
      return None
    return {k: h[n].asstr()[start:stop].astype(object) for k, n in zip(ID_FIELDS, names,
                                                                          strict=True)}


def read_ids(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
  """The ids a results file holds ({name: [N] str}), or None when it has none."""
  with h5py.File(path, "r") as h:
    if not all(k in h for k in ID_FIELDS):
      return None
    return {k: h[k].asstr()[()].astype(object) for k in ID_FIELDS}


def read_results(path: str | os.PathLike) -> tuple[FitResult, np.ndarray, dict]:
  """Read a file written by `save_results`.

  Returns:
    (FitResult, rows [N], file attributes dict).

  Raises:
    ValueError: not a fit-results file (names the file and what is missing).
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such results file")
  try:
    h = h5py.File(path, "r")
  except OSError as e:  # a truncated or foreign file: h5py's message does not name it
    raise ValueError(f"{path}: not a readable HDF5 results file ({e})") from None
  with h:
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h.attrs.items()}
    if attrs.get("format") != RESULTS_FORMAT:
      raise ValueError(f"{path}: attribute 'format' is {attrs.get('format')!r}, expected "
                       f"{RESULTS_FORMAT!r} (a file written by fitting.save_results)")
    need = ("labels", "labels_err", "chi2", "chi2_r", "mean_norm_resid", "n_pix_fit", "n_iter",
            "n_evals", "converged", "flags", "start", "row")
    missing = [k for k in need if k not in h]
    if missing:
      raise ValueError(f"{path}: datasets {missing} are missing")
    d = {k: h[k][()] for k in h.keys() if k not in ID_FIELDS}
  res = FitResult(
      y=d["labels"], y_err=d["labels_err"], chi2=d["chi2"], chi2_r=d["chi2_r"],
      mean_norm_resid=d["mean_norm_resid"], n_pix_fit=d["n_pix_fit"], n_iter=d["n_iter"],
      n_evals=d["n_evals"], converged=d["converged"].astype(bool), flags=d["flags"],
      start=d["start"], start_names=tuple(json.loads(attrs["start_names"])),
      method=str(attrs["method"]), rv=d.get("rv"), rv_err=d.get("rv_err"),
      y_start=d.get("labels_start"))
  return res, d["row"], attrs
