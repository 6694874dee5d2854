"""A fit of one split of a file as a restartable job: files in, results file out.

`fit_file(FitJob(obs, out, config, ...))` checks the output path before any work (not a
directory, writable; an existing results file is refused unless `overwrite` or `resume`), fits
the rows in chunks of `chunk_rows` and writes each chunk atomically to
`<out>.parts/chunk_<first>_<stop>.h5` as soon as it is fitted, so a process killed at any moment
loses at most the chunk in flight. At the end the chunks are merged into `<out>` (HDF5) and
`<out>.csv`, and the parts folder is removed. `resume=True` continues an interrupted job from
the chunks already written: the chunk grid, the padded chunk shape and the median start come
from the whole job (kept in `<out>.parts/job.json`, which must match), so the results file is
the one an uninterrupted run writes.

Several processes (`jax.distributed`): chunk i is fitted by process i mod P on its own devices
(no collective during the fits), each process writes its own chunk files into the shared parts
folder, and process 0 merges them after a barrier. The file equals a one-process run's up to
the batch layout, which the stopping rule makes immaterial (`lbfgs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import h5py
import jax
import numpy as np

from cyclestar_jax import parallel, rundir
from cyclestar_jax.checkpoint import load_cycle_model
from cyclestar_jax.emulator import load_emulator
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.fitting.config import FLAGS, FitConfig
from cyclestar_jax.fitting.fitter import LabelFitter, progress_bar
from cyclestar_jax.fitting.results import (
    FitResult,
    concat_results,
    read_results,
    save_results,
    star_ids,
    write_results_h5,
)
from cyclestar_jax.h5io import SpectraFile
from cyclestar_jax.labels import LABEL_NAMES

JOB_FORMAT = "cyclestar_jax.fit_job/1"


class OutputPathError(ValueError):
  """The results path cannot be written, or would overwrite results without permission."""


def parts_dir(out_path: str | os.PathLike) -> Path:
  """The folder of an unfinished job's chunk files: `<out>.parts`."""
  out_path = Path(out_path)
  return out_path.with_name(out_path.name + ".parts")


def _writable_dir(path: Path) -> bool:
  """Whether `path` (a directory, existing or not) can be created or written."""
  p = path
  while not p.exists():
    if p.parent == p:
      return False
    p = p.parent
  return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def check_output_path(out_path: str | os.PathLike) -> None:
  """Raise `OutputPathError` (one line naming the path) unless a results file can be written
  at `out_path`: not a directory (nor its CSV), in a folder that exists or can be made and is
  writable, not an unwritable file."""
  out = Path(out_path)
  for p in (out, out.with_suffix(".csv")):
    if p.is_dir():
      raise OutputPathError(f"{p}: is a directory; --out must name a results file (HDF5)")
  if not _writable_dir(out.parent):
    raise OutputPathError(f"{out}: cannot write in {out.parent} (missing, not a directory or "
                          "not writable)")
  if out.exists() and not os.access(out, os.W_OK):
    raise OutputPathError(f"{out}: exists and is not writable")


def check_no_overwrite(out_path: str | os.PathLike, *, overwrite: bool = False,
                       resume: bool = False) -> None:
  """Raise `OutputPathError` if the job would replace results without permission: an existing
  results file (unless overwrite or resume), an unfinished job's parts (unless resume or
  overwrite)."""
  out = Path(out_path)
  if overwrite or resume:
    return
  if out.exists():
    raise OutputPathError(f"{out}: exists; pass --overwrite to replace it (or --resume)")
  if parts_dir(out).exists():
    raise OutputPathError(f"{parts_dir(out)}: an unfinished fit of {out.name} is there; pass "
                          "--resume to continue it or --overwrite to start again")


def check_output(out_path: str | os.PathLike, *, overwrite: bool = False,
                 resume: bool = False) -> None:
  """`check_output_path` and `check_no_overwrite`: whether the job may write `out_path`."""
  check_output_path(out_path)
  check_no_overwrite(out_path, overwrite=overwrite, resume=resume)


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


def _is_cycle_run(path: Path) -> bool:
  """Whether `path` is a Cycle-StarNet run directory (checkpoints/, config.json)."""
  return path.is_dir() and ((path / "checkpoints").is_dir() or (path / "config.json").is_file())


