"""Batched stellar-label fitting (paper §4.1.3, Eq. 9, 10, 11) with a vmapped L-BFGS.

Three objectives, each a χ² of one star's scaled labels θ ∈ [−0.5, 0.5]^25 (`objectives`):
Eq. 9 (`emulator`, The Payne's own fit, optionally with a radial velocity), Eq. 10 (`synth`,
the observed spectrum translated to the synthetic domain) and Eq. 11 (`obs`, the default:
T_synth→obs(Payne(θ)) with the star's own z_sp, from `chain`).

One concern per module:

- `config`: `FitConfig`, the constants (`METHODS`, `FLAGS`, ...).
- `objectives`: observed flux and weights (`prepare_observed`), `doppler_shift`, the model of
  each method (`make_objective`).
- `lbfgs`: the batched L-BFGS with a job queue on the device and its float32-robust stopping
  rule (a fit gives the same answer whatever batch it runs in).
- `starts`: start points (catalogue, median, grid) and their fallbacks.
- `chunk`: one device's share of a chunk: prepare, fit, best start, χ² and Hessian.
- `fitter`: `LabelFitter` (chunks over the local devices, slots sized to the work, formal
  errors, flags) and `fit_spectra`.
- `results`: `FitResult`, `concat_results`, `save_results` / `read_results`, the stars'
  identity (`star_ids` of an input file, `read_ids` of a results file).
- `job`: `fit_file`, a fit of one file as a restartable, chunked, multi-process job.

`CycleModel` (a loaded Cycle-StarNet generator) and `load_cycle_model` live in `checkpoint`
and are re-exported here.
"""

from cyclestar_jax.checkpoint import CycleModel, load_cycle_model
from cyclestar_jax.fitting import chunk, job, lbfgs
from cyclestar_jax.fitting.config import (
    FLAGS,
    METHOD_EQUATION,
    METHODS,
    SPEED_OF_LIGHT_KMS,
    START_KINDS,
    SYNTH_ERROR,
    FitConfig,
    PixelCountError,
)
from cyclestar_jax.fitting.fitter import LabelFitter, fit_spectra
from cyclestar_jax.fitting.job import (
    FitJob,
    OutputPathError,
    check_output,
    find_emulator,
    fit_file,
)
from cyclestar_jax.fitting.lbfgs import LBFGSOptions
from cyclestar_jax.fitting.objectives import (
    Objective,
    doppler_shift,
    make_objective,
    prepare_observed,
)
from cyclestar_jax.fitting.results import (
    ID_FIELDS,
    RESULTS_FORMAT,
    FitResult,
    concat_results,
    read_ids,
    read_results,
    save_results,
    star_ids,
)

__all__ = [
    "FLAGS", "ID_FIELDS", "METHODS", "METHOD_EQUATION", "RESULTS_FORMAT", "SPEED_OF_LIGHT_KMS",
    "START_KINDS", "SYNTH_ERROR", "CycleModel", "FitConfig", "FitJob", "FitResult",
    "LBFGSOptions", "LabelFitter", "Objective", "OutputPathError", "PixelCountError",
    "check_output", "concat_results", "doppler_shift", "find_emulator", "fit_file",
    "fit_spectra", "load_cycle_model", "make_objective", "prepare_observed", "read_ids",
    "read_results", "save_results", "star_ids", "chunk", "job", "lbfgs",
]
