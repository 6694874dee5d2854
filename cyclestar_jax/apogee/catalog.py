"""Catalogue labels for the stars: SDSS's allStar file (DR16 / DR17, full or Lite) or a CSV.

allStar → The Payne's 25 labels (`labels.LABEL_NAMES`), NaN where missing:
  Teff ← TEFF, log g ← LOGG, vturb ← VMICRO, vmacro ← VMACRO (NaN where ASPCAPFLAG has
  TEFF_BAD / LOGG_BAD / VMICRO_BAD respectively); [Fe/H] ← FE_H; [X/H] ← X_FE + FE_H for the
  other 19 elements (C N O Na Mg Al Si P S K Ca Ti V Cr Mn Co Ni Cu Ge); a value whose flag
  column (X_FE_FLAG, FE_H_FLAG) is non-zero, that is ≤ −9999 or not finite counts as missing;
  C12/C13 is not in allStar (always NaN). An element column the file lacks (DR17 has no GE_FE)
  leaves that label NaN for every star. Only the needed columns are read (allStar is large).

Stars are matched by the key APOGEE_ID + TELESCOPE + FIELD (APOGEE_ID alone is not unique:
a star observed from two telescopes or in two fields has several rows).

CSV: a header row with APOGEE_ID (TELESCOPE and FIELD optional) and the 25 label names
(`LABEL_NAMES`, or as `label_index` accepts them: "[Fe/H]", "Fe"); empty cells are NaN.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from cyclestar_jax.apogee import bits
from cyclestar_jax.apogee.config import CutConfig
from cyclestar_jax.labels import ELEMENTS, LABEL_NAMES, N_LABELS, label_index

KEY_COLUMNS = ("APOGEE_ID", "TELESCOPE", "FIELD")
# allStar column → label, with the ASPCAPFLAG bit that marks it bad.
PARAM_COLUMNS = {"TEFF": ("Teff", "TEFF_BAD"), "LOGG": ("logg", "LOGG_BAD"),
                 "VMICRO": ("vturb", "VMICRO_BAD"), "VMACRO": ("vmacro", None)}
# Other names of the same column in other data releases (DR14/DR16/DR17, Lite).
ALIASES = {"VMICRO": ("VMICRO", "VTURB"), "SNR": ("SNR", "SNREV")}
REQUIRED = KEY_COLUMNS + ("TEFF", "LOGG", "FE_H")
MISSING_VALUE = -9999.0
_DEFAULT_CUTS = CutConfig()


@dataclasses.dataclass(frozen=True, eq=False)
class Catalogue:
  """Catalogue rows.

  Attributes:
    apogee_id, telescope, field: [N] str ("" where a CSV has no such column).
    labels: [N, 25] float64, NaN = missing.
    snr, vscatter: [N] float64 or None. starflag, aspcapflag, extratarg: [N] int64 or None.
    source: the file read; notes: what was missing (e.g. an element column).
  """

  apogee_id: np.ndarray
  telescope: np.ndarray
  field: np.ndarray
  labels: np.ndarray
  snr: np.ndarray | None = None
  starflag: np.ndarray | None = None
  aspcapflag: np.ndarray | None = None
  extratarg: np.ndarray | None = None
  vscatter: np.ndarray | None = None
  source: str = ""
  notes: tuple[str, ...] = ()

  def __len__(self) -> int:
    return len(self.apogee_id)


def _clean(v: np.ndarray) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return np.where(np.isfinite(v) & (v > MISSING_VALUE + 1), v, np.nan)


def _strings(v) -> np.ndarray:
  return np.array([(s.decode() if isinstance(s, bytes) else str(s)).strip() for s in v],
                  dtype=object)


def needed_columns(cuts: CutConfig) -> tuple[str, ...]:
  """The allStar columns that must exist for these cuts (besides REQUIRED)."""
  need = ["SNR", "STARFLAG"]
  if cuts.bad_aspcapflag_bits:
    need.append("ASPCAPFLAG")
  if cuts.bad_extratarg_bits:
    need.append("EXTRATARG")
  if cuts.vscatter_max is not None:
    need.append("VSCATTER")
  return tuple(need)


def read_allstar(path: str | os.PathLike, cuts: CutConfig = _DEFAULT_CUTS) -> Catalogue:
  """Reads the needed columns of an allStar file (HDU 1).

  Raises:
    FileNotFoundError; ValueError naming the file and the missing column.
  """
  from astropy.io import fits

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such allStar file")
  try:
    hdul = fits.open(path, memmap=True)
  except OSError as e:
    raise ValueError(f"{path}: not a FITS file ({e}); expected an allStar catalogue") from None
  with hdul:
    if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
      raise ValueError(f"{path}: HDU 1 is not a table; expected an allStar catalogue")
    table = hdul[1]
    names = {n.upper(): n for n in table.columns.names}

    def col(name: str, required: bool = True):
      for alias in ALIASES.get(name, (name,)):
        if alias in names:
          return np.asarray(table.data[names[alias]])
      if required:
        raise ValueError(f"{path}: allStar column {name} missing (needed; the file has "
                         f"{len(names)} columns, e.g. {', '.join(list(names)[:6])})")
      return None

    for name in REQUIRED + needed_columns(cuts):
      col(name)  # every missing needed column is named before anything is read
    aspcapflag = col("ASPCAPFLAG", required=False)
    labels = np.full((len(table.data), N_LABELS), np.nan)
    notes = []
    for name, (label, bad_bit) in PARAM_COLUMNS.items():
      v = col(name, required=name in REQUIRED)
      if v is None:
        notes.append(f"no {name} column: {label} missing")
        continue
      v = _clean(v)
      if bad_bit and aspcapflag is not None:
        v[(aspcapflag.astype(np.int64) >> bits.ASPCAPFLAG[bad_bit]) & 1 == 1] = np.nan
      labels[:, label_index(label)] = v
    feh = _clean(col("FE_H"))
    flag = col("FE_H_FLAG", required=False)
    if flag is not None:
      feh[np.asarray(flag) != 0] = np.nan
    labels[:, label_index("Fe_H")] = feh
    for el in ELEMENTS:
      if el == "Fe":
        continue
      v = col(f"{el.upper()}_FE", required=False)
      if v is None:
        notes.append(f"no {el.upper()}_FE column: [{el}/H] missing")
        continue
      xh = _clean(v) + feh
      flag = col(f"{el.upper()}_FE_FLAG", required=False)
      if flag is not None:
        xh[np.asarray(flag) != 0] = np.nan
      labels[:, label_index(el)] = xh

    def ints(name):
      v = col(name, required=False)
      return None if v is None else np.asarray(v).astype(np.int64)

    vs = col("VSCATTER", required=False)
    return Catalogue(
        apogee_id=_strings(col("APOGEE_ID")), telescope=_strings(col("TELESCOPE")),
        field=_strings(col("FIELD")), labels=labels, snr=_clean(col("SNR")),
        starflag=ints("STARFLAG"), aspcapflag=ints("ASPCAPFLAG"), extratarg=ints("EXTRATARG"),
        vscatter=None if vs is None else _clean(vs), source=path, notes=tuple(notes))


def read_label_csv(path: str | os.PathLike) -> Catalogue:
  """Reads a CSV of APOGEE_ID (TELESCOPE, FIELD optional) and the 25 labels.

  Raises:
    FileNotFoundError; ValueError naming the file and the missing or bad column / row.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such label CSV file")
  with open(path, newline="") as fh:
    reader = csv.DictReader(fh)
    header = reader.fieldnames or []
    upper = {h.strip().upper(): h for h in header}
    if "APOGEE_ID" not in upper:
      raise ValueError(f"{path}: CSV column APOGEE_ID missing (columns: {header})")
    by_label: dict[int, str] = {}
    for h in header:
      if h.strip().upper() in KEY_COLUMNS:
        continue
      try:
        by_label[label_index(h)] = h
      except KeyError:
        continue
    missing = [n for i, n in enumerate(LABEL_NAMES) if i not in by_label]
    if missing:
      raise ValueError(f"{path}: CSV label columns missing: {', '.join(missing)} (the 25 labels "
                       "of LABEL_NAMES are expected; leave a cell empty for a missing value)")
    ids, tel, fld, rows = [], [], [], []
    for line_no, rec in enumerate(reader, start=2):
      ids.append(rec[upper["APOGEE_ID"]].strip())
      tel.append(rec[upper["TELESCOPE"]].strip() if "TELESCOPE" in upper else "")
      fld.append(rec[upper["FIELD"]].strip() if "FIELD" in upper else "")
      row = np.full(N_LABELS, np.nan)
      for i, h in by_label.items():
        cell = (rec.get(h) or "").strip()
        try:
          row[i] = float(cell) if cell else np.nan
        except ValueError:
          raise ValueError(f"{path}: line {line_no}, column {h}: {cell!r} is not a number"
                           ) from None
      rows.append(row)
  labels = _clean(np.array(rows).reshape(-1, N_LABELS))
  return Catalogue(apogee_id=np.array(ids, dtype=object), telescope=np.array(tel, dtype=object),
                   field=np.array(fld, dtype=object), labels=labels, source=path)


