"""The line-identification job (`experiments.new_lines`) end to end on the smoke preset."""

import json
import math
from pathlib import Path

import pytest
from jobs import run_job

from cyclestar_jax.pipeline.presets import NEW_LINES_PRESETS

KEYS = ("recovery_error_pct", "no_recovery_error_pct", "recovery_error_binned_pct",
        "attribution_accuracy", "attribution_per_element", "cn_confusion",
        "attribution_accuracy_near_reference", "attribution_accuracy_reference_star",
        "zsp_sensitivity", "detection", "label_sets_per_s",
        "attribution_accuracy_true_derivatives", "owner_response_reference_star",
        "abundance_fe_correlation", "label_sensitivity", "attribution_reference_star_raw_sums")


@pytest.fixture(scope="module")
def smoke_nl(tmp_path_factory):
  """One smoke run of the job (its folder, metrics.json's dict, stdout lines), shared."""
  out = tmp_path_factory.mktemp("new_lines") / "nl"
  lines = run_job("new_lines", "--preset", "smoke", "--out", str(out))
  return out, json.loads((out / "metrics.json").read_text()), lines


def test_smoke_writes_every_key_and_figure(smoke_nl):
  out, m, lines = smoke_nl
  on_disk = m
  for k in KEYS:
    assert k in on_disk, k
  assert on_disk["n_label_sets"] == NEW_LINES_PRESETS["smoke"].n_fit
  assert on_disk["n_removed_features"] == 133  # the paper's own selection
  fe = on_disk["attribution_per_element"]["Fe_H"]
  assert 35 <= fe["n_features"] <= 41 and 0.0 <= fe["accuracy_all"] <= 1.0
  assert 0 < m["recovery_error_pct"] and 0 < m["no_recovery_error_pct"]
  # The ranking on the world's own derivatives (no model) attributes nearly every feature.
  assert on_disk["attribution_accuracy_true_derivatives"] >= 0.9
  assert on_disk["owner_response_reference_star"]["Fe_H"]["own_truth"] < 0
  for f in ("fig12_line_identification.png", "fig13_recovery_map.png", "fig14_cn_features.png"):
    assert (out / "figures" / f).stat().st_size > 10_000, f
  report = (out / "report.md").read_text()
  assert "Recovery error" in report and "the method's ceiling" in report
  assert "## Label sensitivity" in report and "By raw sums instead" in report
  assert "What was tried" not in report  # the cpu preset's research note, not the smoke's
  rc = on_disk["attribution_reference_star_raw_sums"]
  assert rc["true_derivatives_accuracy"] >= 0.9 and 0.0 <= rc["agreement"] <= 1.0
  # The grid term: the synthetic autoencoder also learnt the run's payne_grid.h5.
  assert Path(on_disk["grid_file"]).name == "payne_grid.h5"
  assert on_disk["cycle_config"]["lambda_grid"] == 3.0
  assert not on_disk["cycle_config"]["grid_cycle"]
  assert "autoencoder also learnt `payne_grid.h5` (λ_grid = 3" in report
  train_log = (out / "model" / "metrics.jsonl").read_text()
  assert '"rec_grid"' in train_log and '"cc_grid"' not in train_log
  assert any("report.md" in line for line in lines)
  # The curve along the training (benchmarks.line_curve) at the job's own label sets: its last
  # row is the job's final model, so its numbers are the report's.
  from benchmarks import line_curve

  rows = list(line_curve.run(out, NEW_LINES_PRESETS["smoke"].n_fit, 30, {}))[-1]["rows"]
  assert [r["step"] for r in rows] == [30, 60]
  last = rows[-1]
  for k in ("recovery_error_pct", "no_recovery_error_pct", "attribution_accuracy"):
    assert abs(last[k] - m[k]) <= 1e-6 * max(1.0, abs(m[k])), k
  assert last["attribution_fe"] == fe["accuracy_all"]
  assert last["attribution_reference_star"] == m["attribution_accuracy_reference_star"]
  assert all(math.isfinite(last[k]) for k in ("Fe_H_transfer_gain", "Fe_H_csn_gain"))



