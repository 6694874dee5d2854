"""Reading one SDSS APOGEE star file into one normalized spectrum on The Payne's 7,214 pixels.

apStar (APO 2.5 m, APO 1 m) and asStar (LCO 2.5 m): HDU0 header only; HDU1 flux, HDU2 error,
HDU3 APOGEE_PIXMASK (integer), each [rows, 8575] (or one 1-D row), rest frame, vacuum.

The co-add row is decided from NAXIS2 and NVISITS, never by a fixed index:
  * one row (NAXIS2 = 1, or a 1-D image: a single-visit star before DR17): that row, for
    which NVISITS must be 1;
  * otherwise NAXIS2 must be NVISITS + 2: row 0 the pixel-weighted co-add (what ASPCAP fits),
    row 1 the globally weighted co-add — written only when NVISITS > 1 (for one visit row 1 is
    never filled, so "global" falls back to row 0) — rows 2+ the visits.
The mask of the co-add: DR17 writes it in row 0 (the AND of the visit masks; row 1's mask is
not written). Before DR17 the mask rows are not per co-add: row 0 is the OR and row 1 the AND of
the visit masks; the co-add's own mask in DR17's sense (a pixel is bad only where every visit
is) is row 1, which is read. The layout comes from the file name (`-dr17-` … vs `-r12-`, `-r8-`)
unless `ReadConfig.layout` says it.

aspcapStar (only with `ReadConfig.allow_aspcap`): HDU1 ASPCAP-normalized flux, HDU2 error, on
the wavelengths of HDU1's CRVAL1/CDELT1/NAXIS1, mapped onto the 7,214 pixels (`grid.map_to_payne`);
not renormalized. apVisit/asVisit (detector grid, observed frame) are refused.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cyclestar_jax.apogee import bits, fitsio, grid
from cyclestar_jax.apogee.config import TELESCOPES, CutConfig, ReadConfig
from cyclestar_jax.apogee.errors import CorruptFileError, StarRejected, WrongInputError
from cyclestar_jax.apogee.normalize import (
    Normalized,
    bad_pixels,
    check_masked_share,
    normalize_star,
)

KINDS = ("apStar", "asStar", "aspcapStar")
_RELEASE = re.compile(r"-(dr\d+|r\d+)-")


@dataclasses.dataclass(frozen=True)
class StarHeader:
  """What the primary header (and the path) say about a star."""

  path: str
  kind: str  # apStar / asStar / aspcapStar
  apogee_id: str  # OBJID
  field: str  # FIELD
  telescope: str  # apo25m / lco25m / apo1m, from the SDSS directory or the file's prefix
  snr: float  # SNR (NaN if missing)
  nvisits: int
  starflag: int  # STARFLAG (OR of the visits')
  vscatter: float  # km/s, NaN if missing
  layout: str  # dr17 / pre-dr17


@dataclasses.dataclass(frozen=True, eq=False)
class Star:
  """One star read and normalized.

  Attributes:
    header: `StarHeader`.
    flux, err: [7214] float64 raw co-add flux and error (file units) on The Payne's pixels.
    bitmask: [7214] int64 APOGEE_PIXMASK of the co-add (zeros for aspcapStar).
    bad: [7214] bool, True = masked.
    norm: `Normalized` (x, x_err, x_msk, continuum).
  """

  header: StarHeader
  flux: np.ndarray
  err: np.ndarray
  bitmask: np.ndarray
  bad: np.ndarray
  norm: Normalized


def file_kind(path: str) -> str | None:
  """apStar / asStar / aspcapStar / apVisit from the file name's prefix (None if none)."""
  name = os.path.basename(path)
  for k in ("aspcapStar", "apStar", "asStar", "apVisit", "asVisit"):
    if name.startswith(k):
      return "apVisit" if k == "asVisit" else k
  return None


