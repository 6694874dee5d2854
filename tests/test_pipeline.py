"""The main job (`experiments.apogee`) end to end on the smoke preset, and its refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
from jobs import run_job

from cyclestar_jax import pipeline, sensitivity
from experiments import apogee

METRIC_KEYS = (
    "synth_rec_bias", "synth_rec_scatter", "synth_cycle_bias", "synth_cycle_scatter",
    "obs_rec_norm_bias", "obs_rec_norm_scatter", "obs_cycle_norm_bias",
    "obs_cycle_norm_scatter", "fit_emulator_chi2r", "fit_synth_chi2r", "fit_csn_chi2r",
    "fit_emulator_mean_norm_resid", "fit_csn_mean_norm_resid", "label_errors",
    "train_iterations", "train_seconds", "device", "preset", "n_test",
    "paired_untransferred_chi2_pooled", "paired_transfer_chi2_pooled", "fit_settings",
    "label_sensitivity")
FIGURES = ("fig5_synthetic_residuals.png", "fig6_observed_residuals.png", "fig7_fit_example.png",
           "fig8_fit_residuals.png", "fig9_kiel_chi2.png", "fig10_tsne.png",
           "fig11_kiel_methods.png", "label_errors.png", "label_sensitivity.png",
           "training_curve.png")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("apogee") / "run"
  lines = run_job("apogee", "--preset", "smoke", "--out", str(out))
  return out, json.loads((out / "metrics.json").read_text()), lines


def test_smoke_writes_every_key_and_file(smoke_run):
  out, m, lines = smoke_run
  on_disk = json.loads((out / "metrics.json").read_text())
  for k in METRIC_KEYS:
    assert k in on_disk, k
  assert on_disk["preset"] == "smoke" and on_disk["n_test"] == 8
  assert on_disk["train_iterations"] == pipeline.PRESETS["smoke"].cycle.n_iter
  for method in ("Eq. 9 (Payne)", "Eq. 11 (Cycle-StarNet)"):
    assert set(on_disk["label_errors"][method]["Teff"]) == {"bias", "scatter", "n"}
  sens = on_disk["label_sensitivity"]
  assert sens["n"] == 8 and len(sens["labels"]) == 25
  for v in sens["labels"].values():  # a gain and a correlation per pair and label
    assert set(v) == {f"{p}_{s}" for p in sensitivity.PAIRS for s in ("gain", "r")}
  # The numbers are tested by hand in test_sensitivity; a 20-second smoke emulator follows its
  # world only roughly, so here: every Teff statistic exists, and correlations are correlations.
  assert all(np.isfinite(v) for v in sens["labels"]["Teff"].values())
  assert all(-1 - 1e-9 <= v[f"{p}_r"] <= 1 + 1e-9 for v in sens["labels"].values()
             for p in sensitivity.PAIRS if np.isfinite(v[f"{p}_r"]))
  for f in FIGURES:
    p = out / "figures" / f
    assert p.is_file() and p.stat().st_size > 10_000, f
  # The trainers draw no figure; the stages draw them after training.
  for p in (out / "model" / "training_progress.png", out / "emulator" / "residuals.png"):
    assert p.is_file() and p.stat().st_size > 10_000, p
  report = (out / "report.md").read_text()
  assert "Eq. 11" in report and "paper" in report and "fig7_fit_example.png" in report
  assert "## Label sensitivity" in report
  # The emulator learnt the mock's Payne grid, whose abundances vary on their own.
  assert on_disk["emulator_training"] == "payne_grid.h5"
  assert on_disk["emulator_abundance_fe_correlation"] < 0.9
  assert "Emulator (The Payne) trained on `payne_grid.h5`" in report
  assert (out / "data" / "payne_grid.h5").is_file()
  smoke = pipeline.PRESETS["smoke"]
  assert on_disk["fit_settings"] == {"n_fit": 8, "max_iter": smoke.fit.lbfgs.max_iter,
                                     "starts": list(smoke.fit.starts),
                                     "csn_max_iter": smoke.csn_fit.lbfgs.max_iter,
                                     "csn_starts": list(smoke.csn_fit.starts)}
  assert f"≤ {smoke.fit.lbfgs.max_iter} steps" in report
  assert "Eq. 9 and 10 from the catalogue labels and the population median" in report
  for stem in ("eq9_mask", "eq9", "eq10", "eq11"):
    assert (out / "fits" / f"{stem}.h5").is_file() and (out / "fits" / f"{stem}.csv").is_file()
  assert any("report.md" in line for line in lines)


def test_smoke_metrics_are_within_stated_bounds(smoke_run):
  """The smoke run's numbers, not only its keys. Bounds are loose (a 60-iteration Cycle-StarNet
  and a 20-second emulator) but each says what a broken stage would break:"""
  _, m, _ = smoke_run
  # The synthetic autoencoder reconstructs normalized flux to a few per cent after 60 iterations
  # (measured: bias −0.006, scatter 0.021); a wrong standardization or decoder gives ≳ 0.1.
  for k in ("synth_rec", "synth_cycle"):
    assert abs(m[f"{k}_bias"]) < 0.02 and 0 < m[f"{k}_scatter"] < 0.05, k
  # The mock world's gap without any transfer: the paired val χ²_R of x_synth against x_obs is
  # a property of the world (measured 2.90), above its noise floor and far below a mismatch.
  assert m["mock_floor_chi2r"] < m["paired_untransferred_chi2r"] < 6.0
  # Normalized residuals are in units of σ: finite and of order one to a few.
  assert 0 < m["obs_rec_norm_scatter"] < 10 and abs(m["obs_rec_norm_bias"]) < 3
  # Eq. 9 with the emulator on 8 stars: χ²_R near the mock's floor times the model gap
  # (measured 2.99), its residual centred (data minus model, |mean| measured 0.014), Teff within
  # a few hundred K of the truth (scatter measured 115 K).
  assert m["mock_floor_chi2r"] < m["fit_emulator_chi2r"] < 8.0
  assert abs(m["fit_emulator_mean_norm_resid"]) < 0.3
  eq9 = m["label_errors"]["Eq. 9 (Payne)"]
  assert eq9["Teff"]["n"] == 8 and eq9["Teff"]["scatter"] < 400 and abs(eq9["Teff"]["bias"]) < 400
  assert np.isfinite(m["chi2r_ratio_eq9_over_eq11"]) and m["chi2r_ratio_eq9_over_eq11"] > 0


def test_rerun_skips_the_stages_done(smoke_run):
  out, m, _ = smoke_run
  lines = run_job("apogee", "--preset", "smoke", "--out", str(out))
  m2 = json.loads((out / "metrics.json").read_text())
  kept = [line for line in lines if "kept from an earlier run" in line]
  assert len(kept) == 4, lines  # data, emulator, Cycle-StarNet, fits
  assert m2["fit_csn_chi2r"] == pytest.approx(m["fit_csn_chi2r"])


def test_other_preset_in_the_same_folder_is_refused(smoke_run):
  out, _, _ = smoke_run
  with pytest.raises(pipeline.RunFolderError, match="n_iter"):
    pipeline.run(out, preset="smoke", n_iter=7,
                 options=pipeline.RunOptions(progress=False, log=lambda s: None))


def test_bad_inputs_fail_before_any_work(tmp_path, capsys):
  assert apogee.cli(["--preset", "smoke", "--out", str(tmp_path / "r"), "--obs", "x.h5"]) == 2
  assert "--synth and --obs go together" in capsys.readouterr().err
  assert apogee.cli(["--preset", "smoke", "--out", str(tmp_path / "r"), "--synth", "a.h5",
                     "--obs", "b.h5"]) == 2
  assert "a.h5: no such file" in capsys.readouterr().err
  assert not Path(tmp_path / "r").exists()
  assert apogee.cli(["--preset", "smoke", "--out", str(tmp_path / "r"), "--grid", "g.h5"]) == 2
  assert "--grid goes with --synth/--obs" in capsys.readouterr().err
  assert not Path(tmp_path / "r").exists()


def test_n_iter_scales_the_learning_rate_boundaries():
  p = pipeline.get_preset("paper", n_iter=35_000)
  assert p.cycle.n_iter == 35_000
  assert p.cycle.lr_boundaries_gen == (5_000, 10_000, 15_000, 20_000)


def test_curve_table_keeps_every_validation_up_to_twelve():
  from cyclestar_jax.pipeline import report

  def table(n):
    curve = {"step": list(range(1, n + 1)), "minutes": [0.5] * n, "chi2": [2.0] * n,
             "chi2_all": [3.0] * n, "bias": [-0.1] * n}
    rows = [r for r in report.curve_table({"training_curve": curve}) if r.startswith("| ")]
    return rows[2:]  # after the header and the rule

  assert [r.split(" | ")[0] for r in table(6)] == [f"| {s}" for s in range(1, 7)]
  long = table(40)
  assert len(long) == 12 and long[0].startswith("| 1 |") and long[-1].startswith("| 40 |")
  assert report.curve_table({}) == []


def test_report_warns_of_an_emulator_that_cannot_tell_the_elements_apart():
  from cyclestar_jax.pipeline import report

  tied = report.emulator_note({"emulator_training": "my_synth.h5",
                               "emulator_abundance_fe_correlation": 0.99})
  assert "my_synth.h5" in tied[0] and "0.99" in tied[0] and "cannot tell the elements" in tied[0]
  free = report.emulator_note({"emulator_training": "payne_grid.h5",
                               "emulator_abundance_fe_correlation": 0.77})
  assert "0.77" in free[0] and "cannot tell" not in free[0]
  assert report.emulator_note({"emulator_training": None}) == []


def test_only_the_cpu_report_has_the_cpu_research_note():
  """Labels not closer with Eq. 11: said on every preset; what was tried, on the cpu preset's
  report alone (the preset the research was done on)."""
  from cyclestar_jax.pipeline import report

  worse = {k: {"bias": 0.0, "scatter": 2.0} for k in ("Teff", "logg", "Fe_H")}
  better = {k: {"bias": 0.0, "scatter": 1.0} for k in ("Teff", "logg", "Fe_H")}
  m = {"label_errors": {report.FIT_TITLES["eq9"]: better, report.FIT_TITLES["eq11"]: worse},
       "fits": {"eq11": {"at_box_edge_fraction": 0.0}}}
  for preset in ("smoke", "cpu", "long", "paper"):
    said = "\n".join(report.verdicts({**m, "preset": preset}))
    assert "Eq. 11 closer for none of them" in said
    assert ("What was tried for the label scatter on the cpu preset" in said) == (
        preset == "cpu"), preset


def test_grid_term_uses_the_runs_payne_grid_or_turns_off(tmp_path):
  """λ_grid > 0 trains on the run's payne_grid.h5 (the mock world); with only the user's
  synthetic file there is no separate grid, and the term is off."""
  import dataclasses

  from cyclestar_jax.pipeline import stages

  p = pipeline.get_preset("smoke")
  p = dataclasses.replace(p, cycle=dataclasses.replace(p.cycle, lambda_grid=2.0))
  paths = stages.RunPaths(tmp_path / "run")
  synth = tmp_path / "synth.h5"
  synth.write_bytes(b"")
  cfg, grid = stages.cycle_config_and_grid(paths, p, synth)
  assert grid is None and cfg.lambda_grid == 0.0 and cfg.name == p.cycle.name
  paths.data.mkdir(parents=True)
  paths.payne_grid.write_bytes(b"")
  cfg, grid = stages.cycle_config_and_grid(paths, p, synth)
  assert grid == paths.payne_grid and cfg == p.cycle
  paper = dataclasses.replace(p, cycle=dataclasses.replace(p.cycle, lambda_grid=0.0))
  assert stages.cycle_config_and_grid(paths, paper, synth) == (paper.cycle, None)


def test_users_grid_file_is_checked_before_any_work(tmp_path):
  from cyclestar_jax import h5io
  from cyclestar_jax.resources import N_PIX

  def write(name, n_pix, splits=("train", "test")):
    path = tmp_path / name
    with h5io.SpectraWriter(path, {s: 2 for s in splits}, n_pix=n_pix,
                            fields=("spectra",)) as w:
      for s in splits:
        w.write(s, 0, x=np.ones((2, n_pix), np.float32))
    return str(path)

  synth, obs = write("s.h5", N_PIX), write("o.h5", N_PIX)
  pipeline.check_inputs(synth, obs, None, None, write("g.h5", N_PIX))
  with pytest.raises(ValueError, match=r"--grid .*g2.h5 has 7000"):
    pipeline.check_inputs(synth, obs, None, None, write("g2.h5", 7000))
  with pytest.raises(ValueError, match=r"--grid .*g3.h5: no 'test' split"):
    pipeline.check_inputs(synth, obs, None, None, write("g3.h5", N_PIX, ("train",)))
  with pytest.raises(FileNotFoundError, match="--grid nope.h5: no such file"):
    pipeline.check_inputs(synth, obs, None, None, "nope.h5")


# ---------------------------------------------------------------------------------------------
# Pretrained weights and the label-sensitivity curve.


@pytest.fixture
def pretrained_dir(tmp_path, monkeypatch):
  """The package's pretrained-weights folder moved to tmp_path/pretrained."""
  from cyclestar_jax import pretrained

  d = tmp_path / "pretrained"
  monkeypatch.setattr(pretrained, "DIR", d)
  return d


