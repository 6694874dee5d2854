"""Run folders and outputs (`rundir`, `pipeline.stages.open_run_folder`): locks, what
--overwrite removes, input fingerprints, leftovers of killed jobs (issue 21, cases 1, 3, 4)."""

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cyclestar_jax import rundir
from cyclestar_jax.pipeline import stages


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _h5(path, n: int) -> None:
  with h5py.File(path, "w") as f:
    f["spectra train"] = np.zeros((n, 4), np.float32)


def test_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
  with rundir.folder_lock(tmp_path):
    with pytest.raises(rundir.OutputLockedError,
                       match=rf"PID {os.getpid()} on host {socket.gethostname()}"):
      rundir.folder_lock(tmp_path).acquire()
  assert not (tmp_path / rundir.LOCK_NAME).exists()  # released
  (tmp_path / rundir.LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(),
                                                       "host": socket.gethostname()}))
  with pytest.warns(UserWarning, match="no longer running"), rundir.folder_lock(tmp_path):
    assert json.loads((tmp_path / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()


def test_case1_overwrite_removes_only_the_runs_own_files(tmp_path):
  """Case 1: a run folder of another identity with --overwrite: the stage folders go, a
  user's file stays; a folder that is not a run is refused even with --overwrite."""
  paths = stages.RunPaths(tmp_path / "run")
  stages.open_run_folder(paths, {"preset": "a"}, {}, log=lambda s: None).release()
  (paths.fits).mkdir()
  (paths.out / "notes.txt").write_text("mine")
  with pytest.raises(stages.RunFolderError, match="--overwrite"):
    stages.open_run_folder(paths, {"preset": "b"}, {}, log=lambda s: None)
  stages.open_run_folder(paths, {"preset": "b"}, {}, overwrite=True, log=lambda s: None).release()
  assert (paths.out / "notes.txt").read_text() == "mine" and not paths.fits.exists()
  assert stages.read_json(paths.run_json)["identity"] == {"preset": "b"}

  other = stages.RunPaths(tmp_path / "user")
  (other.out / "data").mkdir(parents=True)
  (other.out / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="not a run folder"):
    stages.open_run_folder(other, {"preset": "a"}, {}, overwrite=True, log=lambda s: None)
  assert (other.out / "notes.txt").exists() and (other.out / "data").is_dir()


def test_case4_a_replaced_input_is_refused_by_name(tmp_path):
  """Case 4: the same command after --obs was replaced in place is refused naming --obs;
  a folder of an older version (no fingerprints) continues with a warning."""
  obs = tmp_path / "obs.h5"
  _h5(obs, 8)
  paths = stages.RunPaths(tmp_path / "run")
  quiet = {"log": lambda s: None}
  stages.open_run_folder(paths, {"preset": "a"}, {"--obs": obs}, **quiet).release()
  stages.open_run_folder(paths, {"preset": "a"}, {"--obs": obs}, **quiet).release()  # same
  os.utime(obs)  # touched only: not a change
  stages.open_run_folder(paths, {"preset": "a"}, {"--obs": obs}, **quiet).release()
  _h5(obs, 9)
  with pytest.raises(stages.RunFolderError, match=r"--obs .*obs\.h5 changed"):
    stages.open_run_folder(paths, {"preset": "a"}, {"--obs": obs}, **quiet)
  run = stages.read_json(paths.run_json)
  del run["inputs"]
  run["stages"] = {"data": {}}
  paths.run_json.write_text(json.dumps(run))
  with pytest.warns(UserWarning, match="without input fingerprints"):
    stages.open_run_folder(paths, {"preset": "a"}, {"--obs": obs}, **quiet).release()
  assert stages.read_json(paths.run_json)["inputs"]["--obs"]["shapes"] == {
      "spectra train": [9, 4]}


def test_out_that_is_a_file_or_unwritable_names_out(tmp_path):
  (tmp_path / "f").write_text("")
  with pytest.raises(ValueError, match=r"^--out .*f: is a file"):
    rundir.check_out_folder(tmp_path / "f")
  with pytest.raises(ValueError, match=r"^--out /proc/x/y: cannot be"):
    rundir.check_out_folder("/proc/x/y")


def test_temporary_files_of_a_killed_job_are_removed(tmp_path):
  (tmp_path / "fits").mkdir()
  left = [tmp_path / ".metrics.json.abc123.tmp", tmp_path / "fits" / ".eq9.h5.tmp-0123456789ab"]
  for p in left:
    p.write_text("")
  (tmp_path / "keep.tmp").write_text("")
  assert sorted(rundir.clean_temporary(tmp_path)) == sorted(left)
  assert (tmp_path / "keep.tmp").exists()
