"""Catalogue labels for the stars: SDSS's allStar file (DR16 / DR17, full or Lite) or a CSV.

allStar → The Payne's 25 labels (`labels.LABEL_NAMES`), NaN where missing:
  Teff ← TEFF, log g ← LOGG, vturb ← VMICRO, vmacro ← VMACRO (NaN where ASPCAPFLAG has
  TEFF_BAD / LOGG_BAD / VMICRO_BAD respectively); [Fe/H] ← FE_H; [X/H] ← X_FE + FE_H for the
  other 19 elements (C N O Na Mg Al Si P S K Ca Ti V Cr Mn Co Ni Cu Ge); a value whose flag
  column (X_FE_FLAG, FE_H_FLAG) is non-zero, that is ≤ −9999 or not finite counts as missing;
  C12/C13 is not in allStar (always NaN). An element column the file lacks (DR17 has no GE_FE)
  leaves that label NaN for every star. Only the needed columns are read (allStar is large).

Teff and log g are the calibrated TEFF, LOGG by default; with `teff_logg="spectroscopic"` the
spectroscopic TEFF_SPEC, LOGG_SPEC (DR16, DR17), ASPCAP's own fit (what a synthetic spectrum at
the star's labels must use). Columns of the paper's cuts (§4.1.1), read when the cut is on:
ASPCAP_CHI2 (the χ² of ASPCAP's best fit, the paper's χ²_R) and VSINI, VMACRO (the total
broadening √(VSINI² + VMACRO²), a missing one counting as 0, both missing as unknown).

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
from cyclestar_jax.apogee.config import TEFF_LOGG, CutConfig
from cyclestar_jax.labels import ELEMENTS, LABEL_NAMES, N_LABELS, label_index

KEY_COLUMNS = ("APOGEE_ID", "TELESCOPE", "FIELD")
MATCH_LEVELS = ("APOGEE_ID+TELESCOPE+FIELD", "APOGEE_ID+TELESCOPE", "APOGEE_ID")
# allStar column → label, with the ASPCAPFLAG bit that marks it bad.
PARAM_COLUMNS = {"TEFF": ("Teff", "TEFF_BAD"), "LOGG": ("logg", "LOGG_BAD"),
                 "VMICRO": ("vturb", "VMICRO_BAD"), "VMACRO": ("vmacro", None)}
# Other names of the same column in other data releases (DR14/DR16/DR17, Lite).
ALIASES = {"VMICRO": ("VMICRO", "VTURB"), "SNR": ("SNR", "SNREV")}
REQUIRED = KEY_COLUMNS + ("TEFF", "LOGG", "FE_H")
SPEC_COLUMNS = {"TEFF": "TEFF_SPEC", "LOGG": "LOGG_SPEC"}  # teff_logg="spectroscopic"
BROADENING_COLUMNS = ("VSINI", "VMACRO")
MISSING_VALUE = -9999.0
_DEFAULT_CUTS = CutConfig()


@dataclasses.dataclass(frozen=True, eq=False)
class Catalogue:
  """Catalogue rows.

  Attributes:
    apogee_id, telescope, field: [N] str ("" where a CSV has no such column).
    labels: [N, 25] float64, NaN = missing.
    snr, vscatter: [N] float64 or None. starflag, aspcapflag, extratarg: [N] int64 or None.
    chi2: [N] ASPCAP_CHI2 or None. broadening: [N] √(VSINI² + VMACRO²) km/s (NaN: unknown)
      or None (read only when their cuts are on).
    source: the file read; notes: what was missing (e.g. an element column); teff_logg: which
      Teff / log g the labels hold.
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
  chi2: np.ndarray | None = None
  broadening: np.ndarray | None = None
  source: str = ""
  notes: tuple[str, ...] = ()
  teff_logg: str = "calibrated"

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
  if cuts.chi2_max is not None:
    need.append("ASPCAP_CHI2")
  return tuple(need)


def _broadening(vsini: np.ndarray | None, vmacro: np.ndarray | None) -> np.ndarray:
  """√(VSINI² + VMACRO²) [N] km/s; a missing value counts as 0, both missing give NaN."""
  parts = [_clean(v) for v in (vsini, vmacro) if v is not None]
  known = np.any([np.isfinite(p) for p in parts], axis=0)
  total = np.sqrt(np.sum([np.nan_to_num(p) ** 2 for p in parts], axis=0))
  return np.where(known, total, np.nan)