def test_smoke_run_has_a_gain_curve_over_its_checkpoints(smoke_run):
  out, m, _ = smoke_run
  rows = m["sensitivity_curve"]["rows"]
  assert [r["step"] for r in rows] == [30, 60]  # the smoke preset's kept checkpoints
  for r in rows:
    for k in ("Teff", "logg", "Fe_H"):
      assert np.isfinite(r[f"{k}_transfer_gain"]) and np.isfinite(r[f"{k}_csn_gain"])
    assert r["paired_val_chi2"] > 0
  assert (out / "figures" / "label_gain_curve.png").stat().st_size > 10_000
  assert "## Label sensitivity along the training" in (out / "report.md").read_text()


def test_pretrained_weights_reproduce_their_run_and_refuse_other_data(
    smoke_run, tmp_path, pretrained_dir, monkeypatch):
  from cyclestar_jax import pretrained
  from cyclestar_jax.pretrained import export

  out, m, _ = smoke_run
  assert not pretrained.MAIN.available()
  scores = {"Teff_bias": 10.0, "Teff_scatter": 100.0, "logg_bias": 0.1, "logg_scatter": 0.5,
            "Fe_H_bias": -0.05, "Fe_H_scatter": 0.1, "at_box_edge": 0.05}
  curve = {"rows": [{**r, **scores} for r in m["sensitivity_curve"]["rows"]], "eq9": scores}
  meta = export.export_run(out, curve=curve)  # into the job's folder: pretrained.DIR
  assert pretrained.MAIN.available() and meta["step"] == 60 and meta["preset"] == "smoke"
  assert meta["job"] == "apogee" and not pretrained.NEW_LINES.available()
  assert meta["sizes"] == {"train": 256, "val": 64, "test": 32} and meta["seed"] == 0
  assert meta["metrics"]["labels"]["eq11"]["Teff"]["scatter"] == pytest.approx(
      m["fits"]["eq11"]["label_errors"]["Teff"]["scatter"])
  assert "| 60 |" in (pretrained_dir / "README.md").read_text()
  # The weights are float32 and small.
  with np.load(pretrained.MAIN.generator) as z:
    assert all(z[k].dtype == np.float32 for k in z.files if k.startswith("gen/"))

  # The command, as a user runs it (one CPU device, like the run that made the weights).
  monkeypatch.setenv("CYCLESTAR_PRETRAINED_DIR", str(pretrained_dir))
  lines = run_job("apogee", "--pretrained", "--out", str(tmp_path / "pre"))
  m2 = json.loads((tmp_path / "pre" / "metrics.json").read_text())
  assert lines[0].startswith("using the pretrained weights (smoke preset, 60 iterations")
  assert not (tmp_path / "pre" / "model").exists() and not (tmp_path / "pre" / "emulator").exists()
  # Same data (the mock world is deterministic), same weights: the same fits.
  for k in ("Teff", "logg", "Fe_H"):
    assert m2["fits"]["eq11"]["label_errors"][k]["scatter"] == pytest.approx(
        m["fits"]["eq11"]["label_errors"][k]["scatter"], rel=1e-4)
  assert m2["fit_csn_chi2r"] == pytest.approx(m["fit_csn_chi2r"], rel=1e-4)
  assert m2["pretrained"]["step"] == 60 and m2["train_iterations"] == 60
  report = (tmp_path / "pre" / "report.md").read_text()
  assert "**This run used the package's pretrained weights" in report
  assert "| Eq. 9, same stars |" in report
  assert (tmp_path / "pre" / "figures" / "label_gain_curve.png").is_file()

  quiet = pipeline.RunOptions(progress=False)
  with pytest.raises(pretrained.PretrainedError, match="seed = 0, this run's has 1"):
    pipeline.run(tmp_path / "other", pretrained=True, seed=1, options=quiet)
  with pytest.raises(pretrained.PretrainedError, match="default mock world only"):
    pipeline.run(tmp_path / "other", pretrained=True, options=quiet, inputs=pipeline.Inputs(
        synth=str(out / "data" / "synth.h5"), obs=str(out / "data" / "obs.h5")))
  with pytest.raises(pretrained.PretrainedError, match="--preset/--n-iter"):
    pipeline.run(tmp_path / "other", pretrained=True, preset="cpu", options=quiet)
  assert not (tmp_path / "other").exists()