def telescope_of(path: str, kind: str) -> str:
  """The telescope: a directory of the path named apo25m / lco25m / apo1m (SDSS's tree,
  `stars/<telescope>/<field>/`), else the prefix (apStar → apo25m, asStar → lco25m)."""
  for part in reversed(Path(path).parts[:-1]):
    if part in TELESCOPES:
      return part
  return "lco25m" if kind == "asStar" else "apo25m"


def _layout(path: str, cfg: ReadConfig, ndim: int) -> str:
  if cfg.layout != "auto":
    return cfg.layout
  m = _RELEASE.search(os.path.basename(path))
  if m:
    tag = m.group(1)
    if tag.startswith("dr"):
      return "dr17" if int(tag[2:]) >= 17 else "pre-dr17"
    return "pre-dr17"  # apred versions r5 … r13 (DR12 … DR16)
  return "pre-dr17" if ndim == 1 else "dr17"


def _number(h: dict[str, Any], key: str) -> float:
  v = h.get(key)
  return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _open(path: str):
  if path.endswith((".gz", ".fz", ".bz2")):
    # Deferred import (astropy: heavy, only for compressed FITS files).
    from cyclestar_jax.apogee.fits_astropy import AstropyImages

    return AstropyImages(path)
  return fitsio.FitsImages(path)


def _header(f, path: str, kind: str) -> StarHeader:
  h0 = f.header(0)
  nvisits = h0.get("NVISITS")
  if kind != "aspcapStar" and (not isinstance(nvisits, int) or isinstance(nvisits, bool)
                               or nvisits < 1):
    raise CorruptFileError(f"{path}: header keyword NVISITS = {nvisits!r}; expected an integer "
                           ">= 1 (an apStar/asStar primary header)")
  name_id = re.sub(r"^(apStar|asStar|aspcapStar)-(?:[^-]+-)?(?:[^-]+-)?", "",
                   os.path.basename(path)).split(".fits")[0]
  return StarHeader(
      path=path, kind=kind, apogee_id=str(h0.get("OBJID") or h0.get("APOGEE_ID") or name_id),
      field=str(h0.get("FIELD") or Path(path).parent.name).strip(),
      telescope=telescope_of(path, kind), snr=_number(h0, "SNR"),
      nvisits=int(nvisits) if isinstance(nvisits, int) else 1,
      starflag=int(h0.get("STARFLAG") or 0), vscatter=_number(h0, "VSCATTER"), layout="")


def check_header(h: StarHeader, cuts: CutConfig) -> None:
  """The cuts a header decides: telescope, S/N range, STARFLAG bad bits, VSCATTER limit.

  Raises:
    StarRejected with reason "telescope", "snr", "starflag" or "vscatter".
  """
  if h.telescope not in cuts.telescopes:
    raise StarRejected("telescope", f"telescope {h.telescope} not selected")
  lo, hi = cuts.snr_range
  if not lo < h.snr < hi:
    raise StarRejected("snr", f"S/N {h.snr:.1f} outside ({lo:g}, {hi:g})")
  bad = h.starflag & bits.bit_value(cuts.bad_starflag_bits, bits.STARFLAG, "APOGEE_STARFLAG")
  if bad:
    raise StarRejected("starflag", "STARFLAG " + "|".join(bits.bit_names(bad, bits.STARFLAG)))
  if cuts.vscatter_max is not None and not h.vscatter <= cuts.vscatter_max:
    raise StarRejected("vscatter", f"VSCATTER {h.vscatter:.2f} km/s above "
                       f"{cuts.vscatter_max:g} (or missing)")


def _check_image(f, path: str, hdu: int, what: str, shape1) -> tuple[int, ...]:
  try:
    shape = f.shape(hdu)
  except fitsio.FitsFormatError as e:
    raise CorruptFileError(f"{path}: HDU {hdu} ({what}) missing or damaged ({e})") from None
  if shape1 is None:
    ok = len(shape) in (1, 2) and shape[-1] == grid.APSTAR_NWAVE
    want = f"(rows, {grid.APSTAR_NWAVE})"
  else:
    ok, want = shape == shape1, f"{shape1} as HDU 1"
  if not ok:
    raise CorruptFileError(f"{path}: HDU {hdu} ({what}) has shape {shape}; expected {want}")
  return shape


