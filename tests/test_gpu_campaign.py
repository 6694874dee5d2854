"""The GPU campaign's own logic (benchmarks/gpu_campaign.py): budget slices, n_iter choice,
packing against the return limits, campaign.json after failed and timed-out stages, headline
figures, the generator .npz; one real cheap stage (env). Not the --tiny run (minutes)."""

import json
import sys
import tarfile

import numpy as np
import pytest

from benchmarks import gpu_campaign as gc


def _campaign(tmp_path, budget=100.0, **kw):
  return gc.Campaign(tmp_path / "out", tmp_path / "work", budget, gc.TINY, tiny=True, **kw)


def test_slice_budget_fractions_and_rest():
  s = gc.slice_budget(480)
  assert s["train_step"] == pytest.approx(0.14 * 480, abs=0.1)
  assert s["main"] == pytest.approx(480 * (1 - sum(gc.SLICES.values())), abs=0.2)
  assert sum(v for k, v in s.items() if k != "main") + s["main"] == pytest.approx(480, abs=1)
  assert sum(gc.SLICES.values()) <= 0.65 + 1e-9  # the main job keeps at least a third
  with pytest.raises(ValueError):
    gc.slice_budget(0)
  with pytest.raises(ValueError):
    gc.slice_budget(10, {"a": 0.7, "b": 0.5})


def test_n_iter_rounding_and_bounds():
  assert gc.round_n_iter(12_345) == 12_000 and gc.round_n_iter(456) == 400
  assert gc.round_n_iter(57) == 50 and gc.round_n_iter(3) == 10
  # 300 s slice, 100 s outside training, 4 ms/it with a 1.25 margin → 40,000
  assert gc.choose_n_iter(300, 4.0, 100, (1000, 350_000)) == 40_000
  assert gc.choose_n_iter(50, 4.0, 100, (1000, 350_000)) == 1000  # no time: the least
  assert gc.choose_n_iter(1e6, 1.0, 0, (1000, 350_000)) == 350_000
  with pytest.raises(ValueError):
    gc.choose_n_iter(10, 0.0, 0, (1, 2))


def test_plan_main_splits_only_when_both_jobs_fit():
  small = gc.plan_main(200, 480, gc.GPU)
  assert small == {"apogee": 200, "fit_trained": 0.0, "new_lines": 0.0}
  big = gc.plan_main(3000, 3600, gc.GPU)
  assert big["fit_trained"] == pytest.approx(gc.FIT_TRAINED_SLICE * 3600)
  assert sum(big.values()) == pytest.approx(3000)
  assert big["apogee"] > big["new_lines"] > gc.GPU.overhead_new_lines_s


def test_pack_tar_drops_lowest_priority_to_fit(tmp_path):
  rng = np.random.default_rng(0)
  members = []
  for i in range(4):
    p = tmp_path / f"m{i}.bin"
    p.write_bytes(rng.bytes(40_000))  # incompressible
    members.append((f"a/b/c/m{i}.bin", p))
  info = gc.pack_tar(tmp_path / "x.tar.gz", members, limit=100_000)
  assert info["bytes"] <= 100_000 and info["dropped"] == ["a/b/c/m2.bin", "a/b/c/m3.bin"]
  with tarfile.open(tmp_path / "x.tar.gz") as t:
    assert t.getnames() == ["a/b/c/m0.bin", "a/b/c/m1.bin"]


def test_check_outputs_limits(tmp_path, monkeypatch):
  out = tmp_path / "out"
  out.mkdir()
  (out / "campaign.json").write_text("{}")
  assert gc.check_outputs(out)["ok"]
  monkeypatch.setattr(gc, "MAX_FILE_BYTES", 100)
  (out / "big.npz").write_bytes(b"0" * 101)
  (out / "a" / "b" / "c").mkdir(parents=True)
  (out / "a" / "b" / "c" / "deep.json").write_text("{}")
  (out / "bad name.txt").write_text("x")
  for i in range(6):
    (out / f"f{i}.json").write_text("{}")
  res = gc.check_outputs(out)
  text = " ".join(res["problems"])
  assert not res["ok"] and res["n_files"] == 10
  assert "big.npz" in text and "deep.json" in text and "bad name.txt" in text
  assert "more than the 8" in text
  assert {f["name"]: f["ok"] for f in res["files"]}["campaign.json"]


def test_run_folder_members_small_files_first(tmp_path):
  run = tmp_path / "apogee"
  for rel in ("report.md", "metrics.json", "figures/fig5.png", "fits/eq9.csv", "fits/eq9.h5",
              "data/synth.h5", "model/checkpoints/10/state.json", "model/metrics.jsonl"):
    (run / rel).parent.mkdir(parents=True, exist_ok=True)
    (run / rel).write_text("x")
  arcs = [a for a, _ in gc.run_folder_members(run, "apogee")]
  assert arcs[:2] == ["apogee/metrics.json", "apogee/report.md"]
  assert arcs[-1] == "apogee/fits/eq9.csv" and "apogee/figures/fig5.png" in arcs
  assert not any(a.endswith(".h5") or "checkpoints" in a for a in arcs)


