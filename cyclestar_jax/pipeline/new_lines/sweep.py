"""Paper Table 1: the line-identification job (`new_lines.run`) for each of several masked
fractions, and the table and plot of the recovery error against the fraction.

    DIR/sweep.json      identity (preset, n_iter, seed), the fractions, one row per fraction
    DIR/table1.md       the table (markdown), the paper's Table 1 beside it
    DIR/table1.csv      the same rows, machine-readable
    DIR/table1.png      recovery error (%) against the masked fraction, with the no-recovery
                        baseline and the paper's values
    DIR/f0.30/ ...      one run folder per fraction (`new_lines.run`'s conventions)

A fraction is done when its folder's metrics.json exists and its run.json names this preset,
n_iter, seed and fraction; a re-run reads it instead of running it again. An interrupted
fraction resumes through `new_lines.run` (its stages are skipped or resumed). The sweep files
are rewritten atomically at the start and after every fraction, so they always show the
fractions finished so far (the others as "pending" or "started").
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from cyclestar_jax import plots
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.pipeline import new_lines, stages
from cyclestar_jax.pipeline.presets import get_preset

# Paper Table 1 (§4.2): masked fraction → average error of the pixel recovery over the masked
# features, in % (docs/metrics_and_figures.md, 'Numbers the paper reports').
PAPER_TABLE1: dict[float, float] = {
    0.1: 0.3835, 0.2: 0.4136, 0.3: 0.3547, 0.4: 0.3750, 0.5: 0.3862, 0.6: 0.3903,
    0.7: 0.3794, 0.8: 4.4961, 0.9: 4.5906}
MAX_FRACTIONS = 100
_DECIMALS = 6  # fractions are rounded so that 0.1 + 2 × 0.1 is 0.3 (run.json compares exactly)
COLUMNS = ("fraction", "status", "n_removed_features", "recovery_error_pct",
           "no_recovery_error_pct", "recovery_ratio", "paper_error_pct", "attribution_accuracy",
           "attribution_accuracy_fe", "train_iterations", "train_seconds", "run_seconds",
           "folder")


def parse_sweep(spec: str) -> list[float]:
  """`start:stop:step` → the masked fractions start, start + step, ... ≤ stop (stop included).

  Every fraction must lie strictly between 0 and 1, the step be positive, and there be at least
  one and at most `MAX_FRACTIONS` of them; the fractions are rounded to 6 decimals.

  Raises:
    ValueError: one line naming `--sweep`, the spec and what was expected.
  """
  expected = ("expected start:stop:step with 0 < start ≤ stop < 1 and step > 0, e.g. "
              "0.1:0.9:0.1")
  parts = str(spec).split(":")
  if len(parts) != 3:
    raise ValueError(f"--sweep {spec!r}: {expected}")
  try:
    start, stop, step = (float(p) for p in parts)
  except ValueError:
    raise ValueError(f"--sweep {spec!r}: not three numbers; {expected}") from None
  if not all(math.isfinite(v) for v in (start, stop, step)):
    raise ValueError(f"--sweep {spec!r}: not finite; {expected}")
  if step <= 0:
    raise ValueError(f"--sweep {spec!r}: step {step:g} is not positive; {expected}")
  for name, v in (("start", start), ("stop", stop)):
    if not 0.0 < v < 1.0:
      raise ValueError(f"--sweep {spec!r}: {name} {v:g} is not strictly between 0 and 1 (a "
                       f"fraction of the features masked); {expected}")
  if stop < start:
    raise ValueError(f"--sweep {spec!r}: stop {stop:g} < start {start:g}, no fraction; "
                     f"{expected}")
  n = int(math.floor((stop - start) / step + 1e-9)) + 1
  if n > MAX_FRACTIONS:
    raise ValueError(f"--sweep {spec!r}: {n} fractions, more than {MAX_FRACTIONS}; choose a "
                     f"larger step")
  fractions = sorted({round(start + k * step, _DECIMALS) for k in range(n)})
  if len(fractions) < n:
    raise ValueError(f"--sweep {spec!r}: step {step:g} is below the fractions' resolution "
                     f"(1e-{_DECIMALS})")
  return fractions


def fraction_folder(f: float) -> str:
  """The subfolder of a fraction: 0.3 → "f0.30", 0.125 → "f0.125" (at least 2 decimals)."""
  s = f"{f:.{_DECIMALS}f}".rstrip("0")
  whole, _, dec = s.partition(".")
  return f"f{whole}.{dec.ljust(2, '0')}"


def sweep_identity(preset: str, n_iter: int | None, seed: int) -> dict:
  """What a sweep folder is of: the job, the preset, its training iterations, the seed."""
  p = get_preset(preset, n_iter, job=new_lines.JOB)
  return {"job": "new_lines_sweep", "preset": p.name, "n_iter": p.cycle.n_iter, "seed": seed}


def _is_done(folder: Path, ident: dict, f: float) -> bool:
  """Whether `folder` holds a finished `new_lines.run` of this sweep's identity at fraction f."""
  metrics, run_json = folder / "metrics.json", folder / "run.json"
  if not (metrics.is_file() and run_json.is_file()):
    return False
  old = stages.read_json(run_json).get("identity", {})
  want = {"job": "new_lines", "preset": ident["preset"], "n_iter": ident["n_iter"],
          "seed": ident["seed"], "masked_fraction": f}
  return all(json.dumps(old.get(k)) == json.dumps(v) for k, v in want.items())


