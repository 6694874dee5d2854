"""Settings, constants and model containers of the label fits (see `cyclestar_jax.fitting`)."""

from __future__ import annotations

import dataclasses
import math

from cyclestar_jax.labels import label_index
from cyclestar_jax.resources import ERROR_FLOOR, ERROR_MASK_THRESHOLD

METHODS = ("obs", "synth", "emulator")
METHOD_EQUATION = {"emulator": "Eq. 9", "synth": "Eq. 10", "obs": "Eq. 11"}
START_KINDS = ("catalogue", "median", "grid")
SPEED_OF_LIGHT_KMS = 299_792.458
SYNTH_ERROR = ERROR_FLOOR  # raw-flux error of synthetic spectra (docs/method.md), used by Eq. 10

# Flag bits of `FitResult.flags`.
FLAGS: dict[str, int] = {
    "NOT_CONVERGED": 1,  # the winning start stopped at max_iter / max_evals or its line search
    "RETRIED": 2,  # some start gave a non-finite χ² and was retried from a fallback start
    "BAD_DATA": 4,  # too few usable pixels (all masked, NaN flux, zero errors): not fitted
    "FAILED": 8,  # every start gave a non-finite χ²: no fit
    "AT_BOUND": 16,  # some free label ended within `bound_tol` of the emulator's box edge
    "BAD_ERRORS": 32,  # the Gauss–Newton Hessian could not be inverted: errors are NaN
}
N_GRID_MAX = 8  # grid starts available (`starts.GRID`)


class PixelCountError(ValueError):
  """The data and the model do not have the same number of pixels."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Settings of a batched fit (`cyclestar_jax.fitting`). Defaults: Eq. 11, catalogue + median
  starts, converged when the L-BFGS model expects < 1e-9 relative χ² decrease three accepted
  steps in a row, at most 1,024 fits side by side."""

  method: str = "obs"  # one of METHODS: obs (Eq. 11), synth (Eq. 10), emulator (Eq. 9)
  starts: tuple[str, ...] = ("catalogue", "median")  # start kinds, in START_KINDS
  n_grid: int = 0  # grid starts used when "grid" is in `starts` (≤ 8)
  # Accepted L-BFGS steps per start: the reference allows 10 rounds of 100 (docs/method.md), and
  # Eq. 11 fits with trained networks take 200–500 to converge (measured; a cap of 200 left
  # half of them short of the optimum). The job queue makes the cost follow the mean count.
  max_iter: int = 1000
  max_evals: int = 2000  # value-and-gradient evaluations per start (line search included)
  # Converged: for `patience` accepted steps in a row, the χ² decrease the L-BFGS quadratic
  # model expects to its minimum, ½ gᵀH⁻¹g (from the gradient, which float32 resolves), is
  # below tol·max(χ², 1). The measured decrease of χ² does not enter: a float32 χ² over ~7000
  # pixels is only known to ~1e-7 relative (rounding of the model alone), so a test on it
  # stopped fits of the same spectrum at points up to 0.2σ apart depending on the batch they
  # ran in. At tol 1e-9 (Δχ² ≈ 7e-6 for χ² ≈ 7000) a fit stops ≲ 0.003σ from its optimum.
  tol: float = 1e-9
  patience: int = 3
  memory_size: int = 10  # L-BFGS history
  armijo_c1: float = 1e-4  # sufficient-decrease constant of the line search
  # Below this relative change χ² differences are rounding: the line search then accepts a
  # step by the gradient (Hager–Zhang's approximate Wolfe test) instead of by χ².
  noise_tol: float = 1e-6
  min_step: float = 1e-6  # a line search that shrinks the step below this gives up
  # A line search that gives up (after one restart from steepest descent) at a point reached by
  # a relative decrease below this has met float32's resolution of χ² (or a kink of the
  # piecewise-linear networks that no descent direction passes): converged.
  precision_tol: float = 1e-5
  # A fit whose last `stall_window` accepted steps decreased χ² by less than its rounding
  # (noise_tol) in all has stalled: at a kink of the piecewise-linear networks (LeakyReLU),
  # where the gradient does not vanish, or at float32's floor. Converged. A window of 10 also
  # stopped Eq. 11 fits that crawl along valleys (Δχ² up to 2.6 above an unhurried fit on the
  # smoke networks); 20 and 30 end within 0.6 of it, 20 for 1.6× the old rule's iterations.
  stall_window: int = 20
  # Starts whose final χ² are within this (relative; Δχ² ≈ 0.07 at χ² ≈ 7000, far below a
  # significant difference) of the lowest are tied and the first in `starts` order wins, so
  # two starts that reach the same minimum do not swap with the rounding of χ².
  tie_tol: float = 1e-5
  batch_size: int = 1024  # most fits run side by side (slots), over all devices
  chunk_size: int = 16384  # most spectra sent to the devices per call
  free_labels: tuple[str, ...] | None = None  # labels to fit (None: all); others held fixed
  fit_rv: bool = False  # Eq. 9 only: fit a radial velocity as well (The Payne's Doppler shift)
  rv_max: float = 300.0  # km/s; the radial velocity is bounded to ±rv_max
  error_floor: float = ERROR_FLOOR  # raw-flux floor of error spectra (docs/method.md)
  error_mask_threshold: float = ERROR_MASK_THRESHOLD  # pixels with a raw error above: masked
  min_good_pixels: int = 100  # spectra with fewer usable pixels are flagged BAD_DATA, not fitted
  bound_tol: float = 1e-3  # scaled distance to the box edge that raises AT_BOUND

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"FitConfig.method {self.method!r} is not one of {METHODS}")
    if not self.starts or any(s not in START_KINDS for s in self.starts):
      raise ValueError(f"FitConfig.starts must be a non-empty subset of {START_KINDS}, "
                       f"got {self.starts}")
    if len(set(self.starts)) != len(self.starts):
      raise ValueError(f"FitConfig.starts has repeats: {self.starts}")
    if not 0 <= self.n_grid <= N_GRID_MAX:
      raise ValueError(f"FitConfig.n_grid must be in [0, {N_GRID_MAX}], got {self.n_grid}")
    if "grid" in self.starts and self.n_grid == 0:
      raise ValueError("FitConfig.starts has 'grid' but n_grid is 0")
    for name in ("max_iter", "max_evals", "patience", "memory_size", "batch_size",
                 "chunk_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"FitConfig.{name} must be ≥ 1, got {getattr(self, name)}")
    for name in ("tol", "tie_tol", "armijo_c1", "noise_tol", "min_step", "precision_tol", "rv_max",
                 "error_floor", "error_mask_threshold", "bound_tol"):
      v = getattr(self, name)
      if not (math.isfinite(v) and v > 0):
        raise ValueError(f"FitConfig.{name} must be finite and > 0, got {v}")
    if self.fit_rv and self.method != "emulator":
      raise ValueError("FitConfig.fit_rv is only available for method 'emulator' (Eq. 9)")
    if self.free_labels is not None:
      if not self.free_labels:
        raise ValueError("FitConfig.free_labels is empty; use None to fit every label")
      for name in self.free_labels:
        label_index(name)  # raises KeyError naming the unknown label

  @property
  def n_starts(self) -> int:
    """Starts per spectrum (jobs per spectrum)."""
    return sum(self.n_grid if s == "grid" else 1 for s in self.starts)
