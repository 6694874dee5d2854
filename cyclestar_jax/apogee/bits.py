"""SDSS APOGEE bit masks by name: APOGEE_PIXMASK (pixels), APOGEE_STARFLAG (stars),
APOGEE_ASPCAPFLAG and APOGEE_EXTRATARG (catalogue rows), as the APOGEE pipeline defines them
(`apogee_drp.utils.bitmask`). Bit i has the value 2**i."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

PIXMASK: dict[str, int] = {
    "BADPIX": 0, "CRPIX": 1, "SATPIX": 2, "UNFIXABLE": 3, "BADDARK": 4, "BADFLAT": 5,
    "BADERR": 6, "NOSKY": 7, "LITTROW_GHOST": 8, "PERSIST_HIGH": 9, "PERSIST_MED": 10,
    "PERSIST_LOW": 11, "SIG_SKYLINE": 12, "SIG_TELLURIC": 13, "NOT_ENOUGH_PSF": 14,
}  # fmt: skip
# ASPCAP's bad pixels (bits 0-7 and 14) plus SIG_SKYLINE (12): residuals of subtracted sky lines.
DEFAULT_BAD_PIXEL_BITS: tuple[str, ...] = (
    "BADPIX", "CRPIX", "SATPIX", "UNFIXABLE", "BADDARK", "BADFLAT", "BADERR", "NOSKY",
    "NOT_ENOUGH_PSF", "SIG_SKYLINE",
)  # fmt: skip

STARFLAG: dict[str, int] = {
    "BAD_PIXELS": 0, "COMMISSIONING": 1, "BRIGHT_NEIGHBOR": 2, "VERY_BRIGHT_NEIGHBOR": 3,
    "LOW_SNR": 4, "PERSIST_HIGH": 9, "PERSIST_MED": 10, "PERSIST_LOW": 11,
    "PERSIST_JUMP_POS": 12, "PERSIST_JUMP_NEG": 13, "SUSPECT_RV_COMBINATION": 16,
    "SUSPECT_BROAD_LINES": 17, "BAD_RV_COMBINATION": 18, "RV_REJECT": 19, "RV_SUSPECT": 20,
    "MULTIPLE_SUSPECT": 21, "RV_FAIL": 22,
}  # fmt: skip
# The STARFLAG bits the pipeline itself marks BAD (level 1 in `StarBitMask`).
DEFAULT_BAD_STARFLAG_BITS: tuple[str, ...] = (
    "BAD_PIXELS", "VERY_BRIGHT_NEIGHBOR", "BAD_RV_COMBINATION", "RV_FAIL")

ASPCAPFLAG: dict[str, int] = {
    "TEFF_WARN": 0, "LOGG_WARN": 1, "VMICRO_WARN": 2, "M_H_WARN": 3, "ALPHA_M_WARN": 4,
    "C_M_WARN": 5, "N_M_WARN": 6, "STAR_WARN": 7, "CHI2_WARN": 8, "COLORTE_WARN": 9,
    "ROTATION_WARN": 10, "SN_WARN": 11, "SPEC_HOLE_WARN": 12, "ATMOS_HOLE_WARN": 13,
    "VSINI_WARN": 14, "TEFF_BAD": 16, "LOGG_BAD": 17, "VMICRO_BAD": 18, "M_H_BAD": 19,
    "ALPHA_M_BAD": 20, "C_M_BAD": 21, "N_M_BAD": 22, "STAR_BAD": 23, "CHI2_BAD": 24,
    "COLORTE_BAD": 25, "ROTATION_BAD": 26, "SN_BAD": 27, "SPEC_HOLE_BAD": 28,
    "ATMOS_HOLE_BAD": 29, "VSINI_BAD": 30, "NO_ASPCAP_RESULT": 31, "MISSING_APSTAR": 32,
    "NO_GRID": 33,
}  # fmt: skip
DEFAULT_BAD_ASPCAPFLAG_BITS: tuple[str, ...] = ("STAR_BAD",)

EXTRATARG: dict[str, int] = {
    "NOT_MAIN": 0, "COMMISSIONING": 1, "TELLURIC": 2, "APO1M": 3, "DUPLICATE": 4}
# DUPLICATE: a star observed in several fields/telescopes; all but its highest-S/N row.
DEFAULT_BAD_EXTRATARG_BITS: tuple[str, ...] = ("DUPLICATE",)


def bit_value(names: Iterable[str], table: Mapping[str, int], what: str) -> int:
  """The OR of 2**bit of named bits, e.g. `bit_value(["BADPIX"], PIXMASK, "PIXMASK")` = 1.

  Raises:
    ValueError naming the unknown bit and the known ones.
  """
  value = 0
  for name in names:
    key = name.strip().upper()
    if key not in table:
      raise ValueError(f"unknown {what} bit {name!r}; known: {', '.join(table)}")
    value |= 1 << table[key]
  return value


def bit_names(value: int, table: Mapping[str, int]) -> list[str]:
  """Names of the bits set in `value` (those the table knows)."""
  return [n for n, b in table.items() if int(value) >> b & 1]
