"""The main job (paper §4.1) end to end: data → emulator → Cycle-StarNet → fits (Eq. 9, 10,
11) → evaluation → report, every stage kept in the run folder (`stages`), re-runs skipping the
stages already done. `run` chains them; each stage is a function of its own, testable alone.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax

from cyclestar_jax import h5io, mock
from cyclestar_jax import pretrained as _pretrained
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.pipeline import preflight, report, stages
from cyclestar_jax.pipeline.evaluate import evaluate, gain_curve_figure
from cyclestar_jax.pipeline.presets import PRESET_NAMES, PRESETS, Preset, get_preset
from cyclestar_jax.pipeline.stages import RunFolderError, RunOptions, RunPaths
from cyclestar_jax.resources import N_PIX

__all__ = ["PRESET_NAMES", "PRESETS", "Inputs", "Preset", "RunFolderError", "RunOptions",
           "RunPaths", "default_preset", "get_preset", "run", "check_inputs"]


def default_preset() -> str:
  """`paper` on an accelerator, `cpu` on a CPU."""
  return "cpu" if jax.devices()[0].platform == "cpu" else "paper"


def check_inputs(synth: str | None, obs: str | None, emulator: str | None,
                 model: str | None, grid: str | None = None) -> None:
  """The user's files, checked before any work: one clear error naming the file and field."""
  if (synth is None) != (obs is None):
    raise ValueError("--synth and --obs go together: give both files (the synthetic and the "
                     "observed domain) or neither (the mock world)")
  if grid is not None and synth is None:
    raise ValueError("--grid goes with --synth/--obs: the mock world makes its own grid "
                     "(data/payne_grid.h5)")
  if synth is not None:
    pix = {}
    files = (("--synth", synth), ("--obs", obs)) + ((("--grid", grid),) if grid else ())
    for what, path in files:
      if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
      with h5io.SpectraFile(path, n_pix=None) as f:
        for split in ("train", "test"):
          if split not in f.splits:
            raise ValueError(f"{what} {path}: no '{split}' split (datasets 'spectra {split}', "
                             f"...); the file has {list(f.splits)}")
        pix[what] = f.n_pix
    for what, path in files[1:]:
      if pix[what] != pix["--synth"]:
        raise ValueError(f"--synth {synth} has spectra of {pix['--synth']} pixels but {what} "
                         f"{path} has {pix[what]}: the files must be on the same wavelength grid")
    if pix["--synth"] != N_PIX:
      raise ValueError(f"--synth {synth}: spectra of {pix['--synth']} pixels; expected the "
                       f"APOGEE grid's {N_PIX}")
  for what, path in (("--emulator", emulator), ("--model", model)):
    if path is not None and not Path(path).exists():
      raise FileNotFoundError(f"{what} {path}: no such file or directory")


