"""The line-identification job (paper §4.2) end to end: mock world in missing-line mode →
emulator on the synthetic domain (features removed) → Cycle-StarNet (`new_lines_1`: z_sp 1 × 24,
λ 90/90/1; the cpu preset λ 3/9/1) → derivative spectra of many label sets, reduced on the
devices → recovery errors, attributions, detections → metrics.json, report.md, Figs. 12–14.

The same shape as the main job (`pipeline`): presets in `pipeline.presets` (`get_preset(...,
job="new_lines")`), the run folder and the data, emulator and Cycle-StarNet stages of
`pipeline.stages` (every stage kept, re-runs skip what is done, training resumes), the analysis
in `evaluate`, report.md in `report`; `sweep` runs the job for several masked fractions (paper
Table 1). `run` chains the stages.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cyclestar_jax import mock
from cyclestar_jax import pretrained as _pretrained
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.pipeline import stages
from cyclestar_jax.pipeline.new_lines import evaluate, report
from cyclestar_jax.pipeline.presets import Preset, get_preset

__all__ = ["Job", "run", "pretrained_job"]

JOB = "new_lines"  # the job's name: run.json's "job", `presets.JOB_PRESETS`' key


@dataclasses.dataclass(frozen=True)
class Job:
  """What a line-identification run is of (its run folder's identity, with the grid term's).

  Attributes:
    preset: "smoke", "cpu", "long" or "paper" (`presets.NEW_LINES_PRESETS`).
    n_iter: shorten (or lengthen) the preset's training, learning-rate boundaries scaled.
    seed: the mock world's seed.
    masked_fraction: fraction of each element's strong features removed from the synthetic
      domain, in (0, 1); None: the paper's own 30 % selection.
  """

  preset: str = "cpu"
  n_iter: int | None = None
  seed: int = 0
  masked_fraction: float | None = None

  def get_preset(self) -> Preset:
    """The preset, shortened to n_iter (`presets.get_preset`)."""
    return get_preset(self.preset, self.n_iter, job=JOB)

  def world(self):
    """The mock world in missing-line mode (`mock.WorldConfig`)."""
    return mock.WorldConfig(experiment=JOB, seed=self.seed,
                            masked_fraction=self.masked_fraction)

  def identity(self, p: Preset) -> dict:
    """run.json's identity of this job run with preset p (`stages.open_run_folder`)."""
    return {"job": JOB, "preset": p.name, "n_iter": p.cycle.n_iter, "seed": self.seed,
            "emulator_training": stages.EMULATOR_TRAINING,
            "masked_fraction": self.masked_fraction, **stages.grid_identity(p)}

  def masked_fraction_note(self) -> str:
    """How the removed features were chosen, for the report."""
    return ("the paper's own 30 % selection" if self.masked_fraction is None
            else f"masked fraction {self.masked_fraction}")


def pretrained_job(job: Job) -> tuple[Job, Preset]:
  """`job` on the package's pretrained line-identification weights (`pretrained.NEW_LINES`):
  their preset, and the data sizes of their evaluation (no training split), after checking
  that `job` asks for the mock world they were trained on; raises `pretrained.PretrainedError`
  saying why not (a schedule of its own, another seed or masked fraction)."""
  if job.n_iter is not None:
    raise _pretrained.PretrainedError("--n-iter trains a model: not with --pretrained")
  weights = _pretrained.NEW_LINES
  job = dataclasses.replace(job, preset=weights.metadata()["preset"])
  return job, weights.eval_preset(job.get_preset(), job.world())


def run(out: str | Path, job: Job = Job(), options: stages.RunOptions | None = None, *,
        pretrained: bool = False) -> dict:
  """The line-identification job; returns metrics.json's dict (also written, with report.md and
  Figs. 12–14).

  Args:
    out: the run folder.
    job: the preset, n_iter, seed and masked fraction (`Job`; default: the cpu preset).
    options: `stages.RunOptions`: overwrite (start again in a run folder of another identity;
      only the run's own files are removed), train_limit_s (wall-clock bound of the
      Cycle-StarNet training, `stages.stage_cyclestarnet`; None: the preset's), progress bars
      and where the stage lines go (None: the defaults).
    pretrained: use the package's pretrained emulator and Cycle-StarNet (`pretrained.NEW_LINES`)
      on the mock world they were trained on, with their preset (`job.preset` is replaced;
      `job.n_iter` must be None); refused for another world (`pretrained_job`).
  """
  options = stages.RunOptions() if options is None else options
  if pretrained:
    job, p = pretrained_job(job)
    options.log(f"using the {_pretrained.NEW_LINES.describe()}; --train trains from scratch")
  else:
    p = job.get_preset()  # checked before the run folder is touched
  world = job.world()
  paths = stages.RunPaths(Path(out))
  ident = job.identity(p)
  if pretrained:
    ident["pretrained_step"] = _pretrained.NEW_LINES.metadata()["step"]
  with stages.open_run_folder(paths, ident, {}, overwrite=options.overwrite, log=options.log):
    return _stages(paths, p, job, world, options, pretrained)


def _stages(paths: stages.RunPaths, p: Preset, job: Job, world,
            options: stages.RunOptions, pretrained: bool) -> dict:
  """`run`'s stages, with the run folder locked; `world` is `job.world()`."""
  progress, log = options.progress, options.log
  t0 = time.perf_counter()
  synth, obs, _ = stages.run_stage(paths, log, "data", stages.stage_data, paths, p, world=world,
                                   progress=progress)
  if pretrained:
    weights = _pretrained.NEW_LINES
    meta = weights.metadata()
    em_path, model_dir = weights.emulator, weights.generator
    tr = {"iterations": meta["step"], "seconds": meta.get("metrics", {}).get("train_seconds")}
  else:
    em_path, _ = stages.run_stage(paths, log, "emulator", stages.stage_emulator, paths, p,
                                  synth, progress=progress)
    model_dir, tr = stages.run_stage(paths, log, "cyclestarnet", stages.stage_cyclestarnet,
                                     paths, p, synth, obs, progress=progress,
                                     time_limit_s=options.train_limit_s)
  log("[derivatives] ...")
  m = evaluate.analyse(paths, p, world, obs, em_path, model_dir, seed=job.seed,
                       progress=progress)
  m.update(preset=p.name, train_iterations=tr.get("iterations"),
           train_seconds=tr.get("seconds"), total_seconds=time.perf_counter() - t0,
           schedule_note=stages.time_limit_note(tr), grid_file=tr.get("grid_file"),
           cycle_config=tr.get("config"), masked_fraction_note=job.masked_fraction_note())
  if pretrained:
    m["pretrained"] = {**weights.run_summary(), "curve": meta.get("curve", [])}
  stages._write_json(paths.out / "metrics.json", m)
  atomic_write_text(paths.out / "report.md", report.render(m))
  log(f"[report] {paths.out / 'report.md'}: recovery {m['recovery_error_pct']:.3f} % vs "
      f"{m['no_recovery_error_pct']:.3f} % without; attribution {m['attribution_accuracy']:.0%}")
  return m