def _rows(h: StarHeader, shape: tuple[int, ...], cfg: ReadConfig) -> tuple[int, int]:
  """(flux row, mask row) of the co-add (module docstring)."""
  n_rows = 1 if len(shape) == 1 else shape[0]
  if n_rows == 1:
    if h.nvisits != 1:
      raise CorruptFileError(f"{h.path}: HDU 1 has one row but header keyword NVISITS = "
                             f"{h.nvisits}; expected NAXIS2 = NVISITS + 2")
    return 0, 0
  if n_rows != h.nvisits + 2:
    raise CorruptFileError(f"{h.path}: HDU 1 NAXIS2 = {n_rows} but header keyword NVISITS = "
                           f"{h.nvisits}; expected NAXIS2 = NVISITS + 2 (or 1)")
  flux_row = 1 if cfg.coadd == "global" and h.nvisits > 1 else 0
  return flux_row, (1 if h.layout == "pre-dr17" else 0)


def read_header(path: str | os.PathLike, cfg: ReadConfig) -> tuple[Any, StarHeader]:
  """Opens a star file and reads its primary header (the caller closes the file).

  Raises:
    WrongInputError for a file that is not FITS, an apVisit, an aspcapStar without
      `cfg.allow_aspcap`; CorruptFileError for a damaged header.
  """
  path = os.fspath(path)
  kind = file_kind(path)
  if kind == "apVisit":
    raise WrongInputError(f"{path}: an apVisit file (one visit on the detector grid, observed "
                          "frame) is not read here; use the star's apStar/asStar file "
                          "(stars/<telescope>/<field>/apStar-*.fits)")
  if kind == "aspcapStar" and not cfg.allow_aspcap:
    raise WrongInputError(f"{path}: an aspcapStar file holds ASPCAP's own normalization, not "
                          "The Payne's; read it only with the aspcapStar option "
                          "(--aspcap / ReadConfig.allow_aspcap), or give the apStar file")
  try:
    f = _open(path)
  except OSError as e:
    raise CorruptFileError(f"{path}: cannot be opened ({e.strerror or e})") from None
  try:
    try:
      h0 = f.header(0)
    except fitsio.NotFitsError as e:
      raise WrongInputError(str(e)) from None
    except fitsio.FitsFormatError as e:
      raise CorruptFileError(f"{path}: primary header damaged ({e})") from None
    if kind is None:
      if "NVISITS" not in h0:
        raise WrongInputError(f"{path}: not an apStar/asStar file (its primary header has no "
                              "NVISITS keyword and its name no apStar/asStar prefix)")
      kind = "apStar"
    h = _header(f, path, kind)
  except BaseException:
    f.close()
    raise
  return f, h


def read_star(path: str | os.PathLike, cfg: ReadConfig, cuts: CutConfig | None = None) -> Star:
  """Reads, masks and normalizes one apStar/asStar (or aspcapStar) file.

  Args:
    path: the file. cfg: `ReadConfig`. cuts: header cuts applied before the data are read
      (None: none).

  Returns:
    `Star`.

  Raises:
    WrongInputError, CorruptFileError (naming the file and the field), StarRejected.
  """
  f, h = read_header(path, cfg)
  with f:
    if cuts is not None:
      check_header(h, cuts)
    if h.kind == "aspcapStar":
      return _read_aspcap(f, h, cfg)
    return _read_apstar(f, h, cfg)


