"""Reading SDSS's own APOGEE files (apStar / asStar spectra, aspcapStar on request, the allStar
catalogue) into the reference HDF5 format; the user's guide is docs/apogee.md.

  read_star(path, ReadConfig())          one file → `Star` (normalized on The Payne's 7,214 pixels)
  read_allstar(path, keys) / read_label_csv(path)   catalogue labels in The Payne's order
  prepare(files, out_dir, PrepareConfig(), catalogue)   many files → OUT/obs.h5, skipped.csv,
                                          normalization.png (worker processes, resumable)
  paper.prepare_paper(files, out_dir, cfg, PaperConfig(), catalogue, emulator)   the paper's
                                          two domains: OUT/obs.h5 and OUT/synth.h5 (§4.1.1)
  export.export_fits(results, out, allstar)   fit results → a FITS table joined to allStar

Importing this package imports neither JAX nor astropy (astropy is imported by the modules that
read or write FITS tables: `catalog`, `fits_astropy`, `export`).
"""

from cyclestar_jax.apogee.config import CutConfig, PaperConfig, PrepareConfig, ReadConfig
from cyclestar_jax.apogee.errors import CorruptFileError, StarRejected, WrongInputError
from cyclestar_jax.apogee.grid import PAYNE_SLICES, payne_indices
from cyclestar_jax.apogee.normalize import bad_pixels, fit_continuum
from cyclestar_jax.apogee.spectra import Star, StarHeader, read_star

__all__ = [
    "PAYNE_SLICES", "CorruptFileError", "CutConfig", "PaperConfig", "PrepareConfig", "ReadConfig",
    "Star", "StarHeader", "StarRejected", "WrongInputError", "bad_pixels", "fit_continuum",
    "payne_indices", "read_star",
]  # fmt: skip