def _warn_nan_held(y: np.ndarray | None, config: FitConfig, y_median: np.ndarray, where: str
                   ) -> None:
  """One warning when labels are held fixed (`free_labels`) and catalogue rows have NaN
  labels: those spectra's held labels are the population median (`starts.theta_starts`), not
  their catalogue values."""
  if y is None or config.free_labels is None:
    return
  nan_rows = ~np.all(np.isfinite(y), axis=1)
  if not nan_rows.any():
    return
  bad = {LABEL_NAMES[i]: int(np.count_nonzero(~np.isfinite(y[:, i])))
         for i in range(y.shape[1]) if not np.isfinite(y[:, i]).all()}
  shown = ", ".join(f"{k} = {y_median[LABEL_NAMES.index(k)]:.4g}" for k in list(bad)[:3]
                    if k not in config.free_labels)
  warnings.warn(f"{where}: {int(nan_rows.sum())} spectra have NaN catalogue labels "
                f"({', '.join(f'{k}: {v}' for k, v in bad.items())}); their labels held fixed "
                f"(not in --free-labels) are set to the population median instead"
                + (f" ({shown})" if shown else ""), stacklevel=3)


def _same_finished_job(out_path: Path, job: dict) -> None:
  """Raise `OutputPathError` if a finished results file was written by another job (other
  arguments, another input file); warn if it does not say (an older version wrote it)."""
  attrs = read_results(out_path)[2]
  if "job" not in attrs:
    warnings.warn(f"{out_path}: finished by an older version that did not record its arguments; "
                  "they cannot be checked (pass --overwrite to fit again)", stacklevel=3)
    return
  old = json.loads(attrs["job"])
  diff = sorted(k for k in set(old) | set(job) if k != "chunk_rows" and old.get(k) != job.get(k))
  if diff:
    raise OutputPathError(f"{out_path}: finished by a job with other arguments (differs in "
                          f"{diff}); --resume only continues the same job: pass --overwrite "
                          "to fit again, or choose another --out")


def _read_labels(path, split: str, start: int, stop: int) -> np.ndarray | None:
  """The catalogue labels `labels <split>` rows [start, stop) alone (no spectra), or None."""
  with h5py.File(path, "r") as h:
    name = f"labels {split}"
    return np.asarray(h[name][start:stop], np.float64) if name in h else None


def _models(method: str, model_dir, emulator_path):
  """(emulator path, run directory or None) of a method, checked before anything is loaded."""
  if method == "emulator":
    if emulator_path is None and model_dir is None:
      raise ValueError("method 'emulator' needs --model EMULATOR (file or directory)")
    if emulator_path is None and _is_cycle_run(Path(model_dir)):
      try:
        return find_emulator(model_dir), None
      except FileNotFoundError:
        raise ValueError(f"--model {model_dir} is a Cycle-StarNet run directory; --method "
                         "emulator (Eq. 9) needs the emulator itself: --model EMULATOR.npz (or "
                         "its folder, e.g. RUN/emulator)") from None
    return Path(emulator_path or model_dir), None
  if model_dir is None:
    raise ValueError(f"method {method!r} needs --model RUN_DIR (a trained Cycle-StarNet)")
  return Path(emulator_path) if emulator_path else find_emulator(model_dir), Path(model_dir)


def _chunk_path(parts: Path, a: int, b: int) -> Path:
  return parts / f"chunk_{a:010d}_{b:010d}.h5"


def _done(parts: Path, a: int, b: int) -> bool:
  """Whether the chunk file of rows [a, b) is there and holds exactly those rows."""
  p = _chunk_path(parts, a, b)
  if not p.is_file():
    return False
  try:
    _, rows, _ = read_results(p)
  except (OSError, ValueError, KeyError):
    return False
  return np.array_equal(rows, np.arange(a, b))


def _job_record(job: FitJob, emulator: Path, stop: int | None, rows: int | None) -> dict:
  """What makes a job (rows [job.start, stop), `rows` per chunk): the parts of two runs can be
  combined only if these agree. The config is `FitConfig.record`'s flat dict, the layout of
  job.json files written before `FitConfig.lbfgs` was nested, so those jobs still resume."""
  return json.loads(json.dumps({
      "format": JOB_FORMAT, "obs_file": str(Path(job.obs_path).resolve()), "split": job.split,
      "start": job.start, "stop": stop, "method": job.config.method,
      "model": None if job.model_dir is None else str(Path(job.model_dir).resolve()),
      "emulator": str(Path(emulator).resolve()), "config": job.config.record(),
      "chunk_rows": rows, "obs_fingerprint": rundir.fingerprint(job.obs_path)}))


def _check_job(parts: Path, job: dict) -> None:
  """Raise `OutputPathError` if the parts folder belongs to another job."""
  f = parts / "job.json"
  if not f.is_file():
    return
  try:
    old = json.loads(f.read_text())
  except json.JSONDecodeError as e:
    raise OutputPathError(f"{f}: not valid JSON ({e}); pass --overwrite to start again") from None
  diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k)
                and not (k == "obs_fingerprint" and k not in old))  # older job.json: no print
  if diff:
    raise OutputPathError(f"{f}: the unfinished fit there differs in {diff}; resume it with "
                          "the same arguments, or pass --overwrite to start again")


