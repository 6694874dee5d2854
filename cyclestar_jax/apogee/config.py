"""Settings of reading SDSS's APOGEE files and of `prepare`, as frozen dataclasses passed whole.

Variants by `dataclasses.replace`; every field is checked by `check()` (ValueError naming the
field), so a bad setting stops before any file is read.
"""

from __future__ import annotations

import dataclasses

from cyclestar_jax.apogee import bits
from cyclestar_jax.labels import label_index

TELESCOPES: tuple[str, ...] = ("apo25m", "lco25m", "apo1m")
COADDS = ("pixel", "global")
LAYOUTS = ("auto", "dr17", "pre-dr17")
# allStar's Teff / log g: ASPCAP's spectroscopic fit (TEFF_SPEC, LOGG_SPEC in DR16/DR17) or the
# values calibrated to asteroseismology / photometry (TEFF, LOGG).
TEFF_LOGG = ("spectroscopic", "calibrated")


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
  chi2_max: float | None = None  # ASPCAP_CHI2 (allStar) below this; paper §4.1.1: 50; None: off
  broadening_max: float | None = None  # km/s, √(VSINI² + VMACRO²) (allStar); paper: 10

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
    for k in ("chi2_max", "broadening_max"):
      v = getattr(self, k)
      if v is not None and not v > 0:
        raise ValueError(f"{k} must be > 0 or None, got {v}")
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
  teff_logg: str = "calibrated"  # allStar's Teff / log g as labels (`TEFF_LOGG`)

  def check(self) -> PrepareConfig:
    self.read.check()
    self.cuts.check()
    if self.teff_logg not in TEFF_LOGG:
      raise ValueError(f"teff_logg must be one of {TEFF_LOGG}, got {self.teff_logg!r}")
    f = self.fractions
    if len(f) != 3 or any(v < 0 for v in f) or abs(sum(f) - 1) > 1e-9:
      raise ValueError(f"fractions (train, val, test) must be >= 0 and sum to 1, got {f}")
    if self.workers < 0 or self.shard_files < 1 or self.n_plot < 0:
      raise ValueError(f"workers >= 0, shard_files >= 1 and n_plot >= 0 expected, got "
                       f"{self.workers}, {self.shard_files}, {self.n_plot}")
    return self


# Paper §4.1.1: the cuts on the catalogue's fit and the 80,000 / 10,000 / 7,000 splits.
PAPER_CUTS = CutConfig(chi2_max=50.0, broadening_max=10.0)
PAPER_FRACTIONS = (80 / 97, 10 / 97, 7 / 97)
FILL_RULES = ("value", "cell_median", "median", "solar", "box_centre")


@dataclasses.dataclass(frozen=True)
class PaperConfig:
  """`--mode paper`: the paper's two domains from one catalogue (`apogee.paper`).

  The stars left after the cuts are split in halves by `PrepareConfig.seed`; the observed
  domain is one half's spectra, the synthetic domain the emulator at the other half's catalogue
  labels, each split train / val / test by `sizes` or `PrepareConfig.fractions`.
  """

  # Rows per split (train, val, test) of each domain; None: every star, by the fractions.
  sizes: tuple[int, int, int] | None = None
  # The user's value of a label for every star that lacks it: ((label, value), ...).
  fill_values: tuple[tuple[str, float], ...] = ()
  # Cells of the median rule: Teff (K) × log g (dex), and the fewest values a cell needs.
  fill_teff_step: float = 250.0
  fill_logg_step: float = 0.5
  fill_min_stars: int = 5
  # Synthetic spectra per emulator call and write (bounds memory: ~30 MB at 1,024).
  chunk: int = 1024

  def check(self) -> PaperConfig:
    if self.sizes is not None and (len(self.sizes) != 3 or any(
        int(v) != v or v < 0 for v in self.sizes) or self.sizes[0] < 1):
      raise ValueError(f"sizes (train, val, test) must be integers >= 0 with train >= 1, got "
                       f"{self.sizes}")
    for name, value in self.fill_values:
      label_index(name)  # KeyError naming an unknown label
      if not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"fill value of {name} must be a number, got {value!r}")
    if not (self.fill_teff_step > 0 and self.fill_logg_step > 0 and self.fill_min_stars >= 1
            and self.chunk >= 1):
      raise ValueError("fill_teff_step, fill_logg_step > 0 and fill_min_stars, chunk >= 1 "
                       f"expected, got {self.fill_teff_step}, {self.fill_logg_step}, "
                       f"{self.fill_min_stars}, {self.chunk}")
    return self
