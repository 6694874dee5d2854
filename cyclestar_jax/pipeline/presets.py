"""Presets of the main job (paper §4.1): data sizes, emulator recipe, Cycle-StarNet, fits.

- `smoke`: every stage on tiny sizes (≤ 3 min on a 2-core CPU); the tests run it.
- `cpu`: every stage in ≤ 25 min on a 2-core CPU (data ≤ 1, emulator ≤ 3, Cycle-StarNet ≤ 15,
  fits and report ≤ 6 on a fast machine; on a slower one the training gives the fits and the
  report their time out of a 24-minute job budget); networks between `smoke` and Table 2, found
  by the probes in benchmarks/README.md ("cpu preset research").
- `paper`: Table 2, the paper's schedule (350k iterations at batch 8, lr × 0.7 every 50k), the
  authors' data sizes of the mock world (20k train stars per domain), a GPU job. `--n-iter N`
  shortens it with the learning-rate boundaries scaled in proportion.

The line-identification job (paper §4.2, `pipeline.new_lines`) has presets of the same names
(`NEW_LINES_PRESETS`: smoke, cpu, long, paper), made from these with its own Cycle-StarNet
config; one `get_preset(name, n_iter, job=...)` serves both jobs (`JOB_PRESETS`).
"""

from __future__ import annotations

import dataclasses

from cyclestar_jax import config as _config
from cyclestar_jax.emulator_train import EmulatorTrainConfig
from cyclestar_jax.fitting.config import FitConfig
from cyclestar_jax.fitting.lbfgs import LBFGSOptions
from cyclestar_jax.mock import DataSizes
from cyclestar_jax.trainer import LoopConfig

PRESET_NAMES = ("smoke", "cpu", "long", "paper")


@dataclasses.dataclass(frozen=True)
class Preset:
  """Everything a preset fixes.

  Attributes:
    name: "smoke", "cpu" or "paper".
    sizes: mock-world stars per split and domain (ignored for the user's own files).
    emulator: the emulator's training recipe.
    cycle: the Cycle-StarNet config (architecture, schedule, n_iter).
    loop: how the Cycle-StarNet training runs (`trainer.LoopConfig`): val_every, iterations
      between validations (the training curve); ckpt_every, between checkpoints (what a kill
      can lose); log_every, min(100, val_every); 256 validation rows; keep, checkpoints kept
      (the newest; 3 is enough to resume; a preset that keeps every checkpoint lets the labels
      be measured along the training, `benchmarks/label_curve.py`).
    fit: settings of the Eq. 9 and Eq. 10 fits (`fitting.FitConfig`; its method is set per
      fit): batch_size, fit slots (spectra × starts side by side); chunk_size, spectra per
      device call (the progress bar moves once per chunk); lbfgs.max_iter, accepted L-BFGS
      steps per start; starts, the catalogue labels (and the population median in the paper
      preset).
    csn_fit: settings of the Eq. 11 fits: as `fit`, with their own max_iter and starts (each
      start costs a Cycle-StarNet pass per iteration).
    n_fit: test stars fitted by each method.
    n_eval: test spectra per domain for the reconstruction statistics and t-SNE.
    train_limit_s: wall-clock bound of the Cycle-StarNet training, earlier interrupted attempts
      included (None: none); `--train-limit-s` replaces it.
    job_limit_s: wall-clock aim of the whole job, counted from the start of its stages (None:
      none): the training also stops when what is left of it would not hold `reserve_iters`
      training iterations' worth of time (`trainer.LoopConfig.budget_s`), the fits' and the
      report's cost measured in the machine's own training speed, so a slow machine gives up
      iterations rather than the aim. `--train-limit-s` turns it off.
    reserve_iters: see `job_limit_s`.
  """

  name: str
  sizes: DataSizes
  emulator: EmulatorTrainConfig
  cycle: _config.Config
  loop: LoopConfig
  fit: FitConfig
  csn_fit: FitConfig
  n_fit: int
  n_eval: int
  train_limit_s: float | None = None
  job_limit_s: float | None = None
  reserve_iters: int = 0


