"""Pretrained weights shipped with the package, one folder per job, for the default mock world.

`generator.npz` (Cycle-StarNet's generator, the training's moving average, float32, written by
`checkpoint.save_generator_npz`) and `emulator.npz` (The Payne's layout, float32) come from one
CPU run of a job's `--preset long` and `python -m experiments.export_pretrained` on that run
(`export.export_run`; the generator's `metadata_json` holds the commands, the step, the mock
world and the data sizes, the run's metrics and its curve along the training; `README.md`
beside them says the same for people):

  cyclestar_jax/pretrained/            the main job (`experiments.apogee`, paper §4.1)
  cyclestar_jax/pretrained/new_lines/  the line identification (`experiments.new_lines`, §4.2)

With no option on a CPU each job uses its weights on the mock world they were trained on: it
makes the data (the world is deterministic: the same seed and sizes give the same spectra),
then fits or differentiates and reports in minutes instead of training for hours.

They fit only the world they were trained on: `Weights.check_world` refuses another seed, other
settings or other data sizes, and the jobs refuse them for the user's own files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import cache
from pathlib import Path

from cyclestar_jax import checkpoint, mock

# CYCLESTAR_PRETRAINED_DIR points the loader at another folder of weights (written by
# `export.export_run`), e.g. weights a group trained on its own mock world; the line
# identification's are in its new_lines/ subfolder.
DIR = Path(os.environ.get("CYCLESTAR_PRETRAINED_DIR") or Path(__file__).parent)
JOBS = ("apogee", "new_lines")  # the jobs with weights: run.json's "job" (the main job's absent)


class PretrainedError(ValueError):
  """The pretrained weights cannot be used for this run (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Weights:
  """One job's pretrained weights (`JOBS`): where they are, what they were trained on.

  The folder is looked up from `DIR` at each use, so a test (or CYCLESTAR_PRETRAINED_DIR) that
  moves `DIR` moves every job's weights.
  """

  job: str = "apogee"

  def __post_init__(self):
    if self.job not in JOBS:
      raise ValueError(f"no pretrained weights for job {self.job!r}; jobs: {JOBS}")

  @property
  def dir(self) -> Path:
    """`DIR` for the main job, `DIR/<job>` for another."""
    return DIR if self.job == "apogee" else DIR / self.job

  @property
  def generator(self) -> Path:
    return self.dir / "generator.npz"

  @property
  def emulator(self) -> Path:
    return self.dir / "emulator.npz"

  def available(self) -> bool:
    """Whether both files are there."""
    return self.generator.is_file() and self.emulator.is_file()

  def metadata(self) -> dict:
    """The generator's `metadata_json`: "job", "commands", "preset", "step", "seed", "sizes"
    {train, val, test}, "world" (the mock `WorldConfig` as a dict), "metrics", "curve"."""
    if not self.available():
      raise PretrainedError(f"{self.dir}: no pretrained weights of the {self.job} job in this "
                            "installation (generator.npz and emulator.npz); train with --train "
                            "or --preset cpu")
    return _metadata(self.generator, self.generator.stat().st_mtime_ns)

  def check_world(self, world: mock.WorldConfig, sizes) -> None:
    """Refuse (PretrainedError naming the first difference) a mock world other than the
    weights' own: `world` (e.g. the default `WorldConfig` with the run's seed), data of these
    `mock.DataSizes` (their val and test splits: the training split is not remade)."""
    meta = self.metadata()
    want = _normalized(dataclasses.asdict(world))
    have = meta.get("world", {})
    for key in sorted(set(want) | set(have)):
      if want.get(key) != have.get(key):
        raise PretrainedError(
            f"{self.generator}: the pretrained weights were trained on the mock world with "
            f"{key} = {have.get(key)!r}, this run's has {want.get(key)!r}; train with --train "
            "(or a --preset)")
    have = {k: v for k, v in (meta.get("sizes") or {}).items() if k != "train"}
    want = {k: v for k, v in _normalized(sizes.as_dict()).items() if k != "train"}
    if have != want:
      raise PretrainedError(f"{self.generator}: the pretrained weights were evaluated on "
                            f"{have} stars per split, this run asks for {want}")

  def eval_preset(self, preset, world: mock.WorldConfig):
    """`preset` (the weights' own, `pipeline.presets.Preset`) with the data sizes of their
    evaluation, after `check_world(world, preset.sizes)`: the val and test splits, no training
    split. The world seeds every split and block on its own, so these spectra equal those of
    the run that made the weights."""
    self.check_world(world, preset.sizes)
    return dataclasses.replace(preset, sizes=dataclasses.replace(preset.sizes, n_train=0))

  def run_summary(self) -> dict:
    """metrics.json's "pretrained" of a run that used these weights: description, the
    commands that made them, their step and their run's metrics."""
    meta = self.metadata()
    return {"description": self.describe(), "commands": meta["commands"], "step": meta["step"],
            "metrics": meta.get("metrics", {})}

  def describe(self) -> str:
    """One line for the console and the report: what the weights are, where they come from."""
    meta = self.metadata()
    return (f"pretrained weights ({meta.get('preset')} preset, {meta.get('step')} iterations "
            f"on the mock world of seed {meta.get('seed')}; {meta.get('made_on', 'a CPU')})")

  def wanted(self, *, asked: bool, seed: int, on_cpu: bool) -> bool:
    """Whether a job's command line with no --pretrained uses these weights: nothing `asked`
    that they cannot give (--train, a preset, a schedule, the user's files or models), a CPU,
    the weights installed and trained on the mock world of this `seed`."""
    return (not asked and on_cpu and self.available()
            and seed == self.metadata().get("seed"))


MAIN = Weights("apogee")
NEW_LINES = Weights("new_lines")


@cache
def _metadata(path: Path, mtime_ns: int) -> dict:
  """The generator file's metadata, read once per version of the file (`mtime_ns`)."""
  return checkpoint.generator_metadata(path)


def _normalized(d: dict) -> dict:
  """A dict as JSON would give it back (tuples → lists), for comparing settings."""
  return json.loads(json.dumps(d))
