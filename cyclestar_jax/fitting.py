"""Batched stellar-label fitting (paper §4.1.3, Eq. 9, 10, 11) with a vmapped L-BFGS.

Three objectives, each a chi² of one star's scaled labels θ [n_par] (θ in [−0.5, 0.5]):

- `emulator` (Eq. 9, The Payne's own fit): χ²(θ) = Σ_p w_p (x_p − Payne(θ)_p)² over all n_pix
  pixels, optionally with a radial-velocity term (`FitConfig.fit_rv`): the model is Doppler
  shifted by linear interpolation on the log-λ grid, chip by chip, as The Payne does.
- `synth` (Eq. 10): the observed spectrum is translated once to the synthetic domain,
  x_obs→synth = D_synth(D_sh(E_sh(E_obs(x_obs)))), and fitted with the emulator on the 7167
  network pixels with the synthetic domain's error 0.005 everywhere (the paper's Eq. 10 is
  unweighted; a constant error makes χ² a scaled version of it, so its formal errors are
  nominal only).
- `obs` (Eq. 11, the default): the emulator's spectrum is translated to the observed domain,
  T_synth→obs(Payne(θ)) = D_obs(D_sh(E_sh(E_synth(Payne(θ)))), D_sp(z_sp)), with the star's
  own z_sp from encoding its observed spectrum once (held fixed), and compared with the observed
  spectrum on the 7167 network pixels (the first 47 are not modelled).

Radial velocity (Eq. 9 only): the capture range is a few widths of the spectral features
(the fit starts at rv = 0); APOGEE spectra are already in the rest frame.

Weights (DESIGN.md §2): w_p = m_p / σ_p², σ floored at `error_floor` (0.005, raw flux); a pixel
gets m_p = 0 if the file's mask flags it, if its raw error exceeds `error_mask_threshold` (0.05),
or if its flux or error is not finite or its error is ≤ 0. Chi² is in raw flux units (the
networks' standardization divides flux and error by the same number, so it cancels).

Bounds: θ = ½·sin(u) with u unconstrained, a smooth reparametrization that keeps every label in
the emulator's box [−0.5, 0.5] and lets a fit reach a bound exactly (tanh could not). Starts are
clipped to |θ| ≤ 0.49 (at ±0.5 the sine's derivative is zero and the label would not move).

Optimizer: L-BFGS from `optax.scale_by_lbfgs` (memory 10) with a backtracking Armijo line search
(safeguarded quadratic interpolation) that is folded into the outer loop: every iteration
evaluates value and gradient once per slot, at the slot's trial point; a slot whose trial point
fails the Armijo condition shortens its step and tries again at the next iteration, the others
move on. So no branch of a line search is evaluated in vain under `vmap` (DESIGN.md §7), and one
iteration costs exactly one batched value-and-gradient. The L-BFGS memory is reset when the
curvature condition fails (sᵀy ≤ 0, possible with an Armijo-only search) or the direction is not
one of descent. A fit has converged when, for `patience` (3) accepted steps in a row, both the
relative χ² decrease and the decrease the L-BFGS model expects for the next step are below
`tol` (1e-7); a line search that gives up (after one restart from steepest descent) at a point
reached by a relative decrease below `precision_tol` (1e-5) has met float32's resolution of χ²
and counts as converged too.

Each fit (one spectrum from one start) is a *job*; a fixed number of *slots* (the batch) run jobs
side by side, and a slot whose job has converged, hit `max_iter` / `max_evals`, or failed takes
the next job from a queue held on the device, inside the same `lax.while_loop`, which exits when
the queue is empty and every slot is idle. The cost is then set by the mean number of
iterations, not by the slowest fit of a batch. The loop runs under `jax.shard_map` on a one-axis
device mesh: spectra are dealt round-robin to the devices, and each device works through its
own queue and exits on its own. Blocks of spectra are dispatched asynchronously, so the host
reads and prepares the next block while the devices fit the current one.

Starts (`FitConfig.starts`): the catalogue labels when given ("catalogue"), the population
median ("median": the median of the catalogue labels given, else the centre of the box) and
`n_grid` points of a small (Teff, log g, [Fe/H]) grid around it ("grid"); the lowest χ² wins.
A start whose χ² is not finite is retried from the next fallback (median, then grid points) and
the spectrum is flagged `RETRIED`. A spectrum with fewer than `min_good_pixels` usable pixels is
not fitted and gets the flag `BAD_DATA` and NaN labels; it never enters a batch, so it cannot
spoil one.

Outputs (`FitResult`): physical labels, formal 1σ uncertainties from the Gauss–Newton Hessian
JᵀWJ at the optimum (J = ∂model/∂y, physical units; inverted on the host in float64; not
rescaled by χ²_R), χ², χ²_R = χ² / (n_pix_fit − n_free), the mean normalized residual, L-BFGS
iterations and function evaluations of the winning start, a converged flag and a bit field of
flags (`FLAGS`). `save_results` writes them to HDF5 (atomically) plus a CSV summary.

Physical and scaled labels follow `labels.py` (Teff K, log g dex, ... in `LABEL_NAMES` order).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cyclestar_jax.data import observed_errors
from cyclestar_jax.emulator import Emulator, emulator_apply, load_emulator
from cyclestar_jax.fileio import atomic_write
from cyclestar_jax.labels import LABEL_NAMES, N_LABELS, label_index, scale_labels, unscale_labels
from cyclestar_jax.resources import CHIP_EDGES, N_DROP, N_PIX, spectra_mean_std, wavelength

METHODS = ("obs", "synth", "emulator")
METHOD_EQUATION = {"emulator": "Eq. 9", "synth": "Eq. 10", "obs": "Eq. 11"}
START_KINDS = ("catalogue", "median", "grid")
SPEED_OF_LIGHT_KMS = 299_792.458
SYNTH_ERROR = 0.005  # raw-flux error of synthetic spectra (DESIGN.md §2), used by Eq. 10
RESULTS_FORMAT = "cyclestar_jax.fit_results/1"

# Flag bits of `FitResult.flags`.
FLAGS: dict[str, int] = {
    "NOT_CONVERGED": 1,  # the winning start stopped at max_iter / max_evals or its line search
    "RETRIED": 2,  # some start gave a non-finite χ² and was retried from a fallback start
    "BAD_DATA": 4,  # too few usable pixels (all masked, NaN flux, zero errors): not fitted
    "FAILED": 8,  # every start gave a non-finite χ²: no fit
    "AT_BOUND": 16,  # some free label ended within `bound_tol` of the emulator's box edge
    "BAD_ERRORS": 32,  # the Gauss–Newton Hessian could not be inverted: errors are NaN
}
# Order of the grid starts (scaled Teff, log g, [Fe/H] offsets from the median).
_GRID = ((-0.25, 0.25, 0.0), (0.25, -0.25, 0.0), (-0.25, -0.25, 0.0), (0.25, 0.25, 0.0),
         (0.0, 0.0, -0.25), (0.0, 0.0, 0.25), (-0.25, 0.25, -0.25), (0.25, -0.25, 0.25))
_N_FALLBACK = 5  # retries of a non-finite start: the median, then four grid points
_START_CLIP = 0.49  # starts are clipped to |θ| ≤ this (sin' vanishes at ±0.5)
_FINALIZE_BYTES = 1 << 30  # memory bound of one block of final Jacobians (bytes)
_JACOBIAN_OVERHEAD = 8  # forward-mode intermediates per Jacobian byte (allowance)


class PixelCountError(ValueError):
  """The data and the model do not have the same number of pixels."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Settings of a batched fit (module docstring). Defaults: Eq. 11, catalogue + median starts,
  χ² converged to a relative 1e-7 three times in a row, 1,024 fits side by side."""

  method: str = "obs"  # one of METHODS: obs (Eq. 11), synth (Eq. 10), emulator (Eq. 9)
  starts: tuple[str, ...] = ("catalogue", "median")  # start kinds, in START_KINDS
  n_grid: int = 0  # grid starts used when "grid" is in `starts` (≤ 8)
  # Accepted L-BFGS steps per start: the reference allows 10 rounds of 100 (DESIGN.md §2), and
  # Eq. 11 fits with trained networks take 200–500 to converge (measured; a cap of 200 left
  # half of them short of the optimum). The job queue makes the cost follow the mean count.
  max_iter: int = 1000
  max_evals: int = 2000  # value-and-gradient evaluations per start (line search included)
  # Relative χ² decrease (actual and expected) that counts as converged, for `patience` accepted
  # steps in a row. Eq. 11 with trained networks crawls along flat valleys: 1e-6 twice stopped
  # half the fits > 1 in χ² above the unhurried optimum (labels up to 2σ off); 1e-7 three
  # times matches it (median Δχ² 0, labels within 0.1σ at the 95th percentile) for +38%
  # iterations (measured on the mock, benchmarks/README.md).
  tol: float = 1e-7
  patience: int = 3
  memory_size: int = 10  # L-BFGS history
  armijo_c1: float = 1e-4  # sufficient-decrease constant of the line search
  min_step: float = 1e-6  # a line search that shrinks the step below this gives up
  # A line search that gives up where the last accepted step decreased χ² by less than this
  # (relative) has met float32's resolution of χ² (a sum over ~7000 pixels): converged.
  precision_tol: float = 1e-5
  batch_size: int = 1024  # fits run side by side (slots), over all devices
  chunk_size: int = 16384  # spectra sent to the devices per call
  free_labels: tuple[str, ...] | None = None  # labels to fit (None: all); others held fixed
  fit_rv: bool = False  # Eq. 9 only: fit a radial velocity as well (The Payne's Doppler shift)
  rv_max: float = 300.0  # km/s; the radial velocity is bounded to ±rv_max
  error_floor: float = 0.005  # raw-flux floor of error spectra (DESIGN.md §2)
  error_mask_threshold: float = 0.05  # observed pixels with raw error above this are masked
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
    if not 0 <= self.n_grid <= len(_GRID):
      raise ValueError(f"FitConfig.n_grid must be in [0, {len(_GRID)}], got {self.n_grid}")
    if "grid" in self.starts and self.n_grid == 0:
      raise ValueError("FitConfig.starts has 'grid' but n_grid is 0")
    for name in ("max_iter", "max_evals", "patience", "memory_size", "batch_size",
                 "chunk_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"FitConfig.{name} must be ≥ 1, got {getattr(self, name)}")
    for name in ("tol", "armijo_c1", "min_step", "precision_tol", "rv_max", "error_floor",
                 "error_mask_threshold", "bound_tol"):
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


@dataclasses.dataclass(frozen=True)
class CycleModel:
  """A trained Cycle-StarNet generator, for Eq. 10 and 11.

  Attributes:
    nets: the networks (`networks.make_networks(cfg)`).
    gen_params: generator parameters {enc_synth, enc_obs, enc_sh, enc_sp, dec_*}.
    source: where it was loaded from ("" if built in memory).
  """

  nets: Any
  gen_params: dict
  source: str = ""

  @property
  def n_pix(self) -> int:
    """Pixels the networks see (7167 for Table 2)."""
    return int(self.nets.cfg.n_pix)


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
    converged: [N] bool, the winning start met the χ² tolerance.
    flags: [N] int32 bit field (`FLAGS`).
    start: [N] int32 index of the winning start in `start_names` (−1 if none).
    start_names: the start of each job column, e.g. ("catalogue", "median").
    method: "obs", "synth" or "emulator".
    y_start: [N, 25] the catalogue labels given (or None).
    timing: wall-clock seconds by stage.
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


# ---------------------------------------------------------------------------------------------
# Data preparation (host, NumPy).


def prepare_observed(x, x_err=None, x_msk=None, *, error_floor: float = 0.005,
                     error_mask_threshold: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """Flux and χ² weights of observed spectra (DESIGN.md §2), bad pixels given zero weight.

  Args:
    x: [N, n_pix] continuum-normalized flux (NaN allowed: weight 0, flux set to 1).
    x_err: [N, n_pix] raw 1σ errors or None (then `error_floor` everywhere, as synthetic data).
    x_msk: [N, n_pix] mask, True/1 = good, or None (all good).
    error_floor: raw-flux floor of the errors.
    error_mask_threshold: pixels with raw error above this get weight 0.

  Returns:
    (x [N, n_pix] float32 with non-finite flux replaced by 1, w [N, n_pix] float32 = mask/σ²).
  """
  x = np.array(x, dtype=np.float32, copy=True)
  if x.ndim != 2:
    raise ValueError(f"flux must have shape [N, n_pix], got {x.shape}")
  if x_msk is not None and np.shape(x_msk) != x.shape:
    raise ValueError(f"x_msk has shape {np.shape(x_msk)}, expected {x.shape} like the flux")
  if x_err is None:
    err = np.full(x.shape, error_floor, np.float32)
    good = np.ones(x.shape, bool) if x_msk is None else np.asarray(x_msk).astype(bool)
  else:
    if np.shape(x_err) != x.shape:
      raise ValueError(f"x_err has shape {np.shape(x_err)}, expected {x.shape} like the flux")
    err, good = observed_errors(np.asarray(x_err, np.float32), x_msk, error_floor=error_floor,
                                error_mask_threshold=error_mask_threshold)
  good &= np.isfinite(x)
  x[~np.isfinite(x)] = 1.0
  with np.errstate(invalid="ignore", divide="ignore"):
    w = np.where(good, 1.0 / np.where(good, err, 1.0) ** 2, 0.0)
  return x, w.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Objectives.


def doppler_shift(flux: jax.Array, rv: jax.Array, log_wave: np.ndarray,
                  chips: Sequence[tuple[int, int]] = CHIP_EDGES) -> jax.Array:
  """Model flux Doppler shifted by rv, by linear interpolation on the log-λ grid, chip by chip.

  f_obs(λ) = f_rest(λ / (1 + rv/c)). Each chip is interpolated on its own (a shift never mixes
  chips) and clamped at its edges. The shift is computed in pixel units of each chip's mean
  log-λ step in float64 on the host side (in float32, log10 λ ≈ 4.2 resolves only ~0.3 km/s);
  on a chip that is uniform in log λ (APOGEE's: 6e-6 dex) the interpolation is two gathers,
  otherwise `jnp.interp` on the pixel coordinates.

  Args:
    flux: [n_pix] rest-frame model flux.
    rv: [] radial velocity, km/s (positive: redshift).
    log_wave: [n_pix] log10 wavelength of the pixels (a NumPy array: the grid is static).
    chips: [start, stop) pixel ranges of the chips.

  Returns:
    [n_pix] shifted flux.
  """
  log_wave = np.asarray(log_wave, np.float64)
  z = jnp.log1p(rv / SPEED_OF_LIGHT_KMS) / np.log(10.0)  # shift in log10 λ
  parts = []
  for a, b in chips:
    lw, n = log_wave[a:b], b - a
    step = (lw[-1] - lw[0]) / max(n - 1, 1)
    pos = (lw - lw[0]) / step  # pixel coordinates in the chip
    s = z / step  # shift in pixels
    f = flux[a:b]
    if np.max(np.abs(pos - np.arange(n))) < 1e-3:  # uniform: f(i − s) from two neighbours
      k = jnp.floor(s)
      frac = s - k
      i = jnp.arange(n) - k.astype(jnp.int32)
      lo, hi = f[jnp.clip(i - 1, 0, n - 1)], f[jnp.clip(i, 0, n - 1)]
      parts.append(jnp.where(i - 1 < 0, f[0], jnp.where(i > n - 1, f[-1],
                                                       frac * lo + (1.0 - frac) * hi)))
    else:
      pos32 = jnp.asarray(pos, jnp.float32)
      parts.append(jnp.interp(pos32 - s, pos32, f))
  return jnp.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class Objective:
  """One star's model and the per-spectrum preparation of one method (pure functions).

  Attributes:
    method: "obs", "synth" or "emulator".
    n_par: fitted parameters (25 labels, + 1 with a radial velocity).
    n_pix: pixels compared (n_pix of the emulator for Eq. 9, the networks' 7167 otherwise).
    model: `model(params, aux, theta) -> flux [n_pix]` for scaled parameters theta [n_par].
    prepare: `prepare(params, x, w) -> (x_fit [B, n_pix], w_fit [B, n_pix], aux [B, ...])` from
      the full-grid flux and weights [B, n_pix_data] (B spectra).
    pixel_offset: first data pixel the model covers (47 for the networks, 0 for Eq. 9).
  """

  method: str
  n_par: int
  n_pix: int
  model: Callable
  prepare: Callable
  pixel_offset: int = 0

  def chi2(self, params, x, w, aux, theta):
    """χ² [] of one spectrum x, w [n_pix] at theta [n_par]."""
    r = x - self.model(params, aux, theta)
    return jnp.sum(w * r * r)


def make_objective(method: str, n_labels: int, emulator_n_pix: int, *, nets=None,
                   fit_rv: bool = False, rv_max: float = 300.0,
                   log_wave: np.ndarray | None = None) -> Objective:
  """The model and preparation of one method (see the module docstring).

  Params of the functions: {"emulator": emulator params, "gen": generator params (obs/synth)}.

  Args:
    method: one of METHODS.
    n_labels: labels of the emulator.
    emulator_n_pix: pixels of the emulator's spectra.
    nets: `CycleStarNet` for obs/synth.
    fit_rv: add a radial velocity (Eq. 9 only); theta[-1] = rv / (2 rv_max).
    rv_max: bound of the radial velocity, km/s.
    log_wave: [emulator_n_pix] log10 λ for the Doppler shift (default: the APOGEE grid).
  """
  mean, std = spectra_mean_std()
  if method == "emulator":
    n_par = n_labels + int(fit_rv)
    if fit_rv:
      if log_wave is None:
        if emulator_n_pix != N_PIX:
          raise PixelCountError(
              f"a radial-velocity fit needs the wavelengths of the emulator's {emulator_n_pix} "
              f"pixels; only the APOGEE grid ({N_PIX}) is built in")
        log_wave = np.log10(wavelength())
      lw = np.asarray(log_wave, np.float64)
      chips = CHIP_EDGES if emulator_n_pix == N_PIX else ((0, emulator_n_pix),)

      def model(params, aux, theta):
        flux = emulator_apply(params["emulator"], theta[:n_labels])
        return doppler_shift(flux, theta[n_labels] * 2.0 * rv_max, lw, chips)
    else:

      def model(params, aux, theta):
        return emulator_apply(params["emulator"], theta)

    def prepare(params, x, w):
      return x, w, jnp.zeros((x.shape[0], 1), x.dtype)

    return Objective(method, n_par, emulator_n_pix, model, prepare, 0)

  if nets is None:
    raise ValueError(f"method {method!r} needs a Cycle-StarNet model (CycleModel)")
  n_net = int(nets.cfg.n_pix)
  if emulator_n_pix - n_net != N_DROP:
    raise PixelCountError(
        f"the emulator gives {emulator_n_pix} pixels and the Cycle-StarNet networks take "
        f"{n_net}; they must differ by the {N_DROP} dropped leading pixels (7214 vs 7167)")
  use_split = nets.cfg.use_split

  def standardize(x):
    return (x - mean) / std

  def payne_net(params, theta):
    return standardize(emulator_apply(params["emulator"], theta)[N_DROP:])

  if method == "obs":

    def model(params, aux, theta):  # Eq. 11: T_synth→obs(Payne(θ)) with the star's z_sp
      gen = params["gen"]
      h_sh = nets.decode_shared(gen, nets.encode_synth(gen, payne_net(params, theta)[None]))
      x_so = nets.decode_obs_from(gen, h_sh, aux[None] if use_split else None)[0]
      return x_so * std + mean

    def prepare(params, x, w):
      # The star's z_sp is fixed during its fit: decode it once here (aux = D_sp(z_sp)).
      zsh, zsp = nets.encode_obs(params["gen"], standardize(x[:, N_DROP:]))
      aux = (nets.decode_split(params["gen"], zsp) if use_split
             else jnp.zeros((x.shape[0], 1), x.dtype))
      return x[:, N_DROP:], w[:, N_DROP:], aux
  elif method == "synth":

    def model(params, aux, theta):  # Eq. 10: Payne(θ) against x_obs→synth
      return emulator_apply(params["emulator"], theta)[N_DROP:]

    def prepare(params, x, w):
      zsh, _ = nets.encode_obs(params["gen"], standardize(x[:, N_DROP:]))
      x_os = nets.decode_synth(params["gen"], zsh) * std + mean
      # The synthetic domain's error everywhere; spectra are flagged on the observed mask.
      w_os = jnp.full_like(x_os, 1.0 / SYNTH_ERROR**2)
      return x_os, w_os, jnp.zeros((x.shape[0], 1), x.dtype)
  else:
    raise ValueError(f"method {method!r} is not one of {METHODS}")
  return Objective(method, n_labels, n_net, model, prepare, N_DROP)


# ---------------------------------------------------------------------------------------------
# The batched L-BFGS with a job queue (one device's share; see the module docstring).


def _tree_where(mask, a, b):
  """Per-slot select between pytrees a and b of arrays with the slot axis first."""

  def sel(x, y):
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
    return jnp.where(m, x, y)

  return jax.tree.map(sel, a, b)


def _make_queue_fit(obj: Objective, cfg: FitConfig, n_slots: int, n_starts: int):
  """The per-device fit: (params, x, w, aux, u0, job_ids, n_jobs, u_fallback, free) → results.

  Shapes (one device's share): x, w [C, P]; aux [C, ...]; u0 [C, K, n] start points in u space;
  job_ids [C·K] int32, the valid jobs (j = c·K + k) first, then −1; n_jobs [1]; u_fallback
  [C, R, n]; free [n] 1/0. Returns per-job arrays [C·K, ...]: u, f, n_iter, n_evals, status bits
  (1 converged, 2 retried, 4 failed, 8 line search gave up).
  """
  lbfgs = optax.scale_by_lbfgs(memory_size=cfg.memory_size)
  v_init = jax.vmap(lbfgs.init)
  v_update = jax.vmap(lambda g, st, u: lbfgs.update(g, st, u))
  c1, tol, min_step, precision_tol = cfg.armijo_c1, cfg.tol, cfg.min_step, cfg.precision_tol
  max_iter, max_evals, patience = cfg.max_iter, cfg.max_evals, cfg.patience
  S, K = n_slots, n_starts

  def fun(params, x, w, aux, u):
    return obj.chi2(params, x, w, aux, 0.5 * jnp.sin(u))

  v_vg = jax.vmap(jax.value_and_grad(fun, argnums=4), in_axes=(None, 0, 0, 0, 0))

  def run(params, x, w, aux, u0, job_ids, n_jobs, u_fallback, free):
    C = x.shape[0]
    J = C * K
    n = u0.shape[-1]
    u0_flat = u0.reshape(J, n)
    n_jobs = n_jobs[0]
    dtype = x.dtype

    def fresh_slots(job, u_start):
      return dict(  # per-slot optimizer state, slot axis first
          job=job, u=u_start, f=jnp.full((S,), jnp.inf, dtype), g=jnp.zeros((S, n), dtype),
          d=jnp.zeros((S, n), dtype), alpha=jnp.ones((S,), dtype), gd=jnp.zeros((S,), dtype),
          lb=v_init(u_start), fresh=jnp.ones((S,), bool), n_iter=jnp.zeros((S,), jnp.int32),
          n_evals=jnp.zeros((S,), jnp.int32), n_retry=jnp.zeros((S,), jnp.int32),
          reset=jnp.zeros((S,), bool), last_rel=jnp.full((S,), jnp.inf, dtype),
          n_small=jnp.zeros((S,), jnp.int32))

    def refill(s, done, ptr):
      """Done slots take the next jobs of the queue (job −1: the slot goes idle)."""
      rank = jnp.cumsum(done.astype(jnp.int32)) - 1
      pos = ptr + rank
      take = done & (pos < n_jobs)
      new_job = jnp.where(take, job_ids[jnp.clip(pos, 0, J - 1)], -1)
      new = fresh_slots(new_job, u0_flat[jnp.clip(new_job, 0, J - 1)])
      s = _tree_where(done, new, s)
      return s, jnp.minimum(ptr + jnp.sum(done.astype(jnp.int32)), n_jobs)

    res = {"u": jnp.zeros((J, n), dtype), "f": jnp.full((J,), jnp.nan, dtype),
           "n_iter": jnp.zeros((J,), jnp.int32), "n_evals": jnp.zeros((J,), jnp.int32),
           "status": jnp.zeros((J,), jnp.int32)}
    s0 = fresh_slots(jnp.full((S,), -1, jnp.int32), jnp.zeros((S, n), dtype))
    s0, ptr0 = refill(s0, jnp.ones((S,), bool), jnp.int32(0))
    # Every job holds a slot for at most max_evals iterations.
    cap = (J // S + 2) * max_evals

    def cond(carry):
      s, _, _, it = carry
      return jnp.any(s["job"] >= 0) & (it < cap)

    def body(carry):
      s, res, ptr, it = carry
      active = s["job"] >= 0
      c = jnp.clip(s["job"], 0, J - 1) // K
      fresh = s["fresh"]
      trial = jnp.where(fresh[:, None], s["u"], s["u"] + s["alpha"][:, None] * s["d"])
      f_t, g_t = v_vg(params, x[c], w[c], jax.tree.map(lambda a: a[c], aux), trial)
      g_t = g_t * free
      finite = jnp.isfinite(f_t) & jnp.all(jnp.isfinite(g_t), axis=1)
      f_t = jnp.where(finite, f_t, jnp.inf)
      g_t = jnp.where(finite[:, None], g_t, 0.0)
      n_evals = s["n_evals"] + active
      # Line search on the trial point of each slot (Armijo sufficient decrease).
      armijo = finite & (f_t <= s["f"] + c1 * s["alpha"] * s["gd"])
      accept = active & jnp.where(fresh, finite, armijo)
      # New L-BFGS direction at accepted points; memory reset on a fresh start, on a failed
      # curvature condition (sᵀy ≤ 0, possible with an Armijo-only search) or a non-descent
      # direction.
      sy = jnp.sum((g_t - s["g"]) * (trial - s["u"]), axis=1)
      lb_base = _tree_where(fresh | (sy <= 0), v_init(trial), s["lb"])
      pg, lb_new = v_update(g_t, lb_base, trial)
      d_new, gd_new = -pg, -jnp.sum(pg * g_t, axis=1)
      pg_r, lb_r = v_update(g_t, v_init(trial), trial)
      bad_dir = ~(gd_new < 0)
      d_new = jnp.where(bad_dir[:, None], -pg_r, d_new)
      gd_new = jnp.where(bad_dir, -jnp.sum(pg_r * g_t, axis=1), gd_new)
      lb_new = _tree_where(bad_dir, lb_r, lb_new)
      grad_zero = ~(gd_new < 0)  # zero gradient: nothing left to do
      f_scale = jnp.maximum(jnp.abs(f_t), 1.0)
      rel_dec = (s["f"] - f_t) / f_scale
      rel_pred = -0.5 * gd_new / f_scale  # decrease the quadratic model expects next
      step_rel = jnp.maximum(rel_dec, rel_pred)
      n_small = jnp.where(accept & ~fresh, jnp.where(step_rel < tol, s["n_small"] + 1, 0),
                          s["n_small"])
      converged = accept & (grad_zero | (~fresh & (n_small >= patience)))
      # Backtracking for rejected trial points: safeguarded quadratic interpolation.
      alpha, gd = s["alpha"], s["gd"]
      curv = f_t - s["f"] - gd * alpha
      a_q = jnp.where(finite & (curv > 0), -gd * alpha**2 / (2.0 * curv), 0.1 * alpha)
      a_new = jnp.clip(a_q, 0.1 * alpha, 0.5 * alpha)
      reject = active & ~fresh & ~accept
      # A line search that gives up restarts once from steepest descent, then stops.
      ls_fail = reject & (a_new * jnp.sqrt(jnp.sum(s["d"] ** 2, axis=1)) < min_step)
      ls_stop = ls_fail & s["reset"]
      converged |= ls_stop & (s["last_rel"] < precision_tol)
      ls_reset = ls_fail & ~s["reset"]
      pg_s, lb_s = v_update(s["g"], v_init(s["u"]), s["u"])
      # Non-finite value at a start: retry from the next fallback.
      bad_start = active & fresh & ~finite
      can_retry = bad_start & (s["n_retry"] < u_fallback.shape[1])
      failed = bad_start & ~can_retry
      u_retry = u_fallback[c, jnp.clip(s["n_retry"], 0, u_fallback.shape[1] - 1)]

      n_iter = s["n_iter"] + (accept & ~fresh)
      new = dict(s)
      new["u"] = jnp.where(accept[:, None], trial, jnp.where(can_retry[:, None], u_retry,
                                                             s["u"]))
      new["f"] = jnp.where(accept, f_t, s["f"])
      new["g"] = jnp.where(accept[:, None], g_t, s["g"])
      new["d"] = jnp.where(accept[:, None], d_new, jnp.where(ls_reset[:, None], -pg_s, s["d"]))
      new["gd"] = jnp.where(accept, gd_new,
                            jnp.where(ls_reset, -jnp.sum(pg_s * s["g"], axis=1), s["gd"]))
      new["alpha"] = jnp.where(accept | ls_reset, 1.0, jnp.where(reject, a_new, alpha))
      new["lb"] = _tree_where(accept, lb_new, _tree_where(ls_reset, lb_s, s["lb"]))
      new["fresh"] = fresh & ~accept
      new["reset"] = jnp.where(accept, False, s["reset"] | ls_reset)
      new["n_iter"] = n_iter
      new["n_evals"] = n_evals
      new["n_retry"] = s["n_retry"] + can_retry
      new["last_rel"] = jnp.where(accept & ~fresh, rel_dec, s["last_rel"])
      new["n_small"] = n_small
      done = active & (converged | failed | ls_stop | (n_iter >= max_iter) |
                       (n_evals >= max_evals))
      status = (converged.astype(jnp.int32) * 1 + (new["n_retry"] > 0) * 2 + failed * 4 +
                ls_stop * 8)
      idx = jnp.where(done, s["job"], J)  # J: out of range, dropped
      res = {"u": res["u"].at[idx].set(new["u"], mode="drop"),
             "f": res["f"].at[idx].set(jnp.where(failed, jnp.nan, new["f"]), mode="drop"),
             "n_iter": res["n_iter"].at[idx].set(n_iter, mode="drop"),
             "n_evals": res["n_evals"].at[idx].set(n_evals, mode="drop"),
             "status": res["status"].at[idx].set(status, mode="drop")}
      new, ptr = refill(new, done | ~active, ptr)
      return new, res, ptr, it + 1

    _, res, _, it = jax.lax.while_loop(cond, body, (s0, res, ptr0, jnp.int32(0)))
    res["loop_iters"] = jnp.reshape(it, (1,))
    return res

  return run


def _blockwise(fn, n_valid, block: int, args, out_like):
  """vmap(fn) over the first `n_valid` rows of `args` in blocks of `block` rows (a loop with a
  dynamic trip count, so padding rows past n_valid cost nothing); other rows keep `out_like`."""
  n_blocks = (n_valid + block - 1) // block
  vfn = jax.vmap(fn)

  def body(i, out):
    start = i * block
    part = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, block), args)
    res = vfn(*part)
    return jax.tree.map(lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, start, 0),
                        out, res)

  return jax.lax.fori_loop(0, n_blocks, body, out_like)


def _make_chunk_fit(obj: Objective, cfg: FitConfig, n_slots: int, n_starts: int):
  """One device's share of a chunk: prepare (Eq. 10/11 encodings), queue fit, best start,
  χ² and Gauss–Newton Hessian at the optimum.

  Args of the returned function (local shapes; C rows, the first n_rows[0] real): params;
  x, w [C, n_pix_data]; u0 [C, K, n]; job_ids [C·K]; n_jobs [1]; u_fallback [C, R, n];
  n_rows [1]; free [n].

  Returns dict of per-spectrum arrays [C, ...]: theta (scaled best fit), f, n_iter, n_evals,
  status (best start), retried, start, chi2, mnr (mean normalized residual), n_fit, hess
  [C, n, n]; and loop_iters [1].
  """
  queue = _make_queue_fit(obj, cfg, n_slots, n_starts)
  K, B = n_starts, n_slots
  # Preparation and the Jacobians at the optimum run in blocks of at most `block` spectra: a
  # [block, n_par, n_pix] Jacobian plus its forward-mode intermediates stays within
  # _FINALIZE_BYTES whatever the number of slots (16,384 slots at once would need ~36 GB).
  per_spectrum = _JACOBIAN_OVERHEAD * 4 * obj.n_par * obj.n_pix
  block = int(max(1, min(B, _FINALIZE_BYTES // per_spectrum)))

  def finalize_one(params, x, w, aux, theta, free):
    """χ², residual statistics and the Gauss–Newton JᵀWJ of one spectrum at theta."""

    def model(th):
      return obj.model(params, aux, th)

    # 25 JVPs (jacfwd) rather than n_pix VJPs; the model value comes out of the same pass.
    jac, m = jax.jacfwd(lambda t: (model(t), model(t)), has_aux=True)(theta)
    jac = jac * free
    r = x - m
    good = w > 0
    n_good = jnp.sum(good)
    norm_r = jnp.where(good, r * jnp.sqrt(w), 0.0)
    hess = jnp.einsum("pi,p,pj->ij", jac, w, jac, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(w * r * r), jnp.sum(norm_r) / jnp.maximum(n_good, 1), n_good, hess

  def run(params, x, w, u0, job_ids, n_jobs, u_fallback, n_rows, free):
    C, n = u0.shape[0], u0.shape[-1]
    n_valid = n_rows[0]
    # Per-spectrum preparation (encodings of the observed spectra for Eq. 10 and 11).
    x1, w1, aux1 = jax.eval_shape(lambda a, b: obj.prepare(params, a[None], b[None]), x[0], w[0])
    like = tuple(jnp.zeros((C,) + t.shape[1:], t.dtype) for t in (x1, w1, aux1))
    x_f, w_f, aux = _blockwise(
        lambda a, b: jax.tree.map(lambda t: t[0], obj.prepare(params, a[None], b[None])),
        n_valid, block, (x, w), like)
    res = queue(params, x_f, w_f, aux, u0, job_ids, n_jobs, u_fallback, free)
    # Best start per spectrum: lowest finite χ² among its jobs.
    f = res["f"].reshape(C, K)
    f = jnp.where(jnp.isfinite(f), f, jnp.inf)
    best = jnp.argmin(f, axis=1)
    rows = jnp.arange(C)

    def pick(a):
      return a.reshape((C, K) + a.shape[1:])[rows, best]

    has_fit = jnp.isfinite(f[rows, best])
    theta = jnp.where(has_fit[:, None], 0.5 * jnp.sin(pick(res["u"])), 0.0)
    like = (jnp.zeros((C,), x.dtype), jnp.zeros((C,), x.dtype), jnp.zeros((C,), jnp.int32),
            jnp.zeros((C, n, n), x.dtype))
    chi2, mnr, n_fit, hess = _blockwise(
        lambda a, b, c, d: finalize_one(params, a, b, c, d, free), n_valid, block,
        (x_f, w_f, aux, theta), like)
    status = res["status"].reshape(C, K)
    return {"theta": theta, "f": jnp.where(has_fit, f[rows, best], jnp.nan),
            "n_iter": pick(res["n_iter"]), "n_evals": pick(res["n_evals"]),
            "status": pick(res["status"]), "retried": jnp.any((status & 2) > 0, axis=1),
            "start": jnp.where(has_fit, best, -1), "chi2": chi2, "mnr": mnr, "n_fit": n_fit,
            "hess": hess, "loop_iters": res["loop_iters"]}

  return run


# ---------------------------------------------------------------------------------------------
# The fitter.


def _data_mesh(devices=None) -> Mesh:
  """A one-axis "data" mesh over the local devices (`parallel.make_mesh` when available)."""
  devices = list(jax.local_devices() if devices is None else devices)
  try:
    from cyclestar_jax.parallel import make_mesh
  except ImportError:  # pragma: no cover - parallel.py is optional for fitting
    return Mesh(np.asarray(devices), ("data",))
  return make_mesh(devices)


@dataclasses.dataclass
class _Pending:
  """A chunk dispatched to the devices, with what the host needs to finish it."""

  out: dict  # device arrays (not yet fetched)
  n: int  # real spectra in the chunk
  order: np.ndarray  # [n] padded row of each real spectrum
  bad: np.ndarray  # [n] BAD_DATA
  n_good: np.ndarray  # [n] usable pixels
  y_start: np.ndarray | None
  t0: float


class LabelFitter:
  """Batched fits of observed spectra with one model and one `FitConfig`.

  The jitted function is built once per fitter and compiled once per chunk shape: reuse a
  fitter for many calls (`fit`, `fit_blocks`).

  Args:
    emulator: the emulator (`emulator.load_emulator`), physical label box included.
    config: fit settings (method, starts, tolerances, batch).
    cycle_model: the trained Cycle-StarNet (`load_cycle_model`) for methods obs/synth.
    devices: devices to shard the spectra over (default: all local devices).
    log_wave: [n_pix] log10 λ of the emulator's pixels for a radial-velocity fit (default: the
      APOGEE grid).

  Raises:
    PixelCountError: the emulator and the networks disagree on the pixel count.
  """

  def __init__(self, emulator: Emulator, config: FitConfig = FitConfig(), *,
               cycle_model: CycleModel | None = None, devices=None,
               log_wave: np.ndarray | None = None):
    self.emulator = emulator
    self.config = cfg = config
    self.cycle_model = cycle_model
    if cfg.method != "emulator" and cycle_model is None:
      raise ValueError(f"method {cfg.method!r} ({METHOD_EQUATION[cfg.method]}) needs a trained "
                       "Cycle-StarNet: pass cycle_model=load_cycle_model(run_dir)")
    self.n_labels = emulator.n_labels
    self.n_pix = emulator.n_pix  # pixels the data must have
    self.objective = make_objective(
        cfg.method, self.n_labels, self.n_pix, nets=None if cycle_model is None else
        cycle_model.nets, fit_rv=cfg.fit_rv, rv_max=cfg.rv_max, log_wave=log_wave)
    self.mesh = _data_mesh(devices)
    self.n_dev = int(self.mesh.devices.size)
    self.slots_per_device = max(1, math.ceil(cfg.batch_size / self.n_dev))
    params = {"emulator": emulator.params}
    if cfg.method != "emulator":
      params["gen"] = cycle_model.gen_params
    self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
    n_par = self.objective.n_par
    free = np.zeros(n_par, np.float32)
    if cfg.free_labels is None:
      free[:] = 1.0
    else:
      if self.n_labels != N_LABELS:
        raise ValueError(f"free_labels needs the {N_LABELS} labels of LABEL_NAMES; the emulator "
                         f"has {self.n_labels}")
      free[[label_index(name) for name in cfg.free_labels]] = 1.0
      if cfg.fit_rv:
        free[-1] = 1.0
    self.free = free
    self.n_free = int(free.sum())
    self.start_names = self._start_names()
    rep, data = PartitionSpec(), PartitionSpec(self.mesh.axis_names[0])
    chunk_fit = _make_chunk_fit(self.objective, cfg, self.slots_per_device, cfg.n_starts)
    # shard_map: each device runs its own queue and leaves its loop when its share is done.
    self._run = jax.jit(jax.shard_map(
        chunk_fit, mesh=self.mesh, in_specs=(rep, data, data, data, data, data, data, data, rep),
        out_specs=data, check_vma=False))
    self._data_sharding = NamedSharding(self.mesh, data)

  def _start_names(self) -> tuple[str, ...]:
    names = []
    for kind in self.config.starts:
      if kind == "grid":
        names += [f"grid{i}" for i in range(self.config.n_grid)]
      else:
        names.append(kind)
    return tuple(names)

  # -- starts --

  def _theta_starts(self, y_start: np.ndarray | None, y_median: np.ndarray, n: int):
    """Start points θ [n, K, n_par], fallbacks [n, R, n_par], and job validity [n, K]."""
    cfg, n_lab = self.config, self.n_labels
    y_min, y_max = np.asarray(self.emulator.y_min), np.asarray(self.emulator.y_max)
    med = np.clip(scale_labels(y_median, y_min, y_max), -_START_CLIP, _START_CLIP)
    if y_start is not None:
      cat = scale_labels(y_start, y_min, y_max)
      cat_ok = np.all(np.isfinite(cat), axis=1)
      cat = np.clip(np.where(np.isfinite(cat), cat, med), -_START_CLIP, _START_CLIP)
    else:
      cat, cat_ok = np.broadcast_to(med, (n, n_lab)), np.zeros(n, bool)
    # Held labels take the catalogue value (the median when it has none).
    fixed = np.where(cat_ok[:, None], cat, med)
    key = [label_index(k) for k in ("Teff", "logg", "Fe_H")] if n_lab == N_LABELS else \
        list(range(min(3, n_lab)))

    def grid_point(i):
      t = np.array(med, np.float64)
      for j, off in zip(key, _GRID[i], strict=False):
        t[j] = np.clip(t[j] + off, -_START_CLIP, _START_CLIP)
      return np.broadcast_to(t, (n, n_lab))

    starts, valid = [], []
    for kind in cfg.starts:
      if kind == "catalogue":
        starts.append(cat)
        valid.append(cat_ok)
      elif kind == "median":
        starts.append(np.broadcast_to(med, (n, n_lab)))
        valid.append(np.ones(n, bool))
      else:
        for i in range(cfg.n_grid):
          starts.append(grid_point(i))
          valid.append(np.ones(n, bool))
    fallback = [np.broadcast_to(med, (n, n_lab))] + [grid_point(i) for i in range(_N_FALLBACK - 1)]
    theta = np.stack(starts, axis=1)  # [n, K, n_lab]
    fb = np.stack(fallback, axis=1)
    free_lab = self.free[:n_lab].astype(bool)
    theta = np.where(free_lab, theta, fixed[:, None, :])
    fb = np.where(free_lab, fb, fixed[:, None, :])
    if cfg.fit_rv:
      theta = np.concatenate([theta, np.zeros(theta.shape[:2] + (1,))], axis=2)
      fb = np.concatenate([fb, np.zeros(fb.shape[:2] + (1,))], axis=2)
    return theta, fb, np.stack(valid, axis=1)

  # -- fitting --

  def check_pixels(self, n_pix: int, source: str = "the data") -> None:
    """Raise `PixelCountError` unless spectra of n_pix pixels match the model."""
    if n_pix != self.n_pix:
      extra = ""
      if self.cycle_model is not None and self.config.method != "emulator":
        extra = f" (Cycle-StarNet networks: {self.cycle_model.n_pix} + {N_DROP} dropped)"
      raise PixelCountError(
          f"{source} has spectra of {n_pix} pixels but the model gives {self.n_pix}"
          f"{extra}; they must be on the same grid")

  def default_median(self, y_start: np.ndarray | None) -> np.ndarray:
    """The "median" start: median of the finite catalogue labels, else the box centre."""
    y_min, y_max = np.asarray(self.emulator.y_min), np.asarray(self.emulator.y_max)
    centre = 0.5 * (y_min + y_max)
    if y_start is None:
      return centre
    y_start = np.asarray(y_start, np.float64)
    ok = np.all(np.isfinite(y_start), axis=1)
    return np.median(y_start[ok], axis=0) if ok.any() else centre

  def chunk_rows(self, n_total: int) -> int:
    """Rows per device call for n_total spectra: ≤ chunk_size, a multiple of devices × slots."""
    quantum = self.n_dev * self.slots_per_device
    rows = min(self.config.chunk_size, max(n_total, 1))
    return math.ceil(rows / quantum) * quantum

  def fit(self, x, x_err=None, x_msk=None, *, y_start=None, y_median=None,
          progress: bool = False, desc: str = "fit") -> FitResult:
    """Fit N spectra (any N: processed in chunks of `config.chunk_size`).

    Args:
      x: [N, n_pix] flux.
      x_err: [N, n_pix] raw 1σ errors, or None (error floor everywhere).
      x_msk: [N, n_pix] mask, True = good, or None.
      y_start: [N, 25] physical catalogue labels for the "catalogue" start (NaN rows allowed).
      y_median: [25] physical population median for the "median" start (default: the median
        of y_start, else the centre of the emulator's box).
      progress: show a tqdm bar over spectra.
      desc: the bar's label.

    Returns:
      `FitResult` with N rows.
    """
    x = np.asarray(x)
    if x.ndim != 2:
      raise ValueError(f"flux must have shape [N, n_pix], got {x.shape}")
    self.check_pixels(x.shape[1])
    n = x.shape[0]
    if y_start is not None:
      y_start = np.asarray(y_start, np.float64)
      if y_start.shape != (n, self.n_labels):
        raise ValueError(f"y_start has shape {y_start.shape}, expected ({n}, {self.n_labels})")
    if y_median is None:
      y_median = self.default_median(y_start)
    rows = self.chunk_rows(n)

    def blocks():
      for a in range(0, n, rows):
        b = min(a + rows, n)
        yield (x[a:b], None if x_err is None else x_err[a:b],
               None if x_msk is None else x_msk[a:b], None if y_start is None else y_start[a:b])

    parts = list(self.fit_blocks(blocks(), y_median=y_median, rows=rows, n_total=n,
                                 progress=progress, desc=desc))
    return concat_results(parts) if parts else self._empty()

  def fit_blocks(self, blocks, *, y_median, rows: int, n_total: int | None = None,
                 progress: bool = False, desc: str = "fit"):
    """Fit a stream of blocks (x, x_err, x_msk, y_start) of ≤ `rows` spectra each.

    The next block is prepared and dispatched before the previous one's results are fetched,
    so reading and preparing data on the host overlaps the fits on the devices.

    Args:
      blocks: iterable of (x [b, n_pix], x_err or None, x_msk or None, y_start [b, 25] or None).
      y_median: [25] physical labels of the "median" start (see `default_median`).
      rows: rows per device call (see `chunk_rows`); every block is padded to it, so one
        compilation serves all blocks.
      n_total: spectra in all blocks, for the progress bar.
      progress: show a tqdm bar.
      desc: the bar's label.

    Yields:
      One `FitResult` per block, in order.
    """
    if rows % self.n_dev:
      raise ValueError(f"rows {rows} must be a multiple of the {self.n_dev} devices")
    y_median = np.asarray(y_median, np.float64)
    bar = _progress(n_total, desc) if progress else contextlib.nullcontext()
    with bar as pbar:
      pending = None
      for block in blocks:
        nxt = self._dispatch(*block, y_median=y_median, rows=rows)
        if pending is not None:
          yield self._collect(pending)
          if pbar is not None:
            pbar.update(pending.n)
        pending = nxt
      if pending is not None:
        yield self._collect(pending)
        if pbar is not None:
          pbar.update(pending.n)

  def _empty(self) -> FitResult:
    return _allocate(0, self.n_labels, self.config, self.start_names)

  def _dispatch(self, x, x_err, x_msk, y_start, *, y_median, rows: int) -> _Pending:
    """Prepare one block on the host and launch its fit (asynchronously)."""
    cfg, n_dev = self.config, self.n_dev
    t0 = time.perf_counter()
    x = np.asarray(x)
    self.check_pixels(x.shape[1])
    n = x.shape[0]
    if n > rows:
      raise ValueError(f"block of {n} spectra exceeds rows={rows}")
    xs, w = prepare_observed(x, x_err, x_msk, error_floor=cfg.error_floor,
                             error_mask_threshold=cfg.error_mask_threshold)
    n_good = np.count_nonzero(w[:, self.objective.pixel_offset:] > 0, axis=1)
    bad = n_good < max(cfg.min_good_pixels, self.n_free + 1)
    theta0, fb, valid = self._theta_starts(y_start, y_median, n)
    valid &= ~bad[:, None]
    K = theta0.shape[1]
    # Spread the real spectra evenly over the devices: spectrum i → device i % n_dev.
    c_loc = rows // n_dev
    i = np.arange(n)
    order = (i % n_dev) * c_loc + i // n_dev
    n_rows = np.array([len(range(d, n, n_dev)) for d in range(n_dev)], np.int32)

    def spread(a, dtype):
      out = np.zeros((rows,) + a.shape[1:], dtype)
      out[order] = a
      return out

    xs, w = spread(xs, np.float32), spread(w, np.float32)
    u0 = spread(np.arcsin(2.0 * theta0), np.float32)
    u_fb = spread(np.arcsin(2.0 * fb), np.float32)
    v = spread(valid, bool).reshape(n_dev, c_loc * K)
    # Per-device job queues (local job j = c·K + k): the valid jobs first, then −1.
    job_ids = np.full((n_dev, c_loc * K), -1, np.int32)
    n_jobs = v.sum(axis=1).astype(np.int32)
    for d in range(n_dev):
      job_ids[d, :n_jobs[d]] = np.flatnonzero(v[d])
    put = functools.partial(jax.device_put, device=self._data_sharding)
    out = self._run(self.params, put(xs), put(w), put(u0), put(job_ids.reshape(-1)),
                    put(n_jobs), put(u_fb), put(n_rows), jnp.asarray(self.free))
    return _Pending(out=out, n=n, order=order, bad=bad, n_good=n_good,
                    y_start=None if y_start is None else np.asarray(y_start, np.float64), t0=t0)

  def _collect(self, p: _Pending) -> FitResult:
    """Fetch a dispatched block's results and assemble its `FitResult`."""
    cfg, n = self.config, p.n
    o = {k: np.asarray(v) for k, v in jax.device_get(p.out).items()}
    loop_iters = int(o.pop("loop_iters").max())
    o = {k: v[p.order] for k, v in o.items()}
    out = _allocate(n, self.n_labels, cfg, self.start_names)
    ok = o["start"] >= 0
    th = o["theta"].astype(np.float64)
    y_min, y_max = np.asarray(self.emulator.y_min), np.asarray(self.emulator.y_max)
    out.y[ok] = unscale_labels(th[ok, :self.n_labels], y_min, y_max)
    scale = np.concatenate([y_max - y_min, [2.0 * cfg.rv_max] if cfg.fit_rv else []])
    err, bad_err = _formal_errors(o["hess"], self.free, scale)
    out.y_err[ok] = err[ok, :self.n_labels]
    if cfg.fit_rv:
      out.rv[ok] = th[ok, -1] * 2.0 * cfg.rv_max
      out.rv_err[ok] = err[ok, -1]
    out.chi2[ok] = o["chi2"][ok]
    dof = np.maximum(o["n_fit"] - self.n_free, 1)
    out.chi2_r[ok] = (o["chi2"] / dof)[ok]
    out.mean_norm_resid[ok] = o["mnr"][ok]
    out.n_pix_fit[:] = np.where(ok, o["n_fit"], p.n_good)
    out.n_iter[ok] = o["n_iter"][ok]
    out.n_evals[ok] = o["n_evals"][ok]
    out.converged[ok] = (o["status"][ok] & 1) > 0
    out.start[:] = o["start"]
    at_bound = np.any((np.abs(th) > 0.5 - cfg.bound_tol) & (self.free > 0), axis=1)
    flags = np.zeros(n, np.int32)
    flags |= np.where(ok & ~out.converged, FLAGS["NOT_CONVERGED"], 0)
    flags |= np.where(o["retried"] & ~p.bad, FLAGS["RETRIED"], 0)
    flags |= np.where(p.bad, FLAGS["BAD_DATA"], 0)
    flags |= np.where(~ok & ~p.bad, FLAGS["FAILED"], 0)
    flags |= np.where(ok & at_bound, FLAGS["AT_BOUND"], 0)
    flags |= np.where(ok & bad_err, FLAGS["BAD_ERRORS"], 0)
    out.flags[:] = flags
    out.y_start = p.y_start
    out.timing = {"wall_s": time.perf_counter() - p.t0, "loop_iters": loop_iters}
    return out


def _formal_errors(hess: np.ndarray, free: np.ndarray, scale: np.ndarray):
  """1σ errors [N, n_par] (physical units) from JᵀWJ [N, n, n] in scaled θ; NaN where fixed.

  Returns:
    (errors, bad [N] bool: Hessian not invertible).
  """
  n, n_par = hess.shape[0], hess.shape[1]
  idx = np.flatnonzero(free > 0)
  h = hess[:, idx][:, :, idx].astype(np.float64)
  err = np.full((n, n_par), np.nan)
  bad = np.zeros(n, bool)
  if n == 0:
    return err, bad
  d = np.sqrt(np.abs(np.diagonal(h, axis1=1, axis2=2)))
  ok_diag = np.all(np.isfinite(h), axis=(1, 2)) & np.all(d > 0, axis=1)
  dd = np.where(ok_diag[:, None], d, 1.0)
  corr = h / dd[:, :, None] / dd[:, None, :]  # unit diagonal: better conditioned
  corr = np.where(ok_diag[:, None, None], corr, np.eye(len(idx)))
  try:
    inv = np.linalg.inv(corr)
    var = np.diagonal(inv, axis1=1, axis2=2) / dd**2
  except np.linalg.LinAlgError:
    var = np.full((n, len(idx)), np.nan)
    for i in range(n):
      with contextlib.suppress(np.linalg.LinAlgError):
        var[i] = np.diagonal(np.linalg.inv(corr[i])) / dd[i] ** 2
  good = ok_diag & np.all(np.isfinite(var) & (var > 0), axis=1)
  err[:, idx] = np.where(good[:, None], np.sqrt(np.abs(var)) * scale[idx], np.nan)
  return err, ~good


def _allocate(n: int, n_labels: int, cfg: FitConfig, start_names) -> FitResult:
  nan = lambda *s: np.full(s, np.nan)  # noqa: E731
  return FitResult(
      y=nan(n, n_labels), y_err=nan(n, n_labels), chi2=nan(n), chi2_r=nan(n),
      mean_norm_resid=nan(n), n_pix_fit=np.zeros(n, np.int32), n_iter=np.zeros(n, np.int32),
      n_evals=np.zeros(n, np.int32), converged=np.zeros(n, bool), flags=np.zeros(n, np.int32),
      start=np.full(n, -1, np.int32), start_names=tuple(start_names), method=cfg.method,
      rv=nan(n) if cfg.fit_rv else None, rv_err=nan(n) if cfg.fit_rv else None)


_ROW_FIELDS = ("y", "y_err", "chi2", "chi2_r", "mean_norm_resid", "n_pix_fit", "n_iter",
               "n_evals", "converged", "flags", "start", "rv", "rv_err", "y_start")


def concat_results(parts: Sequence[FitResult]) -> FitResult:
  """Rows of several `FitResult`s, in order (timings summed)."""
  first = parts[0]
  kw = {}
  for name in _ROW_FIELDS:
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


def _progress(n: int, desc: str):
  from tqdm.auto import tqdm

  return tqdm(total=n, desc=desc, unit="spectra", dynamic_ncols=True)


def fit_spectra(x, x_err=None, x_msk=None, *, emulator: Emulator, config: FitConfig = FitConfig(),
                cycle_model: CycleModel | None = None, y_start=None, y_median=None,
                progress: bool = False, devices=None) -> FitResult:
  """Fit N spectra in one call (builds a `LabelFitter`; reuse one to avoid recompiling).

  Args: as `LabelFitter` and `LabelFitter.fit`.

  Returns:
    `FitResult`.
  """
  fitter = LabelFitter(emulator, config, cycle_model=cycle_model, devices=devices)
  return fitter.fit(x, x_err, x_msk, y_start=y_start, y_median=y_median, progress=progress)


# ---------------------------------------------------------------------------------------------
# Models from disk.


def load_cycle_model(run_dir: str | os.PathLike) -> CycleModel:
  """The generator of a trained Cycle-StarNet run directory (its newest valid checkpoint).

  A run directory (`experiments.train`) holds `config.json` and `checkpoints/` (orbax steps
  written by `checkpoint.Checkpointer`). The config is read from `config.json`, or from the
  checkpoint's metadata when that file is absent; checkpoints that are incomplete, corrupt or
  for another architecture are skipped (with a warning) by `Checkpointer.restore_latest`.

  Raises:
    FileNotFoundError: no run directory or no checkpoint in it.
    ValueError: the config or every checkpoint is unusable (the message says why).
  """
  import orbax.checkpoint as ocp

  from cyclestar_jax import checkpoint as ckpt
  from cyclestar_jax.config import Config
  from cyclestar_jax.networks import make_networks

  run_dir = Path(run_dir)
  if not run_dir.is_dir():
    raise FileNotFoundError(f"{run_dir}: not a directory; expected a Cycle-StarNet run directory "
                            "(written by experiments.train: config.json, checkpoints/)")
  where = next((c for c in (run_dir / "checkpoints", run_dir) if c.is_dir() and any(
      p.name.isdigit() and p.is_dir() for p in c.iterdir())), None)
  if where is None:
    raise FileNotFoundError(
        f"{run_dir}: no checkpoint found in {run_dir / 'checkpoints'}; expected a run directory "
        "written by experiments.train")
  cfg_file = run_dir / "config.json"
  if cfg_file.is_file():
    try:
      conf, what = json.loads(cfg_file.read_text()), str(cfg_file)
    except json.JSONDecodeError as e:
      raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
  else:
    conf, what = None, f"{where} (checkpoint metadata)"
    steps = sorted((int(p.name) for p in where.iterdir() if p.name.isdigit()), reverse=True)
    with ocp.CheckpointManager(where, item_names=("state", "meta")) as manager:
      for step in steps:
        with contextlib.suppress(Exception):
          meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
          conf = dict(meta["meta"]).get("config")
          if conf:
            break
    if not conf:
      raise ValueError(f"{run_dir}: no config.json and no checkpoint metadata with a config")
  fields = {f.name for f in dataclasses.fields(Config)}
  unknown = sorted(set(conf) - fields)
  if unknown:
    raise ValueError(f"{what}: unknown config fields {unknown}")
  try:
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in conf.items()})
  except Exception as e:  # noqa: BLE001 - ConfigError, TypeError: say which file
    raise ValueError(f"{what}: the config cannot be used ({e})") from None
  try:
    state, _ = ckpt.restore_state(where, cfg)
  except ckpt.CheckpointError as e:
    raise ValueError(str(e)) from None
  return CycleModel(nets=make_networks(cfg), gen_params=state.gen_ema, source=str(where))


def find_emulator(model_dir: str | os.PathLike) -> Path:
  """An emulator placed in a run directory: `emulator.npz` or `emulator/emulator.npz`.

  Training does not use the emulator, so a run directory holds one only if it was copied there
  (e.g. `experiments.train_emulator --out RUN_DIR/emulator`); otherwise pass it explicitly.
  """
  model_dir = Path(model_dir)
  for c in (model_dir / "emulator.npz", model_dir / "emulator" / "emulator.npz"):
    if c.exists():
      return c
  raise FileNotFoundError(
      f"{model_dir}: no emulator in the run directory (looked for emulator.npz and "
      "emulator/emulator.npz); pass --emulator PATH (e.g. runs/mock/emulator/emulator.npz)")


# ---------------------------------------------------------------------------------------------
# Output files.


def save_results(path: str | os.PathLike, result: FitResult, *, rows: np.ndarray | None = None,
                 attrs: dict | None = None, csv_path: str | os.PathLike | None = None
                 ) -> tuple[Path, Path]:
  """Write a `FitResult` to HDF5 (atomically) and a CSV summary beside it.

  HDF5 datasets (N rows): `labels`, `labels_err` [N, 25]; `chi2`, `chi2_r`, `mean_norm_resid`,
  `n_pix_fit`, `n_iter`, `n_evals`, `converged`, `flags`, `start`, `row` [N]; `rv`, `rv_err`
  with a radial velocity; `labels_start` when catalogue labels were given. Attributes: `format`,
  `method`, `label_names`, `start_names`, `flags` (JSON {name: bit}) and `attrs`.

  CSV: one line per spectrum: row, Teff, log g, [Fe/H] with their errors, χ²_R, mean normalized
  residual, iterations, converged, flags and their names.

  Args:
    path: the HDF5 file.
    result: the fits.
    rows: [N] row of each spectrum in its input split (default 0..N−1).
    attrs: more file attributes (JSON-serializable values; dicts are stored as JSON).
    csv_path: the CSV (default: `path` with suffix `.csv`).

  Returns:
    (HDF5 path, CSV path).
  """
  path = Path(path)
  csv_path = path.with_suffix(".csv") if csv_path is None else Path(csv_path)
  n = len(result)
  rows = np.arange(n) if rows is None else np.asarray(rows)
  datasets = {"labels": result.y, "labels_err": result.y_err, "chi2": result.chi2,
              "chi2_r": result.chi2_r, "mean_norm_resid": result.mean_norm_resid,
              "n_pix_fit": result.n_pix_fit, "n_iter": result.n_iter,
              "n_evals": result.n_evals, "converged": result.converged,
              "flags": result.flags, "start": result.start, "row": rows}
  if result.rv is not None:
    datasets.update(rv=result.rv, rv_err=result.rv_err)
  if result.y_start is not None:
    datasets["labels_start"] = result.y_start
  n_lab = result.y.shape[1]
  names = LABEL_NAMES if n_lab == N_LABELS else tuple(f"label_{i}" for i in range(n_lab))
  file_attrs = {"format": RESULTS_FORMAT, "method": result.method,
                "equation": METHOD_EQUATION[result.method],
                "label_names": json.dumps(list(names)),
                "start_names": json.dumps(list(result.start_names)),
                "flags": json.dumps(FLAGS)}
  for k, v in (attrs or {}).items():
    file_attrs[k] = json.dumps(v, default=str) if isinstance(v, dict | list | tuple) else v

  def write_h5(f):
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h:
      for k, v in datasets.items():
        h.create_dataset(k, data=np.asarray(v))
      for k, v in file_attrs.items():
        h.attrs[k] = v
    f.write(buf.getvalue())

  atomic_write(path, write_h5)
  key = [i for i in (label_index("Teff"), label_index("logg"), label_index("Fe_H"))
         if i < n_lab] if n_lab == N_LABELS else list(range(min(3, n_lab)))

  def write_csv(f):
    text = io.StringIO()
    wr = csv.writer(text)
    head = ["row"] + [c for i in key for c in (names[i], f"{names[i]}_err")]
    if result.rv is not None:
      head += ["rv", "rv_err"]
    head += ["chi2_r", "mean_norm_resid", "n_iter", "converged", "flags", "flag_names"]
    wr.writerow(head)
    for i in range(n):
      line = [int(rows[i])] + [f"{v:.6g}" for j in key for v in (result.y[i, j],
                                                                  result.y_err[i, j])]
      if result.rv is not None:
        line += [f"{result.rv[i]:.6g}", f"{result.rv_err[i]:.6g}"]
      line += [f"{result.chi2_r[i]:.6g}", f"{result.mean_norm_resid[i]:.6g}",
               int(result.n_iter[i]), int(result.converged[i]), int(result.flags[i]),
               "|".join(result.flag_names(i))]
      wr.writerow(line)
    f.write(text.getvalue().encode())

  atomic_write(csv_path, write_csv)
  return path, csv_path


def read_results(path: str | os.PathLike) -> tuple[FitResult, np.ndarray, dict]:
  """Read a file written by `save_results`.

  Returns:
    (FitResult, rows [N], file attributes dict).

  Raises:
    ValueError: not a fit-results file (names the file and what is missing).
  """
  path = Path(path)
  with h5py.File(path, "r") as h:
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h.attrs.items()}
    if attrs.get("format") != RESULTS_FORMAT:
      raise ValueError(f"{path}: attribute 'format' is {attrs.get('format')!r}, expected "
                       f"{RESULTS_FORMAT!r} (a file written by fitting.save_results)")
    need = ("labels", "labels_err", "chi2", "chi2_r", "mean_norm_resid", "n_pix_fit", "n_iter",
            "n_evals", "converged", "flags", "start", "row")
    missing = [k for k in need if k not in h]
    if missing:
      raise ValueError(f"{path}: datasets {missing} are missing")
    d = {k: h[k][()] for k in h.keys()}
  res = FitResult(
      y=d["labels"], y_err=d["labels_err"], chi2=d["chi2"], chi2_r=d["chi2_r"],
      mean_norm_resid=d["mean_norm_resid"], n_pix_fit=d["n_pix_fit"], n_iter=d["n_iter"],
      n_evals=d["n_evals"], converged=d["converged"].astype(bool), flags=d["flags"],
      start=d["start"], start_names=tuple(json.loads(attrs["start_names"])),
      method=str(attrs["method"]), rv=d.get("rv"), rv_err=d.get("rv_err"),
      y_start=d.get("labels_start"))
  return res, d["row"], attrs