def test_campaign_json_after_failed_and_timed_out_stages(tmp_path):
  c = _campaign(tmp_path)
  out = c.out
  c.run_stage("quick", [sys.executable, "-c", "print('{\"prestaged\": 1, \"batch\": 8}')"], 10,
              lambda log: gc.benchmark_result(c.result_path("quick"), log, "prestaged"))
  summ = json.loads((out / "campaign.json").read_text())
  assert summ["stages"]["quick"]["status"] == "ok"
  assert json.loads((out / "results.json").read_text())["quick"]["partial"] is True

  c.run_stage("broken", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 10)
  summ = json.loads((out / "campaign.json").read_text())
  assert summ["stages"]["broken"]["status"] == "failed (rc 3)"
  assert "boom" in summ["stages"]["broken"]["log_tail"]
  assert summ["stages"]["quick"]["status"] == "ok"  # earlier stages kept

  code = ("import json, time; print(json.dumps({'prestaged': {'ms_per_it': 2.0}, 'batch': 8, "
          "'precision': 'float32'}), flush=True); time.sleep(60)")
  c.run_stage("slow", [sys.executable, "-c", code], 3.5,
              lambda log: gc.benchmark_result(c.result_path("slow"), log, "prestaged"))
  summ = json.loads((out / "campaign.json").read_text())
  assert summ["stages"]["slow"]["status"] == "timeout"
  assert summ["stages"]["slow"]["seconds"] < 10
  assert json.loads((out / "results.json").read_text())["slow"]["results"][0]["batch"] == 8
  assert summ["outputs"]["ok"] and {f["name"] for f in summ["outputs"]["files"]} == {
      "campaign.json", "results.json", "logs.tar.gz"}
  with tarfile.open(out / "logs.tar.gz") as t:
    assert {"logs/quick.log", "logs/broken.log", "logs/slow.log"} <= set(t.getnames())
  assert summ["budget_s"] == 100 and summ["slices_s"]["train_step"] == 14.0
  assert "jax" in summ["versions"]


def test_stage_skipped_without_time_or_torch(tmp_path, monkeypatch):
  c = _campaign(tmp_path, budget=1.0)
  c.run_stage("late", [sys.executable, "-c", "pass"], 0.5)
  assert c.stages["late"]["status"].startswith("skipped: no time left")
  monkeypatch.setattr(gc.importlib.util, "find_spec", lambda name: None)
  gc.stage_torch(c)
  assert c.stages["torch_step"]["status"] == "skipped: torch missing"
  gc.stage_train_step_e2e(c)  # no mock files
  assert c.stages["train_step_e2e"]["status"].startswith("skipped: no mock files")


def test_headline_beside_targets():
  results = {
      "train_step": {"results": [
          {"batch": 8, "precision": "float32", "steps_per_call": 1,
           "prestaged": {"ms_per_it": 4.0}},
          {"batch": 256, "precision": "float32", "steps_per_call": 1,
           "prestaged": {"ms_per_it": 20.0}}]},
      "train_step_e2e": {"results": [
          {"batch": 8, "precision": "float32", "steps_per_call": 10,
           "prestaged": {"ms_per_it": 3.0}, "e2e_staged": {"ms_per_it": 3.2},
           "e2e_staged_over_prestaged": 0.94, "e2e_over_prestaged": 0.5,
           "e2e": {"ms_per_it": 6.0}}]},
      "fit": {"n": 32768, "trained_weights": False, "results": [
          {"method": "obs", "batch": 4096, "spectra_per_s": 1000.0},
          {"method": "emulator", "batch": 4096, "spectra_per_s": 5000.0}]},
      "jacobians": {"n": 100000, "runs": [{"seconds_per_100k": 25.0, "label_sets_per_s": 4000,
                                           "chunk_per_device": 256}]},
      "torch_step": {"results": [{"batch": 8, "precision": "float32", "mode": "shared",
                                  "network_applications": 19, "ms_per_it": 40.0}]},
      "apogee": {"n_iter": 5000, "metrics": {"preset": "paper", "train_iterations": 5000,
                                             "chi2r_ratio_eq9_over_eq11": 1.5}}}
  rows = {r["figure"]: r for r in gc.headline(results)}
  b8 = rows["train iteration, batch 8, float32, pre-staged, 1 per call"]
  assert b8["met"] and b8["speedup_vs_authors"] == pytest.approx(47.3 / 4, abs=0.01)
  assert "across GPU kinds" in b8["speedup_note"]
  assert rows["train iteration, batch 256, float32, pre-staged, 1 per call"]["met"] is False
  assert rows["staged / pre-staged it/s, batch 8, 10 per call"]["met"]
  eq11 = rows["fit: Eq. 11, 100,000 spectra (from 32768 measured)"]
  assert eq11["value"] == 100.0 and eq11["met"] and eq11["weights"].startswith("random")
  assert rows["fit: Eq. 9, 100,000 spectra (from 32768 measured)"]["met"]
  assert rows["derivative spectra, 100,000 label sets (from 100000 measured)"]["met"] is False
  torch_row = next(r for f, r in rows.items() if f.startswith("PyTorch"))
  assert torch_row["jax_speedup_same_gpu"] == 10.0
  assert rows["apogee: χ²_R ratio Eq. 9 / Eq. 11"]["met"] is False
  assert gc.measured_ms_per_it(results, 10.0) == (3.2, "train_step_e2e e2e_staged, batch 8")
  assert gc.measured_ms_per_it({}, 10.0)[0] == 10.0
  assert gc.headline({}) == []


def test_env_stage_runs_for_real(tmp_path):
  c = _campaign(tmp_path, budget=600.0)
  assert gc.stage_env(c, allow_cpu=True)
  assert c.stages["env"]["status"] == "ok"
  assert c.device["platform"] == "cpu" and c.device["n_devices"] >= 1
  summ = json.loads((c.out / "campaign.json").read_text())
  assert summ["device"]["platform"] == "cpu"
  c2 = gc.Campaign(tmp_path / "out2", tmp_path / "work2", 600.0, gc.GPU)
  assert not gc.stage_env(c2, allow_cpu=False)  # a GPU campaign refuses a CPU
  assert c2.stages["env"]["status"].startswith("failed: JAX sees no GPU")