def _barrier(name: str, n_proc: int) -> None:
  """Wait for every process (no-op with one): `parallel.barrier`, the coordination service's
  barrier (a collective would time out between processes that arrive far apart)."""
  if n_proc > 1:
    parallel.barrier(name)


def summarize(result: FitResult, wall_s: float) -> dict:
  """Counts and medians of a job's results (JSON-ready)."""
  fitted = result.start >= 0
  n = len(result)
  return {
      "n": n, "n_fitted": int(fitted.sum()), "n_flagged": int(np.count_nonzero(result.flags)),
      "n_converged": int(np.count_nonzero(result.converged & fitted)),
      "converged_fraction": float(result.converged[fitted].mean()) if fitted.any() else 0.0,
      "median_chi2_r": float(np.nanmedian(result.chi2_r)) if fitted.any() else None,
      "median_iterations": float(np.median(result.n_iter[fitted])) if fitted.any() else None,
      "flags": {k: int(np.count_nonzero(result.flags & b)) for k, b in FLAGS.items()},
      "wall_s": wall_s, "spectra_per_s": n / wall_s if wall_s > 0 else None}


def summary_line(s: dict, out_path) -> str:
  """One human-readable line of `summarize`'s dict."""
  chi = "n/a" if s["median_chi2_r"] is None else f"{s['median_chi2_r']:.3f}"
  return (f"fitted {s['n_fitted']}/{s['n']} spectra ({s['n_flagged']} flagged, "
          f"{s['n_converged']} converged), median χ²_R {chi}, {s['wall_s']:.1f} s → {out_path}")


@dataclasses.dataclass(frozen=True)
class FitJob:
  """What a fit job fits and where it writes (`fit_file`): what job.json records, so a resumed
  job must give the same.

  Attributes:
    obs_path: observed spectra (`h5io` reference format).
    out_path: results file (HDF5); the CSV summary goes beside it with suffix `.csv`.
    config: fit settings; `config.method` is the method: "obs" (Eq. 11), "synth" (Eq. 10) or
      "emulator" (Eq. 9).
    model_dir: for obs/synth a Cycle-StarNet run directory; for emulator an emulator file or
      directory (what `load_emulator` reads).
    emulator_path: the emulator for obs/synth (default: found in `model_dir`, `find_emulator`).
    split: split of the file.
    start, stop: row range of the split (stop None: to its end).
    chunk_rows: spectra per chunk file and device call (default `LabelFitter.chunk_rows`),
      rounded up to a multiple of the devices.
  """

  obs_path: str | os.PathLike
  out_path: str | os.PathLike
  config: FitConfig = FitConfig()
  model_dir: str | os.PathLike | None = None
  emulator_path: str | os.PathLike | None = None
  split: str = "test"
  start: int = 0
  stop: int | None = None
  chunk_rows: int | None = None


def fit_file(job: FitJob, *, progress: bool = True, resume: bool = False,
             overwrite: bool = False, max_chunks: int | None = None,
             process_index: int | None = None, process_count: int | None = None,
             devices=None) -> FitResult | None:
  """Fit one split of a reference-format HDF5 file as a restartable job (module docstring).

  Args:
    job: what to fit and where the results go (`FitJob`).
    progress: tqdm bar (spectra/s and ETA; process 0 only), moved per chunk.
    resume: continue from the chunks in `<out>.parts`; an existing complete `out` is returned.
    overwrite: replace an existing results file and discard unfinished parts.
    max_chunks: fit at most this many chunks in this call, then return None with the job
      unfinished (for tests and time-boxed runs).
    process_index, process_count: this process and the number of processes (default: JAX's).
    devices: this process's devices to fit on (default: all of them).

  Returns:
    The `FitResult` written (None on processes other than 0, or if the job is unfinished).

  Raises:
    OutputPathError: the output cannot or may not be written (checked before any work).
  """
  t_start = time.perf_counter()
  proc = jax.process_index() if process_index is None else process_index
  n_proc = jax.process_count() if process_count is None else process_count
  out_path = Path(job.out_path)
  check_output_path(out_path)  # before anything else
  em_path, run_dir = _models(job.config.method, job.model_dir, job.emulator_path)
  if not Path(job.obs_path).exists():
    raise FileNotFoundError(f"{job.obs_path}: no such file (observed spectra, reference HDF5)")
  check_no_overwrite(out_path, overwrite=overwrite, resume=resume)
  parts = parts_dir(out_path)
  if resume and not overwrite and out_path.exists() and not parts.exists():  # finished before
    with SpectraFile(job.obs_path, n_pix=None) as f:
      n = f.n(job.split) if job.split in f.splits else 0
    _same_finished_job(out_path, _job_record(job, em_path, n if job.stop is None else
                                             min(job.stop, n), None))
    return read_results(out_path)[0] if proc == 0 else None
  lock = rundir.file_lock(out_path) if proc == 0 else contextlib.nullcontext()
  with lock:
    return _fit_locked(job, em_path, run_dir,
                       _Run(progress, resume, overwrite, max_chunks, proc, n_proc, devices,
                            t_start))


