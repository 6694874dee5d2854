"""The stages of the staged jobs, one function each, every one kept in the run folder: the main
job's (paper §4.1) below, and the line-identification job's (`pipeline.new_lines`, §4.2), which
shares the run folder, data, emulator and Cycle-StarNet stages and has no fits.

    OUT/run.json            preset, data identity, stage times (checked on every re-run)
    OUT/data/               synth.h5, obs.h5, payne_grid.h5 (the mock world and the emulator's
                            training grid; absent with --synth/--obs)
    OUT/emulator/           emulator.npz, metrics.json, residuals.png (or --emulator PATH)
    OUT/model/              the Cycle-StarNet run: checkpoints/, metrics.jsonl, done.json
    OUT/fits/               eq9_mask.h5, eq9.h5, eq10.h5, eq11.h5 (+ .csv): the test fits
    OUT/metrics.json, OUT/report.md, OUT/figures/*.png

A stage is done when its final file exists (written last, atomically); a re-run skips it. An
interrupted Cycle-StarNet training resumes from its newest checkpoint (`trainer.train(resume=
True)`); an interrupted emulator training or fit starts that stage again (minutes at most).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from cyclestar_jax import config as _config
from cyclestar_jax import fitting, h5io, metrics_log, mock, plots, rundir, trainer
from cyclestar_jax.emulator import load_emulator
from cyclestar_jax.emulator_train import train_emulator
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.mock.files import PAYNE_GRID_FILE
from cyclestar_jax.pipeline import preflight
from cyclestar_jax.pipeline.presets import Preset
from cyclestar_jax.resources import payne_mask

# Fit methods of the report: file stem → (FitConfig.method, Payne's spectroscopic mask?).
FIT_METHODS = {"eq9_mask": ("emulator", True), "eq9": ("emulator", False),
               "eq10": ("synth", False), "eq11": ("obs", False)}
FIT_TITLES = {"eq9_mask": "Eq. 9, The Payne's mask", "eq9": "Eq. 9 (Payne)",
              "eq10": "Eq. 10 (obs→synth, Payne)", "eq11": "Eq. 11 (Cycle-StarNet)"}


# What the mock runs' emulator learns from (part of a run folder's identity: a folder made
# before the grid existed, whose emulator learnt the synthetic file, is refused, not mixed).
EMULATOR_TRAINING = PAYNE_GRID_FILE


class RunFolderError(ValueError):
  """The output folder holds a run of another preset or other data."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a staged job (`pipeline.run`, `new_lines.run`, `sweep.sweep`) runs, not what it
  computes.

  Attributes:
    overwrite: start again in a run folder of another identity, or whose inputs changed
      (`open_run_folder`: only the run's own files are removed).
    train_limit_s: wall-clock bound of the Cycle-StarNet training (`stage_cyclestarnet`;
      None: the preset's `train_limit_s`); the report says where it stopped.
    progress: progress bars.
    log: where the stage lines go.
  """

  overwrite: bool = False
  train_limit_s: float | None = None
  progress: bool = True
  log: Callable[[str], None] = print


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Where each stage of a run writes (see the module docstring)."""

  out: Path

  @property
  def run_json(self) -> Path:
    return self.out / "run.json"

  @property
  def data(self) -> Path:
    return self.out / "data"

  @property
  def emulator(self) -> Path:
    return self.out / "emulator"

  @property
  def payne_grid(self) -> Path:
    return self.data / PAYNE_GRID_FILE

  @property
  def model(self) -> Path:
    return self.out / "model"

  @property
  def fits(self) -> Path:
    return self.out / "fits"

  @property
  def figures(self) -> Path:
    return self.out / "figures"

  def fit_file(self, stem: str) -> Path:
    return self.fits / f"{stem}.h5"


def _write_json(path: Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def read_json(path: Path) -> dict:
  return json.loads(Path(path).read_text())


def check_run_folder(paths: RunPaths, identity: dict) -> dict:
  """Create run.json, or check that the folder's run has the same identity (preset, data,
  schedule); raise `RunFolderError` naming the first difference otherwise."""
  if paths.run_json.is_file():
    old = read_json(paths.run_json)
    for key, value in identity.items():
      if json.dumps(old.get("identity", {}).get(key), default=str) != json.dumps(
          value, default=str):
        raise RunFolderError(
            f"{paths.run_json}: this folder holds a run with {key} = "
            f"{old.get('identity', {}).get(key)!r}, not {value!r}; choose another --out or "
            f"pass --overwrite to start this folder again")
    return old
  if paths.out.exists() and rundir.foreign_entries(paths.out, ()):
    raise RunFolderError(f"{paths.out}: not empty and not a run folder (no run.json); choose "
                         f"another --out or pass --overwrite")
  run = {"identity": identity, "stages": {}}
  _write_json(paths.run_json, run)
  return run


# Everything a staged job writes in its run folder: what `--overwrite` may remove.
RUN_ENTRIES = ("run.json", "data", "emulator", "model", "fits", "figures", "metrics.json",
               "report.md")


def open_run_folder(paths: RunPaths, identity: dict, inputs: dict, *, overwrite: bool = False,
                    log=print) -> rundir.RunLock:
  """Lock the run folder for this job and check it: returns the held lock (release it at the
  end). Run before any work.

  The folder is made (one line naming --out if it cannot be); temporary files of a killed job
  are removed. A run of another identity, or whose input files (`inputs`: {flag: path},
  fingerprinted by `rundir.fingerprint`) changed since, is refused, or with `overwrite` its
  `RUN_ENTRIES` alone are removed and the job starts again; a non-empty folder that is not a
  run is refused even with `overwrite`. A run folder of an older version, without input
  fingerprints, continues with a warning and gets them.
  """
  rundir.check_out_folder(paths.out)
  lock = rundir.folder_lock(paths.out).acquire()
  try:
    rundir.clean_temporary(paths.out)
    prints = rundir.fingerprints(inputs)
    if paths.run_json.is_file():
      try:
        run = check_run_folder(paths, identity)
        changed = rundir.changed_inputs(run.get("inputs") or {}, prints)
        if changed:
          raise RunFolderError(f"{paths.out}: {'; '.join(changed)}; the results there are of "
                               "the old file: choose another --out or pass --overwrite to start "
                               "this folder again")
      except RunFolderError:
        if not overwrite:
          raise
        gone = rundir.clear_owned(paths.out, RUN_ENTRIES)
        log(f"[overwrite] {paths.out}: removed {', '.join(gone)} (the run's own files; "
            "anything else stays)")
        _write_json(paths.run_json, {"identity": identity, "stages": {}})
    elif paths.out.exists() and rundir.foreign_entries(paths.out, ()):
      raise rundir.NotARunFolderError(
          f"--out {paths.out}: not empty and not a run folder (no run.json; it holds "
          f"{', '.join(rundir.foreign_entries(paths.out, ())[:5])}); choose an empty or new "
          "folder (--overwrite only replaces a run's own files)")
    run = check_run_folder(paths, identity)
    if run.get("inputs") is None:
      if run.get("stages"):
        warnings.warn(f"{paths.run_json}: made by an older version without input fingerprints; "
                      "the inputs cannot be checked against the earlier stages, recording them "
                      "now", stacklevel=2)
      run["inputs"] = prints
      _write_json(paths.run_json, run)
  except BaseException:
    lock.release()
    raise
  return lock


def record_stage(paths: RunPaths, stage: str, info: dict) -> None:
  """Add a stage's summary (seconds, what it did) to run.json."""
  run = read_json(paths.run_json)
  run.setdefault("stages", {})[stage] = info
  _write_json(paths.run_json, run)


def run_stage(paths: RunPaths, log, name: str, fn, *args, **kwargs):
  """fn(*args, **kwargs) as the stage `name` of a job: "[name] ..." and "[name] done (N s)" (or
  "kept from an earlier run") through `log`, and its summary in run.json (`record_stage`: the
  seconds and the stage's info dict, the last element of a tuple result, without its training
  history and config). Returns fn's result."""
  log(f"[{name}] ...")
  t0 = time.perf_counter()
  res = fn(*args, **kwargs)
  info = res[-1] if isinstance(res, tuple) else res
  said = "kept from an earlier run" if isinstance(info, dict) and info.get("skipped") \
      else f"{time.perf_counter() - t0:.0f} s"
  log(f"[{name}] done ({said})")
  slim = {k: v for k, v in info.items() if k not in ("training", "history", "config")} \
      if isinstance(info, dict) else {}
  record_stage(paths, name, {"seconds": time.perf_counter() - t0, **slim})
  return res


# ---------------------------------------------------------------------------------------------
# Stages.


def stage_data(paths: RunPaths, preset: Preset, *, seed: int = 0, world=None,
               progress: bool = True) -> tuple[Path, Path, dict]:
  """The mock world's files for the preset's sizes (skipped when made already); `world` a
  `mock.WorldConfig` (default: the APOGEE experiment's, with `seed`).

  Returns:
    (synth.h5, obs.h5, info {"skipped", "seconds", sizes}).
  """
  synth, obs, done = paths.data / "synth.h5", paths.data / "obs.h5", paths.data / "make_data.json"
  if done.is_file() and synth.is_file() and obs.is_file() and paths.payne_grid.is_file():
    return synth, obs, {"skipped": True, **read_json(done)}
  t0 = time.perf_counter()
  world = mock.WorldConfig(seed=seed) if world is None else world
  summary = mock.make_data(paths.data, world, preset.sizes, progress=progress)
  _write_json(done, summary)
  return synth, obs, {"skipped": False, "seconds": time.perf_counter() - t0, **summary}


def emulator_training_file(paths: RunPaths, synth_path: Path, grid: Path | None = None) -> Path:
  """What the emulator learns from: the user's grid (`--grid`) if given, else the mock world's
  Payne grid when the run made one (`mock.files.write_payne_grid`), else the synthetic domain's
  file (the user's data)."""
  if grid is not None:
    return Path(grid)
  return paths.payne_grid if paths.payne_grid.is_file() else Path(synth_path)


def cycle_config_and_grid(paths: RunPaths, preset: Preset, synth_path: Path,
                          grid: Path | None = None) -> tuple[_config.Config, Path | None]:
  """The Cycle-StarNet config to train and its grid file (`Config.lambda_grid`).

  With the grid term on, the grid batch comes from the emulator's training grid when the run
  has one apart from the synthetic domain (`--grid`, or the mock world's payne_grid.h5); without
  one the term is turned off, as training on the synthetic file twice adds nothing.
  """
  cfg = preset.cycle
  grid = emulator_training_file(paths, synth_path, grid)
  if cfg.lambda_grid > 0 and grid.resolve() != Path(synth_path).resolve():
    return cfg, grid
  return dataclasses.replace(cfg, lambda_grid=0.0), None


def grid_identity(preset: Preset) -> dict:
  """The grid term's part of a run folder's identity: {"lambda_grid": λ} when it is on, else
  nothing, so that folders made before it existed stay valid for presets without it."""
  lam = preset.cycle.lambda_grid
  return {"lambda_grid": lam} if lam > 0 else {}


def stage_emulator(paths: RunPaths, preset: Preset, synth_path: Path, *,
                   progress: bool = True, grid: Path | None = None) -> tuple[Path, dict]:
  """The Payne trained on `emulator_training_file`'s train split (skipped when trained already).
  Its metrics carry `abundance_fe_correlation` (`emulator_train.max_abundance_fe_correlation`).

  Returns:
    (emulator.npz, its metrics dict).
  """
  npz, done = paths.emulator / "emulator.npz", paths.emulator / "metrics.json"
  if npz.is_file() and done.is_file():
    return npz, {"skipped": True, **read_json(done)}
  t0 = time.perf_counter()
  summary, residual = train_emulator(emulator_training_file(paths, synth_path, grid),
                                     paths.emulator, preset.emulator, progress=progress)
  plots.plot_emulator_run(residual, summary, paths.emulator / "residuals.png")
  return npz, {"skipped": False, "seconds": time.perf_counter() - t0, **summary}


def stage_cyclestarnet(paths: RunPaths, preset: Preset, synth_path: Path, obs_path: Path, *,
                       progress: bool = True, time_limit_s: float | None = None,
                       budget_s: float | None = None,
                       grid: Path | None = None) -> tuple[Path, dict]:
  """Cycle-StarNet trained to the preset's n_iter, resuming an interrupted run (skipped when
  done.json says it finished).

  `time_limit_s` (None: the preset's `train_limit_s`) bounds the training's wall clock, earlier
  interrupted attempts included: the run stops at the limit (`trainer.train`), is final
  (done.json) and says so ("stopped": "time_limit", "iterations" below n_iter). The
  learning-rate boundaries are not moved. `budget_s` (None: none) is what is left of the job's
  `job_limit_s`: the training also stops when less than the preset's `reserve_iters` iterations'
  worth of it is left (`trainer.LoopConfig.budget_s`; "stopped": "budget").

  Returns:
    (the run directory, {"iterations", "n_iter", "stopped", "seconds", "val", ...}).
  """
  done = paths.model / "done.json"
  if done.is_file():
    return paths.model, {"skipped": True, **read_json(done)}
  resume = (paths.model / "checkpoints").is_dir()
  before = _train_seconds(paths.model)
  t0 = time.perf_counter()
  cfg, grid = cycle_config_and_grid(paths, preset, synth_path, grid)
  if time_limit_s is None:
    time_limit_s = preset.train_limit_s
  left = None if time_limit_s is None else max(1.0, time_limit_s - before)
  loop = dataclasses.replace(preset.loop, time_limit_s=left)
  if budget_s is not None:
    loop = dataclasses.replace(loop, budget_s=max(1.0, budget_s),
                               reserve_iters=preset.reserve_iters)
  result = trainer.train(cfg, trainer.TrainFiles(synth_path, obs_path, grid), paths.model, loop,
                         resume=resume, progress=progress)
  if jax.process_index() == 0 and not result["already_complete"]:
    draw_training_progress(paths.model)
  seconds = before + time.perf_counter() - t0
  info = {"iterations": int(result["step"]), "n_iter": cfg.n_iter,
          "stopped": result.get("stopped", "n_iter"), "time_limit_s": time_limit_s,
          "budget_s": loop.budget_s,
          "reserve_iters": None if loop.budget_s is None else loop.reserve_iters,
          "seconds": seconds, "resumed": resume, "val": result.get("val", {}),
          "grid_file": None if grid is None else str(grid), "config": dataclasses.asdict(cfg)}
  _write_json(done, info)
  return paths.model, {"skipped": False, **info}


def training_budget(preset: Preset, train_limit_s: float | None,
                    elapsed_s: float) -> float | None:
  """Seconds of the preset's `job_limit_s` left for the training and what follows it, after
  `elapsed_s` seconds of the job's earlier stages; None without a job limit or when the user
  gave the training's own limit (`--train-limit-s`, which then rules alone)."""
  if preset.job_limit_s is None or train_limit_s is not None:
    return None
  return preset.job_limit_s - elapsed_s


def draw_training_progress(model_dir: str | Path) -> str | None:
  """model_dir/training_progress.png (Fig. B1) from the trainer's model_dir/metrics.jsonl; the
  trainer draws no figure, so its callers (this stage, `experiments/train.py`) call this.
  Returns the figure's path, or None while the log has no train line."""
  model_dir = Path(model_dir)
  log = metrics_log.read_metrics(model_dir / metrics_log.FILE_NAME)
  return plots.plot_progress(log, model_dir / "training_progress.png")


def time_limit_note(train_info: dict) -> str:
  """A sentence for the report when the training stopped at its time limit or the job's time
  budget (`trainer.out_of_time`), else ""."""
  stopped = train_info.get("stopped") if isinstance(train_info, dict) else None
  if stopped not in ("time_limit", "budget"):
    return ""
  why = (f"the job's time budget ({train_info.get('budget_s') or 0:.0f} s were left for the "
         f"training, less {train_info.get('reserve_iters') or 0:,} iterations' worth of time for "
         "the fits and the report)" if stopped == "budget"
         else f"its time limit ({train_info.get('time_limit_s') or 0:.0f} s)")
  return (f"Training stopped at {why} after {train_info.get('iterations')} of "
          f"{train_info.get('n_iter')} iterations; the learning-rate boundaries were not moved.")


def _train_seconds(model_dir: Path) -> float:
  """Training seconds spent by earlier (interrupted) attempts: the training loop's time in
  their metrics.jsonl (`metrics_log.elapsed_by_step`), which a kill leaves behind; 0 for none."""
  return max(metrics_log.elapsed_by_step(model_dir / metrics_log.FILE_NAME).values(),
             default=0.0)


def model_checkpoint(model_dir: Path, allow_older: bool) -> dict:
  """The checkpoint the model of `model_dir` loads from ({"step", "skipped_newer", "source"},
  `preflight.model_checkpoint`): a fall-back to an older one is refused unless `allow_older`."""
  return preflight.model_checkpoint(fitting.load_cycle_model(model_dir), str(model_dir),
                                    allow_older)


def _fit_config(preset: Preset, stem: str) -> fitting.FitConfig:
  """The fit settings of method `stem` (a `FIT_METHODS` key) in `preset`."""
  method = FIT_METHODS[stem][0]
  return dataclasses.replace(preset.csn_fit if method == "obs" else preset.fit, method=method)


def _fit_kept(path: Path, checkpoint_step: int | None, config: fitting.FitConfig) -> bool:
  """Whether a finished fit file can be kept: readable, fitted with these settings (`config`;
  a file that does not record them was written by an older version, whose settings may
  differ) and with the model's current checkpoint step (when both are known); else it is
  fitted again, with a warning."""
  if not path.is_file():
    return False
  try:
    attrs = fitting.read_results(path)[2]
  except (OSError, ValueError, KeyError) as e:
    warnings.warn(f"{path}: unreadable ({e}); fitting it again", stacklevel=3)
    return False
  if attrs.get("fit_config") != _config_json(config):
    warnings.warn(f"{path}: fitted with other (or unrecorded) fit settings than the preset's "
                  "now; fitting it again", stacklevel=3)
    return False
  was = attrs.get("checkpoint_step")
  if checkpoint_step is not None and was is not None and int(was) != checkpoint_step:
    warnings.warn(f"{path}: fitted with checkpoint step {was}, the model is now at step "
                  f"{checkpoint_step}; fitting it again", stacklevel=3)
    return False
  return True


def _config_json(config: fitting.FitConfig) -> str:
  """The fit settings as a results file's `fit_config` attribute (`FitConfig.record`)."""
  return json.dumps(config.record(), sort_keys=True)


def stage_fits(paths: RunPaths, preset: Preset, obs_path: Path, emulator_path: Path,
               model_dir: Path, *, progress: bool = True,
               checkpoint_step: int | None = None) -> dict:
  """Fits of the first `n_fit` test stars by Eq. 9 (with and without The Payne's mask),
  Eq. 10 and Eq. 11, one results file each (a finished file is kept, the others fitted; a
  file that is unreadable, was fitted with other settings or with another `checkpoint_step`
  of the model is fitted again).

  Returns:
    {"skipped": all files were there, "methods": {stem: {"skipped", "seconds", "n"}}}.
  """
  paths.fits.mkdir(parents=True, exist_ok=True)
  configs = {s: _fit_config(preset, s) for s in FIT_METHODS}
  todo = [s for s in FIT_METHODS
          if not _fit_kept(paths.fit_file(s), checkpoint_step, configs[s])]
  info = {s: {"skipped": True} for s in FIT_METHODS if s not in todo}
  if not todo:
    return {"skipped": True, "methods": info}
  em = load_emulator(emulator_path)
  cycle = fitting.load_cycle_model(model_dir)
  with h5io.SpectraFile(obs_path) as f:
    n = min(preset.n_fit, f.n("test"))
    sp = f.read("test", 0, n)
  # One fitter per method: Eq. 9 with and without The Payne's mask share a compiled program.
  fitters: dict[str, fitting.LabelFitter] = {}
  for stem in todo:
    method, use_mask = FIT_METHODS[stem]
    msk = sp.x_msk
    if use_mask:  # The Payne's spectroscopic mask: True = masked (Kurucz deviates > 2 %)
      msk = msk & ~payne_mask()[None, :]
    if method not in fitters:
      fitters[method] = fitting.LabelFitter(em, configs[stem],
                                            cycle_model=None if method == "emulator" else cycle)
    fitter = fitters[method]
    t0 = time.perf_counter()
    res = fitter.fit(sp.x, sp.x_err, msk, y_start=sp.y, progress=progress,
                     desc=f"fit {FIT_TITLES[stem]}")
    seconds = time.perf_counter() - t0
    fitting.save_results(paths.fit_file(stem), res, rows=np.arange(n), attrs={
        "obs_file": str(obs_path), "split": "test", "method_title": FIT_TITLES[stem],
        "payne_mask": use_mask, "seconds": seconds, "fit_config": _config_json(configs[stem]),
        **({} if cycle.step is None else {"checkpoint_step": cycle.step})},
        ids=fitting.star_ids(obs_path, "test", 0, n))
    info[stem] = {"skipped": False, "seconds": seconds, "n": n}
  return {"skipped": False, "methods": info}
