"""The Table-1 sweep (`pipeline.new_lines.sweep`, `experiments.new_lines --sweep`) with the
per-fraction job replaced by a fast fake: spec parsing, table contents, resume, atomic files."""

import csv
import dataclasses
import json

import pytest

from cyclestar_jax import cli
from cyclestar_jax.pipeline import new_lines, presets, stages
from cyclestar_jax.pipeline.new_lines import sweep

SPEC = "0.1:0.9:0.2"
FRACTIONS = [0.1, 0.3, 0.5, 0.7, 0.9]


class Interrupted(Exception):
  """Stands for a kill in the middle of a fraction."""


def _fake_metrics(f: float) -> dict:
  return {"recovery_error_pct": 0.4 + f, "no_recovery_error_pct": 10.0 * f,
          "recovery_ratio": (0.4 + f) / (10.0 * f), "attribution_accuracy": 1.0 - f / 2,
          "attribution_per_element": {"Fe_H": {"n_features": 40, "accuracy_all": 0.75}},
          "n_removed_features": int(round(415 * f)), "train_iterations": 60,
          "train_seconds": 30.0, "total_seconds": 60.0}


class FakeJob:
  """`new_lines.run` in milliseconds: the run folder's run.json (as the real job writes it) and
  metrics.json; raises `Interrupted` at `fail_at` after run.json, like a killed run."""

  def __init__(self, fail_at: float | None = None):
    self.calls: list[float] = []
    self.limits: list[float | None] = []
    self.fail_at = fail_at

  def __call__(self, out, job, options):
    log = options.log
    self.calls.append(job.masked_fraction)
    self.limits.append(options.train_limit_s)
    p = presets.get_preset(job.preset, job.n_iter, job="new_lines")
    paths = stages.RunPaths(out)
    stages.check_run_folder(paths, {"job": "new_lines", "preset": p.name,
                                    "n_iter": p.cycle.n_iter, "seed": job.seed,
                                    "masked_fraction": job.masked_fraction})
    log("[data] ...")
    if job.masked_fraction == self.fail_at:
      raise Interrupted
    m = _fake_metrics(job.masked_fraction)
    stages._write_json(paths.out / "metrics.json", m)
    return m


QUIET = stages.RunOptions(progress=False, log=lambda s: None)


@pytest.fixture
def no_plot(monkeypatch):
  monkeypatch.setattr(sweep, "plot_sweep", lambda rows, path, preset: None)


