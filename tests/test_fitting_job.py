"""`fitting.fit_file` as a job and `experiments.fit_labels` as its command: output checks before
any work, chunked results with resume (the same file as an uninterrupted run), overwrite
protection, the CSV's columns, exit code 2 with one line, and two processes (jax.distributed)
writing the file one process writes. Tiny sizes: a 20-spectrum file and a small emulator.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
from test_fitting import Y_MAX, Y_MIN, _emulator, _mock, _tame, _write_obs

from cyclestar_jax import fitting as F
from cyclestar_jax.emulator import save_emulator
from cyclestar_jax.fitting import job
from cyclestar_jax.labels import LABEL_NAMES
from experiments import fit_labels

ROOT = Path(__file__).resolve().parents[1]
N = 20


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """(observed file, emulator file) in a temporary folder."""
  d = tmp_path_factory.mktemp("job")
  em = _tame(_emulator(0))
  x, err, _, y_cat = _mock(em, N, seed=4)
  _write_obs(d / "obs.h5", x, err, y_cat)
  return d / "obs.h5", save_emulator(d / "emulator.npz", em.params, Y_MIN, Y_MAX)


_JOB_FIELDS = {f.name for f in dataclasses.fields(F.FitJob)}
EMU_CFG = F.FitConfig(method="emulator", batch_size=16)


def _fit(files, out, **kw):
  """`fit_file` of the emulator method: FitJob fields and fit_file options from `kw`."""
  obs, emu = files
  kw = {"config": EMU_CFG, "chunk_rows": 8, **kw}
  job_kw = {k: v for k, v in kw.items() if k in _JOB_FIELDS}
  run_kw = {k: v for k, v in kw.items() if k not in _JOB_FIELDS}
  return F.fit_file(F.FitJob(obs, out, model_dir=emu, **job_kw), progress=False, **run_kw)


def _contents(path: Path) -> tuple[dict, dict]:
  """(datasets, attributes) of a results file."""
  with h5py.File(path, "r") as h:
    return {k: h[k][()] for k in h}, dict(h.attrs)


def test_chunks_resume_and_overwrite(files, tmp_path):
  """An interrupted job (a chunk limit: what a kill leaves) resumed writes the uninterrupted
  run's file."""
  whole = _fit(files, tmp_path / "whole.h5")
  assert len(whole) == N and not job.parts_dir(tmp_path / "whole.h5").exists()
  out = tmp_path / "resumed.h5"
  assert _fit(files, out, max_chunks=1) is None and not out.exists()
  parts = job.parts_dir(out)
  assert sorted(p.name for p in parts.iterdir()) == ["chunk_0000000000_0000000008.h5",
                                                     "job.json"]
  with pytest.raises(F.OutputPathError, match="--resume"):
    _fit(files, out)  # parts there: refuse to start again silently
  with pytest.raises(F.OutputPathError, match=r"differs in \['chunk_rows'\]"):
    _fit(files, out, resume=True, chunk_rows=16)
  resumed = _fit(files, out, resume=True)
  assert not parts.exists()
  np.testing.assert_array_equal(resumed.y, whole.y)
  (d_w, a_w), (d_r, a_r) = _contents(tmp_path / "whole.h5"), _contents(out)
  assert d_w.keys() == d_r.keys() and a_w == a_r
  for k in d_w:
    np.testing.assert_array_equal(d_r[k], d_w[k], err_msg=k)
  assert out.with_suffix(".csv").read_text() == (tmp_path / "whole.csv").read_text()
  # A finished file: kept unless --overwrite; --resume returns it.
  with pytest.raises(F.OutputPathError, match="exists; pass --overwrite"):
    _fit(files, out)
  np.testing.assert_array_equal(_fit(files, out, resume=True).y, whole.y)
  assert len(_fit(files, out, overwrite=True, stop=5)) == 5 and len(F.read_results(out)[0]) == 5


def test_output_checked_before_any_work(files, tmp_path):
  obs, _ = files
  (tmp_path / "dir.h5").mkdir()
  with pytest.raises(F.OutputPathError, match="dir.h5: is a directory"):
    F.fit_file(F.FitJob(obs, tmp_path / "dir.h5", EMU_CFG, model_dir=tmp_path / "missing"))
  (tmp_path / "file").write_text("")
  with pytest.raises(F.OutputPathError, match="cannot write in"):
    F.fit_file(F.FitJob(obs, tmp_path / "file" / "out.h5", EMU_CFG, model_dir=tmp_path))


