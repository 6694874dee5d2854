"""Run a job's command line (`python -m experiments.<job> ...`) in a subprocess on ONE CPU
device, as a user's CPU runs it.

The test processes fake 8 CPU devices (conftest.py) for the data-parallel code; the end-to-end
smoke jobs run their tiny networks ~1.5× faster on one device, and a subprocess also tests the
command itself. The XLA cache directory of the test session is shared.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # a hang guard, not a speed test


def run_job(job: str, *args: str) -> list[str]:
  """`python -m experiments.<job> *args --no-progress` on one CPU device; its stdout lines.

  Fails the test (with the job's stderr tail) on a non-zero exit.
  """
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-m", f"experiments.{job}", *args, "--no-progress"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  if proc.returncode != 0:
    raise AssertionError(f"experiments.{job} {' '.join(args)} exited {proc.returncode}:\n"
                         f"{proc.stderr[-4000:]}")
  return proc.stdout.splitlines()
