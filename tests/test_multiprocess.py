"""Two processes × two CPU devices (`jax.distributed`, gloo) train like one process.

`python -m experiments.train --coordinator … --num-processes 2 --process-id I` is launched
twice on toy files: steps 0 → N_A, then `--resume` to N_B, a checkpoint at every step. Every
step of the two-process run is replayed in this process on a mesh of four devices, starting
from the two-process state before it (the initial state, then each checkpoint), and must give
the next checkpoint to allclose(rtol=atol=1e-5). The comparison is per step because the two
runs sum the four devices' partial gradients in a different order (gloo's against the
in-process all-reduce): relative differences of 1e-7 after one step, which GAN training with
Adam grows to 4e-4 (absolute) after two. (With one device per process, two processes and one
process over two devices agree bit for bit over whole runs; checked by hand, not here.)
The metrics in metrics.jsonl (written by process 0 only, each line once) must match the
replayed steps and validations.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from toy_files import write_toy_domain

from cyclestar_jax import checkpoint, config, data, parallel, validation
from cyclestar_jax.train_step import create_train_state

N_A, N_B = 3, 6  # the first launch trains steps [0, N_A), the resumed one [N_A, N_B)
LOG_EVERY, VAL_EVERY = 1, 3
N_PROC, DEV_PER_PROC = 2, 2
LAUNCH_TIMEOUT_S = 600  # a hang guard, not a speed test: a loaded 2-core machine needs ~300 s
ROOT = Path(__file__).resolve().parents[1]


def _gloo_unavailable() -> str | None:
  """Why cross-process CPU collectives cannot run here, or None if jaxlib has gloo."""
  try:
    from jax._src import lib
  except ImportError as e:
    return f"cannot inspect jaxlib ({e})"
  ext = getattr(lib, "_jax", None) or getattr(lib, "xla_extension", None)
  if ext is None or not hasattr(ext, "make_gloo_tcp_collectives"):
    return f"jaxlib {lib.version_str} was built without gloo CPU collectives"
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _launch(synth, obs, out, n_iter, logs: Path, cache: Path, *extra):
  """Start the N_PROC processes of one training run; yields `wait() -> [stdout of each]`.

  Every process is killed if one fails, if the run exceeds LAUNCH_TIMEOUT_S, or if the test
  leaves the block early (a process whose partner died would wait in a collective).
  """
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEV_PER_PROC}",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         # Both launches compile the same programs: the second reads them from this cache.
         "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  cmd = [sys.executable, "-m", "experiments.train", "--synth", str(synth), "--obs", str(obs),
         "--config", "smoke", "--out", str(out), "--n-iter", str(n_iter), "--ckpt-every", "1",
         "--keep", str(N_B + 1), "--log-every", str(LOG_EVERY), "--val-every", str(VAL_EVERY),
         "--no-progress", "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes",
         str(N_PROC), *extra]
  logs.mkdir(parents=True, exist_ok=True)
  files, procs = [], []
  deadline = time.monotonic() + LAUNCH_TIMEOUT_S

  def kill_all():
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()

  def wait() -> list[str]:
    while any(p.poll() is None for p in procs):
      failed = any(p.returncode not in (None, 0) for p in procs)
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.1)
    timed_out = time.monotonic() > deadline
    kill_all()
    for fh in files:
      fh.flush()
    codes = [p.returncode for p in procs]
    if codes != [0] * N_PROC:
      tails = "\n".join(f"--- process {i} (exit {c}) stderr:\n"
                        + (logs / f"p{i}.err").read_text()[-3000:] for i, c in enumerate(codes))
      what = f"timed out after {LAUNCH_TIMEOUT_S} s" if timed_out else "failed"
      pytest.fail(f"{N_PROC}-process run {what} (exit codes {codes}; -9: killed):\n{tails}")
    return [(logs / f"p{i}.out").read_text() for i in range(N_PROC)]

  try:
    for i in range(N_PROC):
      out_f, err_f = open(logs / f"p{i}.out", "w"), open(logs / f"p{i}.err", "w")
      files += [out_f, err_f]
      procs.append(subprocess.Popen([*cmd, "--process-id", str(i)], cwd=ROOT, env=env,
                                    stdout=out_f, stderr=err_f))
    yield wait
  finally:
    kill_all()
    for fh in files:
      fh.close()


def _assert_close(got, want, what: str) -> float:
  """allclose(rtol=atol=1e-5) leaf by leaf; returns the largest |got − want|."""
  worst = 0.0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                          strict=True):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5,
                               err_msg=f"{what}: {jax.tree_util.keystr(path)}")
    worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0)))
  return worst


def test_two_processes_train_resume_and_log_like_one(tmp_path):
  if reason := _gloo_unavailable():
    pytest.skip(f"no cross-process CPU collectives: {reason}")
  if len(jax.devices()) < N_PROC * DEV_PER_PROC:
    pytest.skip(f"the single-process replay needs {N_PROC * DEV_PER_PROC} devices")
  synth, obs = tmp_path / "synth.h5", tmp_path / "obs.h5"
  write_toy_domain(synth, 32, False, 0)
  write_toy_domain(obs, 32, True, 1)
  out, cache = tmp_path / "run", tmp_path / "xla_cache"
  cfg = config.get_config("smoke")
  mesh = parallel.make_mesh(jax.devices()[:N_PROC * DEV_PER_PROC])
  stream = data.BatchStream(synth, obs, cfg)
  val_batch, paired = validation.validation_batch(synth, obs, cfg, 64)
  t0 = time.perf_counter()
  with _launch(synth, obs, out, N_A, tmp_path / "logs_a", cache) as wait:
    # While the processes start: compile the replay, and replay step 0 from the initial state.
    step_fn = parallel.make_parallel_train_step(cfg, mesh)
    evaluate = validation.make_eval_fn(cfg, paired=paired)
    key = parallel.replicate(jax.random.key(cfg.seed), mesh)
    state0 = create_train_state(cfg, jax.random.key(cfg.seed))
    jax.block_until_ready(evaluate(state0.gen_params, state0.critic_params, val_batch))
    replayed, m = step_fn(parallel.replicate(state0, mesh),
                          parallel.shard_batch(stream.batch_at(0), mesh), key)
    first = (jax.device_get(replayed), jax.device_get(m))
    stdout_a = wait()
  t_a = time.perf_counter() - t0
  with _launch(synth, obs, out, N_B, tmp_path / "logs_b", cache, "--resume") as wait:
    stdout_b = wait()
  t_b = time.perf_counter() - t0 - t_a

  # Process 0 alone prints the summary and writes the files, each metrics line once.
  for stdout, n in ((stdout_a, N_A), (stdout_b, N_B)):
    summaries = [json.loads(line) for line in stdout[0].splitlines() if line.startswith("{")]
    assert [s["step"] for s in summaries] == [n], stdout[0]
    assert not any(line.startswith("{") for line in stdout[1].splitlines()), stdout[1]
  assert json.loads((out / "config.json").read_text())["name"] == "smoke"
  assert (out / "training_progress.png").stat().st_size > 10_000
  lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  want_order = [(kind, s) for s in range(LOG_EVERY, N_B + 1, LOG_EVERY)
                for kind in ("train", "val") if kind == "train" or s % VAL_EVERY == 0]
  assert [(d["kind"], d["step"]) for d in lines] == want_order

  # Replay every step in this process over four devices, from the two-process state before it.
  ckpt_dir = out / "checkpoints"
  ckpt = checkpoint.Checkpointer(ckpt_dir, cfg)
  assert ckpt.steps() == list(range(1, N_B + 1))
  ckpt.close()
  step_metrics, diffs, state = [], [], state0
  for s in range(N_B):
    if s == 0:
      replayed, m = first
    else:
      replayed, m = jax.device_get(step_fn(parallel.replicate(state, mesh),
                                           parallel.shard_batch(stream.batch_at(s), mesh), key))
    step_metrics.append(m)
    state, meta = checkpoint.restore_state(ckpt_dir, cfg, s + 1)
    assert meta["data_position"] == s + 1
    diffs.append(_assert_close(replayed, state, f"step {s} → {s + 1}"))
    if (s + 1) % VAL_EVERY == 0:
      val = jax.device_get(evaluate(state.gen_params, state.critic_params, val_batch))
      logged = next(d for d in lines if d["kind"] == "val" and d["step"] == s + 1)
      assert set(logged) == {"kind", "step", *val}
      for k, v in val.items():
        np.testing.assert_allclose(logged[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{s + 1} {k}")
  stream.close()
  for d in (d for d in lines if d["kind"] == "train"):
    interval = step_metrics[d["step"] - LOG_EVERY:d["step"]]
    for k in ("loss_gen", "loss_critic", "rec_synth", "cc_obs", "gen_obs", "dis_real_synth"):
      np.testing.assert_allclose(d[k], np.mean([m[k] for m in interval]), rtol=1e-5,
                                 err_msg=f"train line at step {d['step']}: {k}")
    assert d["n_skipped"] == int(interval[-1]["n_skipped"])
  print(f"2-process launches {t_a:.1f} s (steps 0-{N_A}) + {t_b:.1f} s (resumed to {N_B}); "
        f"max |2-process − replay| per step: {', '.join(f'{x:.2g}' for x in diffs)}")


def test_distributed_flags_are_checked_before_jax_starts():
  from experiments import train
  base = ["--out", "x"]
  args = train.parse_args(base)
  assert (args.coordinator, args.num_processes, args.process_id, args.distributed) == (
      None, None, None, False)
  for bad in (["--coordinator", "127.0.0.1:1"], ["--num-processes", "2", "--process-id", "0"],
              ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
              ["--distributed", "--coordinator", "h:1", "--num-processes", "2",
               "--process-id", "0"]):
    with pytest.raises(SystemExit):
      train.parse_args(base + bad)
  with pytest.raises(ValueError, match="HOST:PORT"):
    parallel.initialize_distributed("localhost", 2, 0)
  with pytest.raises(ValueError, match="all of"):
    parallel.initialize_distributed("127.0.0.1:1", None, 0)