def _loop(val_every: int, ckpt_every: int, keep: int = 3) -> LoopConfig:
  """A preset's training loop: a metrics line every min(100, val_every) iterations, validation
  on 256 rows per domain, steps per call left to the platform (`LoopConfig.resolve`)."""
  return LoopConfig(log_every=min(100, val_every), val_every=val_every, ckpt_every=ckpt_every,
                    val_rows=256, keep=keep)


def _fits(batch: int, max_iter: int, *, csn_max_iter: int | None = None, chunk: int = 16384,
          starts: tuple[str, ...] = ("catalogue", "median"),
          csn_starts: tuple[str, ...] = ("catalogue", "median")) -> dict[str, FitConfig]:
  """A preset's {"fit", "csn_fit"}: Eq. 9/10 fits from `starts` (the catalogue labels, the
  population median) with `max_iter` steps per start; Eq. 11 fits from `csn_starts` with
  `csn_max_iter` (None: max_iter)."""
  fit = FitConfig(batch_size=batch, chunk_size=chunk, lbfgs=LBFGSOptions(max_iter=max_iter),
                  starts=starts)
  csn = dataclasses.replace(fit, starts=csn_starts,
                            lbfgs=LBFGSOptions(max_iter=csn_max_iter or max_iter))
  return {"fit": fit, "csn_fit": csn}


# The CPU presets fit from the catalogue labels alone (the reference's start): on the mock world
# a second start from the population median won 35 % of the Eq. 9 fits but moved no label
# statistic (256 stars: Teff +105 ± 87 K alone against +107 ± 83 with both, log g and [Fe/H]
# equal to 0.01, box edge 55 % against 56 %) and doubles the time of Eq. 9, Eq. 9 with the mask
# and Eq. 10. The paper preset keeps both: on real spectra a catalogue can be far off.
# benchmarks/README.md, "One start for the CPU presets' Eq. 9 and 10".
_CPU_FITS = _fits(256, 300, csn_max_iter=100, chunk=64, starts=("catalogue",),
                  csn_starts=("catalogue",))


_TABLE2 = _config.get_config("kurucz_to_apogee_1")

# cpu: widths between smoke and Table 2, lr 1e-3 × 0.7 at 5/6 of the run, the generator's
# moving average (EMA) for evaluation and fits: decay min(0.998, (1 + t)/(10 + t)), so its
# window, (10 + t)/9 iterations, grows to 500 at t ≈ 4,490 and stays there. Batch 8, the paper's: on
# the CPU a step costs the same per spectrum at batch 8 to 32 (memory-bound transposed
# convolutions), so the smallest batch gives the most updates in the same time. 6,000 iterations
# fill the 15 minutes of a 2-core CPU; the training also stops at 15 minutes of wall clock
# (`train_limit_s`), and earlier where the job's 24 minutes (`job_limit_s`, a minute under the
# aim) would not leave the fits and the report 1,500 iterations' worth of time: what they take
# on a 3–4 it/s machine since Eq. 9 and 10 start from the catalogue alone (~400 s at 0.27 s/it;
# ~1,000 its on a 7 it/s one, where the 15 minutes bind first). So a slower machine keeps the
# budget with fewer iterations. z_sh keeps Table 2's 25 channels (a better χ² ratio than 12 at
# the same cost). The measurements behind each choice: benchmarks/README.md ("cpu preset
# research", "z_sh 25 against 12, two seeds").
_CPU_CYCLE = dataclasses.replace(
    _TABLE2, name="cpu", filters_dom=(16, 32), filters_sh=(32, 64, 64), zsh_filters=25,
    filters_sp=(16, 16, 16), critic_filters_x=(8, 16, 16, 32, 32),
    critic_filters_z=(16, 16, 32, 32, 32), batch_size=8, lr_encoder=1e-3, lr_decoder=1e-3,
    lr_critic=1e-3, lr_boundaries_gen=(5000,), lr_boundaries_critic=(5000,),
    gen_ema_decay=0.998, n_iter=6000)

