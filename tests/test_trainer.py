"""End to end: `python -m experiments.train` on toy files, straight, and SIGKILLed + resumed."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import numpy as np
import pytest
from toy_files import write_toy_domain

from cyclestar_jax import checkpoint, cli, config, h5io, metrics_log, trainer, validation

N_ITER, CKPT_EVERY = 40, 20


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("toy")
  write_toy_domain(d / "synth.h5", 64, False, 0)
  write_toy_domain(d / "obs.h5", 64, True, 1)
  return d / "synth.h5", d / "obs.h5"


_LOOP_FIELDS = {f.name for f in dataclasses.fields(trainer.LoopConfig)}


def _train(cfg, synth, obs, out, grid_path=None, **kw):
  """`trainer.train` of the files, with `LoopConfig`'s fields and train's options from `kw`."""
  loop = trainer.LoopConfig(**{k: v for k, v in kw.items() if k in _LOOP_FIELDS})
  rest = {k: v for k, v in kw.items() if k not in _LOOP_FIELDS}
  return trainer.train(cfg, trainer.TrainFiles(synth, obs, grid_path), out, loop, **rest)


def _n(loop, n_iter: int, **kw):
  """`loop` run to `n_iter` (and `kw`), as `run_loop` takes it."""
  return dataclasses.replace(loop, n_iter=n_iter, **kw)


def _command(synth, obs, out, *extra):
  return [sys.executable, "-m", "experiments.train", "--synth", str(synth), "--obs", str(obs),
          "--config", "smoke", "--out", str(out), "--n-iter", str(N_ITER), "--ckpt-every",
          str(CKPT_EVERY), "--log-every", "10", "--val-every", "20", "--no-progress", *extra]


def _env(cache):
  # The three runs compile the same step: share XLA's persistent cache to save compile time.
  # One CPU device, as a user's CPU runs it (the tiny steps run ~1.5× faster than on the 8
  # devices conftest.py fakes; resume over several devices is tests/test_multiprocess.py's).
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
          "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _final_state(out):
  cfg = config.get_config("smoke")
  return checkpoint.restore_state(Path(out) / "checkpoints", cfg, N_ITER)


def test_smoke_run_learns_and_resumes_exactly_after_sigkill(toy_files, tmp_path):
  synth, obs = toy_files
  cache = tmp_path / "xla_cache"
  cwd = Path(__file__).resolve().parents[1]
  straight = tmp_path / "straight"
  subprocess.run(_command(synth, obs, straight), check=True, env=_env(cache), cwd=cwd,
                 timeout=300, capture_output=True)

  m = metrics_log.read_metrics(straight / "metrics.jsonl")
  assert [d["step"] for d in m["train"]] == list(range(10, N_ITER + 1, 10))
  assert [d["step"] for d in m["val"]] == [20, 40]
  for d in m["train"] + m["val"]:
    assert all(np.isfinite(v) for v in d.values() if isinstance(v, (int, float))), d
  first, last = m["train"][0], m["train"][-1]
  for k in ("rec_synth", "rec_obs", "cc_synth", "cc_obs"):
    assert last[k] < 0.7 * first[k], (k, first[k], last[k])
  for k in ("val_rec_synth", "val_rec_obs"):
    assert m["val"][-1][k] < m["val"][0][k]
  # The toy val splits have equal row counts, so they count as paired (see trainer).
  for k in ("obs_bias", "obs_scatter", "obs_chi2", "obs_chi2_all", "synth_bias",
            "synth_scatter"):
    assert all(np.isfinite(d[f"val_paired_{k}"]) for d in m["val"]), k
  assert 0 < m["val"][-1]["val_paired_obs_scatter"] and m["val"][-1]["val_paired_obs_chi2"] <= (
      m["val"][-1]["val_paired_obs_chi2_all"])
  assert (straight / "training_progress.png").stat().st_size > 10_000

  # The same run killed with SIGKILL once its step-20 checkpoint exists, then resumed.
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command(synth, obs, killed), env=_env(cache), cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (killed / "checkpoints" / str(CKPT_EVERY)).exists():
    assert proc.poll() is None and time.time() < deadline, "run ended before its checkpoint"
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  # Without --resume the run refuses to overwrite (checked before anything compiles).
  with pytest.raises(checkpoint.CheckpointError, match="--resume"):
    _train(config.get_config("smoke"), synth, obs, killed, n_iter=N_ITER)
  subprocess.run(_command(synth, obs, killed, "--resume"), check=True, env=_env(cache), cwd=cwd,
                 timeout=300, capture_output=True)

  (a, meta_a), (b, meta_b) = _final_state(straight), _final_state(killed)
  assert meta_a["data_position"] == meta_b["data_position"] == N_ITER
  chex.assert_trees_all_equal(a, b)
  mk = metrics_log.read_metrics(killed / "metrics.jsonl")
  assert [d["step"] for d in mk["train"]] == [d["step"] for d in m["train"]]
  for da, db in zip(m["train"], mk["train"], strict=True):
    assert da["rec_obs"] == db["rec_obs"] and da["gen_synth"] == db["gen_synth"]
  assert json.loads((killed / "config.json").read_text())["name"] == "smoke"


def test_bad_inputs_stop_before_any_step(toy_files, tmp_path):
  synth, obs = toy_files
  cfg = config.get_config("smoke")
  short = tmp_path / "short.h5"
  with h5io.SpectraWriter(short, {"train": 8}, n_pix=7000, fields=("spectra",)) as w:
    w.write("train", 0, x=np.ones((8, 7000), np.float32))
  with pytest.raises(ValueError, match="pixel counts differ"):
    _train(cfg, synth, short, tmp_path / "a", n_iter=5)
  # Only a corrupt checkpoint in the run directory: resuming is refused, not restarted.
  run = tmp_path / "b" / "checkpoints" / "10"
  (run / "state").mkdir(parents=True)
  (run / "state" / "garbage").write_bytes(b"\0" * 100)
  with pytest.raises(checkpoint.CheckpointError, match=r"no valid checkpoint .*step 10: "):
    _train(cfg, synth, obs, tmp_path / "b", n_iter=5, resume=True)
  with pytest.raises(ValueError, match="does not split over 8 devices"):
    _train(dataclasses.replace(cfg, batch_size=6), synth, obs, tmp_path / "c", n_iter=5)


def test_paired_metrics_against_numpy():
  from cyclestar_jax import resources
  rng = np.random.default_rng(0)
  mean, std = resources.spectra_mean_std()
  b, p = 4, 50
  x_obs, err = rng.normal(size=(b, p)), rng.uniform(0.5, 2, (b, p))
  r = rng.normal(0.3, 1.5, (b, p))
  r[0, :3] = 9.0  # outliers: in chi2_all and the percentiles, not in chi2
  msk = np.ones((b, p))
  msk[1, 10:20] = 0
  raw_x = rng.uniform(0.6, 1.0, (b, p))
  eps = rng.normal(0.001, 0.004, (b, p))
  out = {"x_synthobs": x_obs + r * err, "x_obssynth": (raw_x * (1 + eps) - mean) / std}
  batch = {"x_obs": x_obs, "x_obs_err": err, "x_obs_msk": msk, "x_synth": (raw_x - mean) / std,
           "x_synth_msk": np.ones((b, p))}
  got = validation.paired_metrics(*[{k: np.asarray(v, np.float32) for k, v in d.items()}
                                 for d in (out, batch)])
  ru = r[msk > 0]
  half = lambda v: 0.5 * np.subtract(*np.percentile(v, [84, 16]))  # noqa: E731
  want = {"obs_bias": ru.mean(), "obs_scatter": half(ru), "obs_chi2_all": np.mean(ru**2),
          "obs_chi2": np.mean(ru[np.abs(ru) <= 5] ** 2), "synth_bias": eps.mean(),
          "synth_scatter": half(eps)}
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=2e-3, atol=2e-5, err_msg=k)


def test_data_on_device_gives_the_streamed_run(toy_files, tmp_path):
  """Training splits held on the devices (batches gathered there by row index) train exactly
  like the HDF5 stream one iteration a call, and up to a scanned step's rounding with several
  iterations a call, with the events at the same steps; bad settings are refused."""

  synth, obs = toy_files
  cfg = config.get_config("smoke")
  kw = dict(n_iter=10, log_every=5, val_every=10, ckpt_every=10, progress=False)
  runs = {"stream": dict(data_on_device="no"), "staged": dict(data_on_device="yes"),
          "scanned": dict(data_on_device="yes", steps_per_call=5)}
  m, state = {}, {}
  for name, extra in runs.items():
    _train(cfg, synth, obs, tmp_path / name, **kw, **extra)
    m[name] = metrics_log.read_metrics(tmp_path / name / "metrics.jsonl")
    state[name] = checkpoint.restore_state(tmp_path / name / "checkpoints", cfg, 10)[0]
    assert [d["step"] for d in m[name]["train"]] == [5, 10]
    assert [d["step"] for d in m[name]["val"]] == [10]
  chex.assert_trees_all_equal(state["stream"], state["staged"])
  # Scanned: the first interval's means agree closely; GAN training then amplifies rounding.
  for k, v in m["stream"]["train"][0].items():
    if k not in ("it_per_s", "kind", "step") and isinstance(v, float):
      np.testing.assert_allclose(m["scanned"]["train"][0][k], v, rtol=1e-3, atol=1e-6,
                                 err_msg=k)
  chex.assert_trees_all_close(state["stream"].gen_params, state["scanned"].gen_params,
                              rtol=0, atol=10 * cfg.lr_encoder)
  with pytest.raises(ValueError, match="data_on_device"):
    _train(cfg, synth, obs, tmp_path / "bad", data_on_device="maybe", **kw)
  with pytest.raises(ValueError, match="steps_per_call"):
    _train(cfg, synth, obs, tmp_path / "bad2", steps_per_call=0, **kw)


def test_next_call_stops_at_every_event():
  # From 0 with 10 per call and events every 15 / 25: calls end at 10, 15, 20, 25, 30, 40, 45.
  ends, done = [], 0
  while done < 47:
    done += trainer._next_call(done, 47, 10, (15, 25, 0))
    ends.append(done)
  assert ends == [10, 15, 20, 25, 30, 40, 45, 47]
  assert trainer.data_on_device_fits(1000, config.get_config("smoke"))
  assert not trainer.data_on_device_fits(10**12, config.get_config("smoke"))


def test_metrics_file_with_a_torn_last_line(tmp_path):
  """A kill during an append leaves a partial last line: resume drops it; a bad line elsewhere
  is an error naming the file and the line."""
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"kind": "train", "step": s, "rec_obs": 1.0 / s}) for s in (10, 20, 30)]
  path.write_text("\n".join(lines) + "\n" + lines[0][:17])
  assert [d["step"] for d in metrics_log.read_metrics(path)["train"]] == [10, 20, 30]
  metrics_log.truncate_after(path, 20)
  assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
  path.write_text(lines[0] + "\n{broken\n" + lines[1] + "\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
    metrics_log.read_metrics(path)


# ---------------------------------------------------------------------------------------------
# Loop settings, paired validation, runners and skipped steps (no network compiled), and the
# checks made before anything compiles.


def test_elapsed_training_time_from_the_metrics_file(tmp_path):
  """Loop seconds per logged step, Δsteps / it_per_s summed; what a resumed time limit counts."""
  from cyclestar_jax.pipeline import stages

  log = tmp_path / "metrics.jsonl"
  lines = [{"kind": "train", "step": 100, "it_per_s": 10.0},
           {"kind": "val", "step": 100, "val_paired_obs_chi2": 3.0},
           {"kind": "train", "step": 300, "it_per_s": 5.0},
           {"kind": "train", "step": 350, "it_per_s": 0.0}]  # no rate: adds nothing
  log.write_text("".join(json.dumps(d) + "\n" for d in lines))
  assert metrics_log.elapsed_by_step(log) == {100: 10.0, 300: 50.0, 350: 50.0}
  assert stages._train_seconds(tmp_path) == 50.0
  assert metrics_log.elapsed_by_step(tmp_path / "none.jsonl") == {}
  assert stages._train_seconds(tmp_path / "empty") == 0.0


def test_loop_config_is_checked():
  assert trainer.LoopConfig().steps_per_call is None  # left to the platform
  assert trainer.LoopConfig().resolve(7, "cpu") == trainer.LoopConfig(steps_per_call=1, n_iter=7)
  assert trainer.LoopConfig().resolve(7, "gpu").steps_per_call == 10
  assert trainer.LoopConfig(n_iter=0).resolve(7, "cpu").n_iter == 0
  with pytest.raises(ValueError, match=r"steps_per_call 16 must divide every interval .*"
                                       r"'log_every': 100.*e\.g\. 10"):
    trainer.LoopConfig(steps_per_call=16, log_every=100)
  with pytest.raises(ValueError, match="max_skipped must be an integer ≥ 1, got 0"):
    trainer.LoopConfig(max_skipped=0)
  default = trainer.LoopConfig.default_steps_per_call
  assert default("gpu", (100, 1000, 1000)) == 10 and default("gpu", (25, 1000, 1000)) == 5
  assert default("cpu", (100, 1000, 1000)) == 1 and default("gpu", (7, 14, 21)) == 7


def _with_attrs(src, dst, **attrs):
  """A copy of a toy file with file attributes added."""
  import shutil

  import h5py
  shutil.copy(src, dst)
  with h5py.File(dst, "a") as f:
    for k, v in attrs.items():
      f.attrs[k] = v
  return dst


def test_paired_val_is_decided_from_the_files(toy_files, tmp_path):
  synth, obs = toy_files
  with pytest.warns(UserWarning, match="no 'paired_splits' file attribute"):
    assert validation.decide_paired_val(synth, obs, "auto") == (
        True, "equal val row counts (16), no paired_splits attribute (assumed paired)")
  marked = [_with_attrs(f, tmp_path / f.name, paired_splits=np.array([b"val"])) for f in toy_files]
  paired, why = validation.decide_paired_val(*marked)
  assert paired and "paired_splits" in why
  unmarked = _with_attrs(obs, tmp_path / "o2.h5", paired_splits=np.array([b"test"]))
  assert not validation.decide_paired_val(marked[0], unmarked, None)[0]
  assert validation.decide_paired_val(synth, obs, "no") == (False, "paired_val='no' given")
  assert validation.decide_paired_val(synth, obs, True)[0]
  with pytest.raises(ValueError, match="paired_val must be one of"):
    validation.decide_paired_val(synth, obs, "maybe")


def test_runners_give_the_stream_batches(toy_files):
  """Each runner alone (a recording step instead of the train step): the streamed one calls
  once per iteration with `batch_at(step)`, the staged one gathers the same batches on the
  devices in calls of `steps_per_call` iterations, cut at every event."""
  import jax

  from cyclestar_jax import data, parallel
  from cyclestar_jax import train_step as ts

  synth, obs = toy_files
  cfg = config.get_config("smoke")
  mesh = parallel.make_mesh()
  loop = trainer.LoopConfig(log_every=4, val_every=8, ckpt_every=8, steps_per_call=2)
  key = parallel.replicate(jax.random.key(0), mesh)

  def record(state, batch, key):
    return state + 1, dict(batch)

  with data.BatchStream(synth, obs, cfg) as stream:
    streamed = trainer.StreamedRunner(stream, mesh, record, key)
    staged_step = jax.jit(ts.make_staged_step(cfg, train_step=record))
    staged = trainer.StagedRunner(stream, mesh, staged_step, key)
    calls = list(streamed.calls(0, 3, 6, loop))
    assert [(n, s) for n, s, _ in calls] == [(1, 1), (1, 2), (1, 3)]
    for step, (_, _, batch) in zip(range(3, 6), calls, strict=True):
      for k, v in stream.batch_at(step).items():
        np.testing.assert_array_equal(np.asarray(batch[k]), v, err_msg=k)
    calls = list(staged.calls(0, 3, 9, loop))
    assert [n for n, _, _ in calls] == [1, 2, 2, 1]  # 3→4 (event), 4→6, 6→8 (event), 8→9
    got = {k: np.concatenate([np.asarray(b[k]).reshape(-1, v.shape[-1]) for _, _, b in calls])
           for k, v in calls[1][2].items()}
    for i, step in enumerate(range(3, 9)):
      for k, v in stream.batch_at(step).items():
        np.testing.assert_array_equal(got[k][i * 8:(i + 1) * 8], v, err_msg=f"{step} {k}")


class _FakeRunner:
  """Calls with given skip flags: a list per call (one entry per iteration)."""

  def __init__(self, flags):
    self.flags = flags

  def calls(self, state, start, stop, loop):
    done, total = start, 0
    for f in self.flags:
      n = len(f)
      steps = np.arange(done + 1, done + n + 1, dtype=np.int32)
      skipped = np.asarray(f, np.float32)
      n_skipped = total + np.cumsum(skipped).astype(np.int32)
      total = int(n_skipped[-1])
      m = {"skipped": skipped, "step": steps, "n_skipped": n_skipped,
           "loss_gen": np.where(skipped > 0, np.nan, 1.0), "rec_obs": np.full(n, 0.5)}
      done += n
      yield n, state, m


class _FakeCheckpointer:
  def __init__(self):
    self.saved = []

  def save(self, state, *, data_position):
    self.saved.append(data_position)


class _SlowRunner(_FakeRunner):
  """A `_FakeRunner` whose every call takes `seconds` of wall clock."""

  def __init__(self, flags, seconds):
    super().__init__(flags)
    self.seconds = seconds

  def calls(self, state, start, stop, loop):
    for item in super().calls(state, start, stop, loop):
      time.sleep(self.seconds)
      yield item


def test_time_limit_stops_the_loop_checkpointed_and_logged(tmp_path):
  """Past the deadline the loop stops after the call in flight and ends as at n_iter: a last
  metrics line and a checkpoint at the step reached."""
  loop = trainer.LoopConfig(log_every=50, val_every=50, ckpt_every=50)
  ckpt, log = _FakeCheckpointer(), tmp_path / "m.jsonl"
  t0 = time.perf_counter()
  _, done, last, _, _ = trainer.run_loop(_SlowRunner([[0]] * 100, 0.02), None, 0,
                                         _n(loop, 100, time_limit_s=0.2), ckpt=ckpt, log_path=log)
  assert 5 <= done < 50 and time.perf_counter() - t0 < 1.5
  assert ckpt.saved == [done] and last["step"] == done
  assert metrics_log.read_metrics(log)["train"][-1]["step"] == done
  # a deadline already past still runs one call; no deadline runs to n_iter
  _, done, _, _, why = trainer.run_loop(_FakeRunner([[0]] * 10), None, 0,
                                        _n(loop, 10, time_limit_s=1e-9), ckpt=_FakeCheckpointer())
  assert done == 1 and why == "time_limit"
  _, done, _, _, why = trainer.run_loop(_FakeRunner([[0]] * 10), None, 0, _n(loop, 10),
                                        ckpt=_FakeCheckpointer())
  assert done == 10 and why == "n_iter"
  for bad in (0, -1.0, float("nan"), "60"):
    with pytest.raises(ValueError, match="time_limit_s must be a number of seconds > 0"):
      _train(config.get_config("smoke"), "no.h5", "no.h5", tmp_path / "x",
                    time_limit_s=bad)
  from cyclestar_jax.pipeline import stages
  note = stages.time_limit_note({"stopped": "time_limit", "time_limit_s": 600.0,
                                 "iterations": 1234, "n_iter": 5000})
  assert note.startswith("Training stopped at its time limit (600 s) after 1234 of 5000")
  assert stages.time_limit_note({"stopped": "n_iter"}) == ""


def test_budget_leaves_reserve_iterations_of_time():
  """`out_of_time`: the budget stops the loop once what is left of it holds fewer than
  reserve_iters iterations at the measured rate (hand numbers: 0.25 s/it, 1,800 reserved
  = 450 s); the hard limit stops it on its own; no rate yet, no budget stop. In the loop the
  first call (compilation, warm-up) is not part of the rate."""
  loop = trainer.LoopConfig(budget_s=1300.0, reserve_iters=1800)
  assert trainer.out_of_time(loop, 849.0, 0.25) is None  # 849 + 450 < 1300
  assert trainer.out_of_time(loop, 850.0, 0.25) == "budget"  # 850 + 450 = 1300
  assert trainer.out_of_time(loop, 5000.0, None) is None
  both = dataclasses.replace(loop, time_limit_s=900.0)
  assert trainer.out_of_time(both, 900.0, 1e-3) == "time_limit"
  assert trainer.out_of_time(both, 899.0, 1e-3) is None
  assert trainer.out_of_time(trainer.LoopConfig(), 1e9, 10.0) is None
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="reserve_iters must be an integer ≥ 0"):
      trainer.LoopConfig(reserve_iters=bad)
  with pytest.raises(ValueError, match="budget_s must be a number of seconds > 0"):
    trainer.LoopConfig(budget_s=0.0)
  # in the loop: 0.02 s per call, a 0.3 s budget, 5 iterations reserved → ~10 calls, not 100
  _, done, _, _, why = trainer.run_loop(
      _SlowRunner([[0]] * 100, 0.02), None, 0,
      _n(trainer.LoopConfig(log_every=50, val_every=50, ckpt_every=50), 100, budget_s=0.3,
         reserve_iters=5), ckpt=_FakeCheckpointer())
  assert 5 <= done <= 14 and why == "budget"

  class _SlowFirstCall(_SlowRunner):  # a first call as slow as 40 ordinary ones
    def calls(self, state, start, stop, loop):
      for i, item in enumerate(super().calls(state, start, stop, loop)):
        time.sleep(0.8 if i == 0 else 0.0)
        yield item

  _, done, _, _, why = trainer.run_loop(
      _SlowFirstCall([[0]] * 100, 0.02), None, 0,
      _n(trainer.LoopConfig(log_every=50, val_every=50, ckpt_every=50), 100, budget_s=1.4,
         reserve_iters=5), ckpt=_FakeCheckpointer())
  # (1.4 − 0.82 − 5 · 0.02) / 0.02 ≈ 24 more calls after the first
  assert 15 <= done <= 30 and why == "budget"
  from cyclestar_jax.pipeline import presets, stages
  note = stages.time_limit_note({"stopped": "budget", "time_limit_s": 900.0,
                                 "budget_s": 1266.0, "reserve_iters": 1800,
                                 "iterations": 2840, "n_iter": 6000})
  assert note.startswith("Training stopped at the job's time budget (1266 s were left for the "
                         "training, less 1,800 iterations' worth") and "2840 of 6000" in note
  note = stages.time_limit_note({"stopped": "time_limit", "time_limit_s": 900.0,
                                 "budget_s": 1266.0, "reserve_iters": 1800,
                                 "iterations": 3359, "n_iter": 6000})
  assert note.startswith("Training stopped at its time limit (900 s) after 3359 of 6000")
  cpu = presets.PRESETS["cpu"]
  assert stages.training_budget(cpu, None, 174.0) == cpu.job_limit_s - 174.0
  assert stages.training_budget(cpu, 3600.0, 174.0) is None  # --train-limit-s rules alone
  assert stages.training_budget(presets.PRESETS["long"], None, 174.0) is None


@pytest.mark.filterwarnings("ignore:step .*(non-finite metrics|checkpoint not written)")
def test_consecutive_skipped_steps_stop_the_loop(tmp_path):
  """max_skipped skipped iterations in a row stop the loop, naming the first and its loss terms;
  a checkpoint due right after a skipped step is not written; a good step resets the count."""
  loop = trainer.LoopConfig(log_every=3, val_every=3, ckpt_every=3, max_skipped=3)
  flags = [[0], [0], [0], [0], [1], [1], [0], [1], [1], [1], [0], [0]]
  ckpt = _FakeCheckpointer()
  with pytest.warns(UserWarning, match="step 6: checkpoint not written, the last 2 steps"):
    with pytest.raises(trainer.TrainingDiverged,
                       match=r"3 iterations in a row skipped \(max_skipped 3\).* from step 7 on"
                             r".*rec_obs=0\.5, loss_gen=nan"):
      trainer.run_loop(_FakeRunner(flags), None, 0, _n(loop, 12), ckpt=ckpt,
                       log_path=tmp_path / "m.jsonl")
  assert ckpt.saved == [3]
  # Several iterations per call: the streak is counted inside a call too.
  with pytest.raises(trainer.TrainingDiverged, match="from step 1 on"):
    trainer.run_loop(_FakeRunner([[0, 1, 1, 1, 0]]), None, 0,
                     trainer.LoopConfig(log_every=5, val_every=5, ckpt_every=5, max_skipped=3,
                                        steps_per_call=5, n_iter=5), ckpt=_FakeCheckpointer())
  ckpt = _FakeCheckpointer()
  _, done, last, _, _ = trainer.run_loop(_FakeRunner([[0], [1], [1], [0], [1], [1]]), None, 0,
                                         _n(loop, 6), ckpt=ckpt)
  assert done == 6 and ckpt.saved == [] and last["n_skipped"] == 4


def test_unusable_files_and_settings_stop_before_compiling(toy_files, tmp_path):
  import h5py

  synth, obs = toy_files
  cfg = config.get_config("smoke")
  masked = tmp_path / "masked.h5"
  import shutil
  shutil.copy(obs, masked)
  with h5py.File(masked, "a") as f:
    f["spectra_msk train"][...] = 0
  with pytest.raises(ValueError, match=r"masked\.h5: split 'train' \(observed domain.*every "
                                       r"pixel is masked"):
    _train(cfg, synth, masked, tmp_path / "a", n_iter=5)
  with pytest.raises(ValueError, match="steps_per_call 16 must divide"):
    _train(cfg, synth, obs, tmp_path / "b", n_iter=5, steps_per_call=16, log_every=100)
  with pytest.raises(ValueError, match="paired_val must be one of"):
    _train(cfg, synth, obs, tmp_path / "c", n_iter=5, paired_val="sometimes")
  assert not (tmp_path / "a" / "checkpoints").exists() or not any(
      (tmp_path / "a" / "checkpoints").iterdir())


def test_nonfinite_steps_stop_the_run_and_keep_the_last_good_checkpoint(toy_files, tmp_path,
                                                                       capsys):
  """Observed rows whose flux overflows float32 once standardized make the batches of steps
  5–7 non-finite: with max_skipped=3 the run stops naming step 5; the step-5 checkpoint is the
  newest. Resuming to a total already reached says so and returns the last metrics."""
  import shutil

  import h5py
  import jax

  from cyclestar_jax import data, parallel
  from experiments import train as train_cli

  synth, obs = toy_files
  cfg = config.get_config("smoke")
  bad_obs = tmp_path / "obs_bad.h5"
  shutil.copy(obs, bad_obs)
  with data.BatchStream(synth, obs, cfg) as s:  # 64 rows, batch 8: steps 0–7 are one epoch
    rows = np.sort(np.concatenate([s.rows_at(k)["obs"] for k in (5, 6, 7)]))
  with h5py.File(bad_obs, "a") as f:
    x = f["spectra train"][...]
    x[rows, -1] = 1e38
    f["spectra train"][...] = x
  out = tmp_path / "run"
  with pytest.raises(trainer.TrainingDiverged, match=r"from step 5 on .*rec_obs=(nan|inf)"):
    _train(cfg, synth, bad_obs, out, n_iter=20, log_every=5, val_every=20, ckpt_every=5,
                  max_skipped=3, progress=False, data_on_device="no",
                  mesh=parallel.make_mesh(jax.devices()[:1]))  # one device compiles fastest
  assert checkpoint.Checkpointer(out / "checkpoints", cfg).steps() == [5]
  assert json.loads((out / "run.json").read_text())["loop"]["max_skipped"] == 3

  summary = _train(cfg, synth, bad_obs, out, n_iter=5, resume=True, progress=False)
  assert summary["already_complete"] and summary["step"] == 5
  assert summary["train"]["step"] == 5 and np.isfinite(summary["train"]["rec_obs"])
  argv = ["--synth", str(synth), "--obs", str(bad_obs), "--config", "smoke", "--out", str(out),
          "--resume", "--n-iter", "4", "--no-progress"]
  assert cli.run_main(train_cli.main, argv) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == f"{out}: run already complete at step 5 (--n-iter 4); nothing to train, " \
                     "the last metrics follow"
  assert json.loads(lines[1])["rec_obs"] == summary["train"]["rec_obs"]


def test_command_line_errors_are_one_line(toy_files, tmp_path, capsys, monkeypatch):
  from experiments import make_data, train_emulator
  from experiments import train as train_cli

  synth, _ = toy_files
  argv = ["--synth", str(synth), "--obs", str(tmp_path / "missing.h5"), "--config", "smoke",
          "--out", str(tmp_path / "o")]
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  assert cli.run_main(train_cli.main, argv, prog="train") == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2 and err[0].startswith("train: error: FileNotFoundError: ")
  assert "missing.h5: no such file" in err[0] and "--debug" in err[1]
  assert cli.run_main(train_cli.main, argv[:-2] + ["--out", str(tmp_path / "o"), "--config",
                                                   "nope"], prog="train") == 2
  assert "nope" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError):
    cli.run_main(train_cli.main, argv + ["--debug"])
  monkeypatch.setenv(cli.DEBUG_ENV, "1")
  with pytest.raises(FileNotFoundError):
    cli.run_main(train_cli.main, argv)
  for mod, defaults in ((train_cli, ["(default: 100)", "(default: auto)"]),
                        (train_emulator, ["(default: 300)"]), (make_data, ["(default: 20000)"])):
    with pytest.raises(SystemExit) as e:
      mod.parse_args(["--help"] if mod is not train_cli else ["--out", "x", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(d in out for d in defaults), mod.__name__


def test_grid_batch_trains_the_same_staged_or_streamed(toy_files, tmp_path):
  """With `lambda_grid` > 0 the grid file is a third stream: logged (`rec_grid`, `cc_grid`),
  staged on the device like the domains, and the same run either way; without it, refused."""

  synth, obs = toy_files
  grid = tmp_path / "grid.h5"
  write_toy_domain(grid, 32, False, 2)
  cfg = dataclasses.replace(config.get_config("smoke"), lambda_grid=1.0)
  kw = dict(n_iter=4, log_every=2, val_every=4, ckpt_every=4, progress=False, grid_path=grid)
  state = {}
  for name, where in (("stream", "no"), ("staged", "yes")):
    _train(cfg, synth, obs, tmp_path / name, data_on_device=where, **kw)
    m = metrics_log.read_metrics(tmp_path / name / "metrics.jsonl")
    assert all(d["rec_grid"] > 0 and d["cc_grid"] > 0 for d in m["train"])
    run = json.loads((tmp_path / name / "run.json").read_text())
    assert run["n_spectra"] == {"synth": 64, "obs": 64, "grid": 32}
    state[name] = checkpoint.restore_state(tmp_path / name / "checkpoints", cfg, 4)[0]
  chex.assert_trees_all_equal(state["stream"], state["staged"])
  with pytest.raises(ValueError, match="lambda_grid"):
    _train(cfg, synth, obs, tmp_path / "no_grid", **{**kw, "grid_path": None})


def test_case6_resume_moves_a_corrupt_newest_checkpoint_aside(toy_files, tmp_path, capsys):
  """Case 6: `train --resume` behind a corrupt newest checkpoint moves it to
  checkpoints/corrupt-<step>/, says so, and trains through that step again."""
  import jax

  from cyclestar_jax import parallel

  synth, obs = toy_files
  cfg, out = config.get_config("smoke"), tmp_path / "run"
  kw = {"log_every": 5, "val_every": 10, "ckpt_every": 5, "progress": False,
        "mesh": parallel.make_mesh(jax.devices()[:1])}
  _train(cfg, synth, obs, out, n_iter=10, **kw)
  (out / "checkpoints" / "10" / "state" / "manifest.ocdbt").unlink()
  with pytest.warns(UserWarning, match="checkpoint step 10 unusable"):
    summary = _train(cfg, synth, obs, out, n_iter=10, resume=True, **kw)
  assert summary["step"] == 10 and (out / "checkpoints" / "corrupt-10").is_dir()
  assert checkpoint.Checkpointer(out / "checkpoints", cfg).steps() == [5, 10]
  assert "moved to" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_keeps_a_checkpoint(tmp_path, capsys, monkeypatch):
  """Ctrl-C in the loop writes a checkpoint at the step reached; the command says so in one
  line (exit 130), no traceback."""

  class _Interrupted(_FakeRunner):
    def calls(self, state, start, stop, loop):
      for i, item in enumerate(super().calls(state, start, stop, loop)):
        if i == 3:
          raise KeyboardInterrupt
        yield item

  loop = trainer.LoopConfig(log_every=50, val_every=50, ckpt_every=50)
  ckpt = _FakeCheckpointer()
  with pytest.raises(KeyboardInterrupt):
    trainer.run_loop(_Interrupted([[0]] * 10), None, 0, _n(loop, 10), ckpt=ckpt)
  assert ckpt.saved == [3]
  assert "interrupted at step 3: checkpoint written" in capsys.readouterr().err

  def main(argv):
    raise KeyboardInterrupt

  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  assert cli.run_main(main, [], prog="train") == cli.EXIT_INTERRUPTED
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("train: interrupted (Ctrl-C)")


def test_help_says_each_default_once():
  """No "(default: …) (default: None)" pairs in --help; make_data's description is whole."""
  import contextlib
  import io
  import re

  from experiments import apogee, fit_labels, make_data, new_lines, train_emulator
  from experiments import train as train_cli

  for mod in (apogee, fit_labels, make_data, new_lines, train_emulator, train_cli):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
      mod.parse_args(["--help"] if mod is not train_cli else ["--out", "x", "--help"])
    text = " ".join(buf.getvalue().split())
    assert not re.search(r"\(default[^)]*\) \(default:", text), mod.__name__
    if mod is make_data:
      assert "DIR/examples.png" in text