@pytest.mark.parametrize("spec, expected", [
    ("0.1:0.9:0.1", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    (SPEC, FRACTIONS),
    ("0.3:0.3:0.1", [0.3]),
    ("0.1:0.8:0.3", [0.1, 0.4, 0.7]),
    (" 0.25:0.75:0.25", [0.25, 0.5, 0.75]),
])
def test_parse_good(spec, expected):
  assert sweep.parse_sweep(spec) == expected


@pytest.mark.parametrize("spec, says", [
    ("0.1:0.9", "expected start:stop:step"), ("0.1:0.5:0.1:0.1", "expected start:stop:step"),
    ("", "expected"), ("a:0.9:0.1", "not three numbers"), ("0.1:0.9:nan", "not finite"),
    ("0:0.9:0.1", "start 0 is not strictly between 0 and 1"),
    ("0.1:1:0.1", "stop 1 is not strictly between 0 and 1"),
    ("-0.1:0.5:0.1", "start"), ("0.1:0.9:0", "step 0 is not positive"),
    ("0.1:0.9:-0.1", "not positive"), ("0.5:0.4:0.1", "no fraction"),
    ("0.1:0.9:1e-5", "more than 100"),
])
def test_parse_bad(spec, says):
  with pytest.raises(ValueError, match="--sweep") as e:
    sweep.parse_sweep(spec)
  assert says in str(e.value) and "\n" not in str(e.value)


def test_folder_names():
  assert [sweep.fraction_folder(f) for f in (0.1, 0.3, 0.125, 0.5)] == [
      "f0.10", "f0.30", "f0.125", "f0.50"]


def test_table_contents(tmp_path, monkeypatch):
  job = FakeJob()
  monkeypatch.setattr(new_lines, "run", job)
  real_plot, plotted = sweep.plot_sweep, []

  def plot_when_complete(rows, path, preset):  # the real plot once (a second each)
    plotted.append(sum(r["status"] == "done" for r in rows))
    return real_plot(rows, path, preset) if plotted[-1] == len(rows) else None

  monkeypatch.setattr(sweep, "plot_sweep", plot_when_complete)
  lines = []
  s = sweep.sweep(tmp_path / "sw", FRACTIONS, preset="smoke", spec=SPEC, options=stages.RunOptions(
      progress=False, log=lines.append, train_limit_s=60.0))
  assert job.limits == [60.0] * len(FRACTIONS)  # every fraction's job gets the limit
  out = tmp_path / "sw"
  on_disk = json.loads((out / "sweep.json").read_text())
  assert on_disk["n_done"] == 5 == s["n_done"] and on_disk["spec"] == SPEC
  assert on_disk["identity"]["preset"] == "smoke"
  for r, f in zip(on_disk["rows"], FRACTIONS, strict=True):
    assert r["status"] == "done" and r["fraction"] == f and r["folder"] == sweep.fraction_folder(f)
    assert (out / r["folder"] / "metrics.json").is_file()
    assert r["recovery_error_pct"] == pytest.approx(0.4 + f)
    assert r["no_recovery_error_pct"] == pytest.approx(10 * f)
    assert r["attribution_accuracy"] == pytest.approx(1 - f / 2)
    assert r["attribution_accuracy_fe"] == 0.75 and r["train_seconds"] == 30.0
    assert r["paper_error_pct"] == sweep.PAPER_TABLE1[f]
  rows = list(csv.DictReader((out / "table1.csv").open()))
  assert [float(r["fraction"]) for r in rows] == FRACTIONS
  assert float(rows[1]["recovery_error_pct"]) == pytest.approx(0.7)
  md = (out / "table1.md").read_text()
  assert "| 30 % | 124 | 0.700 | 3.000 | 0.23 | 0.3547 | 85 % | 75 % | 0.5 | 1.0 |" in md
  assert "table1.png" in md and on_disk["figure"] == "table1.png"
  assert plotted == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]  # at the start, as each starts, after
  assert (out / "table1.png").stat().st_size > 10_000
  progress = [x for x in lines if x.startswith("[sweep ")]
  assert sum("ETA" in x and "elapsed" in x for x in progress) == 10  # start and end of each
  assert progress[0].startswith("[sweep 1/5] masked fraction 0.1") and "ETA unknown" in progress[0]
  assert "[sweep 5/5]" in progress[-1]
  assert any(x.startswith("  f0.30 [data]") for x in lines)  # the job's own lines, prefixed


def test_resume_after_interruption(tmp_path, monkeypatch, no_plot):
  out = tmp_path / "sw"
  first = FakeJob(fail_at=0.5)
  monkeypatch.setattr(new_lines, "run", first)
  with pytest.raises(Interrupted):
    sweep.sweep(out, FRACTIONS, preset="smoke", options=QUIET)
  assert first.calls == [0.1, 0.3, 0.5]
  # What the interruption left: every sweep file whole, the finished fractions in them.
  on_disk = json.loads((out / "sweep.json").read_text())
  assert [r["status"] for r in on_disk["rows"]] == ["done", "done", "started", "pending",
                                                    "pending"]
  assert on_disk["n_done"] == 2
  assert len(list(csv.DictReader((out / "table1.csv").open()))) == 5
  assert "(started)" in (out / "table1.md").read_text()
  assert not list(out.glob(".*.tmp"))
  second = FakeJob()
  monkeypatch.setattr(new_lines, "run", second)
  lines = []
  s = sweep.sweep(out, FRACTIONS, preset="smoke",
                  options=stages.RunOptions(progress=False, log=lines.append))
  assert second.calls == [0.5, 0.7, 0.9]  # the finished ones read, not run again
  assert sum("done already" in x for x in lines) == 2
  assert any("masked fraction 0.5" in x and "resuming" in x for x in lines)
  assert s["n_done"] == 5 and all(r["status"] == "done" for r in s["rows"])
  assert s["wall_s_total"] == pytest.approx(on_disk["wall_s_total"] + s["elapsed_s"])
  third = FakeJob()
  monkeypatch.setattr(new_lines, "run", third)
  sweep.sweep(out, FRACTIONS, preset="smoke", options=QUIET)
  assert third.calls == []