# long: the cpu preset's networks and data trained 24k iterations at lr 1e-3, halved at 10k and
# 20k (about two hours and a quarter of two CPU cores): the labels keep improving after the
# paired χ² has flattened, and they gain most from a long stretch at the full learning rate
# (decays at 6k and 8.5k gave worse labels at 20k). Measurements: benchmarks/README.md
# ("Training length"). Every checkpoint is kept for the label curve; the package's pretrained
# weights come from this preset.
_LONG_CYCLE = dataclasses.replace(
    _CPU_CYCLE, name="long", n_iter=24000, lr_boundaries_gen=(10000, 20000),
    lr_boundaries_critic=(10000, 20000), lr_decay_gen=0.5, lr_decay_critic=0.5)

_SMOKE_CYCLE = dataclasses.replace(_config.get_config("smoke"), n_iter=60)

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "smoke", DataSizes(256, 64, 32),
        EmulatorTrainConfig(max_epochs=20, time_limit_s=20.0, batch_size=64, patience=20,
                            checkpoint_every_s=1e9),
        _SMOKE_CYCLE, _loop(val_every=30, ckpt_every=30), **_fits(16, 60), n_fit=8, n_eval=32),
    "cpu": Preset(
        "cpu", DataSizes(6000, 512, 512),
        EmulatorTrainConfig(max_epochs=300, time_limit_s=120.0, batch_size=256),
        _CPU_CYCLE, _loop(val_every=500, ckpt_every=500), **_CPU_FITS,
        n_fit=256, n_eval=256, train_limit_s=900.0, job_limit_s=1440.0, reserve_iters=1500),
    "long": Preset(
        "long", DataSizes(6000, 512, 512),
        EmulatorTrainConfig(max_epochs=300, time_limit_s=360.0, batch_size=256),
        _LONG_CYCLE, _loop(val_every=500, ckpt_every=1000, keep=1000), **_CPU_FITS,
        n_fit=256, n_eval=256),
    "paper": Preset(
        "paper", DataSizes(20000, 2000, 2000), EmulatorTrainConfig(), _TABLE2,
        _loop(val_every=5000, ckpt_every=5000), **_fits(4096, 1000), n_fit=2000, n_eval=1000),
}