def check_pretrained(synth, emulator, model, seed: int) -> Preset:
  """The preset of the shipped pretrained weights with their evaluation's data sizes, after
  checking that this run can use them: the mock world they were trained on
  (`pretrained.Weights.eval_preset`), no files of the user's, no other emulator or model; raises
  `pretrained.PretrainedError` saying why not."""
  if synth is not None:
    raise _pretrained.PretrainedError(
        "--synth/--obs: the pretrained weights are for the default mock world only; train on "
        "your files with --train (or a --preset)")
  if emulator is not None or model is not None:
    raise _pretrained.PretrainedError("--emulator/--model replace the pretrained weights: "
                                      "give them without --pretrained")
  weights = _pretrained.MAIN
  return weights.eval_preset(get_preset(weights.metadata()["preset"]), mock.WorldConfig(seed=seed))


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The user's files for the main job; each None is made or trained in the run folder.

  Attributes:
    synth, obs: reference-format files of the two domains (default: the mock world, made in
      out/data); both or neither.
    grid: with synth/obs, synthetic spectra at labels that vary each element on its own (The
      Payne's training grid): the emulator learns them, and so does Cycle-StarNet's synthetic
      autoencoder when the preset's `lambda_grid` > 0 (the mock world makes its own).
    emulator: a trained emulator to use instead of training one.
    model: a trained Cycle-StarNet run directory to use instead of training one.
  """

  synth: str | None = None
  obs: str | None = None
  grid: str | None = None
  emulator: str | None = None
  model: str | None = None

  def check(self) -> None:
    """`check_inputs` of these files."""
    check_inputs(self.synth, self.obs, self.emulator, self.model, self.grid)


def _identity(preset: Preset, inputs: Inputs, seed: int) -> dict:
  synth, obs, grid = inputs.synth, inputs.obs, inputs.grid
  emulator, model = inputs.emulator, inputs.model
  return {"preset": preset.name, "n_iter": preset.cycle.n_iter,
          "data": "mock" if synth is None else [str(Path(synth).resolve()),
                                                str(Path(obs).resolve())],
          "seed": seed, "emulator": None if emulator is None else str(Path(emulator).resolve()),
          "emulator_training": (stages.EMULATOR_TRAINING if synth is None else "synth.h5"
                                if grid is None else str(Path(grid).resolve())),
          "model": None if model is None else str(Path(model).resolve()),
          **(stages.grid_identity(preset)
             if (synth is None or grid is not None) and model is None else {})}


def run(out: str | Path, *, preset: str | None = None, n_iter: int | None = None,
        seed: int = 0, inputs: Inputs = Inputs(), options: RunOptions | None = None,
        allow_older_checkpoint: bool = False, pretrained: bool = False) -> dict:
  """The main job; returns metrics.json's dict (also written, with report.md and figures).

  Args:
    out: the run folder.
    preset: "smoke", "cpu", "long", "paper" (default: `default_preset()`).
    n_iter: shorten (or lengthen) the preset's training, learning-rate boundaries scaled.
    seed: the mock world's seed.
    inputs: the user's files (`Inputs`; default: the mock world, everything trained here).
    options: overwrite, training time limit, progress bars, log (`stages.RunOptions`; None:
      the defaults).
    allow_older_checkpoint: use an older checkpoint of the model when the newest is unusable
      (else refused); metrics.json's "model_checkpoint" says which step was used.
    pretrained: use the package's pretrained emulator and Cycle-StarNet (`pretrained`) on the
      mock world they were trained on, with their preset's data sizes and fits (`preset` and
      `n_iter` must be None); refused for other data.
  """
  options = RunOptions() if options is None else options
  inputs.check()
  synth, obs, log = inputs.synth, inputs.obs, options.log
  if pretrained:
    if preset is not None or n_iter is not None:
      raise _pretrained.PretrainedError("--preset/--n-iter train a model: not with --pretrained")
    p = check_pretrained(synth, inputs.emulator, inputs.model, seed)
    inputs = dataclasses.replace(inputs, emulator=str(_pretrained.MAIN.emulator),
                                 model=str(_pretrained.MAIN.generator))
    log(f"using the {_pretrained.MAIN.describe()}; --train trains from scratch")
  else:
    p = get_preset(preset or default_preset(), n_iter)
  paths = RunPaths(Path(out))
  ident = _identity(p, inputs, seed)
  if pretrained:
    ident["pretrained_step"] = _pretrained.MAIN.metadata()["step"]
  if synth is not None:  # every split of the user's files, before any stage
    for flag, path, domain in (("--synth", synth, "synth"), ("--obs", obs, "obs")):
      preflight.check_splits(path, flag, domain, p.cycle)
  given = preflight.load_given_models(inputs.emulator, inputs.model, allow_older_checkpoint)
  files = {"--synth": synth, "--obs": obs, "--grid": inputs.grid, "--emulator": inputs.emulator,
           "--model": inputs.model}
  with stages.open_run_folder(paths, ident, files, overwrite=options.overwrite, log=log):
    return _stages(paths, p, _Job(inputs, seed, allow_older_checkpoint, given, pretrained),
                   options)


@dataclasses.dataclass(frozen=True)
class _Job:
  """The main job's inputs, as `run` got them (the pretrained models filled in)."""

  inputs: Inputs
  seed: int
  allow_older_checkpoint: bool
  given: dict
  pretrained: bool = False


