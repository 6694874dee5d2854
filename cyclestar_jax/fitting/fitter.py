"""`LabelFitter`: batched fits of observed spectra on all local devices, in chunks.

A chunk of spectra is dealt round-robin to the devices of a one-axis mesh (`parallel.data_mesh`)
and runs under `shard_map` (`parallel.shard_map_over_data`): each device works through its own
job queue (`lbfgs`) and exits on its own. Chunks are dispatched asynchronously, so the host
reads and prepares the next chunk while the devices fit the current one.

Slots are sized to the work: a chunk whose busiest device has J jobs (rows × starts) runs
min(2^⌈log2 J⌉, slots per device of `batch_size`) slots there, and a call for N spectra sends
chunks of 2^⌈log2(N / devices)⌉ rows per device (at most `chunk_size` in all). Power-of-two
steps bound the compilations (one per slot count and chunk shape), and idle slots no longer
cost a vmapped value-and-gradient each iteration (16 spectra by Eq. 11 took >500 s with 1,024
slots, 19 s with 32).

Outputs: formal 1σ uncertainties from the Gauss–Newton Hessian JᵀWJ at the optimum (J =
∂model/∂y, physical units; inverted on the host in float64; not rescaled by χ²_R); χ²_R = χ² /
(n_pix_fit − n_free); flags (`FLAGS`). A spectrum with fewer than `min_good_pixels` usable
pixels is not fitted and gets `BAD_DATA` and NaN labels; it never enters a batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from cyclestar_jax import parallel
from cyclestar_jax.checkpoint import CycleModel
from cyclestar_jax.emulator import Emulator
from cyclestar_jax.fitting import starts
from cyclestar_jax.fitting.chunk import make_chunk_fit
from cyclestar_jax.fitting.config import (
    FLAGS,
    METHOD_EQUATION,
    FitConfig,
    PixelCountError,
)
from cyclestar_jax.fitting.lbfgs import CONVERGED, queue_jobs
from cyclestar_jax.fitting.objectives import make_objective, prepare_observed
from cyclestar_jax.fitting.results import FitResult, allocate, concat_results
from cyclestar_jax.labels import N_LABELS, label_index, unscale_labels
from cyclestar_jax.resources import N_DROP

_DEFAULT_CONFIG = FitConfig()


def pow2_at_least(n: int) -> int:
  """The smallest power of two ≥ n (1 for n ≤ 1)."""
  return 1 << max(int(n) - 1, 0).bit_length()


@dataclasses.dataclass
class _Pending:
  """A chunk dispatched to the devices, with what the host needs to finish it."""

  out: dict  # device arrays (not yet fetched)
  n: int  # real spectra in the chunk
  order: np.ndarray  # [n] padded row of each real spectrum
  bad: np.ndarray  # [n] BAD_DATA
  n_good: np.ndarray  # [n] usable pixels
  y_start: np.ndarray | None
  slots: int  # slots per device of this chunk
  t0: float


class LabelFitter:
  """Batched fits of observed spectra with one model and one `FitConfig`.

  The per-device program is built once per slot count and compiled once per chunk shape:
  reuse a fitter for many calls (`fit`, `fit_blocks`).

  Args:
    emulator: the emulator (`emulator.load_emulator`), physical label box included.
    config: fit settings (method, starts, tolerances, batch).
    cycle_model: the trained Cycle-StarNet (`load_cycle_model`) for methods obs/synth.
    devices: devices to shard the spectra over (default: this process's devices).
    log_wave: [n_pix] log10 λ of the emulator's pixels for a radial-velocity fit (default: the
      APOGEE grid).

  Raises:
    PixelCountError: the emulator and the networks disagree on the pixel count.
  """

  def __init__(self, emulator: Emulator, config: FitConfig = _DEFAULT_CONFIG, *,
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
    self.mesh = parallel.data_mesh(devices)
    self.n_dev = int(self.mesh.devices.size)
    self.slots_per_device = max(1, math.ceil(cfg.batch_size / self.n_dev))
    params = {"emulator": emulator.params}
    if cfg.method != "emulator":
      params["gen"] = cycle_model.gen_params
    self.params = jax.device_put(params, parallel.replicated_sharding(self.mesh))
    self.free = self._free_mask()
    self.n_free = int(self.free.sum())
    self.start_names = starts.start_names(cfg)
    self._programs: dict[int, object] = {}  # slots per device → jitted chunk program
    self._data_sharding = parallel.batch_sharding(self.mesh)

  def _free_mask(self) -> np.ndarray:
    """[n_par] 1 for fitted parameters, 0 for held ones."""
    cfg = self.config
    free = np.zeros(self.objective.n_par, np.float32)
    if cfg.free_labels is None:
      free[:] = 1.0
      return free
    if self.n_labels != N_LABELS:
      raise ValueError(f"free_labels needs the {N_LABELS} labels of LABEL_NAMES; the emulator "
                       f"has {self.n_labels}")
    free[[label_index(name) for name in cfg.free_labels]] = 1.0
    if cfg.fit_rv:
      free[-1] = 1.0
    return free

  # -- sizes --

  def slots_for(self, max_jobs: int) -> int:
    """Slots per device for a chunk whose busiest device has max_jobs jobs: the power of two
    ≥ max_jobs, at most the slots per device of `batch_size`."""
    return min(self.slots_per_device, pow2_at_least(max_jobs))

  @property
  def compiled_slots(self) -> tuple[int, ...]:
    """The slot counts (per device) this fitter has built programs for."""
    return tuple(sorted(self._programs))

  def _program(self, slots: int):
    """The jitted chunk program with `slots` slots per device (built on first use)."""
    if slots not in self._programs:
      fn = make_chunk_fit(self.objective, self.config.lbfgs, slots, self.config.n_starts,
                          self.config.tie_tol)
      self._programs[slots] = parallel.shard_map_over_data(
          fn, self.mesh, (False, True, True, True, True, True, True, True, False))
    return self._programs[slots]

  def chunk_rows(self, n_total: int) -> int:
    """Rows per device call for n_total spectra: devices × the power of two ≥ n_total /
    devices, at most `chunk_size` (rounded up to a multiple of the devices)."""
    per_dev = pow2_at_least(math.ceil(max(n_total, 1) / self.n_dev))
    return self.n_dev * min(per_dev, math.ceil(self.config.chunk_size / self.n_dev))

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
    return starts.default_median(y_start, self.emulator.y_min, self.emulator.y_max)

  def fit(self, x, x_err=None, x_msk=None, *, y_start=None, y_median=None,
          progress: bool = False, desc: str = "fit") -> FitResult:
    """Fit N spectra (any N: processed in chunks of at most `config.chunk_size`).

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
        compilation per slot count serves all blocks.
      n_total: spectra in all blocks, for the progress bar.
      progress: show a tqdm bar.
      desc: the bar's label.

    Yields:
      One `FitResult` per block, in order.
    """
    if rows % self.n_dev:
      raise ValueError(f"rows {rows} must be a multiple of the {self.n_dev} devices")
    y_median = np.asarray(y_median, np.float64)
    bar = progress_bar(n_total, desc) if progress else contextlib.nullcontext()
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
    return allocate(0, self.n_labels, self.config, self.start_names)

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
    theta0, fb, valid = starts.theta_starts(cfg, y_start, y_median, n, self.emulator.y_min,
                                            self.emulator.y_max, self.free)
    valid &= ~bad[:, None]
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
    v = spread(valid, bool).reshape(n_dev, c_loc, -1)
    # Per-device job queues (local job j = c·K + k): the valid jobs first, then −1.
    queues = [queue_jobs(v[d]) for d in range(n_dev)]
    job_ids = np.concatenate([q[0] for q in queues])
    n_jobs = np.concatenate([q[1] for q in queues])
    slots = self.slots_for(int(n_jobs.max(initial=0)))
    put = functools.partial(jax.device_put, device=self._data_sharding)
    out = self._program(slots)(self.params, put(xs), put(w), put(u0), put(job_ids),
                               put(n_jobs), put(u_fb), put(n_rows), jnp.asarray(self.free))
    return _Pending(out=out, n=n, order=order, bad=bad, n_good=n_good,
                    y_start=None if y_start is None else np.asarray(y_start, np.float64),
                    slots=slots, t0=t0)

  def _collect(self, p: _Pending) -> FitResult:
    """Fetch a dispatched block's results and assemble its `FitResult`."""
    cfg, n = self.config, p.n
    o = {k: np.asarray(v) for k, v in jax.device_get(p.out).items()}
    loop_iters = int(o.pop("loop_iters").max())
    o = {k: v[p.order] for k, v in o.items()}
    out = allocate(n, self.n_labels, cfg, self.start_names)
    ok = o["start"] >= 0
    th = o["theta"].astype(np.float64)
    y_min, y_max = np.asarray(self.emulator.y_min), np.asarray(self.emulator.y_max)
    out.y[ok] = unscale_labels(th[ok, :self.n_labels], y_min, y_max)
    scale = np.concatenate([y_max - y_min, [2.0 * cfg.rv_max] if cfg.fit_rv else []])
    gn_r = o["gn_r"].astype(np.float64)
    err, bad_err = formal_errors(np.einsum("nki,nkj->nij", gn_r, gn_r), self.free, scale)
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
    out.converged[ok] = (o["status"][ok] & CONVERGED) > 0
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


def progress_bar(n: int | None, desc: str, initial: int = 0):
  """A tqdm bar over n spectra (rate in spectra/s and an ETA)."""
  return tqdm(total=n, initial=initial, desc=desc, unit="spectra", dynamic_ncols=True,
              smoothing=0.1)


def formal_errors(hess: np.ndarray, free: np.ndarray, scale: np.ndarray):
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


def fit_spectra(x, x_err=None, x_msk=None, *, emulator: Emulator,
                config: FitConfig = _DEFAULT_CONFIG, cycle_model: CycleModel | None = None,
                y_start=None, y_median=None, progress: bool = False, devices=None) -> FitResult:
  """Fit N spectra in one call (builds a `LabelFitter`; reuse one to avoid recompiling).

  Its ten parameters are `LabelFitter`'s and `LabelFitter.fit`'s together: this function is
  the one-call shortcut of those two, which take them in two short lists.

  Args: as `LabelFitter` and `LabelFitter.fit`.

  Returns:
    `FitResult`.
  """
  fitter = LabelFitter(emulator, config, cycle_model=cycle_model, devices=devices)
  return fitter.fit(x, x_err, x_msk, y_start=y_start, y_median=y_median, progress=progress)