def shorten(p: Preset, n_iter: int | None) -> Preset:
  """p trained for n_iter iterations, learning-rate boundaries scaled in proportion
  (boundary b → round(b · n_iter / p.cycle.n_iter)); validation and checkpoints at most every
  tenth of the run (metrics lines at most every validation)."""
  if n_iter is None or n_iter == p.cycle.n_iter:
    return p
  if n_iter < 1:
    raise ValueError(f"--n-iter must be ≥ 1, got {n_iter}")
  f = n_iter / p.cycle.n_iter
  cyc = dataclasses.replace(
      p.cycle, n_iter=int(n_iter),
      lr_boundaries_gen=tuple(max(1, round(b * f)) for b in p.cycle.lr_boundaries_gen),
      lr_boundaries_critic=tuple(max(1, round(b * f)) for b in p.cycle.lr_boundaries_critic))
  every = max(1, n_iter // 10)
  val_every = min(p.loop.val_every, every)
  loop = dataclasses.replace(p.loop, log_every=min(p.loop.log_every, val_every),
                             val_every=val_every, ckpt_every=min(p.loop.ckpt_every, every))
  return dataclasses.replace(p, cycle=cyc, loop=loop)


# ---------------------------------------------------------------------------------------------
# The line-identification job (paper §4.2, `pipeline.new_lines`).

_NL = _config.get_config("new_lines_1")


def _nl_cycle(base, name: str):
  """The line-identification job's Cycle-StarNet config on a main-job preset's config `base`
  (its widths and schedule): z_sh 12, z_sp 1 filter, λ 3/9, no synthetic line mask, the grid
  term (λ_grid 3, autoencoder only); the reasons are below the table."""
  return dataclasses.replace(base, name=name, zsh_filters=12, zsp_filters=1, lambda_synth=3.0,
                             lambda_obs=9.0, mask_synth_lines=False, lambda_grid=3.0,
                             grid_cycle=False)


NEW_LINES_PRESETS: dict[str, Preset] = {
    "smoke": dataclasses.replace(
        PRESETS["smoke"], name="smoke",
        cycle=dataclasses.replace(PRESETS["smoke"].cycle, name="new_lines_smoke",
                                  zsp_filters=1, lambda_synth=90.0, lambda_obs=90.0,
                                  mask_synth_lines=False, lambda_grid=3.0,
                                  grid_cycle=False),
        n_fit=32, n_eval=32),
    "cpu": dataclasses.replace(
        PRESETS["cpu"], name="cpu", cycle=_nl_cycle(PRESETS["cpu"].cycle, "new_lines_cpu"),
        # no job budget: the main job's reserve is costed on its own fits, not this job's 2,000
        n_fit=2000, n_eval=256, job_limit_s=None, reserve_iters=0),
    # long: the cpu preset on the main job's long schedule (24k iterations, lr halved at 10k and
    # 20k, every 1,000th checkpoint kept), for the attribution's curve along the training
    # (`benchmarks.line_curve`).
    "long": dataclasses.replace(
        PRESETS["long"], name="long", cycle=_nl_cycle(PRESETS["long"].cycle, "new_lines_long"),
        n_fit=2000, n_eval=256),
    "paper": dataclasses.replace(
        PRESETS["paper"], name="paper",
        cycle=dataclasses.replace(_NL, mask_synth_lines=False), n_fit=100_000, n_eval=1000),
}
# cpu: λ_synth 3, λ_obs 9 (the APOGEE experiment's weights), not new_lines_1's 90/90: at 90/90
# the critics win early and the transfer never restores the missing lines on a CPU's budget; at
# 3/9 the game stays alive and it does. The paper preset keeps 90/90.
# cpu and smoke: the grid term (λ_grid 3, `Config.lambda_grid`; not in the paper), autoencoder
# only (`grid_cycle` off): the synthetic autoencoder also learns payne_grid.h5, whose abundances
# vary on their own, so the shared latent keeps an Fe direction apart from the other metals (the
# Fe attribution about doubles; with the grid cycle too the observed decoder's gains fall). The
# paper preset keeps the paper's loss.
# z_sh 12 channels here, though the main job's cpu preset has Table 2's 25: on this job 25 gave a
# lower attribution. Measurements: benchmarks/README.md ("new_lines", "The grid term",
# "new_lines: the critics won").
NEW_LINES_PRESETS["smoke"] = dataclasses.replace(
    NEW_LINES_PRESETS["smoke"], emulator=EmulatorTrainConfig(max_epochs=20, time_limit_s=20.0,
                                                             batch_size=64,
                                                             checkpoint_every_s=1e9),
    sizes=DataSizes(256, 64, 32))

# The presets of each job, by the job's name (its command: experiments.<job>).
JOB_PRESETS: dict[str, dict[str, Preset]] = {"apogee": PRESETS, "new_lines": NEW_LINES_PRESETS}


def get_preset(name: str, n_iter: int | None = None, job: str = "apogee") -> Preset:
  """A preset of `job` ("apogee": the main job, "new_lines": line identification), optionally
  shortened to n_iter iterations (`shorten`)."""
  if job not in JOB_PRESETS:
    raise ValueError(f"unknown job {job!r}: expected one of {tuple(JOB_PRESETS)}")
  presets = JOB_PRESETS[job]
  if name not in presets:
    raise ValueError(f"unknown preset {name!r}: expected one of {tuple(presets)}")
  return shorten(presets[name], n_iter)