def test_the_cli_uses_pretrained_weights_only_when_nothing_else_is_asked(
    pretrained_dir, monkeypatch):
  from cyclestar_jax import pretrained

  def wants(*argv):
    return apogee.wants_pretrained(apogee.parse_args(list(argv)))

  assert not wants()  # none in the package (moved to an empty folder)
  monkeypatch.setattr(pretrained.Weights, "available", lambda self: True)
  monkeypatch.setattr(pretrained.Weights, "metadata", lambda self: {"seed": 0, "preset": "long"})
  assert wants() and wants("--out", "x") and wants("--pretrained")
  for argv in (("--train",), ("--preset", "cpu"), ("--seed", "1"), ("--n-iter", "10"),
               ("--model", "m.npz")):
    assert not wants(*argv), argv
  assert wants("--pretrained", "--seed", "1")  # asked for: pipeline.run refuses it, naming why
  with pytest.raises(SystemExit):
    apogee.parse_args(["--pretrained", "--train"])


# Issue 21: nothing lost, nothing stale (the smoke run reused; each case refused in seconds).


def test_curve_visits_kept_checkpoints_and_keeps_earlier_rows(tmp_path):
  """`curve.checkpoint_order` and `curve.add_rows`, which both curve benchmarks use."""
  from cyclestar_jax.pipeline import curve

  model = tmp_path / "model"
  for step in (1000, 2000, 3000, 4000):
    (model / "checkpoints" / str(step)).mkdir(parents=True)
    if step != 4000:  # 4000: no metadata, an incomplete checkpoint
      (model / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").write_text("{}")
  assert curve.checkpoint_order(model, 2000) == [2000]
  assert curve.checkpoint_order(model, 1000, [3000, 1000]) == [3000, 1000]
  with pytest.raises(ValueError, match=r"no checkpoint at --steps \[4000\]"):
    curve.checkpoint_order(model, 1000, [4000, 1000])
  done = {"rows": [{"step": 2000, "paired_val_chi2": None, "x": 0}]}
  seen = []
  states = list(curve.add_rows(done, model, [3000, 2000, 1000],
                               lambda k: seen.append(k) or {"x": k}))
  assert seen == [3000, 1000] and len(states) == 2  # the row of 2000 was kept, not redone
  assert [(r["step"], r["x"]) for r in done["rows"]] == [(1000, 1000), (2000, 0), (3000, 3000)]
  assert list(done["rows"][0]) == ["step", "paired_val_chi2", "x"]


def test_case1_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
  """Case 1: --overwrite on a user's folder deletes nothing and is refused."""
  (tmp_path / "U" / "data").mkdir(parents=True)
  (tmp_path / "U" / "notes.txt").write_text("x")
  (tmp_path / "U" / "data" / "obs.h5").write_text("mine")
  assert apogee.cli(["--preset", "smoke", "--out", str(tmp_path / "U"), "--overwrite",
                     "--no-progress"]) == 2
  assert "not a run folder" in capsys.readouterr().err
  assert (tmp_path / "U" / "notes.txt").read_text() == "x"
  assert (tmp_path / "U" / "data" / "obs.h5").read_text() == "mine"


def _corrupt_copy(smoke_run, dest: Path) -> Path:
  """The smoke run with its newest checkpoint's OCDBT manifest gone and its fits, metrics and
  report removed (case 2)."""
  import shutil

  out, _, _ = smoke_run
  shutil.copytree(out, dest)
  steps = sorted(int(p.name) for p in (dest / "model" / "checkpoints").iterdir()
                 if p.name.isdigit())
  (dest / "model" / "checkpoints" / str(steps[-1]) / "state" / "manifest.ocdbt").unlink()
  for name in ("fits", "figures"):
    shutil.rmtree(dest / name)
  for name in ("metrics.json", "report.md"):
    (dest / name).unlink()
  return dest, steps


def test_case2_a_corrupt_newest_checkpoint_is_refused_in_one_line(smoke_run, tmp_path, capsys):
  """Case 2: the main job refuses to fall back silently (--allow-older-checkpoint), with no
  traceback flood; fit_labels falls back with one warning and records the step used."""
  from experiments import fit_labels

  x, steps = _corrupt_copy(smoke_run, tmp_path / "X")
  assert apogee.cli(["--preset", "smoke", "--out", str(x), "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert "--allow-older-checkpoint" in err and "Event loop is closed" not in err
  assert len(err.splitlines()) <= 4, err
  assert not (x / "fits").exists()
  out = tmp_path / "fit.h5"
  # Under pytest the warning is recorded rather than printed (a user sees it as one line).
  with pytest.warns(UserWarning, match=f"using the older step {steps[-2]}"):
    assert fit_labels.run_cli(["--model", str(x / "model"), "--emulator",
                               str(x / "emulator" / "emulator.npz"), "--obs",
                               str(x / "data" / "obs.h5"), "--out", str(out), "--stop", "2",
                               "--max-iter", "2", "--no-progress"]) == 0
  assert "Event loop is closed" not in capsys.readouterr().err
  from cyclestar_jax import fitting

  attrs = fitting.read_results(out)[2]
  assert attrs["checkpoint_step"] == steps[-2]


def test_smoke_results_name_their_checkpoint_step(smoke_run):
  out, m, _ = smoke_run
  from cyclestar_jax import fitting

  assert m["model_checkpoint"]["step"] == m["train_iterations"]
  assert m["model_checkpoint"]["skipped_newer"] == []
  assert fitting.read_results(out / "fits" / "eq11.h5")[2]["checkpoint_step"] == m[
      "train_iterations"]
  assert f"checkpoint step {m['train_iterations']}" in (out / "report.md").read_text()


def test_a_fit_file_of_other_settings_is_fitted_again(smoke_run, tmp_path):
  """A finished fit file is kept only if it records the preset's fit settings now."""
  import dataclasses
  import shutil

  import h5py

  from cyclestar_jax.pipeline import stages

  out, _, _ = smoke_run
  smoke = pipeline.get_preset("smoke")
  cfg = stages._fit_config(smoke, "eq9")
  assert cfg.method == "emulator" and stages._fit_config(smoke, "eq11").method == "obs"
  path = out / "fits" / "eq9.h5"
  assert stages._fit_kept(path, None, cfg)
  other = dataclasses.replace(cfg, starts=("median",))
  with pytest.warns(UserWarning, match="other \\(or unrecorded\\) fit settings"):
    assert not stages._fit_kept(path, None, other)
  old = tmp_path / "eq9.h5"  # as an older version wrote it: no settings recorded
  shutil.copy(path, old)
  with h5py.File(old, "a") as h:
    del h.attrs["fit_config"]
  with pytest.warns(UserWarning, match="fitting it again"):
    assert not stages._fit_kept(old, None, cfg)


def test_case3_a_second_job_on_a_locked_folder_is_refused(smoke_run, capsys):
  """Case 3: while a job holds the run folder, the same command is refused naming its PID."""
  import os
  import socket

  from cyclestar_jax import rundir

  out, _, _ = smoke_run
  with rundir.folder_lock(out):
    assert apogee.cli(["--preset", "smoke", "--out", str(out), "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert f"PID {os.getpid()} on host {socket.gethostname()}" in err


def test_case7_inputs_are_checked_before_the_first_stage(smoke_run, tmp_path, capsys):
  """Case 7: a --model that does not load and observed errors ≤ 0 are refused before any
  stage (nothing is written)."""
  import shutil

  import h5py

  out, _, _ = smoke_run
  (tmp_path / "bad_model" / "checkpoints" / "5").mkdir(parents=True)
  run = tmp_path / "r"
  assert apogee.cli(["--preset", "smoke", "--out", str(run), "--model",
                     str(tmp_path / "bad_model"), "--no-progress"]) == 2
  assert "bad_model" in capsys.readouterr().err and not run.exists()
  synth, obs = tmp_path / "synth.h5", tmp_path / "obs.h5"
  shutil.copy(out / "data" / "synth.h5", synth)
  shutil.copy(out / "data" / "obs.h5", obs)
  with h5py.File(obs, "a") as f:
    f["spectra_err test"][...] = 0.0
  assert apogee.cli(["--preset", "smoke", "--out", str(run), "--synth", str(synth), "--obs",
                     str(obs), "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert "--obs" in err and "'test'" in err and "error ≤ 0" in err and not run.exists()