def read_allstar(path: str | os.PathLike, cuts: CutConfig = _DEFAULT_CUTS,
                 teff_logg: str = "calibrated") -> Catalogue:
  """Reads the needed columns of an allStar file (HDU 1).

  Args:
    path: the allStar file. cuts: which cut columns are needed. teff_logg: "calibrated"
      (TEFF, LOGG) or "spectroscopic" (TEFF_SPEC, LOGG_SPEC) as the Teff / log g labels.

  Raises:
    FileNotFoundError; ValueError naming the file and the missing column.
  """
  if teff_logg not in TEFF_LOGG:
    raise ValueError(f"teff_logg must be one of {TEFF_LOGG}, got {teff_logg!r}")
  # Deferred import (astropy: heavy, only for FITS files).
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

    spec = teff_logg == "spectroscopic"
    for name in REQUIRED + needed_columns(cuts):
      col(name)  # every missing needed column is named before anything is read
    for name in SPEC_COLUMNS.values() if spec else ():
      if name not in names:
        raise ValueError(f"{path}: allStar column {name} missing (needed for the spectroscopic "
                         "Teff / log g; use the calibrated TEFF, LOGG: --teff-logg calibrated)")
    if cuts.broadening_max is not None and not any(c in names for c in BROADENING_COLUMNS):
      raise ValueError(f"{path}: allStar columns VSINI and VMACRO missing (needed for the "
                       "broadening cut; turn it off with --broadening-max 0)")
    aspcapflag = col("ASPCAPFLAG", required=False)
    labels = np.full((len(table.data), N_LABELS), np.nan)
    notes = []
    for name, (label, bad_bit) in PARAM_COLUMNS.items():
      v = col(SPEC_COLUMNS.get(name, name) if spec else name, required=name in REQUIRED)
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
    chi2 = col("ASPCAP_CHI2", required=False) if cuts.chi2_max is not None else None
    broad = None if cuts.broadening_max is None else _broadening(
        *(col(c, required=False) for c in BROADENING_COLUMNS))
    return Catalogue(
        apogee_id=_strings(col("APOGEE_ID")), telescope=_strings(col("TELESCOPE")),
        field=_strings(col("FIELD")), labels=labels, snr=_clean(col("SNR")),
        starflag=ints("STARFLAG"), aspcapflag=ints("ASPCAPFLAG"), extratarg=ints("EXTRATARG"),
        vscatter=None if vs is None else _clean(vs), chi2=None if chi2 is None else _clean(chi2),
        broadening=broad, source=path, notes=tuple(notes), teff_logg=teff_logg)


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


def read_catalogue(path: str | os.PathLike, cuts: CutConfig = _DEFAULT_CUTS,
                   teff_logg: str = "calibrated") -> Catalogue:
  """An allStar FITS file or a label CSV (by the name's extension: .csv → CSV, whose labels
  are taken as they are; its cuts on ASPCAP's fit are not available).

  Raises:
    ValueError when a CSV is given with the χ² or broadening cut on.
  """
  if os.fspath(path).lower().endswith(".csv"):
    if cuts.chi2_max is not None or cuts.broadening_max is not None:
      raise ValueError(f"{path}: a label CSV has no ASPCAP_CHI2 / VSINI / VMACRO for the χ² and "
                       "broadening cuts; give the allStar file, or turn the cuts off "
                       "(--chi2-max 0 --broadening-max 0)")
    return read_label_csv(path)
  return read_allstar(path, cuts, teff_logg)


class Matcher:
  """Finds a star's catalogue row by APOGEE_ID + TELESCOPE + FIELD; a key the catalogue lacks
  falls back to APOGEE_ID + TELESCOPE, then APOGEE_ID, when those are unique (a CSV without
  TELESCOPE/FIELD columns).

  Args:
    apogee_id, telescope, field: [N] str, the catalogue's keys (`Matcher.of(cat)` for a
      `Catalogue`).
  """

  def __init__(self, apogee_id, telescope, field):
    self._maps: list[dict] = [{}, {}, {}]
    counts: list[dict] = [{}, {}, {}]
    for i, (a, t, f) in enumerate(zip(apogee_id, telescope, field, strict=True)):
      for level, key in enumerate(((a, t, f), (a, t), a)):
        counts[level][key] = counts[level].get(key, 0) + 1
        self._maps[level].setdefault(key, i)
    for level in (1, 2):
      self._maps[level] = {k: v for k, v in self._maps[level].items()
                           if counts[level][k] == 1}

  @classmethod
  def of(cls, cat: Catalogue) -> Matcher:
    return cls(cat.apogee_id, cat.telescope, cat.field)

  def find(self, apogee_id: str, telescope: str, field: str) -> int | None:
    return self.match(apogee_id, telescope, field)[0]

  def match(self, apogee_id: str, telescope: str, field: str) -> tuple[int | None, str]:
    """(row or None, how: "APOGEE_ID+TELESCOPE+FIELD", "APOGEE_ID+TELESCOPE", "APOGEE_ID"
    or "" for none)."""
    for key, m, how in zip(((apogee_id, telescope, field), (apogee_id, telescope), apogee_id),
                           self._maps, MATCH_LEVELS, strict=True):
      if key in m:
        return m[key], how
    return None, ""


def catalogue_reason(cat: Catalogue, row: int | None, cuts: CutConfig) -> tuple[str, str] | None:
  """(reason, message) when the catalogue removes this star, else None: not in the catalogue,
  ASPCAPFLAG bad bits (STAR_BAD), EXTRATARG bad bits (DUPLICATE), ASPCAP_CHI2 at or above
  `cuts.chi2_max`, broadening at or above (or unknown with) `cuts.broadening_max`."""
  if row is None:
    return "catalogue", f"not in the catalogue {os.path.basename(cat.source)}"
  if cuts.chi2_max is not None and cat.chi2 is not None and not cat.chi2[row] < cuts.chi2_max:
    return "chi2", f"ASPCAP_CHI2 {cat.chi2[row]:.1f} not below {cuts.chi2_max:g}"
  if (cuts.broadening_max is not None and cat.broadening is not None
      and not cat.broadening[row] < cuts.broadening_max):
    return "broadening", (f"broadening √(VSINI² + VMACRO²) {cat.broadening[row]:.1f} km/s not "
                          f"below {cuts.broadening_max:g}")
  for name, value, table, what in (
      ("aspcapflag", cat.aspcapflag, bits.ASPCAPFLAG, cuts.bad_aspcapflag_bits),
      ("extratarg", cat.extratarg, bits.EXTRATARG, cuts.bad_extratarg_bits)):
    if value is None or not what:
      continue
    bad = int(value[row]) & bits.bit_value(what, table, name.upper())
    if bad:
      return name, f"{name.upper()} " + "|".join(bits.bit_names(bad, table))
  return None