def _row(f: float, folder: str, status: str, m: dict | None = None) -> dict:
  """One row of the table (`COLUMNS`) from a fraction's metrics.json (None: not done yet)."""
  row = dict.fromkeys(COLUMNS)
  row.update(fraction=f, status=status, folder=folder, paper_error_pct=PAPER_TABLE1.get(f))
  if m is not None:
    fe = m.get("attribution_per_element", {}).get("Fe_H", {})
    row.update(n_removed_features=m.get("n_removed_features"),
               recovery_error_pct=m.get("recovery_error_pct"),
               no_recovery_error_pct=m.get("no_recovery_error_pct"),
               recovery_ratio=m.get("recovery_ratio"),
               attribution_accuracy=m.get("attribution_accuracy"),
               attribution_accuracy_fe=fe.get("accuracy_all"),
               train_iterations=m.get("train_iterations"), train_seconds=m.get("train_seconds"),
               run_seconds=m.get("total_seconds"))
  return row


def _num(v, fmt: str, scale: float = 1.0, unit: str = "") -> str:
  """A table cell: `v × scale` in `fmt` then `unit`, or "–" for a missing or non-finite value."""
  if v is None or not math.isfinite(float(v)):
    return "–"
  return format(float(v) * scale, fmt) + unit


def render_markdown(sweep: dict) -> str:
  """table1.md: the rows of `sweep` (sweep.json's dict) with the paper's Table 1 beside them."""
  ident = sweep["identity"]
  out = [f"# Table 1 (paper §4.2): recovery error against the masked fraction, preset "
         f"`{ident['preset']}`", "",
         f"Mock world in missing-line mode, seed {ident['seed']}; Cycle-StarNet "
         f"{ident['n_iter']} iterations per fraction. Recovery error: mean |x_recovered − "
         f"x_true| / x_true over the masked pixels of {sweep.get('n_label_sets', '?')} label "
         f"sets (docs/metrics_and_figures.md); no recovery: the synthetic spectrum "
         f"(features removed) against "
         f"the truth. Attribution: share of the removed features (C/N left out) whose top label "
         f"is their element. Training: Cycle-StarNet's, over all attempts; run: the wall time "
         f"of the attempt that finished the fraction. {sweep['n_done']} of "
         f"{len(sweep['rows'])} fractions done; wall time "
         f"{sweep.get('wall_s_total', sweep['elapsed_s']) / 60:.1f} min over the invocations "
         f"so far (as recorded after each fraction), {sweep['elapsed_s'] / 60:.1f} min in the "
         f"last.", "",
         "| masked | features removed | recovery error (%) | no recovery (%) | ratio | "
         "paper Table 1 (%) | attribution | Fe attribution | training (min) | run (min) |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in sweep["rows"]:
    n_rm = "–" if r["n_removed_features"] is None else str(r["n_removed_features"])
    status = "" if r["status"] == "done" else f" ({r['status']})"
    out.append(
        f"| {r['fraction'] * 100:g} %{status} | {n_rm} | {_num(r['recovery_error_pct'], '.3f')} "
        f"| {_num(r['no_recovery_error_pct'], '.3f')} | {_num(r['recovery_ratio'], '.2f')} | "
        f"{_num(r['paper_error_pct'], '.4f')} | {_num(r['attribution_accuracy'], '.0f', 100, ' %')}"
        f" | {_num(r['attribution_accuracy_fe'], '.0f', 100, ' %')} | "
        f"{_num(r['train_seconds'], '.1f', 1 / 60)} | {_num(r['run_seconds'], '.1f', 1 / 60)} |")
  out += ["", "Paper (real Kurucz models, Table-2 networks, 350k iterations): 0.35–0.41 % for "
          "10–70 % masked, ≈ 4.5 % at 80–90 %.", "",
          f"![recovery error against the masked fraction]({sweep['figure']})"
          if sweep.get("figure") else "(no fraction done yet: no figure)"]
  return "\n".join(out) + "\n"


def render_csv(rows: Sequence[dict]) -> str:
  """table1.csv: one line per fraction, the columns `COLUMNS` (empty where not known)."""
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({k: "" if r[k] is None else r[k] for k in COLUMNS})
  return buf.getvalue()


def plot_sweep(rows: Sequence[dict], path: Path, preset: str) -> str | None:
  """table1.png from the done rows: this sweep's recovery error, its no-recovery baseline
  (dashed) and every row of the paper's Table 1; None when no row is done."""
  done = [r for r in rows if r["status"] == "done"]
  if not done:
    return None
  f = [r["fraction"] for r in done]
  curves = {f"Cycle-StarNet ({preset} preset)": [r["recovery_error_pct"] for r in done],
            "paper Table 1": (list(PAPER_TABLE1), list(PAPER_TABLE1.values()))}
  return plots.fig_recovery_vs_fraction(
      f, curves, path, baseline=[r["no_recovery_error_pct"] for r in done],
      title=f"Table 1: recovery of the masked features, {preset} preset")


def write_sweep_files(out: Path, sweep: dict, *, plot: bool = True) -> None:
  """sweep.json, table1.md, table1.csv (and table1.png), each written atomically."""
  if plot:
    png = plot_sweep(sweep["rows"], out / "table1.png", sweep["identity"]["preset"])
    sweep["figure"] = None if png is None else "table1.png"
  stages._write_json(out / "sweep.json", sweep)
  atomic_write_text(out / "table1.csv", render_csv(sweep["rows"]))
  atomic_write_text(out / "table1.md", render_markdown(sweep))


def _duration(s: float) -> str:
  """Seconds as "42 s", "3.2 min" or "1.5 h"."""
  return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _check_sweep_folder(out: Path, ident: dict, overwrite: bool) -> None:
  """Refuse (or with `overwrite` delete) a folder that is not a sweep of this identity."""
  sj = out / "sweep.json"
  if sj.is_file():
    old = stages.read_json(sj).get("identity", {})
    diff = [k for k, v in ident.items() if json.dumps(old.get(k)) != json.dumps(v)]
    if not diff:
      return
    if not overwrite:
      k = diff[0]
      raise stages.RunFolderError(
          f"{sj}: this folder holds a sweep with {k} = {old.get(k)!r}, not {ident[k]!r}; "
          f"choose another --out or pass --overwrite to start this folder again")
  elif out.exists() and any(out.iterdir()) and not overwrite:
    raise stages.RunFolderError(f"{out}: not empty and not a sweep folder (no sweep.json); "
                                f"choose another --out or pass --overwrite")
  if out.exists() and overwrite:
    shutil.rmtree(out)


def sweep(out: str | Path, fractions: Sequence[float], *, preset: str = "cpu",
          n_iter: int | None = None, seed: int = 0, spec: str | None = None,
          options: stages.RunOptions | None = None) -> dict:
  """Run `new_lines.run` for each masked fraction in its own subfolder and write Table 1.

  Args:
    out: the sweep folder (module docstring).
    fractions: masked fractions in (0, 1), e.g. `parse_sweep("0.1:0.9:0.1")`.
    preset, n_iter, seed: of every fraction's job (`new_lines.run`).
    spec: the `--sweep` text, recorded in sweep.json.
    options: `stages.RunOptions` (None: the defaults) of the sweep and every fraction's job:
      overwrite, delete a sweep folder (or a fraction's folder) of another identity instead of
      refusing it (folders of this identity are resumed either way); train_limit_s, of every
      job; progress, the jobs' progress bars; log, where the progress lines go (one per
      fraction: k of n, elapsed, ETA).

  Returns:
    sweep.json's dict: identity, fractions, rows (one per fraction, `COLUMNS`), n_done,
    elapsed_s (this invocation's wall time), wall_s_total (with the earlier invocations', as
    recorded at their last save), figure.
  """
  options = stages.RunOptions() if options is None else options
  overwrite, log = options.overwrite, options.log
  fractions = [round(float(f), _DECIMALS) for f in fractions]
  if not fractions:
    raise ValueError("--sweep: no fraction to run")
  bad = [f for f in fractions if not 0.0 < f < 1.0]
  if bad:
    raise ValueError(f"--sweep: masked fractions must lie strictly between 0 and 1, got {bad}")
  out = Path(out)
  ident = sweep_identity(preset, n_iter, seed)
  _check_sweep_folder(out, ident, overwrite)
  old = out / "sweep.json"
  before = float(stages.read_json(old).get("wall_s_total", 0.0)) if old.is_file() else 0.0
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  folders = [fraction_folder(f) for f in fractions]
  done = [_is_done(out / d, ident, f) for f, d in zip(fractions, folders, strict=True)]
  rows = [_row(f, d, "done", stages.read_json(out / d / "metrics.json")) if ok else
          _row(f, d, "started" if (out / d / "run.json").is_file() else "pending")
          for f, d, ok in zip(fractions, folders, done, strict=True)]
  n_label_sets = get_preset(preset, n_iter, job=new_lines.JOB).n_fit
  sweep_ = {"identity": ident, "spec": spec, "fractions": fractions, "rows": rows,
            "n_done": sum(done), "n_label_sets": n_label_sets,
            "elapsed_s": 0.0, "paper_table1": {str(k): v for k, v in PAPER_TABLE1.items()},
            "figure": None}

  def save() -> None:
    sweep_["elapsed_s"] = time.perf_counter() - t0
    sweep_["wall_s_total"] = before + sweep_["elapsed_s"]
    sweep_["n_done"] = sum(r["status"] == "done" for r in rows)
    write_sweep_files(out, sweep_)

  save()
  n = len(fractions)
  ran: list[float] = []  # wall seconds of the fractions run (not read) in this invocation
  fresh: list[float] = []  # of those, the ones started from scratch (a resumed one is shorter)

  def eta(left: int) -> str:
    per = fresh or ran
    return _duration(left * sum(per) / len(per)) if per else "unknown"
  for k, (f, d) in enumerate(zip(fractions, folders, strict=True), start=1):
    head = f"[sweep {k}/{n}] masked fraction {f:g}"
    if rows[k - 1]["status"] == "done":
      log(f"{head}: done already ({out / d}), skipped")
      continue
    resuming = rows[k - 1]["status"] == "started"
    log(f"{head} → {out / d} ({'resuming' if resuming else 'new'}); elapsed "
        f"{_duration(time.perf_counter() - t0)}, ETA "
        f"{eta(sum(r['status'] != 'done' for r in rows))}")
    rows[k - 1]["status"] = "started"
    save()
    t_f = time.perf_counter()
    m = new_lines.run(out / d, new_lines.Job(preset, n_iter, seed, f), dataclasses.replace(
        options, log=lambda s, d=d: log(f"  {d} {s}")))
    ran.append(time.perf_counter() - t_f)
    if not resuming:
      fresh.append(ran[-1])
    rows[k - 1] = _row(f, d, "done", m)
    save()
    log(f"{head} done in {_duration(ran[-1])}: recovery {m['recovery_error_pct']:.3f} % "
        f"(no recovery {m['no_recovery_error_pct']:.3f} %), attribution "
        f"{m['attribution_accuracy']:.0%}; {k}/{n}, elapsed "
        f"{_duration(time.perf_counter() - t0)}, ETA "
        f"{eta(sum(r['status'] != 'done' for r in rows))}")
  log(f"[sweep] {out / 'table1.md'}: {sweep_['n_done']} of {n} fractions "
      f"({_duration(time.perf_counter() - t0)} this run)")
  return sweep_
