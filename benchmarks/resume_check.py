"""Exact resume at the issue's scale: 2N steps straight vs N steps + SIGKILL + resume, JSON.

  PYTHONPATH=. python3 -m benchmarks.resume_check --synth FILE --obs FILE [--steps 2000]
      [--config smoke] [--work DIR]

Runs `python -m experiments.train` three times in subprocesses: straight to `--steps`; then
the same run killed with SIGKILL (a real signal) as soon as its checkpoint at `--steps`/2
exists, and resumed to `--steps`. Prints {"identical": true/false, ...}: whether every array
of the two final checkpoints (parameters, both optimizer states, step) is bit-identical, and
the largest absolute difference otherwise. tests/test_trainer.py does the same at 40 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _command(args, out, *extra):
  return [sys.executable, "-m", "experiments.train", "--synth", str(args.synth), "--obs",
          str(args.obs), "--config", args.config, "--out", str(out), "--n-iter",
          str(args.steps), "--ckpt-every", str(args.steps // 2), "--log-every", "100",
          "--val-every", str(args.steps), "--no-progress", *extra]


def _final_state(cfg_name, out, step):
  from cyclestar_jax import checkpoint, config
  return checkpoint.restore_state(Path(out) / "checkpoints", config.get_config(cfg_name), step)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--synth", required=True)
  p.add_argument("--obs", required=True)
  p.add_argument("--config", default="smoke")
  p.add_argument("--steps", type=int, default=2000, help="total steps (even)")
  p.add_argument("--work", default=None, help="folder for the runs (default: a temp folder)")
  args = p.parse_args(argv)
  if args.steps < 2 or args.steps % 2:
    p.error("--steps must be an even number ≥ 2")
  work = Path(args.work or tempfile.mkdtemp(prefix="resume_check_"))
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(work / "xla"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  t0 = time.perf_counter()
  straight, killed = work / "straight", work / "killed"
  subprocess.run(_command(args, straight), check=True, env=env, cwd=ROOT, capture_output=True)
  t_straight = time.perf_counter() - t0
  proc = subprocess.Popen(_command(args, killed), env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  half = killed / "checkpoints" / str(args.steps // 2)
  while not half.exists():
    if proc.poll() is not None:
      raise RuntimeError(f"the run to be killed ended (rc {proc.returncode}) before {half}")
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  subprocess.run(_command(args, killed, "--resume"), check=True, env=env, cwd=ROOT,
                 capture_output=True)
  import jax
  (a, meta_a), (b, meta_b) = (_final_state(args.config, d, args.steps)
                              for d in (straight, killed))
  diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
           if np.size(x) else 0.0
           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
  identical = all(np.array_equal(x, y)
                  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  out = {"check": "resume", "config": args.config, "steps": args.steps,
         "killed_at_or_after": args.steps // 2, "kill_returncode": proc.returncode,
         "identical": bool(identical), "max_abs_diff": max(diffs),
         "data_position": [meta_a["data_position"], meta_b["data_position"]],
         "straight_run_s": round(t_straight, 1),
         "total_s": round(time.perf_counter() - t0, 1), "work": str(work)}
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
