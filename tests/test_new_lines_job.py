"""The line-identification job (`experiments.new_lines`) end to end on the smoke preset."""

import json

from cyclestar_jax.pipeline import new_lines

KEYS = ("recovery_error_pct", "no_recovery_error_pct", "recovery_error_binned_pct",
        "attribution_accuracy", "attribution_per_element", "cn_confusion",
        "attribution_accuracy_near_reference", "attribution_accuracy_reference_star",
        "zsp_sensitivity", "detection", "label_sets_per_s")


def test_smoke_writes_every_key_and_figure(tmp_path):
  out = tmp_path / "nl"
  lines = []
  m = new_lines.run(out, preset="smoke", progress=False, log=lines.append)
  on_disk = json.loads((out / "metrics.json").read_text())
  for k in KEYS:
    assert k in on_disk, k
  assert on_disk["n_label_sets"] == new_lines.PRESETS["smoke"].n_fit
  assert on_disk["n_removed_features"] == 133  # the paper's own selection
  fe = on_disk["attribution_per_element"]["Fe_H"]
  assert 35 <= fe["n_features"] <= 41 and 0.0 <= fe["accuracy_all"] <= 1.0
  assert 0 < m["recovery_error_pct"] and 0 < m["no_recovery_error_pct"]
  for f in ("fig12_line_identification.png", "fig13_recovery_map.png", "fig14_cn_features.png"):
    assert (out / "figures" / f).stat().st_size > 10_000, f
  assert "Recovery error" in (out / "report.md").read_text()
  assert any("report.md" in line for line in lines)