# ---------------------------------------------------------------------------------------------
# Files in, files out (the CLI's library function).


def _load_emulator_any(path) -> Emulator:
  """`load_emulator`, also accepting an `experiments.train_emulator` output directory."""
  path = Path(path)
  if path.is_dir() and (path / "emulator.npz").is_file():
    path = path / "emulator.npz"
  return load_emulator(path)


def _read_labels(path, split: str, start: int, stop: int) -> np.ndarray | None:
  """The catalogue labels `labels <split>` rows [start, stop) alone (no spectra), or None."""
  with h5py.File(path, "r") as h:
    name = f"labels {split}"
    return np.asarray(h[name][start:stop], np.float64) if name in h else None


def fit_file(obs_path: str | os.PathLike, out_path: str | os.PathLike, *, method: str = "obs",
             model_dir: str | os.PathLike | None = None,
             emulator_path: str | os.PathLike | None = None, split: str = "test",
             start: int = 0, stop: int | None = None, config: FitConfig | None = None,
             progress: bool = True) -> FitResult:
  """Fit one split of a reference-format HDF5 file and write the results (HDF5 + CSV).

  Args:
    obs_path: observed spectra (`h5io` reference format).
    out_path: results file (HDF5); the CSV summary goes beside it with suffix `.csv`.
    method: "obs" (Eq. 11), "synth" (Eq. 10) or "emulator" (Eq. 9).
    model_dir: for obs/synth a Cycle-StarNet run directory; for emulator an emulator file or
      directory (what `load_emulator` reads).
    emulator_path: the emulator for obs/synth (default: found in `model_dir`, `find_emulator`).
    split: split of the file.
    start, stop: row range of the split.
    config: fit settings (its method is replaced by `method`).
    progress: tqdm bar.

  Returns:
    The `FitResult` written.
  """
  from cyclestar_jax.h5io import SpectraFile

  config = dataclasses.replace(config or FitConfig(), method=method)
  if method == "emulator":
    if emulator_path is None and model_dir is None:
      raise ValueError("method 'emulator' needs --model EMULATOR (file or directory)")
    em = _load_emulator_any(emulator_path or model_dir)
    cycle = None
  else:
    if model_dir is None:
      raise ValueError(f"method {method!r} needs --model RUN_DIR (a trained Cycle-StarNet)")
    em = _load_emulator_any(emulator_path or find_emulator(model_dir))
    cycle = load_cycle_model(model_dir)
  with SpectraFile(obs_path, n_pix=None) as f:
    if split not in f.splits:
      raise ValueError(f"{obs_path}: no split {split!r}; the file has {list(f.splits)}")
    fitter = LabelFitter(em, config, cycle_model=cycle)
    fitter.check_pixels(f.n_pix, f"{obs_path} ({split})")  # before any fitting
    n = f.n(split)
    stop = n if stop is None else min(stop, n)
    if not 0 <= start <= stop:
      raise ValueError(f"{obs_path}: rows [{start}, {stop}) are not a range of split {split!r} "
                       f"({n} spectra)")
    y_median = fitter.default_median(_read_labels(obs_path, split, start, stop))
    rows = fitter.chunk_rows(stop - start)

    def blocks():
      for a in range(start, stop, rows):
        s = f.read(split, a, min(a + rows, stop))
        yield s.x, s.x_err, s.x_msk, s.y

    parts = list(fitter.fit_blocks(blocks(), y_median=y_median, rows=rows,
                                   n_total=stop - start, progress=progress,
                                   desc=f"fit {method}"))
  result = concat_results(parts) if parts else fitter._empty()
  save_results(out_path, result, rows=np.arange(start, stop), attrs={
      "obs_file": str(obs_path), "split": split, "model": str(model_dir),
      "emulator": str(em.source), "config": dataclasses.asdict(config),
      "devices": [str(d) for d in fitter.mesh.devices.flat]})
  return result
