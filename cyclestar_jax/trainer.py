"""The Cycle-StarNet training loop: data, data-parallel step, validation, checkpoints, metrics.

`train(cfg, TrainFiles(synth_path, obs_path), out_dir, LoopConfig(...))` runs the paper's
schedule (Appendix B) from the two reference-format HDF5 files and writes into `out_dir`:
  - `config.json`: the config used;
  - `run.json`: how the run was set up: the `LoopConfig`, whether validation was paired and
    why (`paired_val`, `paired_val_reason`), the usable pixels found in the training splits,
    data on the devices or streamed, the first step of this launch;
  - `metrics.jsonl`: one JSON line per log interval (`kind: "train"`: means of every loss term
    and critic accuracy over the interval, it/s, skipped steps) and per validation
    (`kind: "val"`: the loss terms on the first `val_rows` spectra of each val split, and the
    authors' latent cycle scores `zsh_synth_val`, `zsh_obs_val`, `zsp_val`; with a paired
    val split, the paired transfer residuals `val_paired_*`, see `validation.paired_metrics`),
    written and read by `metrics_log`;
  - `checkpoints/`: orbax checkpoints (last `keep`), see `checkpoint.py`.
The trainer draws no figure: its callers (`experiments/train.py`, `pipeline.stages`) draw
`training_progress.png` (`plots.plot_progress`, Fig. B1) from the log after training.

Every input is checked before the first compilation: the files (pixel counts: exactly
`cfg.n_pix + 47`, see `data.check_pixel_count`; splits; enough usable pixels, see
`data.BatchStream.check_usable`), the loop settings (`LoopConfig`), the batch size against the
devices, and, with `resume=True`, the checkpoints (a corrupt or foreign newest one is skipped
with a warning; if none is valid the run stops with an error rather than start over). A
resumed run continues the same data stream (batches are a function of (seed, step)) and gives
the same parameters as an uninterrupted run; one already at its last step says so and returns
its last metrics.

A step whose loss or gradients are not finite changes nothing (`train_step`); after
`max_skipped` such steps in a row the run stops with `TrainingDiverged`, naming the first of
them and its loss terms. A checkpoint is written only after a good step, so the newest one is
the last good state.

The loop (`run_loop`) is one for both data paths; a runner yields the compiled calls:
`StagedRunner` (training splits held on the devices, `steps_per_call` iterations per call) or
`StreamedRunner` (batches read from the files by a thread, one iteration per call).

Several processes (`jax.distributed` initialized first, see `parallel` and `experiments/train.py`):
every process calls `train` with the same arguments and an `out_dir` they all see. Each reads
its own rows of every global batch, all take part in every step, validation and checkpoint,
and process 0 alone writes config.json, run.json and metrics.jsonl and shows the
progress bar; every process returns the same summary (but for the timings).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from cyclestar_jax import checkpoint, data, losses, metrics_log, parallel, validation
from cyclestar_jax.config import Config
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.train_step import create_train_state

# Metrics whose interval means go to metrics.jsonl and the progress bar.
_BAR_KEYS = ("rec_synth", "rec_obs", "cc_synth", "cc_obs", "gen_synth", "gen_obs")
# Metrics named when a run stops for non-finite steps.
_LOSS_KEYS = (losses.GEN_TERMS + losses.CRITIC_TERMS
              + ("loss_gen", "loss_critic", "grad_norm_gen", "grad_norm_critic"))
_MAX_DEFAULT_STEPS_PER_CALL = 10  # accelerators: iterations per compiled call by default


def _limits_text(loop: LoopConfig) -> str:
  """The loop's wall-clock bounds in words, e.g. "900 s; a 1,300 s budget less 1,800 its"."""
  parts = [] if loop.time_limit_s is None else [f"{loop.time_limit_s:.0f} s"]
  if loop.budget_s is not None:
    parts.append(f"a {loop.budget_s:,.0f} s budget less {loop.reserve_iters:,} iterations")
  return "; ".join(parts)