def read_catalogue(path: str | os.PathLike, cuts: CutConfig = _DEFAULT_CUTS) -> Catalogue:
  """An allStar FITS file or a label CSV (by the name's extension: .csv → CSV)."""
  if os.fspath(path).lower().endswith(".csv"):
    return read_label_csv(path)
  return read_allstar(path, cuts)


class Matcher:
  """Finds a star's catalogue row by APOGEE_ID + TELESCOPE + FIELD; a key the catalogue lacks
  falls back to APOGEE_ID + TELESCOPE, then APOGEE_ID, when those are unique (a CSV without
  TELESCOPE/FIELD columns)."""

  def __init__(self, cat: Catalogue):
    self._maps: list[dict] = [{}, {}, {}]
    counts: list[dict] = [{}, {}, {}]
    for i, (a, t, f) in enumerate(zip(cat.apogee_id, cat.telescope, cat.field, strict=True)):
      for level, key in enumerate(((a, t, f), (a, t), a)):
        counts[level][key] = counts[level].get(key, 0) + 1
        self._maps[level].setdefault(key, i)
    for level in (1, 2):
      self._maps[level] = {k: v for k, v in self._maps[level].items()
                           if counts[level][k] == 1}

  def find(self, apogee_id: str, telescope: str, field: str) -> int | None:
    for key, m in zip(((apogee_id, telescope, field), (apogee_id, telescope), apogee_id),
                      self._maps, strict=True):
      if key in m:
        return m[key]
    return None


def catalogue_reason(cat: Catalogue, row: int | None, cuts: CutConfig) -> tuple[str, str] | None:
  """(reason, message) when the catalogue removes this star, else None: not in the catalogue,
  ASPCAPFLAG bad bits (STAR_BAD), EXTRATARG bad bits (DUPLICATE)."""
  if row is None:
    return "catalogue", f"not in the catalogue {os.path.basename(cat.source)}"
  for name, value, table, what in (
      ("aspcapflag", cat.aspcapflag, bits.ASPCAPFLAG, cuts.bad_aspcapflag_bits),
      ("extratarg", cat.extratarg, bits.EXTRATARG, cuts.bad_extratarg_bits)):
    if value is None or not what:
      continue
    bad = int(value[row]) & bits.bit_value(what, table, name.upper())
    if bad:
      return name, f"{name.upper()} " + "|".join(bits.bit_names(bad, table))
  return None