@dataclasses.dataclass(frozen=True)
class _Run:
  """How `fit_file` runs (its other arguments)."""

  progress: bool
  resume: bool
  overwrite: bool
  max_chunks: int | None
  proc: int
  n_proc: int
  devices: object
  t_start: float


def _fit_locked(job_: FitJob, em_path: Path, run_dir: Path | None, run: _Run
                ) -> FitResult | None:
  """`fit_file` once the output is locked (the emulator and run directory resolved)."""
  obs_path, out_path, method = job_.obs_path, Path(job_.out_path), job_.config.method
  model_dir, split, start, stop, config = (job_.model_dir, job_.split, job_.start, job_.stop,
                                           job_.config)
  progress, resume, overwrite = run.progress, run.resume, run.overwrite
  chunk_rows = job_.chunk_rows
  max_chunks, proc, n_proc, devices = run.max_chunks, run.proc, run.n_proc, run.devices
  t_start = run.t_start
  parts = parts_dir(out_path)
  if proc == 0:
    rundir.clean_temporary(parts)
  em = load_emulator(em_path)
  cycle = None if run_dir is None else load_cycle_model(run_dir)
  with SpectraFile(obs_path, n_pix=None) as f:
    if split not in f.splits:
      raise ValueError(f"{obs_path}: no split {split!r}; the file has {list(f.splits)}")
    fitter = LabelFitter(em, config, cycle_model=cycle, devices=devices)
    fitter.check_pixels(f.n_pix, f"{obs_path} ({split})")  # before any fitting
    n = f.n(split)
    stop = n if stop is None else min(stop, n)
    if not 0 <= start <= stop:
      raise ValueError(f"{obs_path}: rows [{start}, {stop}) are not a range of split {split!r} "
                       f"({n} spectra)")
    rows = fitter.chunk_rows(stop - start) if chunk_rows is None else chunk_rows
    rows = -(-max(rows, 1) // fitter.n_dev) * fitter.n_dev
    job = _job_record(job_, em_path, stop, rows)
    if resume and not overwrite:
      _check_job(parts, job)
    _barrier("fit_file_checked", n_proc)
    if proc == 0:
      if overwrite and parts.exists():
        shutil.rmtree(parts)
      parts.mkdir(parents=True, exist_ok=True)
      atomic_write_text(parts / "job.json", json.dumps(job, indent=1))
    _barrier("fit_file_parts_ready", n_proc)
    y_cat = _read_labels(obs_path, split, start, stop)
    y_median = fitter.default_median(y_cat)
    if proc == 0:
      _warn_nan_held(y_cat, config, y_median, f"{obs_path} ({split})")
    chunks = [(a, min(a + rows, stop)) for a in range(start, stop, rows)]
    mine = [c for i, c in enumerate(chunks) if i % n_proc == proc]
    todo = [c for c in mine if not _done(parts, *c)]
    if max_chunks is not None:
      todo = todo[:max_chunks]

    def blocks():
      for a, b in todo:
        s = f.read(split, a, b)
        yield s.x, s.x_err, s.x_msk, s.y

    n_mine = sum(b - a for a, b in mine)
    n_todo = sum(b - a for a, b in todo)
    bar = progress_bar(n_mine, f"fit {method}", initial=n_mine - n_todo) if (
        progress and proc == 0) else None
    try:
      results = fitter.fit_blocks(blocks(), y_median=y_median, rows=rows)
      for (a, b), res in zip(todo, results, strict=True):
        write_results_h5(_chunk_path(parts, a, b), res, np.arange(a, b))
        if bar is not None:
          bar.update(b - a)
    finally:
      if bar is not None:
        bar.close()
  _barrier("fit_file_chunks_written", n_proc)
  if proc != 0 or not all(_done(parts, *c) for c in chunks):
    return None
  result = concat_results([read_results(_chunk_path(parts, *c))[0] for c in chunks]) \
      if chunks else fitter._empty()
  result.timing = {"wall_s": time.perf_counter() - t_start}
  save_results(out_path, result, rows=np.arange(start, stop), attrs={
      "obs_file": str(obs_path), "split": split, "model": str(model_dir),
      "emulator": str(em.source), "config": config.record(), "chunk_rows": rows,
      "devices": [str(d) for d in fitter.mesh.devices.flat], "processes": n_proc, "job": job,
      **({} if cycle is None or cycle.step is None else {
          "checkpoint_step": cycle.step, "checkpoint_skipped_newer": list(cycle.skipped_newer)})},
      ids=star_ids(obs_path, split, start, stop))  # the star's identity, when the input has it
  shutil.rmtree(parts, ignore_errors=True)
  return result