def _stages(paths: RunPaths, p: Preset, job: _Job, options: RunOptions) -> dict:
  """`run`'s stages, with the run folder locked."""
  synth, obs, emulator, model = (job.inputs.synth, job.inputs.obs, job.inputs.emulator,
                                 job.inputs.model)
  grid = None if job.inputs.grid is None else Path(job.inputs.grid)
  seed, train_limit_s = job.seed, options.train_limit_s
  progress, log = options.progress, options.log
  t_all = time.perf_counter()

  def stage(name, fn, *a, **kw):
    return stages.run_stage(paths, log, name, fn, *a, **kw)

  if synth is None:
    synth_path, obs_path, _ = stage("data", stages.stage_data, paths, p, seed=seed,
                                    progress=progress)
  else:
    synth_path, obs_path = Path(synth), Path(obs)
  if emulator is None:
    emulator_path, em_info = stage("emulator", stages.stage_emulator, paths, p, synth_path,
                                   progress=progress, grid=grid)
  else:
    emulator_path, em_info = Path(emulator), {"skipped": True, "given": str(emulator)}
  if model is None:
    budget = stages.training_budget(p, train_limit_s, time.perf_counter() - t_all)
    model_dir, tr_info = stage("cyclestarnet", stages.stage_cyclestarnet, paths, p, synth_path,
                               obs_path, progress=progress, time_limit_s=train_limit_s,
                               budget_s=budget, grid=grid)
  else:
    model_dir, tr_info = Path(model), {"given": str(model)}
  ckpt_info = job.given.get("model_checkpoint") or stages.model_checkpoint(
      model_dir, job.allow_older_checkpoint)
  stage("fits", stages.stage_fits, paths, p, obs_path, emulator_path, model_dir,
        progress=progress, checkpoint_step=ckpt_info.get("step"))
  log("[evaluate] ...")
  m = evaluate(paths, synth_path, obs_path, emulator_path, model_dir, n_eval=p.n_eval)
  base = PRESETS[p.name]
  schedule_note = (f"shortened from the preset's {base.cycle.n_iter} iterations with the "
                   f"learning-rate boundaries scaled to {list(p.cycle.lr_boundaries_gen)}"
                   if p.cycle.n_iter != base.cycle.n_iter else "")
  schedule_note = " ".join(filter(None, [schedule_note, stages.time_limit_note(tr_info)]))
  em_held = em_info.get("held_out", {}) if isinstance(em_info, dict) else {}
  m.update({
      "preset": p.name, "device": str(jax.devices()[0]), "mock": synth is None,
      "data_description": ("the mock APOGEE world, seed "
                           f"{seed}, {p.sizes.n_train}/{p.sizes.n_val}/{p.sizes.n_test} stars "
                           "per domain" if synth is None else f"{synth}, {obs}")
      + (" (no training split: the pretrained weights learnt it)" if job.pretrained else ""),
      "train_iterations": tr_info.get("iterations"), "train_seconds": tr_info.get("seconds"),
      "schedule_note": schedule_note,
      "cycle_config": tr_info.get("config", dataclasses.asdict(p.cycle)),
      "grid_file": tr_info.get("grid_file"),
      "fit_settings": {"n_fit": p.n_fit, "max_iter": p.fit.lbfgs.max_iter,
                       "starts": list(p.fit.starts), "csn_max_iter": p.csn_fit.lbfgs.max_iter,
                       "csn_starts": list(p.csn_fit.starts)},
      "emulator_training": (f"given: {emulator}" if emulator is not None else
                            Path(em_info.get("data", "")).name or None),
      "emulator_abundance_fe_correlation": (em_info.get("abundance_fe_correlation")
                                            if emulator is None else None),
      "emulator_median_abs": em_held.get("median_abs"),
      "emulator_p99_abs": em_held.get("p99_abs"),
      "model_checkpoint": ckpt_info,
      "total_seconds": time.perf_counter() - t_all})
  if job.pretrained:
    meta = _pretrained.MAIN.metadata()
    m.update(pretrained=_pretrained.MAIN.run_summary(),
             train_iterations=meta["step"], train_seconds=meta.get("metrics", {}).get(
                 "train_seconds"))
    if meta.get("curve"):
      m["sensitivity_curve"] = {
          "rows": meta["curve"], "eq9": meta.get("curve_eq9"),
          "source": "the checkpoints of the run that made the pretrained weights"}
      m["figures"] = m.get("figures", []) + [str(Path(f).relative_to(paths.out)) for f in
                                             gain_curve_figure(paths, m["sensitivity_curve"])]
  stages._write_json(paths.out / "metrics.json", m)
  atomic_write_text(paths.out / "report.md", report.render(m))
  log(f"[report] {paths.out / 'report.md'}: " + " ".join(
      report.verdicts(m)[:1]) + f" ({m['total_seconds'] / 60:.1f} min this run)")
  return m
