"""Settings of reading SDSS's APOGEE files and of `prepare`, as frozen dataclasses passed whole.

Variants by `dataclasses.replace`; every field is checked by `check()` (ValueError naming the
field), so a bad setting stops before any file is read.
"""

from __future__ import annotations

import dataclasses

from cyclestar_jax.apogee import bits

TELESCOPES: tuple[str, ...] = ("apo25m", "lco25m", "apo1m")
COADDS = ("pixel", "global")
LAYOUTS = ("auto", "dr17", "pre-dr17")


@dataclasses.dataclass(frozen=True)
class ReadConfig:
  """How one apStar/asStar (or aspcapStar) file becomes one normalized spectrum."""

  # APOGEE_PIXMASK bits that mark a pixel bad (names, `bits.PIXMASK`).
  bad_pixel_bits: tuple[str, ...] = bits.DEFAULT_BAD_PIXEL_BITS
  # Co-add: "pixel" (pixel-weighted, what ASPCAP fits) or "global" (globally weighted).
  coadd: str = "pixel"
  # Row layout: "auto" (from the file name / header), "dr17" or "pre-dr17".
  layout: str = "auto"
  # Read aspcapStar files (ASPCAP's own normalization, not The Payne's): off unless asked.
  allow_aspcap: bool = False
  # Ting et al. 2019 continuum: Chebyshev degree, and the fewest good continuum pixels per chip.
  continuum_degree: int = 4
  min_continuum_pixels: int = 50
  # A star is dropped when more than this share of its 7,214 pixels, or of one chip, is bad.
  max_masked_fraction: float = 0.5
  max_masked_chip_fraction: float = 1.0 / 3.0

  def check(self) -> ReadConfig:
    bits.bit_value(self.bad_pixel_bits, bits.PIXMASK, "APOGEE_PIXMASK")
    if self.coadd not in COADDS:
      raise ValueError(f"coadd must be one of {COADDS}, got {self.coadd!r}")
    if self.layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
    if not 0 <= self.continuum_degree <= 10:
      raise ValueError(f"continuum_degree must be in 0..10, got {self.continuum_degree}")
    if self.min_continuum_pixels <= self.continuum_degree:
      raise ValueError(f"min_continuum_pixels ({self.min_continuum_pixels}) must exceed "
                       f"continuum_degree ({self.continuum_degree})")
    for k in ("max_masked_fraction", "max_masked_chip_fraction"):
      if not 0 < getattr(self, k) <= 1:
        raise ValueError(f"{k} must be in (0, 1], got {getattr(self, k)}")
    return self

  @property
  def bad_pixel_value(self) -> int:
    """The OR of the bad bits' values."""
    return bits.bit_value(self.bad_pixel_bits, bits.PIXMASK, "APOGEE_PIXMASK")


@dataclasses.dataclass(frozen=True)
class CutConfig:
  """Which stars are kept; every cut is counted (`skipped.csv`, the summary)."""

  snr_range: tuple[float, float] = (30.0, 500.0)  # paper §4.1.1: 30 < S/N < 500 (header SNR)
  telescopes: tuple[str, ...] = TELESCOPES  # apo25m / lco25m / apo1m
  bad_starflag_bits: tuple[str, ...] = bits.DEFAULT_BAD_STARFLAG_BITS  # header / allStar
  bad_aspcapflag_bits: tuple[str, ...] = bits.DEFAULT_BAD_ASPCAPFLAG_BITS  # allStar only
  bad_extratarg_bits: tuple[str, ...] = bits.DEFAULT_BAD_EXTRATARG_BITS  # allStar only
  vscatter_max: float | None = None  # km/s; None: no cut (binaries kept)

  def check(self) -> CutConfig:
    lo, hi = self.snr_range
    if not 0 <= lo < hi:
      raise ValueError(f"snr_range must be 0 <= low < high, got {self.snr_range}")
    bad = [t for t in self.telescopes if t not in TELESCOPES]
    if bad or not self.telescopes:
      raise ValueError(f"telescopes must be among {TELESCOPES}, got {self.telescopes}")
    bits.bit_value(self.bad_starflag_bits, bits.STARFLAG, "APOGEE_STARFLAG")
    bits.bit_value(self.bad_aspcapflag_bits, bits.ASPCAPFLAG, "APOGEE_ASPCAPFLAG")
    bits.bit_value(self.bad_extratarg_bits, bits.EXTRATARG, "APOGEE_EXTRATARG")
    if self.vscatter_max is not None and not self.vscatter_max > 0:
      raise ValueError(f"vscatter_max must be > 0 km/s or None, got {self.vscatter_max}")
    return self


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  """`prepare`: reading, cuts, the splits and the job's resources."""

  read: ReadConfig = ReadConfig()
  cuts: CutConfig = CutConfig()
  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test
  seed: int = 0  # of the split assignment
  workers: int = 2  # spawned reader processes (0: read in this process)
  shard_files: int = 256  # files per shard (bounds memory; the unit of resume)
  n_plot: int = 3  # stars shown in normalization.png

  def check(self) -> PrepareConfig:
    self.read.check()
    self.cuts.check()
    f = self.fractions
    if len(f) != 3 or any(v < 0 for v in f) or abs(sum(f) - 1) > 1e-9:
      raise ValueError(f"fractions (train, val, test) must be >= 0 and sum to 1, got {f}")
    if self.workers < 0 or self.shard_files < 1 or self.n_plot < 0:
      raise ValueError(f"workers >= 0, shard_files >= 1 and n_plot >= 0 expected, got "
                       f"{self.workers}, {self.shard_files}, {self.n_plot}")
    return self