def test_pretrained_weights_reproduce_their_run_and_refuse_other_worlds(
    smoke_nl, tmp_path, monkeypatch):
  from benchmarks import line_curve
  from cyclestar_jax import pretrained
  from cyclestar_jax.pipeline import new_lines
  from cyclestar_jax.pretrained import export

  out, m, _ = smoke_nl
  monkeypatch.setattr(pretrained, "DIR", tmp_path / "pre")
  curve = list(line_curve.run(out, 16, 30, {}))[-1]
  meta = export.export_run(out, curve=curve, curve_file="curve.json")
  assert meta["job"] == "new_lines" and meta["step"] == 60 and meta["preset"] == "smoke"
  assert pretrained.NEW_LINES.dir == tmp_path / "pre" / "new_lines"
  assert pretrained.NEW_LINES.available() and not pretrained.MAIN.available()
  assert meta["metrics"]["attribution_fe"] == m["attribution_per_element"]["Fe_H"]["accuracy_all"]
  readme = (pretrained.NEW_LINES.dir / "README.md").read_text()
  assert "python -m experiments.new_lines --preset smoke" in readme and "| 60 | " in readme

  # The command, as a user runs it: same data (the mock world is deterministic), same weights,
  # so the same analysis; no training split, no emulator or model trained.
  monkeypatch.setenv("CYCLESTAR_PRETRAINED_DIR", str(tmp_path / "pre"))
  lines = run_job("new_lines", "--pretrained", "--out", str(tmp_path / "run"))
  assert lines[0].startswith("using the pretrained weights (smoke preset, 60 iterations")
  m2 = json.loads((tmp_path / "run" / "metrics.json").read_text())
  for k in ("recovery_error_pct", "no_recovery_error_pct", "attribution_accuracy",
            "attribution_accuracy_reference_star"):
    assert m2[k] == pytest.approx(m[k], rel=1e-4, abs=1e-6), k
  assert m2["pretrained"]["step"] == 60 and m2["train_iterations"] == 60
  assert not (tmp_path / "run" / "model").exists()
  assert not (tmp_path / "run" / "emulator").exists()
  report = (tmp_path / "run" / "report.md").read_text()
  assert report.splitlines()[2].startswith("**This run used the package's pretrained weights")
  assert "## The pretrained weights along their training" in report
  assert "The recovery error flattened by iteration" in report

  quiet = new_lines.stages.RunOptions(progress=False)
  with pytest.raises(pretrained.PretrainedError, match="seed = 0, this run's has 1"):
    new_lines.run(tmp_path / "other", new_lines.Job(seed=1), quiet, pretrained=True)
  with pytest.raises(pretrained.PretrainedError,
                     match="masked_fraction = None, this run's has 0.5"):
    new_lines.run(tmp_path / "other", new_lines.Job(masked_fraction=0.5), quiet, pretrained=True)
  with pytest.raises(pretrained.PretrainedError, match="--n-iter"):
    new_lines.run(tmp_path / "other", new_lines.Job(n_iter=10), quiet, pretrained=True)
  assert not (tmp_path / "other").exists()


def test_the_cli_uses_pretrained_weights_only_when_nothing_else_is_asked(monkeypatch, tmp_path):
  from cyclestar_jax import pretrained
  from experiments import new_lines as cmd

  def wants(*argv):
    return cmd.wants_pretrained(cmd.parse_args(list(argv)))

  monkeypatch.setattr(pretrained, "DIR", tmp_path)
  assert not wants()  # none installed there
  monkeypatch.setattr(pretrained.Weights, "available", lambda self: True)
  monkeypatch.setattr(pretrained.Weights, "metadata", lambda self: {"seed": 0, "preset": "long"})
  assert wants() and wants("--out", "x") and wants("--pretrained")
  for argv in (("--train",), ("--preset", "cpu"), ("--seed", "1"), ("--n-iter", "10"),
               ("--masked-fraction", "0.5"), ("--sweep", "0.1:0.3:0.1")):
    assert not wants(*argv), argv
  with pytest.raises(ValueError, match="not with --pretrained"):
    cmd.main(["--pretrained", "--preset", "cpu"])
  with pytest.raises(SystemExit):
    cmd.parse_args(["--pretrained", "--train"])