def _read_apstar(f, h: StarHeader, cfg: ReadConfig) -> Star:
  h0 = f.header(0)
  keys = {k: h0.get(k) for k in ("CRVAL1", "CDELT1", "NWAVE", "CRPIX1") if k in h0}
  if "CRVAL1" not in keys:  # some writers keep the axis only in the image headers
    keys = {k: f.header(1).get(k) for k in ("CRVAL1", "CDELT1", "NAXIS1", "CRPIX1")}
  try:
    grid.check_apstar_grid(h.path, keys)
  except ValueError as e:
    raise WrongInputError(str(e)) from None
  shape = _check_image(f, h.path, 1, "flux", None)
  h = dataclasses.replace(h, layout=_layout(h.path, cfg, len(shape)))
  _check_image(f, h.path, 2, "error", shape)
  _check_image(f, h.path, 3, "APOGEE_PIXMASK", shape)
  if f.header(3).get("BITPIX") not in (8, 16, 32, 64):
    raise CorruptFileError(f"{h.path}: HDU 3 (APOGEE_PIXMASK) has BITPIX "
                           f"{f.header(3).get('BITPIX')}; expected an integer bit mask")
  flux_row, mask_row = _rows(h, shape, cfg)
  idx = grid.payne_indices()
  try:
    flux = f.rows(1, [flux_row])[0][idx].astype(np.float64)
    err = f.rows(2, [flux_row])[0][idx].astype(np.float64)
    mask = f.rows(3, [mask_row])[0][idx]
  except fitsio.FitsFormatError as e:
    raise CorruptFileError(str(e)) from None
  if mask.dtype.kind not in "iu":
    raise CorruptFileError(f"{h.path}: HDU 3 (APOGEE_PIXMASK) is not integer")
  if not np.any(np.isfinite(flux) & (flux != 0)):
    raise CorruptFileError(f"{h.path}: HDU 1 row {flux_row} (the co-add) is all zero or NaN")
  bad = bad_pixels(flux, err, mask, cfg.bad_pixel_value)
  norm = normalize_star(flux, err, bad, cfg)
  return Star(header=h, flux=flux, err=err, bitmask=mask.astype(np.int64), bad=bad, norm=norm)


def _read_aspcap(f, h: StarHeader, cfg: ReadConfig) -> Star:
  h1 = f.header(1)
  n = h1.get("NAXIS1")
  if not isinstance(h1.get("CRVAL1"), (int, float)) or not isinstance(h1.get("CDELT1"),
                                                                        (int, float)):
    raise WrongInputError(f"{h.path}: HDU 1 header keywords CRVAL1/CDELT1 missing; the "
                          "aspcapStar wavelengths cannot be known")
  wave = grid.log_linear_wavelength(h1["CRVAL1"], h1["CDELT1"], int(n), h1.get("CRPIX1", 1))
  try:
    j = grid.map_to_payne(h.path, wave)
  except ValueError as e:
    raise WrongInputError(str(e)) from None
  shape = f.shape(1)
  if len(shape) != 1 or f.shape(2) != shape:
    raise CorruptFileError(f"{h.path}: HDU 1/2 shapes {shape}/{f.shape(2)}; expected 1-D and "
                           "equal")
  flux = f.rows(1)[0][j].astype(np.float64)
  err = f.rows(2)[0][j].astype(np.float64)
  mask = np.zeros(flux.shape, np.int64)
  bad = bad_pixels(flux, err, mask, 0)
  if bad.all():
    raise CorruptFileError(f"{h.path}: HDU 1 (the spectrum) is all zero or NaN")
  check_masked_share(bad, cfg)
  good = ~bad
  x = np.where(good, flux, 1.0).astype(np.float32)
  x_err = np.where(good, err, 1.0).astype(np.float32)
  norm = Normalized(x=x, x_err=x_err, x_msk=good, continuum=np.ones(flux.shape))
  return Star(header=dataclasses.replace(h, layout="aspcap"), flux=flux, err=err,
              bitmask=mask, bad=bad, norm=norm)