class TrainingDiverged(RuntimeError):
  """`max_skipped` consecutive iterations had a non-finite loss or gradient norm."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """How the training loop runs (not what it trains: that is `Config`). Checked on creation;
  `resolve` fills the fields left to the run (None) before the loop starts.

  Attributes:
    log_every, val_every, ckpt_every: intervals in iterations between a metrics line, a
      validation and a checkpoint.
    steps_per_call: iterations per compiled call with data on the devices (a `lax.scan`: one
      launch per call, the lever at batch 8 on a GPU, docs/devices.md; streamed data: 1). It
      must divide every interval, so that every call has this one length and the scanned step
      compiles once (a run whose total is not a multiple adds one shorter call at the end).
      None: `default_steps_per_call` (1 on the CPU, 10 on accelerators with the default
      intervals).
    val_rows: spectra per domain in the validation batch.
    keep: checkpoints kept.
    max_skipped: consecutive skipped (non-finite) iterations that stop the run.
    n_iter: total iterations (None: the config's `n_iter`); a resumed run stops at the same
      total.
    time_limit_s: wall-clock seconds for the training loop (compilation excluded): the run
      stops at the first call that ends past it, validated and checkpointed as at the end, and
      says so in "stopped". A resumed run gets the limit afresh. One process only. None: none.
    budget_s, reserve_iters: a second wall-clock bound, for a job with work after the training
      (a main job's fits and report, whose cost on a machine follows its training speed): the
      loop also stops, as at `time_limit_s`, after the first call that leaves less than
      `reserve_iters` iterations' worth of time (at the loop's mean rate since its first call,
      which warms up, validations and checkpoints included) of `budget_s` seconds from its
      start. One process only.
      None / 0: none.
    data_on_device: "yes": hold both training splits, standardized, on every device
      (`parallel.stage_on_devices`, `StagedRunner`: each step gathers its batch there from row
      indices, so no spectrum crosses the host–device link during training); "no": stream
      the batches from the HDF5 files (`StreamedRunner`: a reading thread, memory bounded,
      for files larger than memory); "auto": "yes" when `data_on_device_fits`. Both give the
      same batches.
    paired_val: whether row i of the two val splits is the same star (adds `val_paired_*`):
      "yes"/True, "no"/False, or "auto"/None: the files' `paired_splits` attribute, else equal
      val row counts with a warning (`validation.decide_paired_val`).
  """

  log_every: int = 100
  val_every: int = 1000
  ckpt_every: int = 1000
  steps_per_call: int | None = None
  val_rows: int = 64
  keep: int = 3
  max_skipped: int = 100
  n_iter: int | None = None
  time_limit_s: float | None = None
  budget_s: float | None = None
  reserve_iters: int = 0
  data_on_device: str = "auto"
  paired_val: bool | str | None = None

  def __post_init__(self):
    for name in ("log_every", "val_every", "ckpt_every", "steps_per_call", "val_rows", "keep",
                 "max_skipped"):
      v = getattr(self, name)
      if v is None and name == "steps_per_call":
        continue
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
    if self.n_iter is not None and (isinstance(self.n_iter, bool) or not isinstance(
        self.n_iter, (int, np.integer)) or self.n_iter < 0):
      raise ValueError(f"n_iter must be an integer ≥ 0, got {self.n_iter!r}")
    for name in ("time_limit_s", "budget_s"):
      t = getattr(self, name)
      if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool)
                                and math.isfinite(t) and t > 0):
        raise ValueError(f"{name} must be a number of seconds > 0, got {t!r}")
    r = self.reserve_iters
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
      raise ValueError(f"reserve_iters must be an integer ≥ 0, got {r!r}")
    if self.data_on_device not in ("auto", "yes", "no"):
      raise ValueError(f"data_on_device must be 'auto', 'yes' or 'no', got "
                       f"{self.data_on_device!r}")
    validation.paired_val_option(self.paired_val)  # raises naming the options
    if self.steps_per_call is None:
      return
    bad = {k: v for k, v in zip(("log_every", "val_every", "ckpt_every"), self.intervals,
                                strict=True) if v % self.steps_per_call}
    if bad:
      g = math.gcd(*self.intervals)
      raise ValueError(
          f"steps_per_call {self.steps_per_call} must divide every interval (so that the "
          f"scanned step compiles for one call length), but not {bad}; choose a divisor of "
          f"{g}, e.g. {self.default_steps_per_call('gpu', self.intervals)}")

  @property
  def intervals(self) -> tuple[int, int, int]:
    """(log_every, val_every, ckpt_every)."""
    return (self.log_every, self.val_every, self.ckpt_every)

  @staticmethod
  def default_steps_per_call(platform: str, intervals: tuple[int, ...]) -> int:
    """1 on the CPU (launches cost nothing there); on accelerators the largest number ≤ 10
    that divides every interval (10 for the default intervals)."""
    if platform == "cpu":
      return 1
    g = math.gcd(*intervals)
    return max(d for d in range(1, _MAX_DEFAULT_STEPS_PER_CALL + 1) if g % d == 0)

  def resolve(self, n_iter: int, platform: str) -> LoopConfig:
    """This loop with the fields left to the run filled: `n_iter` (the config's, when None)
    and `steps_per_call` (`default_steps_per_call(platform, ...)`, when None)."""
    return dataclasses.replace(
        self, n_iter=int(n_iter) if self.n_iter is None else self.n_iter,
        steps_per_call=(self.default_steps_per_call(platform, self.intervals)
                        if self.steps_per_call is None else self.steps_per_call))


@dataclasses.dataclass(frozen=True)
class TrainFiles:
  """The reference-format HDF5 files a run trains on (`data.BatchStream`).

  Attributes:
    synth, obs: the synthetic and observed domains.
    grid: synthetic spectra at decorrelated labels for the grid batch; needed exactly when
      `Config.lambda_grid` > 0.
  """

  synth: str | os.PathLike
  obs: str | os.PathLike
  grid: str | os.PathLike | None = None


class Validation(NamedTuple):
  """The loop's validation: `evaluate(gen_params, critic_params, batch) -> metrics` (e.g.
  `validation.make_eval_fn(...)`, compiled) and the batch it runs on."""

  evaluate: Callable
  batch: dict



def _mean_metrics(history: list[dict]) -> dict[str, float]:
  """Means over an interval of step metrics (scalars, or [n] from a call of n iterations)."""
  fetched = parallel.fetch(history)
  keys = [k for k in fetched[0] if k not in ("step", "n_skipped")]
  out = {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in fetched]))) for k in keys}
  out["n_skipped"] = int(np.ravel(fetched[-1]["n_skipped"])[-1])
  return out


def _iterations(history: list[dict]) -> int:
  return int(sum(np.size(m["step"]) for m in history))


def data_on_device_fits(n_spectra: int, cfg: Config, devices=None, *,
                        fraction: float = 0.4) -> bool:
  """Whether `n_spectra` standardized spectra (`data.staged_nbytes`) fit on every local device
  (`parallel.fits_on_devices`: `fraction` of an accelerator's memory; CPU devices share the
  host's memory, all their copies together at most half of `fraction` of it)."""
  return parallel.fits_on_devices(data.staged_nbytes(n_spectra, cfg.n_pix), devices,
                                  fraction=fraction)


# ---------------------------------------------------------------------------------------------
# Runners: the compiled calls of one data path.


def _next_call(done: int, n_iter: int, steps_per_call: int, intervals: tuple[int, ...]) -> int:
  """Iterations of the next call: up to the next multiple of `steps_per_call`, never past an
  event (log, validation, checkpoint) or the end, so events land where a one-step loop puts
  them and a resumed run groups its iterations as the straight run did."""
  ends = [n_iter, (done // steps_per_call + 1) * steps_per_call]
  ends += [(done // k + 1) * k for k in intervals if k > 0]
  return min(ends) - done


class StreamedRunner:
  """Batches read from the HDF5 files by a background thread, one iteration per call.

  Args:
    stream: the run's `data.BatchStream`.
    mesh: the data mesh.
    step_fn: `step(state, batch, key) -> (state, metrics)`, e.g.
      `parallel.make_parallel_train_step(cfg, mesh)` (state donated).
    key: the run's PRNG key, replicated over the mesh.
  """

  def __init__(self, stream: data.BatchStream, mesh, step_fn, key):
    self.stream, self.mesh, self.step_fn, self.key = stream, mesh, step_fn, key

  def calls(self, state, start: int, stop: int, loop: LoopConfig
            ) -> Iterator[tuple[int, Any, dict]]:
    """Run steps [start, stop); yields (iterations, state, metrics) after each call."""
    batches = self.stream.iterate(start, stop)
    try:
      for _, batch in batches:
        state, m = self.step_fn(state, parallel.shard_batch(batch, self.mesh), self.key)
        yield 1, state, m
    finally:
      batches.close()


class StagedRunner:
  """Both training splits held on every device; each call gathers its batches there from row
  indices and runs up to `loop.steps_per_call` iterations (`_next_call`).

  Args:
    stream: the run's `data.BatchStream` (row indices, and the data to stage).
    mesh: the data mesh.
    step_fn: `step(state, staged, rows, key) -> (state, metrics)`, e.g.
      `parallel.make_parallel_staged_step(cfg, mesh)`.
    key: the run's PRNG key, replicated over the mesh.
    staged: the device arrays (default: `parallel.stage_on_devices(stream, ...)`).
  """

  def __init__(self, stream: data.BatchStream, mesh, step_fn, key, staged: dict | None = None):
    self.stream, self.mesh, self.step_fn, self.key = stream, mesh, step_fn, key
    self.staged = staged if staged is not None else parallel.stage_on_devices(
        stream, parallel.replicated_sharding(mesh))

  def calls(self, state, start: int, stop: int, loop: LoopConfig
            ) -> Iterator[tuple[int, Any, dict]]:
    """Run steps [start, stop); yields (iterations, state, metrics) after each call."""
    done = start
    while done < stop:
      n = _next_call(done, stop, loop.steps_per_call, loop.intervals)
      rows = parallel.shard_rows(self.stream.rows_of_steps(done, n), self.mesh)
      state, m = self.step_fn(state, self.staged, rows, self.key)
      done += n
      yield n, state, m


# ---------------------------------------------------------------------------------------------
# The loop.


class SkipWatch:
  """Consecutive skipped iterations, read on the host from the step metrics (`skipped`).

  `update(metrics)` takes the metrics of one call (scalars, or [n] for n iterations) in order
  and raises `TrainingDiverged` once `max_skipped` iterations in a row were skipped.
  """

  def __init__(self, max_skipped: int):
    self.max_skipped = max_skipped
    self.streak = 0  # skipped iterations since the last good one
    self.first: tuple[int, dict[str, float]] | None = None  # (step, loss terms) of the streak

  def update(self, metrics: dict) -> None:
    skipped = np.ravel(parallel.fetch(metrics["skipped"]))
    if self.streak == 0 and not skipped.any():
      return
    m = parallel.fetch(metrics)
    steps = np.ravel(m["step"])
    for i, s in enumerate(skipped):
      if not s:
        self.streak, self.first = 0, None
        continue
      if self.streak == 0:
        self.first = (int(steps[i]) - 1,
                      {k: float(np.ravel(m[k])[i]) for k in _LOSS_KEYS if k in m})
      self.streak += 1
      if self.streak >= self.max_skipped:
        step, terms = self.first
        raise TrainingDiverged(
            f"{self.streak} iterations in a row skipped (max_skipped {self.max_skipped}): the "
            f"loss or gradients are not finite from step {step} on (0-based, the batch of "
            f"BatchStream.batch_at({step})); its loss terms: "
            + ", ".join(f"{k}={v:.4g}" for k, v in terms.items()))


def run_loop(runner, state, start: int, loop: LoopConfig, *, ckpt: checkpoint.Checkpointer,
             val: Validation | None = None, log_path: Path | None = None, bar=None
             ) -> tuple[Any, int, dict, dict]:
  """Train from step `start` to `loop.n_iter` with a runner's calls; log, validate, checkpoint.

  Events (a metrics line every `log_every`, a validation every `val_every`, a checkpoint every
  `ckpt_every` iterations, and all three at the end) land on the same steps whatever the
  runner. Skipped steps are counted on the host one call behind the device (`SkipWatch`), so
  the device always has the next call queued; before a checkpoint the count is brought up to
  date, and a checkpoint due while the last step was skipped is not written (with a warning).

  Args:
    runner: `StagedRunner` or `StreamedRunner` (anything with `calls(state, start, stop, loop)`).
    state: the replicated `TrainState` at `start` (donated to the first call).
    loop: the loop's settings, `n_iter` set (`LoopConfig.resolve`). With `time_limit_s` the loop
      stops after the first call that ends that many seconds after it started, with `budget_s`
      after the first that leaves too little of the budget (`out_of_time`); then it logs,
      validates and checkpoints as at the end.
    ckpt: the run's checkpointer.
    val: the validation (evaluation and batch), or None (no validation).
    log_path: metrics.jsonl (None: another process writes it).
    bar: a tqdm bar (or None).

  Returns:
    (state, step reached, last train line, last val line, why it stopped: "n_iter",
    "time_limit" or "budget", from `out_of_time`).

  Raises:
    TrainingDiverged: `loop.max_skipped` consecutive skipped steps (nothing more is written).
  """
  if loop.n_iter is None:
    raise ValueError("run_loop needs loop.n_iter; resolve the LoopConfig first")
  n_iter = loop.n_iter
  t_start = time.perf_counter()
  t_first, n_first = None, start  # the end of the first call: the rate is measured from there
  stopped = "n_iter"
  watch = SkipWatch(loop.max_skipped)
  history: list[dict] = []
  pending: dict | None = None  # metrics of the last call, not yet seen by the watch
  last_train, last_val = {}, {}
  t_interval = time.perf_counter()
  done = start

  def save_if_good():
    nonlocal pending
    if pending is not None:
      watch.update(pending)
      pending = None
    if watch.streak:
      warnings.warn(f"step {done}: checkpoint not written, the last {watch.streak} steps were "
                    f"skipped (non-finite); the newest checkpoint stays the last good state",
                    stacklevel=3)
      return
    ckpt.save(state, data_position=done)

  calls = runner.calls(state, start, n_iter, loop)
  try:
    for n, new_state, m in calls:
      # Dispatch is asynchronous: while the device runs this call, the host reads the previous
      # call's skip flags and the runner prepares the next call.
      state = new_state
      if pending is not None:
        watch.update(pending)
      pending = m
      history.append(m)
      done += n
      if bar is not None:
        bar.update(n)
      if done % loop.log_every == 0:
        last_train = _log_train(history, done, t_interval, log_path, bar)
        history, t_interval = [], time.perf_counter()
      if val is not None and done % loop.val_every == 0:
        last_val = _log_val(val.evaluate, state, val.batch, done, log_path)
      if done % loop.ckpt_every == 0:
        save_if_good()
      now = time.perf_counter()
      if t_first is None:
        t_first, n_first = now, done
      rate = (now - t_first) / (done - n_first) if done > n_first else None
      why = out_of_time(loop, now - t_start, rate) if done < n_iter else None
      if why is not None:
        stopped = why
        break
  except KeyboardInterrupt:  # Ctrl-C: keep the step reached, then stop
    if done > start and done % loop.ckpt_every:
      save_if_good()
      print(f"interrupted at step {done}: checkpoint written, resume to continue",
            file=sys.stderr)
    raise
  finally:
    calls.close()  # stops a streamed runner's reading thread
  if pending is not None:
    watch.update(pending)
    pending = None
  if history:
    last_train = _log_train(history, done, t_interval, log_path, bar)
  if done > start:
    if val is not None and done % loop.val_every:
      last_val = _log_val(val.evaluate, state, val.batch, done, log_path)
    if done % loop.ckpt_every:
      save_if_good()
  return state, done, last_train, last_val, stopped


def out_of_time(loop: LoopConfig, elapsed_s: float, s_per_iter: float | None) -> str | None:
  """Which bound a loop `elapsed_s` seconds after its start has reached: "time_limit"
  (`loop.time_limit_s`), "budget" (less than `loop.reserve_iters` iterations' worth of time
  left of `loop.budget_s` at `s_per_iter` seconds per iteration; None: not measured yet, no
  budget stop), or None."""
  if loop.time_limit_s is not None and elapsed_s >= loop.time_limit_s:
    return "time_limit"
  if loop.budget_s is None or s_per_iter is None:
    return None
  return "budget" if elapsed_s + loop.reserve_iters * s_per_iter >= loop.budget_s else None


def _restore(ckpt: checkpoint.Checkpointer, cfg: Config, mesh, key, resume: bool, out: Path):
  """(state, start step, restored?): the newest valid checkpoint with `resume`, else step 0."""
  if ckpt.steps() and not resume:
    raise checkpoint.CheckpointError(
        f"{out / 'checkpoints'} already holds checkpoints (steps {ckpt.steps()}); pass "
        f"resume=True (--resume) to continue, or choose another output directory")
  if resume:
    target = jax.eval_shape(functools.partial(create_train_state, cfg), key)
    rep = parallel.replicated_sharding(mesh)
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                          target)
    found = ckpt.restore_latest(target)
    if found is None and ckpt.steps():
      why = "; ".join(f"step {k}: {v}" for k, v in sorted(ckpt.skipped.items()))
      raise checkpoint.CheckpointError(
          f"{out / 'checkpoints'}: no valid checkpoint among steps {ckpt.steps()} ({why}); "
          "refusing to start over in this directory")
    if found is not None:
      state, meta = found
      _move_aside(ckpt, meta.get("skipped_newer", {}))
      return state, int(meta["data_position"]), True
    warnings.warn(f"{out / 'checkpoints'}: no checkpoint yet; starting at step 0", stacklevel=3)
  return parallel.replicate(create_train_state(cfg, key), mesh), 0, False


def _move_aside(ckpt: checkpoint.Checkpointer, skipped: dict[int, str]) -> None:
  """Move the unusable checkpoints newer than the resumed one to `checkpoints/corrupt-<step>/`
  (kept for inspection), so that the resumed run can write those steps again; says so."""
  if not skipped:
    return
  if jax.process_index() == 0:
    for step in sorted(skipped):
      src = Path(ckpt.directory) / str(step)
      dst = src.with_name(f"corrupt-{step}")
      n = 1
      while dst.exists():
        dst, n = src.with_name(f"corrupt-{step}.{n}"), n + 1
      os.replace(src, dst)
      print(f"checkpoint step {step} unusable ({skipped[step]}); moved to {dst}, training "
            "continues from the older one", file=sys.stderr)
  parallel.barrier("trainer_corrupt_checkpoints_moved")  # no-op with one process
  ckpt.steps()  # the manager forgets the moved steps


def train(cfg: Config, files: TrainFiles, out_dir, loop: LoopConfig = LoopConfig(), *,
          resume: bool = False, progress: bool = True, mesh=None) -> dict:
  """Train Cycle-StarNet; see the module docstring for what is written.

  Args:
    cfg: config (architecture, schedule, batch size, seed).
    files: the training files (`TrainFiles`: synthetic and observed domains, the grid file).
    out_dir: output directory.
    loop: how the loop runs (`LoopConfig`: intervals, iterations, time limit, data on the
      devices or streamed, paired validation); its None fields are filled by
      `LoopConfig.resolve` (n_iter: cfg.n_iter; steps_per_call: by the platform).
    resume: continue from the newest valid checkpoint in `out_dir/checkpoints`.
    progress: show a progress bar.
    mesh: device mesh (default: all devices).

  Returns:
    {"step", "train": last interval's means, "val": last validation, "out_dir", "paired_val",
    "paired_val_reason", "usable" (per domain, `data.usable_pixels`), "already_complete"
    (a resumed run already at `n_iter`: nothing was run, the metrics are the last logged),
    "stopped": "n_iter", "time_limit" or "budget" (`run_loop`)}.

  Raises:
    ValueError: bad files or settings (before anything compiles). CheckpointError: see the
    module docstring. TrainingDiverged: `loop.max_skipped` consecutive non-finite steps.
  """
  out = Path(out_dir)
  if (loop.time_limit_s is not None or loop.budget_s is not None) and jax.process_count() > 1:
    raise ValueError("time_limit_s and budget_s are for one process: processes stopping on "
                     "their own clocks would stop at different steps; use n_iter")
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(cfg.batch_size, mesh)
  loop = loop.resolve(cfg.n_iter, mesh.devices.flat[0].platform)
  out.mkdir(parents=True, exist_ok=True)
  stream = data.BatchStream(files.synth, files.obs, cfg, process_index=jax.process_index(),
                            process_count=jax.process_count(), grid_path=files.grid)
  try:
    return _train(cfg, stream, out, loop, resume=resume, progress=progress, mesh=mesh)
  finally:
    stream.close()


def _train(cfg: Config, stream: data.BatchStream, out: Path, loop: LoopConfig, *, resume: bool,
           progress: bool, mesh) -> dict:
  """`train` once the stream is open (it closes the stream)."""
  paths = stream.paths()
  usable = stream.check_usable()
  n_iter = loop.n_iter
  paired_opt = validation.paired_val_option(loop.paired_val)
  val_batch = validation.validation_rows(paths["synth"], paths["obs"], cfg, loop.val_rows)
  paired, paired_reason = (validation.decide_paired_val(paths["synth"], paths["obs"], paired_opt)
                           if val_batch is not None else (False, "no validation batch"))
  staged_mode = loop.data_on_device == "yes" or (
      loop.data_on_device == "auto" and data_on_device_fits(sum(stream.sizes().values()), cfg))
  loop = loop if staged_mode else dataclasses.replace(loop, steps_per_call=1)
  # With several processes every one runs this loop; process 0 alone writes files and prints.
  lead = jax.process_index() == 0
  metrics_path = out / metrics_log.FILE_NAME
  summary = {"out_dir": str(out), "paired_val": paired, "paired_val_reason": paired_reason,
             "usable": usable, "already_complete": False}
  ckpt = checkpoint.Checkpointer(out / "checkpoints", cfg, max_to_keep=loop.keep)
  try:
    key = jax.random.key(cfg.seed)
    state, start, restored = _restore(ckpt, cfg, mesh, key, resume, out)
    if lead:
      if restored:
        metrics_log.truncate_after(metrics_path, start)
      else:
        metrics_log.start_new(metrics_path)
    if restored and start >= n_iter:
      last_train, last_val = metrics_log.last_metrics(metrics_path)
      return {**summary, "step": start, "train": last_train, "val": last_val,
              "already_complete": True, "stopped": "n_iter"}
    if lead:
      atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
      run_info = {"loop": dataclasses.asdict(loop), "n_iter": n_iter, "start_step": start,
                  "data_on_device": staged_mode, "paired_val": paired,
                  "paired_val_reason": paired_reason, "usable": usable,
                  "n_spectra": stream.sizes(), "files": {k: str(v) for k, v in paths.items()}}
      atomic_write_text(out / "run.json", json.dumps(run_info, indent=1))
    if val_batch is not None and jax.process_count() > 1:
      val_batch = parallel.replicate(val_batch, mesh)  # every process holds the whole batch
    val = (Validation(parallel.compile_then_sync(validation.make_eval_fn(cfg, paired=paired),
                                                 "eval"), val_batch)
           if val_batch is not None else None)
    rkey = parallel.replicate(key, mesh)
    if staged_mode:
      runner = StagedRunner(stream, mesh, parallel.compile_then_sync(
          parallel.make_parallel_staged_step(cfg, mesh), "staged_step"), rkey)
    else:
      runner = StreamedRunner(stream, mesh, parallel.compile_then_sync(
          parallel.make_parallel_train_step(cfg, mesh), "train_step"), rkey)
    bar = tqdm(total=n_iter, initial=start, disable=not (progress and lead), desc=cfg.name,
               dynamic_ncols=True)
    try:
      state, done, last_train, last_val, stopped = run_loop(
          runner, state, start, loop, ckpt=ckpt, val=val,
          log_path=metrics_path if lead else None, bar=bar)
    finally:
      bar.close()
  finally:
    ckpt.close()
  if lead and stopped != "n_iter":
    bound = "time limit" if stopped == "time_limit" else "job's time budget"
    print(f"{cfg.name}: stopped at the {bound} ({_limits_text(loop)}) after {done} of "
          f"{n_iter} iterations; the newest checkpoint holds step {done}", file=sys.stderr)
  return {**summary, "step": done, "train": last_train, "val": last_val, "stopped": stopped}


def _log_train(history, step, t0, path: Path | None, bar) -> dict:
  """Means over the interval; appended to `path` (None: another process writes them)."""
  means = _mean_metrics(history)
  dt = time.perf_counter() - t0
  means["it_per_s"] = _iterations(history) / dt if dt > 0 else math.nan
  bad = [k for k, v in means.items() if isinstance(v, float) and not math.isfinite(v)
         and k != "it_per_s"]
  line = {"kind": "train", "step": step, **means}
  if path is None:
    return line
  metrics_log.append_line(path, line)
  if bar is not None:
    bar.set_postfix({k: f"{means[k]:.3g}" for k in _BAR_KEYS}
                    | {"it/s": f"{means['it_per_s']:.1f}"}, refresh=False)
  if bad:
    warnings.warn(f"step {step}: non-finite metrics {bad} (steps skipped so far: "
                  f"{means['n_skipped']})", stacklevel=3)
  return line


def _log_val(evaluate, state, batch, step, path: Path | None) -> dict:
  """Validation metrics (every process evaluates); appended to `path` unless None."""
  vals = {k: float(v) for k, v in parallel.fetch(
      evaluate(state.gen_ema, state.critic_params, batch)).items()}
  line = {"kind": "val", "step": step, **vals}
  if path is None:
    return line
  metrics_log.append_line(path, line)
  return line