def test_cli_errors_help_and_csv(files, tmp_path, capsys):
  obs, emu = files
  (tmp_path / "dir.h5").mkdir()
  argv = ["--model", str(emu), "--obs", str(obs), "--method", "emulator", "--no-progress"]
  assert fit_labels.run_cli(argv + ["--out", str(tmp_path / "dir.h5")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and err[0].startswith("fit_labels: error: ") and "dir.h5" in err[0]
  assert err[1].startswith("fit_labels: hint: ")
  with pytest.raises(F.OutputPathError):
    fit_labels.run_cli(argv + ["--out", str(tmp_path / "dir.h5"), "--debug"])
  with pytest.raises(SystemExit):
    fit_labels.parse_args(["--help"])
  assert "(default: test)" in capsys.readouterr().out
  out = tmp_path / "fit.h5"
  assert fit_labels.run_cli(argv + ["--out", str(out), "--batch-size", "8", "--stop", "6",
                                    "--chunk-rows", "8"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  summary = json.loads(lines[-2])
  assert summary["n"] == 6 and summary["n_fitted"] == 6 and "n_converged" in summary
  assert lines[-1].startswith("fitted 6/6 spectra (") and "median χ²_R" in lines[-1]
  head = out.with_suffix(".csv").read_text().splitlines()[0].split(",")
  assert all(n in head and f"{n}_err" in head for n in LABEL_NAMES) and head[-1] == "flag_names"


def _gloo_unavailable():
  from test_multiprocess import _gloo_unavailable as why

  return why()


def test_two_processes_write_the_one_process_file(files, tmp_path):
  """Two processes × two CPU devices share the chunks; the file equals one process's on two
  devices (the same per-device layout), dataset by dataset."""
  if reason := _gloo_unavailable():
    pytest.skip(f"no cross-process CPU collectives: {reason}")
  from test_multiprocess import _free_port

  obs, emu = files
  ref = tmp_path / "one.h5"
  _fit(files, ref, devices=jax.local_devices()[:2])
  out = tmp_path / "two.h5"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  cmd = [sys.executable, "-m", "experiments.fit_labels", "--model", str(emu), "--obs", str(obs),
         "--method", "emulator", "--out", str(out), "--batch-size", "16", "--chunk-rows", "8",
         "--no-progress", "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
  procs = [subprocess.Popen(cmd + ["--process-id", str(i)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
  assert outs[0][0].strip().splitlines()[-1].startswith("fitted 20/20")
  assert "fitted" not in outs[1][0]  # process 0 alone reports
  (d_1, a_1), (d_2, a_2) = _contents(ref), _contents(out)
  assert d_1.keys() == d_2.keys() and (a_1["processes"], a_2["processes"]) == (1, 2)
  for k in d_1:
    np.testing.assert_array_equal(d_2[k], d_1[k], err_msg=k)


def test_case5_resume_of_a_finished_job_with_other_arguments_is_refused(files, tmp_path):
  """Case 5: --resume on a finished results file returns it only for the same job: another
  method setting or another observed file is refused, not reported as the new job's."""
  import shutil

  out = tmp_path / "done.h5"
  first = _fit(files, out)
  np.testing.assert_array_equal(_fit(files, out, resume=True).y, first.y)  # the same job
  other = {"config": F.FitConfig(method="emulator", batch_size=16, starts=("median",))}
  with pytest.raises(F.OutputPathError, match=r"other arguments \(differs in \['config'\]\)"):
    _fit(files, out, resume=True, **other)
  obs, emu = files
  moved = tmp_path / "obs_copy.h5"
  shutil.copy(obs, moved)
  with pytest.raises(F.OutputPathError, match="obs_file"):
    F.fit_file(F.FitJob(moved, out, EMU_CFG, model_dir=emu, chunk_rows=8), progress=False,
               resume=True)
  with pytest.raises(ValueError, match="in use by another job"):
    with job.rundir.file_lock(out):
      _fit(files, out, overwrite=True)


def test_emulator_method_with_a_run_directory_says_what_it_needs(files, tmp_path):
  obs, _ = files
  run = tmp_path / "run"
  (run / "checkpoints" / "10").mkdir(parents=True)
  with pytest.raises(ValueError, match="is a Cycle-StarNet run directory; --method emulator"):
    F.fit_file(F.FitJob(obs, tmp_path / "o.h5", EMU_CFG, model_dir=run))


def test_nan_catalogue_labels_held_fixed_are_warned(files, tmp_path):
  obs, emu = files
  nan_obs = tmp_path / "obs_nan.h5"
  import shutil

  shutil.copy(obs, nan_obs)
  with h5py.File(nan_obs, "a") as h:
    y = h["labels test"][...]
    y[0, 0] = np.nan
    h["labels test"][...] = y
  cfg = F.FitConfig(method="emulator", batch_size=16, free_labels=tuple(LABEL_NAMES[1:]),
                    lbfgs=F.LBFGSOptions(max_iter=2))
  with pytest.warns(UserWarning, match=r"1 spectra have NaN catalogue labels \(Teff: 1\).*"
                                       r"population median instead \(Teff = "):
    F.fit_file(F.FitJob(nan_obs, tmp_path / "o.h5", cfg, model_dir=emu, stop=4),
               progress=False)


def test_job_json_keeps_the_flat_config_of_older_jobs(files, tmp_path):
  """job.json records the config flat (`FitConfig.record`: the L-BFGS settings at the top level,
  as before `FitConfig.lbfgs` was nested), so parts written by an older version still resume."""
  out = tmp_path / "part.h5"
  assert _fit(files, out, max_chunks=1) is None
  f = job.parts_dir(out) / "job.json"
  rec = json.loads(f.read_text())
  assert rec["config"]["max_iter"] == 1000 and "lbfgs" not in rec["config"]
  old_keys = {"method", "starts", "n_grid", "max_iter", "max_evals", "tol", "patience",
              "memory_size", "armijo_c1", "noise_tol", "min_step", "precision_tol",
              "stall_window", "tie_tol", "batch_size", "chunk_size", "free_labels", "fit_rv",
              "rv_max", "error_floor", "error_mask_threshold", "min_good_pixels", "bound_tol"}
  assert set(rec["config"]) == old_keys
  scaled = F.FitConfig(lbfgs=F.LBFGSOptions(precondition=True))  # recorded only when on
  assert set(scaled.record()) == old_keys | {"precondition"}
  assert len(_fit(files, out, resume=True)) == N
