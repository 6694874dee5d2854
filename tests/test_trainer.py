"""End to end: `python -m experiments.train` on toy files, straight, and SIGKILLed + resumed."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from toy_files import write_toy_domain

from cyclestar_jax import checkpoint, config, h5io, trainer

N_ITER, CKPT_EVERY = 40, 20


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("toy")
  write_toy_domain(d / "synth.h5", 64, False, 0)
  write_toy_domain(d / "obs.h5", 64, True, 1)
  return d / "synth.h5", d / "obs.h5"


def _command(synth, obs, out, *extra):
  return [sys.executable, "-m", "experiments.train", "--synth", str(synth), "--obs", str(obs),
          "--config", "smoke", "--out", str(out), "--n-iter", str(N_ITER), "--ckpt-every",
          str(CKPT_EVERY), "--log-every", "10", "--val-every", "20", "--no-progress", *extra]


def _env(cache):
  # The three runs compile the same step: share XLA's persistent cache to save compile time.
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
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

  m = trainer.read_metrics(straight / "metrics.jsonl")
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
    trainer.train(config.get_config("smoke"), synth, obs, killed, n_iter=N_ITER)
  subprocess.run(_command(synth, obs, killed, "--resume"), check=True, env=_env(cache), cwd=cwd,
                 timeout=300, capture_output=True)

  (a, meta_a), (b, meta_b) = _final_state(straight), _final_state(killed)
  assert meta_a["data_position"] == meta_b["data_position"] == N_ITER
  import jax
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  mk = trainer.read_metrics(killed / "metrics.jsonl")
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
    trainer.train(cfg, synth, short, tmp_path / "a", n_iter=5)
  # Only a corrupt checkpoint in the run directory: resuming is refused, not restarted.
  run = tmp_path / "b" / "checkpoints" / "10"
  (run / "state").mkdir(parents=True)
  (run / "state" / "garbage").write_bytes(b"\0" * 100)
  with pytest.warns(UserWarning, match="skipping checkpoint"):
    with pytest.raises(checkpoint.CheckpointError, match="no valid checkpoint"):
      trainer.train(cfg, synth, obs, tmp_path / "b", n_iter=5, resume=True)
  with pytest.raises(ValueError, match="does not split over 8 devices"):
    trainer.train(dataclasses.replace(cfg, batch_size=6), synth, obs, tmp_path / "c", n_iter=5)


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
  got = trainer.paired_metrics(*[{k: np.asarray(v, np.float32) for k, v in d.items()}
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
  import jax

  synth, obs = toy_files
  cfg = config.get_config("smoke")
  kw = dict(n_iter=10, log_every=5, val_every=10, ckpt_every=10, progress=False)
  runs = {"stream": dict(data_on_device="no"), "staged": dict(data_on_device="yes"),
          "scanned": dict(data_on_device="yes", steps_per_call=5)}
  m, state = {}, {}
  for name, extra in runs.items():
    trainer.train(cfg, synth, obs, tmp_path / name, **kw, **extra)
    m[name] = trainer.read_metrics(tmp_path / name / "metrics.jsonl")
    state[name] = checkpoint.restore_state(tmp_path / name / "checkpoints", cfg, 10)[0]
    assert [d["step"] for d in m[name]["train"]] == [5, 10]
    assert [d["step"] for d in m[name]["val"]] == [10]
  for a, b in zip(jax.tree.leaves(state["stream"]), jax.tree.leaves(state["staged"]),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  # Scanned: the first interval's means agree closely; GAN training then amplifies rounding.
  for k, v in m["stream"]["train"][0].items():
    if k not in ("it_per_s", "kind", "step") and isinstance(v, float):
      np.testing.assert_allclose(m["scanned"]["train"][0][k], v, rtol=1e-3, atol=1e-6,
                                 err_msg=k)
  for x, y in zip(jax.tree.leaves(state["stream"].gen_params),
                  jax.tree.leaves(state["scanned"].gen_params), strict=True):
    np.testing.assert_allclose(x, y, rtol=0, atol=10 * cfg.lr_encoder)
  with pytest.raises(ValueError, match="data_on_device"):
    trainer.train(cfg, synth, obs, tmp_path / "bad", data_on_device="maybe", **kw)
  with pytest.raises(ValueError, match="steps_per_call"):
    trainer.train(cfg, synth, obs, tmp_path / "bad2", steps_per_call=0, **kw)


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
  assert [d["step"] for d in trainer.read_metrics(path)["train"]] == [10, 20, 30]
  trainer._truncate_metrics(path, 20)
  assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
  path.write_text(lines[0] + "\n{broken\n" + lines[1] + "\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
    trainer.read_metrics(path)