def test_files_are_written_atomically(tmp_path, monkeypatch, no_plot):
  written = []
  real = sweep.atomic_write_text

  def spy(path, text):
    written.append(path.name)
    return real(path, text)

  monkeypatch.setattr(sweep, "atomic_write_text", spy)
  monkeypatch.setattr(stages, "atomic_write_text", spy)  # sweep.json via stages._write_json
  monkeypatch.setattr(new_lines, "run", FakeJob())
  sweep.sweep(tmp_path / "sw", [0.2, 0.4], preset="smoke", options=QUIET)
  sweep_files = [n for n in written if n in ("sweep.json", "table1.md", "table1.csv")]
  # At the start, as each fraction starts and after each one: 5 × the 3 files.
  assert sweep_files == ["sweep.json", "table1.csv", "table1.md"] * 5


def test_refuses_other_sweeps_and_other_folders(tmp_path, monkeypatch, no_plot):
  monkeypatch.setattr(new_lines, "run", FakeJob())
  out = tmp_path / "sw"
  sweep.sweep(out, [0.5], preset="smoke", options=QUIET)
  with pytest.raises(stages.RunFolderError, match="preset = 'smoke', not 'cpu'"):
    sweep.sweep(out, [0.5], preset="cpu", options=QUIET)
  with pytest.raises(stages.RunFolderError, match="n_iter"):
    sweep.sweep(out, [0.5], preset="smoke", n_iter=7, options=QUIET)
  s = sweep.sweep(out, [0.5], preset="smoke", n_iter=7,
                  options=dataclasses.replace(QUIET, overwrite=True))
  assert s["identity"]["n_iter"] == 7 and s["n_done"] == 1
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(stages.RunFolderError, match="not a sweep folder"):
    sweep.sweep(other, [0.5], preset="smoke", options=QUIET)


def test_done_marker_matches_the_real_job(tmp_path, monkeypatch):
  """The real `new_lines.run` writes the run.json identity the sweep reads (stopped before its
  first stage)."""
  def stop(*a, **kw):
    raise Interrupted

  monkeypatch.setattr(stages, "stage_data", stop)
  folder = tmp_path / "f0.30"
  with pytest.raises(Interrupted):
    new_lines.run(folder, new_lines.Job(preset="smoke", masked_fraction=0.3), QUIET)
  ident = sweep.sweep_identity("smoke", None, 0)
  assert not sweep._is_done(folder, ident, 0.3)  # no metrics.json yet
  stages._write_json(folder / "metrics.json", _fake_metrics(0.3))
  assert sweep._is_done(folder, ident, 0.3)
  assert not sweep._is_done(folder, ident, 0.5)
  assert not sweep._is_done(folder, sweep.sweep_identity("smoke", 7, 0), 0.3)


def test_cli(tmp_path, monkeypatch, capsys, no_plot):
  from experiments import new_lines as cmd

  rc = cli.run_main(cmd.main, ["--sweep", SPEC, "--masked-fraction", "0.3"], prog="new_lines")
  err = capsys.readouterr().err
  assert rc == 2 and "--sweep and --masked-fraction" in err.splitlines()[0]
  rc = cli.run_main(cmd.main, ["--sweep", "0.1:0.9", "--preset", "smoke"], prog="new_lines")
  assert rc == 2 and "--sweep '0.1:0.9'" in capsys.readouterr().err.splitlines()[0]
  fake = FakeJob()
  monkeypatch.setattr(new_lines, "run", fake)
  s = cmd.main(["--sweep", "0.2:0.4:0.2", "--preset", "smoke", "--out", str(tmp_path / "c"),
                "--no-progress"])
  assert fake.calls == [0.2, 0.4] and s["spec"] == "0.2:0.4:0.2"
  assert (tmp_path / "c" / "table1.md").is_file()