def test_training_sees_the_synthetic_files_unchanged_at_any_masked_fraction():
  """The networks must train on the spectra the emulator learned: no extra mask on top of the
  world's own selection (at 10 %, the paper's 30 % `total_mask` would hide other lines)."""
  import numpy as np

  from cyclestar_jax import data, h5io, mock, resources

  world = mock.WorldConfig(experiment="new_lines", masked_fraction=0.1)
  y = mock.sample_labels(3, rng=1)
  x = np.asarray(mock.synthetic_spectrum(y, world), np.float32)
  extra = resources.kurucz_response()["total_mask"].astype(bool) & ~mock.masked_pixels(world)
  assert extra.sum() > 100 and np.all(x[:, extra].min(axis=0) < 1.0)  # lines the flag would hide
  mean, std = resources.spectra_mean_std()
  rows = h5io.Spectra(x=x, x_err=None, x_msk=None, y=None, snr=None)
  for name, p in NEW_LINES_PRESETS.items():
    got = data.standardize(rows, "synth", p.cycle)["x"]
    drop = x.shape[1] - p.cycle.n_pix
    np.testing.assert_allclose(got * std + mean, x[:, drop:], atol=1e-5, err_msg=name)


def test_case8_masked_fraction_outside_0_1_is_refused_at_once(capsys):
  import pytest

  from experiments import new_lines as command

  for bad in ("0", "1", "-0.1"):
    with pytest.raises(SystemExit) as e:
      command.parse_args(["--masked-fraction", bad])
    assert e.value.code == 2
    assert "--masked-fraction must be in (0, 1)" in capsys.readouterr().err


def test_one_get_preset_serves_both_jobs():
  """`presets.get_preset(..., job=)`: each job's presets, as the command lines offer them."""
  import pytest

  from cyclestar_jax import cli
  from cyclestar_jax.pipeline import presets

  for job, table in presets.JOB_PRESETS.items():
    assert tuple(table) == cli.JOB_PRESETS.get(job, cli.PRESETS), job
  long = presets.PRESETS["long"].cycle  # what `--preset`'s help says of it
  assert (cli.LONG_N_ITER, cli.LONG_LR_BOUNDARIES) == (long.n_iter, long.lr_boundaries_gen)
  assert long.lr_boundaries_critic == long.lr_boundaries_gen
  assert long.lr_decay_gen == long.lr_decay_critic == 0.5  # "halved"
  nl = presets.get_preset("cpu", job="new_lines")
  assert nl is NEW_LINES_PRESETS["cpu"] and nl.cycle.name == "new_lines_cpu"
  assert presets.get_preset("cpu") is presets.PRESETS["cpu"]
  assert presets.get_preset("smoke", 30, job="new_lines").cycle.n_iter == 30
  nl_long = presets.get_preset("long", job="new_lines").cycle  # new_lines' config, long's schedule
  assert nl_long.zsh_filters == nl.cycle.zsh_filters and nl_long.lambda_grid == nl.cycle.lambda_grid
  assert (nl_long.n_iter, nl_long.lr_boundaries_gen) == (long.n_iter, long.lr_boundaries_gen)
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    presets.get_preset("huge", job="new_lines")
  with pytest.raises(ValueError, match="unknown job"):
    presets.get_preset("cpu", job="lines")


def test_only_the_cpu_report_has_the_cpu_research_note():
  """A missed Fe target is said on every preset; what was tried, on the preset it was tried on."""
  from cyclestar_jax.pipeline.new_lines import report

  fe = {"n_features": 38, "accuracy_all": 0.2}
  for preset in ("smoke", "cpu", "paper", None):
    line = report.fe_attribution_line(fe, preset)
    assert "**not met**" in line
    assert ("What was tried on the cpu preset" in line) == (preset == "cpu"), preset
  assert "not met" not in report.fe_attribution_line({"n_features": 38, "accuracy_all": 0.9},
                                                     "paper")
