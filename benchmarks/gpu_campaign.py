"""GPU campaign (issue 12): every speed target, then the paper-scale models, in one time budget.

  PYTHONPATH=. python3 -m benchmarks.gpu_campaign --out DIR --budget-s S [--tiny]
      [--work /tmp/cyclestar_campaign] [--skip STAGE,...] [--allow-cpu]
      [--overhead-apogee-s S] [--overhead-new-lines-s S] [--n-iter-apogee N]

One budget for the whole run. Each stage is a subprocess of the project's own commands with its
own timeout, a fixed slice of the budget (`SLICES`, printed at the start), so a slow or hung
stage cannot eat the rest; after every stage `DIR/campaign.json` (summary: date, device,
versions, per-stage status ok / timeout / failed / skipped and seconds, the headline figures
beside their targets) and `DIR/results.json` (every stage's own JSON) are rewritten, so a run
cut off anywhere still returns what was done. Stages, cheap never-measured ones first:

  env             JAX's devices (refuses a CPU unless --tiny / --allow-cpu), nvidia-smi
  mock            small mock files for the data-path timings (experiments.make_data)
  train_step      benchmarks.train_step: batches 8, 64, 256, float32 and bf16, pre-staged
  train_step_e2e  the same step fed from the HDF5 files: streamed and device-staged (--e2e),
                  10 iterations per call as the trainer runs on a GPU
  fit             benchmarks.fit: Eq. 11 and Eq. 9 fits of 32,768 mock spectra, Table-2
                  networks with random weights (said so), default starts and stopping rule,
                  quality against an unhurried fit of 256
  jacobians       benchmarks.jacobians: derivative spectra of 100,000 label sets (after a probe)
  torch_step      benchmarks.torch_step: the same step in eager PyTorch, same GPU (skipped
                  when torch is missing)
  profile         a jax.profiler trace of the batch-8 step (into logs.tar.gz)
  apogee          python -m experiments.apogee --preset paper --n-iter N, N from what is left
                  and the measured ms/iteration; then its generator and emulator as .npz
  fit_trained     benchmarks.fit again with the weights just trained (if time is left)
  new_lines       python -m experiments.new_lines --preset paper --n-iter M (if time is left)

What DIR holds at the end (the GPU machine returns at most 8 files of ≤ 16 MiB, 64 MiB in all,
≤ 2 folders deep; this writes DIR flat): campaign.json, results.json, logs.tar.gz (stage logs,
raw JSON, the profile trace), figures.tar.gz (reports, metrics, run.json and PNGs of the runs),
apogee_generator.npz, apogee_emulator.npz, new_lines_generator.npz, new_lines_emulator.npz
(float32; the generator without critics, which `checkpoint.load_cycle_model` reads; the emulator
in The Payne's layout: `emulator.load_emulator`). Sizes are checked against the limits (`outputs` in
campaign.json). Scratch (mock files, run folders, JAX's compilation cache) goes to --work.

`--tiny` runs every stage on a CPU with tiny sizes (the `smoke` networks and preset, a few
spectra): a check of the code paths, not of speed.

`python -m benchmarks.gpu_campaign export-generator RUN_DIR FILE.npz` writes a trained run's
generator (what `checkpoint.load_cycle_model` returns) as such an .npz.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cyclestar_jax.fileio import atomic_write, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
# What the GPU machine sends back (device README): files, bytes per file, bytes in all, depth.
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES, MAX_DEPTH = 8, 16 * MiB, 64 * MiB, 2
_NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")

# Fixed slices of the budget (fractions): each stage's timeout. `pack` is kept back to the end
# for packing; the main job (apogee), fit_trained and new_lines share what is left (≥ 0.35).
SLICES: dict[str, float] = {
    "env": 0.03, "mock": 0.06, "train_step": 0.14, "train_step_e2e": 0.10, "fit": 0.13,
    "jacobians": 0.07, "torch_step": 0.06, "profile": 0.03, "pack": 0.03}
FIT_TRAINED_SLICE = 0.12  # most of the budget fit_trained may take, when time is left
NEW_LINES_SHARE = 0.4  # of what is left after the speed stages, when both jobs fit in it
MAIN_STAGES = ("apogee", "fit_trained", "new_lines")
STAGES = ("env", "mock", "train_step", "train_step_e2e", "fit", "jacobians", "torch_step",
          "profile") + MAIN_STAGES
MIN_STAGE_S = 3.0  # a stage left less than this is skipped
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this

# Issue 12's targets (one H200) and the authors' figures (PyTorch, one H100; benchmarks/README.md).
AUTHORS_MS_H100 = {8: 47.3, 64: 53.1, 256: 74.3}
TRAIN_TARGET_MS = {8: (4.7, 2.4), 256: (18.0, 7.0)}  # (target, aim) in ms per iteration
STAGED_MIN_RATIO = 0.9  # staged it/s ≥ 0.9 × pre-staged (within 10 %)
EQ11_100K_S = (180.0, 60.0)  # (target, aim) for 100,000 Eq. 11 fits
AUTHORS_S_PER_SPECTRUM = 0.7  # authors' Eq. 11 fit of one spectrum on an H100
JAC_100K_S = (20.0, 5.0)  # (target, aim) for 100,000 label sets of derivative spectra
PAPER_CHI2R_RATIO = 1.8  # main-job target of the χ²_R ratio Eq. 9 / Eq. 11 (paper preset)
ACROSS = "across GPU kinds: the authors' figure is from an H100"


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What each stage runs: the GPU campaign (`GPU`) or the CPU check of its code (`TINY`).

  Attributes:
    config: network config of the speed benchmarks.
    preset: preset of the main job and of new_lines.
    mock_rows: (train, val, test) stars per domain of the data-path mock files.
    train_batches, train_precisions, train_steps, train_repeats, check_steps: train_step.
    e2e_batches, e2e_steps_per_call, e2e_steps, e2e_repeats: train_step_e2e.
    fit_n, fit_batch, fit_quality_n, fit_chunk: benchmarks.fit (spectra, slots, unhurried
      comparison, spectra per device call).
    jac_probe_n, jac_n, jac_chunk: jacobians (probe, full count, label sets per device call).
    torch_batches, torch_steps, torch_repeats, torch_warmup: torch_step.
    n_iter_bounds: (least, most) training iterations of the main jobs.
    overhead_apogee_s, overhead_new_lines_s: seconds of a job spent outside the training loop
      (data, emulator, compilation, fits or derivatives, report), for choosing n_iter.
    min_train_s: least training seconds that make a job worth starting when time is short.
    default_ms_per_it: ms per iteration assumed when no speed stage measured it.
  """

  config: str
  preset: str
  mock_rows: tuple[int, int, int]
  train_batches: str
  train_precisions: str
  train_steps: int
  train_repeats: int
  check_steps: int
  e2e_batches: str
  e2e_steps_per_call: int
  e2e_steps: int
  e2e_repeats: int
  fit_n: int
  fit_batch: int
  fit_quality_n: int
  fit_chunk: int
  jac_probe_n: int
  jac_n: int
  jac_chunk: int
  torch_batches: str
  torch_steps: int
  torch_repeats: int
  torch_warmup: int
  n_iter_bounds: tuple[int, int]
  overhead_apogee_s: float
  overhead_new_lines_s: float
  min_train_s: float
  default_ms_per_it: float


GPU = Sizes(
    config="kurucz_to_apogee_1", preset="paper", mock_rows=(1024, 64, 64),
    train_batches="8,64,256", train_precisions="float32,bf16", train_steps=20, train_repeats=5,
    check_steps=2, e2e_batches="8,256", e2e_steps_per_call=10, e2e_steps=20, e2e_repeats=3,
    fit_n=32768, fit_batch=4096, fit_quality_n=256, fit_chunk=16384, jac_probe_n=16384,
    jac_n=100_000, jac_chunk=256, torch_batches="8,256", torch_steps=10, torch_repeats=3,
    torch_warmup=3, n_iter_bounds=(1000, 350_000), overhead_apogee_s=240.0,
    overhead_new_lines_s=240.0, min_train_s=30.0, default_ms_per_it=10.0)
TINY = Sizes(
    config="smoke", preset="smoke", mock_rows=(64, 16, 16), train_batches="4",
    train_precisions="float32,bf16", train_steps=2, train_repeats=1, check_steps=1,
    e2e_batches="4", e2e_steps_per_call=1, e2e_steps=2, e2e_repeats=1, fit_n=16, fit_batch=8,
    fit_quality_n=4, fit_chunk=16, jac_probe_n=4, jac_n=8, jac_chunk=4, torch_batches="2",
    torch_steps=1, torch_repeats=1, torch_warmup=1, n_iter_bounds=(20, 20),
    overhead_apogee_s=150.0, overhead_new_lines_s=150.0, min_train_s=5.0,
    default_ms_per_it=500.0)


# ---------------------------------------------------------------------------------------------
# Budget.


def slice_budget(budget_s: float, slices: dict[str, float] = SLICES) -> dict[str, float]:
  """Seconds of each fixed slice, and `main`: what the fixed slices leave (≥ 0).

  Args:
    budget_s: the whole run's seconds (> 0).
    slices: stage name → fraction of the budget; the fractions must add up to at most 1.

  Returns:
    {stage: seconds} for every stage of `slices`, plus "main".
  """
  if not budget_s > 0:
    raise ValueError(f"--budget-s must be > 0, got {budget_s}")
  total = sum(slices.values())
  if total > 1 + 1e-9 or min(slices.values()) < 0:
    raise ValueError(f"slices must be ≥ 0 and add up to ≤ 1, got {total:.3f}")
  out = {k: round(v * budget_s, 1) for k, v in slices.items()}
  out["main"] = round(max(0.0, 1 - total) * budget_s, 1)
  return out


def round_n_iter(n: float) -> int:
  """Iterations rounded down so that a tenth of them divides by 10 (the trainer's validation
  and checkpoint interval, `presets.shorten`, then admits 10 iterations per call): multiples
  of 1,000 from 1,000, of 100 from 100, else of 10 (at least 10)."""
  for step in (1000, 100, 10):
    if n >= step:
      return int(n // step * step)
  return 10


def choose_n_iter(seconds: float, ms_per_it: float, overhead_s: float,
                  bounds: tuple[int, int], margin: float = 1.25) -> int:
  """Training iterations that fit in `seconds` of a job.

  Args:
    seconds: the job's time slice.
    ms_per_it: measured milliseconds per training iteration (> 0).
    overhead_s: seconds the job spends outside its training loop.
    bounds: (least, most) iterations returned.
    margin: the loop's time per iteration over `ms_per_it` (validation, checkpoints, logs).

  Returns:
    round_n_iter((seconds − overhead_s) / (margin · ms_per_it)), clamped to `bounds`.
  """
  if not ms_per_it > 0:
    raise ValueError(f"ms_per_it must be > 0, got {ms_per_it}")
  lo, hi = bounds
  n = max(0.0, seconds - overhead_s) * 1e3 / (margin * ms_per_it)
  return int(min(hi, max(lo, round_n_iter(n) if n >= 10 else lo)))


def plan_main(avail_s: float, budget_s: float, sizes: Sizes) -> dict[str, float]:
  """Seconds of the apogee job out of `avail_s` (what the speed stages and the packing
  reserve leave), and what it leaves to fit_trained and new_lines.

  When both jobs and fit_trained fit with at least `min_train_s` of training each, new_lines
  gets `NEW_LINES_SHARE` of what fit_trained leaves; otherwise apogee gets everything and the
  later stages run only on what it leaves unused.
  """
  fit_s = FIT_TRAINED_SLICE * budget_s
  both = sizes.overhead_apogee_s + sizes.overhead_new_lines_s + 2 * sizes.min_train_s + fit_s
  if avail_s >= both:
    apogee = (avail_s - fit_s) * (1 - NEW_LINES_SHARE)
    return {"apogee": apogee, "fit_trained": fit_s, "new_lines": avail_s - fit_s - apogee}
  return {"apogee": avail_s, "fit_trained": 0.0, "new_lines": 0.0}


# ---------------------------------------------------------------------------------------------
# Subprocesses and their output.


def _kill_group(p: subprocess.Popen) -> None:
  """SIGTERM to the process group this campaign started for `p`, SIGKILL after a grace."""
  for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
    with contextlib.suppress(ProcessLookupError, PermissionError):
      os.killpg(p.pid, sig)
    try:
      p.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      continue


def run_command(argv: list[str], timeout_s: float, log_path: Path,
                env: dict[str, str] | None = None) -> tuple[str, int | None, float]:
  """Run argv in its own process group with stdout and stderr into log_path.

  Returns:
    (status "ok" / "timeout" / "failed (rc N)", return code or None, seconds).
  """
  log_path.parent.mkdir(parents=True, exist_ok=True)
  group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, **group)
    try:
      rc = p.wait(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
      _kill_group(p)
      return "timeout", None, time.perf_counter() - t0
    except BaseException:  # interrupted (SIGTERM of the campaign): end the stage too
      _kill_group(p)
      raise
  return ("ok" if rc == 0 else f"failed (rc {rc})"), rc, time.perf_counter() - t0


def log_tail(path: Path, n: int = 25) -> list[str]:
  """The last n lines of a log (≤ 300 characters each), [] if there is none."""
  if not path.is_file():
    return []
  with open(path, "rb") as f:
    f.seek(max(0, path.stat().st_size - 64 * 1024))
    lines = f.read().decode("utf-8", "replace").splitlines()
  return [ln[:300] for ln in lines[-n:]]


def json_lines(path: Path, key: str) -> list[dict]:
  """The one-line JSON objects holding `key` that a benchmark printed as it went."""
  out = []
  if not path.is_file():
    return out
  for line in path.read_text(errors="replace").splitlines():
    line = line.strip()
    if line.startswith("{") and line.endswith("}"):
      with contextlib.suppress(json.JSONDecodeError):
        obj = json.loads(line)
        if isinstance(obj, dict) and key in obj:
          out.append(obj)
  return out


def read_json(path: Path) -> dict | None:
  """A JSON file's dict, or None if it is missing or unreadable."""
  try:
    return json.loads(Path(path).read_text())
  except (OSError, json.JSONDecodeError):
    return None


def benchmark_result(json_path: Path, log_path: Path, row_key: str) -> dict | None:
  """A benchmark's JSON output, or (cut off) the rows it printed so far, marked partial."""
  res = read_json(json_path)
  if res is not None:
    return res
  rows = json_lines(log_path, row_key)
  return {"partial": True, "results": rows} if rows else None


# ---------------------------------------------------------------------------------------------
# Packing for the way back.


def pack_tar(dest: Path, members: list[tuple[str, Path]], limit: int = MAX_FILE_BYTES) -> dict:
  """A .tar.gz of `members` (arcname, path) in priority order, at most `limit` bytes: members
  are dropped from the end until it fits.

  Returns:
    {"file", "bytes", "members": n included, "dropped": [arcnames left out]}.
  """
  members = [(a, Path(p)) for a, p in members if Path(p).is_file()]
  dropped: list[str] = []
  while True:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
      for arc, path in members:
        tar.add(path, arcname=arc, recursive=False)
    if buf.tell() <= limit or not members:
      break
    # Drop the lowest-priority tail: one member, or a tenth of them when there are many.
    k = max(1, len(members) // 10)
    dropped = [a for a, _ in members[-k:]] + dropped
    members = members[:-k]
  data = buf.getvalue()
  atomic_write(dest, lambda f: f.write(data))
  return {"file": dest.name, "bytes": len(data), "members": len(members), "dropped": dropped}


def check_outputs(out_dir: Path) -> dict:
  """What the GPU machine would send back of out_dir, against its limits.

  Returns:
    {"files": [{name, bytes, ok}], "n_files", "total_bytes", "ok", "problems": [sentences]}.
  """
  files, problems = [], []
  for path in sorted(p for p in Path(out_dir).rglob("*") if p.is_file()):
    rel = path.relative_to(out_dir)
    size = path.stat().st_size
    ok = size <= MAX_FILE_BYTES and len(rel.parts) - 1 <= MAX_DEPTH and all(
        _NAME_OK.match(x) for x in rel.parts)
    files.append({"name": str(rel), "bytes": size, "ok": ok})
    if size > MAX_FILE_BYTES:
      problems.append(f"{rel}: {size / MiB:.1f} MiB, over the {MAX_FILE_BYTES // MiB} MiB a "
                      f"file may have: it will not come back")
    if len(rel.parts) - 1 > MAX_DEPTH:
      problems.append(f"{rel}: more than {MAX_DEPTH} folders deep: it will not come back")
    if not all(_NAME_OK.match(x) for x in rel.parts):
      problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', "
                      f"'-': it will not come back")
  total = sum(f["bytes"] for f in files)
  if len(files) > MAX_FILES:
    problems.append(f"{len(files)} files, more than the {MAX_FILES} that come back")
  if total > MAX_TOTAL_BYTES:
    problems.append(f"{total / MiB:.1f} MiB in all, over {MAX_TOTAL_BYTES // MiB} MiB")
  return {"files": files, "n_files": len(files), "total_bytes": total, "ok": not problems,
          "problems": problems}


_RUN_SUFFIXES = {".md": 0, ".json": 0, ".png": 1, ".jsonl": 2, ".csv": 3, ".txt": 3}


def run_folder_members(run_dir: Path, prefix: str) -> list[tuple[str, Path]]:
  """A run folder's small files (report, metrics, run.json, PNGs, metrics.jsonl, fit CSVs), no
  HDF5 or checkpoints, ordered by priority (reports and JSON first, CSVs last)."""
  if not run_dir.is_dir():
    return []
  found = []
  for path in run_dir.rglob("*"):
    rel = path.relative_to(run_dir)
    if (not path.is_file() or path.suffix not in _RUN_SUFFIXES or "checkpoints" in rel.parts
        or "checkpoint" in rel.parts or path.name.startswith(".")):
      continue
    found.append((_RUN_SUFFIXES[path.suffix], len(rel.parts), str(rel), path))
  return [(f"{prefix}/{rel}", path) for _, _, rel, path in sorted(found)]


# ---------------------------------------------------------------------------------------------
# The generator as a float32 .npz (no critics, no optimizer state).

def export_generator(run_dir: Path, dest: Path) -> dict:
  """The newest checkpoint of a training run directory → `save_generator_npz` at dest."""
  from cyclestar_jax.checkpoint import load_cycle_model, save_generator_npz

  model = load_cycle_model(run_dir)
  ckpts = Path(run_dir) / "checkpoints"
  steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
  meta = {"source": model.source, "checkpoint_step": max(steps, default=None),
          "weights": "TrainState.gen_ema (what fitting and derivatives use)",
          "config": model.nets.cfg.name}
  save_generator_npz(dest, model, meta)
  return {**meta, "file": dest.name, "bytes": dest.stat().st_size}


# ---------------------------------------------------------------------------------------------
# Headline figures beside their targets.


def _row(figure: str, value, unit: str, *, target: str | None = None, met: bool | None = None,
         **extra) -> dict:
  out = {"figure": figure, "value": None if value is None else round(float(value), 4),
         "unit": unit}
  if target is not None:
    out.update(target=target, met=met)
  out.update({k: v for k, v in extra.items() if v is not None})
  return out


def _train_rows(res: dict) -> list[dict]:
  rows = []
  for r in (res or {}).get("results", []):
    b, prec, ms = r.get("batch"), r.get("precision"), r.get("prestaged", {}).get("ms_per_it")
    if ms is None:
      continue
    spc = r.get("steps_per_call", 1)
    target, aim = TRAIN_TARGET_MS.get(b, (None, None))
    ref = AUTHORS_MS_H100.get(b)
    rows.append(_row(
        f"train iteration, batch {b}, {prec}, pre-staged, {spc} per call", ms, "ms",
        target=None if target is None else f"≤ {target} ms (aim {aim})",
        met=None if target is None else ms <= target,
        authors_h100_ms=ref, speedup_vs_authors=None if ref is None else round(ref / ms, 2),
        speedup_note=None if ref is None else ACROSS,
        agrees_with_float32=r.get("agrees_1e-3")))
  return rows


def _e2e_rows(res: dict) -> list[dict]:
  rows = []
  for r in (res or {}).get("results", []):
    b, spc = r.get("batch"), r.get("steps_per_call", 1)
    ratio = r.get("e2e_staged_over_prestaged")
    if ratio is not None:
      rows.append(_row(f"staged / pre-staged it/s, batch {b}, {spc} per call", ratio, "ratio",
                       target=f"≥ {STAGED_MIN_RATIO} (within 10 %)",
                       met=ratio >= STAGED_MIN_RATIO,
                       staged_ms_per_it=r.get("e2e_staged", {}).get("ms_per_it")))
    if r.get("e2e_over_prestaged") is not None:
      rows.append(_row(f"streamed (HDF5) / pre-staged it/s, batch {b}, {spc} per call",
                       r["e2e_over_prestaged"], "ratio",
                       streamed_ms_per_it=r.get("e2e", {}).get("ms_per_it")))
  return rows


def _fit_rows(res: dict, label: str, trained: bool) -> list[dict]:
  rows, proj = [], {}
  weights = "trained (this run)" if trained else (
      "random (converge in ~44 iterations instead of ~260 with trained weights)")
  n = (res or {}).get("n", "?")
  for r in (res or {}).get("results", []):
    sps = r.get("spectra_per_s")
    if not sps:
      continue
    method, b = r.get("method"), r.get("batch")
    eq = {"obs": "Eq. 11", "emulator": "Eq. 9", "synth": "Eq. 10"}.get(method, method)
    p = 1e5 / sps
    proj[method] = p
    extra = {"spectra_per_s": round(sps, 2), "weights": weights, "batch": b,
             "iterations_p50": r.get("iterations_p50"),
             "dchi2_p95_vs_unhurried": r.get("quality_vs_unhurried", {}).get("dchi2_p95")}
    if method == "obs":
      ref = 1e5 * AUTHORS_S_PER_SPECTRUM
      rows.append(_row(f"{label}: {eq}, 100,000 spectra (from {n} measured)", p, "s",
                       target=f"≤ {EQ11_100K_S[0]:.0f} s (aim {EQ11_100K_S[1]:.0f})",
                       met=p <= EQ11_100K_S[0], authors_h100_s=ref,
                       speedup_vs_authors=round(ref / p, 1), speedup_note=ACROSS, **extra))
    else:
      rows.append(_row(f"{label}: {eq}, 100,000 spectra (from {n} measured)", p, "s", **extra))
  if "emulator" in proj and "obs" in proj:
    for row in rows:
      if "Eq. 9" in row["figure"]:
        row.update(target="faster than Eq. 11", met=proj["emulator"] < proj["obs"])
  return rows


def _jac_rows(res: dict) -> list[dict]:
  runs = (res or {}).get("runs", [])
  if not runs:
    return []
  best = min(runs, key=lambda r: r["seconds_per_100k"])
  return [_row(f"derivative spectra, 100,000 label sets (from {res.get('n', '?')} measured)",
               best["seconds_per_100k"], "s",
               target=f"≤ {JAC_100K_S[0]:.0f} s (aim {JAC_100K_S[1]:.0f})",
               met=best["seconds_per_100k"] <= JAC_100K_S[0],
               label_sets_per_s=round(best["label_sets_per_s"], 1),
               chunk_per_device=best.get("chunk_per_device"))]


def _torch_rows(res: dict, train: dict) -> list[dict]:
  jax_ms = {(r["batch"], r["precision"]): r["prestaged"]["ms_per_it"]
            for r in (train or {}).get("results", [])
            if r.get("steps_per_call", 1) == 1 and "prestaged" in r}
  rows = []
  for r in (res or {}).get("results", []):
    b, prec, ms = r["batch"], r["precision"], r["ms_per_it"]
    j = jax_ms.get((b, prec))
    ref = AUTHORS_MS_H100.get(b)
    rows.append(_row(f"PyTorch eager iteration, batch {b}, {prec}, {r['mode']} "
                     f"({r.get('network_applications')} network applications)", ms, "ms",
                     jax_ms=j, jax_speedup_same_gpu=None if j is None else round(ms / j, 2),
                     authors_h100_ms=ref))
  return rows


def _job_rows(res: dict, job: str) -> list[dict]:
  m = (res or {}).get("metrics") or {}
  rows = []
  if res and res.get("n_iter") is not None:
    rows.append(_row(f"{job}: training iterations (paper 350,000)", m.get(
        "train_iterations", res["n_iter"]), "iterations",
        train_seconds=m.get("train_seconds"), requested=res["n_iter"]))
  if job == "apogee":
    ratio = m.get("chi2r_ratio_eq9_over_eq11")
    if ratio is not None:
      want = PAPER_CHI2R_RATIO if m.get("preset") == "paper" else 1.3
      rows.append(_row("apogee: χ²_R ratio Eq. 9 / Eq. 11", ratio, "ratio",
                       target=f"≥ {want}", met=ratio >= want))
    if m.get("paired_transfer_chi2r") is not None:
      rows.append(_row("apogee: paired χ²_R with transfer (no transfer / floor beside)",
                       m["paired_transfer_chi2r"], "chi2r",
                       untransferred=m.get("paired_untransferred_chi2r"),
                       floor=m.get("mock_floor_chi2r", 1.24)))
  if job == "new_lines":
    for key, unit in (("recovery_error_pct", "%"), ("no_recovery_error_pct", "%"),
                      ("recovery_ratio", "ratio"), ("attribution_accuracy", "fraction"),
                      ("label_sets_per_s", "label sets/s")):
      if m.get(key) is not None:
        rows.append(_row(f"new_lines: {key}", m[key], unit))
  return rows


def headline(results: dict[str, dict]) -> list[dict]:
  """The campaign's figures beside issue 12's targets and the authors' numbers, from the
  stages' results (each missing stage is left out)."""
  r = results
  return (_train_rows(r.get("train_step")) + _train_rows(r.get("train_step_e2e"))
          + _e2e_rows(r.get("train_step_e2e")) + _fit_rows(r.get("fit"), "fit", False)
          + _jac_rows(r.get("jacobians")) + _torch_rows(r.get("torch_step"), r.get("train_step"))
          + _job_rows(r.get("apogee"), "apogee")
          + _fit_rows(r.get("fit_trained"), "fit_trained", True)
          + _job_rows(r.get("new_lines"), "new_lines"))


def measured_ms_per_it(results: dict[str, dict], default: float) -> tuple[float, str]:
  """ms per training iteration for choosing n_iter, and where it came from: the staged
  e2e figure at the smallest batch (as the trainer runs), else pre-staged, else `default`."""
  for stage, key in (("train_step_e2e", "e2e_staged"), ("train_step_e2e", "prestaged"),
                     ("train_step", "prestaged")):
    rows = [x for x in (results.get(stage) or {}).get("results", [])
            if x.get("precision", "float32") == "float32" and key in x]
    if rows:
      row = min(rows, key=lambda x: x["batch"])
      return float(row[key]["ms_per_it"]), f"{stage} {key}, batch {row['batch']}"
  return default, "default (no speed stage measured it)"


# ---------------------------------------------------------------------------------------------
# The campaign.


def _versions() -> dict:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "h5py", "torch",
               "jax-cuda13-plugin", "jax-cuda12-plugin", "scikit-learn", "matplotlib"):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      out[name] = importlib.metadata.version(name)
  return out


def _git_commit() -> str | None:
  with contextlib.suppress(Exception):
    p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                       timeout=5)
    if p.returncode == 0:
      return p.stdout.strip()
  return None


class Interrupted(Exception):
  """The campaign received SIGTERM or SIGINT."""


class Campaign:
  """State of one campaign run: budget and clock, stage statuses and results, the files in DIR.

  Args:
    out_dir: DIR, what comes back (created).
    work_dir: scratch folder (mock files, run folders, logs, compilation cache).
    budget_s: seconds for the whole run.
    sizes: `GPU` or `TINY`.
    tiny: the CPU check of the code paths.
    compile_cache: give the stages a shared JAX persistent compilation cache in work_dir.
    clock: seconds, monotonic (tests pass a fake).
  """

  def __init__(self, out_dir: Path, work_dir: Path, budget_s: float, sizes: Sizes = GPU, *,
               tiny: bool = False, compile_cache: bool = True,
               clock: Callable[[], float] = time.monotonic):
    self.out, self.work = Path(out_dir).resolve(), Path(work_dir).resolve()
    self.budget_s, self.sizes, self.tiny, self.clock = float(budget_s), sizes, tiny, clock
    self.t0 = clock()
    self.slices = slice_budget(budget_s)
    self.stages: dict[str, dict] = {}
    self.results: dict[str, dict] = {}
    self.notes: list[str] = []
    self.packs: dict[str, dict] = {}
    self.device: dict = {}
    self.settings: dict = {}
    self.compile_cache = compile_cache
    self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    self.out.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "results", "jax_cache"):
      (self.work / sub).mkdir(parents=True, exist_ok=True)

  # -- clock and budget
  def elapsed(self) -> float:
    return self.clock() - self.t0

  def remaining(self) -> float:
    """Seconds left of the budget, the packing reserve included."""
    return self.budget_s - self.elapsed()

  def timeout_for(self, name: str, slice_s: float | None = None) -> float:
    """A stage's timeout: its slice, never past the budget less the packing reserve."""
    s = self.slices.get(name, 0.0) if slice_s is None else slice_s
    return max(0.0, min(s, self.remaining() - self.slices["pack"]))

  # -- paths and environment
  def log(self, name: str) -> Path:
    return self.work / "logs" / f"{name}.log"

  def result_path(self, name: str) -> Path:
    return self.work / "results" / f"{name}.json"

  def env(self, **extra: str) -> dict[str, str]:
    """The stages' environment: this tree on PYTHONPATH, unbuffered output, a shared JAX
    compilation cache (identical programs compile once across stages), Agg plots."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    if self.compile_cache:
      env["JAX_COMPILATION_CACHE_DIR"] = str(self.work / "jax_cache")
    env.update(extra)
    return env

  def python(self, *args: str) -> list[str]:
    return [sys.executable, *args]

  # -- running and recording
  def run_stage(self, name: str, argv: list[str], timeout_s: float,
                parse: Callable[[Path], dict | None] | None = None,
                env: dict[str, str] | None = None, note: str | None = None) -> dict:
    """Run one stage's command, parse its result (also when cut off), record, rewrite DIR."""
    if timeout_s < MIN_STAGE_S:
      return self.skip(name, f"skipped: no time left ({timeout_s:.0f} s)")
    shown = "python -c ..." if argv[1:2] == ["-c"] else " ".join(argv[1:])
    print(f"[{name}] timeout {timeout_s:.0f} s: {shown[:160]}", flush=True)
    status, rc, seconds = run_command(argv, timeout_s, self.log(name), env or self.env())
    result = None
    if parse is not None:
      try:
        result = parse(self.log(name))
      except Exception as e:  # noqa: BLE001 - a parse error must not end the campaign
        note = f"{note + '; ' if note else ''}result not read: {e!r}"
    return self.record(name, status, seconds, timeout_s=timeout_s, rc=rc, result=result,
                       note=note, command=argv)

  def skip(self, name: str, why: str) -> dict:
    print(f"[{name}] {why}", flush=True)
    return self.record(name, why, 0.0)

  def record(self, name: str, status: str, seconds: float, *, timeout_s: float | None = None,
             rc: int | None = None, result: dict | None = None, note: str | None = None,
             command: list[str] | None = None) -> dict:
    """Store a stage's outcome and rewrite campaign.json, results.json and logs.tar.gz."""
    entry = {"status": status, "seconds": round(seconds, 1),
             "timeout_s": None if timeout_s is None else round(timeout_s, 1),
             "ended_at_s": round(self.elapsed(), 1)}
    if rc is not None:
      entry["rc"] = rc
    if note:
      entry["note"] = note
    if command:
      entry["command"] = " ".join(command[1:]) if command[0] == sys.executable else " ".join(
          command)
    if status != "ok" and self.log(name).is_file():
      entry["log_tail"] = log_tail(self.log(name))
    self.stages[name] = entry
    if result is not None:
      self.results[name] = result
    if status not in ("ok",) and not status.startswith("skipped"):
      print(f"[{name}] {status} after {seconds:.0f} s", flush=True)
    elif status == "ok":
      print(f"[{name}] ok in {seconds:.0f} s (elapsed {self.elapsed():.0f} / "
            f"{self.budget_s:.0f} s)", flush=True)
    self.write()
    return entry

  def pack_logs(self) -> None:
    members = [(f"logs/{p.name}", p) for p in sorted((self.work / "logs").glob("*.log"))]
    members += [(f"results/{p.name}", p) for p in sorted((self.work / "results").glob("*.json"))]
    trace = self.work / "trace"
    if trace.is_dir():  # smallest first: what does not fit is the largest trace files
      files = sorted((p for p in trace.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
      members += [(f"trace/{p.relative_to(trace)}", p) for p in files]
    self.packs["logs.tar.gz"] = pack_tar(self.out / "logs.tar.gz", members)

  def pack_figures(self) -> None:
    members = []
    for job in ("apogee", "new_lines"):
      members += run_folder_members(self.work / job, job)
    if members:
      self.packs["figures.tar.gz"] = pack_tar(self.out / "figures.tar.gz", members)

  def summary(self) -> dict:
    """campaign.json's dict."""
    return {
        "campaign": "cyclestar_jax GPU campaign (issue 12; benchmarks/gpu_campaign.py)",
        "date": self.started, "tiny": self.tiny, "budget_s": self.budget_s,
        "elapsed_s": round(self.elapsed(), 1), "slices_s": self.slices,
        "device": self.device, "versions": _versions(), "git_commit": _git_commit(),
        "host": platform.node(), "cpu_count": os.cpu_count(), "settings": self.settings,
        "stages": self.stages, "headline": headline(self.results), "notes": self.notes,
        "packs": self.packs}

  def write(self) -> None:
    """Rewrite results.json, logs.tar.gz, then campaign.json with the outputs check."""
    atomic_write_text(self.out / "results.json",
                      json.dumps(self.results, indent=1, default=str) + "\n")
    with contextlib.suppress(OSError):
      self.pack_logs()
    summary = self.summary()
    atomic_write_text(self.out / "campaign.json", json.dumps(summary, indent=1, default=str))
    summary["outputs"] = check_outputs(self.out)  # campaign.json's own size is counted too
    atomic_write_text(self.out / "campaign.json", json.dumps(summary, indent=1, default=str))


# ---------------------------------------------------------------------------------------------
# Stages.

_ENV_SNIPPET = """
import json, jax
d = jax.devices()
mem = None
try:
  mem = (d[0].memory_stats() or {}).get("bytes_limit")
except Exception:
  pass
print(json.dumps({"platform": d[0].platform, "device_kind": d[0].device_kind,
                  "n_devices": len(d), "devices": [str(x) for x in d], "jax": jax.__version__,
                  "bytes_limit": mem, "env_probe": 1}))
"""


def _nvidia_smi() -> str | None:
  if not shutil.which("nvidia-smi"):
    return None
  with contextlib.suppress(Exception):
    p = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                        "clocks.max.sm", "--format=csv,noheader"], capture_output=True,
                       text=True, timeout=15)
    return p.stdout.strip() or None
  return None


def stage_env(c: Campaign, allow_cpu: bool) -> bool:
  """JAX's devices and nvidia-smi; False (campaign stops) when a GPU run finds no GPU."""
  def parse(log: Path) -> dict | None:
    rows = json_lines(log, "env_probe")
    return rows[-1] if rows else None

  entry = c.run_stage("env", c.python("-c", _ENV_SNIPPET), c.timeout_for("env"), parse,
                      env=c.env(XLA_PYTHON_CLIENT_PREALLOCATE="false"))
  c.device = dict(c.results.get("env") or {})
  c.device["nvidia_smi"] = _nvidia_smi()
  if c.device.get("platform") == "cpu" and not allow_cpu:
    c.record("env", "failed: JAX sees no GPU (pass --allow-cpu to run anyway)",
             entry["seconds"], timeout_s=entry["timeout_s"], result=c.results.get("env"))
    return False
  if entry["status"] != "ok":
    c.notes.append("env probe did not finish: the device is not known")
  c.write()
  return True


def stage_mock(c: Campaign) -> None:
  n_train, n_val, n_test = c.sizes.mock_rows
  out = c.work / "mock"
  c.run_stage("mock", c.python("-m", "experiments.make_data", "--out", str(out), "--n-train",
                               str(n_train), "--n-val", str(n_val), "--n-test", str(n_test),
                               "--no-progress"),
              c.timeout_for("mock"), lambda log: read_json(out / "make_data.json"))


def _mock_files(c: Campaign) -> tuple[Path, Path] | None:
  s, o = c.work / "mock" / "synth.h5", c.work / "mock" / "obs.h5"
  ok = c.stages.get("mock", {}).get("status") == "ok" and s.is_file() and o.is_file()
  return (s, o) if ok else None


def _train_step_argv(c: Campaign, name: str, *args: str) -> list[str]:
  return c.python("-m", "benchmarks.train_step", "--config", c.sizes.config, *args, "--out",
                  str(c.result_path(name)))


def stage_train_step(c: Campaign) -> None:
  s = c.sizes
  name = "train_step"
  argv = _train_step_argv(c, name, "--batches", s.train_batches, "--precisions",
                          s.train_precisions, "--steps", str(s.train_steps), "--repeats",
                          str(s.train_repeats), "--check-steps", str(s.check_steps))
  c.run_stage(name, argv, c.timeout_for(name),
              lambda log: benchmark_result(c.result_path(name), log, "prestaged"))


def stage_train_step_e2e(c: Campaign) -> None:
  s, name = c.sizes, "train_step_e2e"
  files = _mock_files(c)
  if files is None:
    c.skip(name, "skipped: no mock files (stage mock did not finish)")
    return
  argv = _train_step_argv(c, name, "--batches", s.e2e_batches, "--precisions", "float32",
                          "--steps-per-call", str(s.e2e_steps_per_call), "--steps",
                          str(s.e2e_steps), "--repeats", str(s.e2e_repeats), "--check-steps",
                          "0", "--e2e", "--synth", str(files[0]), "--obs", str(files[1]))
  c.run_stage(name, argv, c.timeout_for(name),
              lambda log: benchmark_result(c.result_path(name), log, "prestaged"))


def stage_profile(c: Campaign) -> None:
  name = "profile"
  batch = c.sizes.e2e_batches.split(",")[0]
  argv = _train_step_argv(c, name, "--batches", batch, "--precisions", "float32", "--steps",
                          "10" if not c.tiny else "1", "--repeats", "1", "--check-steps", "0",
                          "--profile", str(c.work / "trace"))
  c.run_stage(name, argv, c.timeout_for(name),
              lambda log: benchmark_result(c.result_path(name), log, "prestaged"),
              note="trace in logs.tar.gz (trace/), opens in Perfetto or TensorBoard's profiler")


def _fit_argv(c: Campaign, name: str, *extra: str) -> list[str]:
  s = c.sizes
  return c.python("-m", "benchmarks.fit", "--methods", "obs,emulator", "--config", s.config,
                  "--n", str(s.fit_n), "--batch", str(s.fit_batch), "--starts",
                  "catalogue,median", "--repeats", "1", "--quality-n", str(s.fit_quality_n),
                  "--chunk-size", str(s.fit_chunk), *extra, "--out", str(c.result_path(name)))


def stage_fit(c: Campaign) -> None:
  name = "fit"
  c.run_stage(name, _fit_argv(c, name), c.timeout_for(name),
              lambda log: benchmark_result(c.result_path(name), log, "spectra_per_s"),
              note="random weights: Eq. 11 fits converge in ~44 iterations instead of ~260 "
                   "with trained ones (fit_trained repeats this with this run's weights)")


def stage_jacobians(c: Campaign) -> None:
  """A probe on jac_probe_n label sets, then all jac_n if the probe says they fit."""
  s, name = c.sizes, "jacobians"
  t_end = c.elapsed() + c.timeout_for(name)

  def argv(n: int, tag: str) -> list[str]:
    return c.python("-m", "benchmarks.jacobians", "--config", s.config, "--n", str(n),
                    "--chunk-per-device", str(s.jac_chunk), "--repeats", "1", "--out",
                    str(c.result_path(tag)))

  probe = c.run_stage("jacobians_probe", argv(s.jac_probe_n, "jacobians_probe"),
                      c.timeout_for(name), lambda log: read_json(c.result_path("jacobians_probe")))
  res = c.results.get("jacobians_probe")
  if probe["status"] != "ok" or not res:
    c.skip(name, "skipped: the probe did not finish")
    return
  run = res["runs"][0]
  need = run["first_s"] + run["median_s"] * s.jac_n / s.jac_probe_n * 1.2 + 10
  left = t_end - c.elapsed()
  if need > left:
    c.results[name] = res
    c.skip(name, f"skipped: {s.jac_n} label sets need ~{need:.0f} s, {left:.0f} s left "
                 f"(the probe's figure stands, projected)")
    return
  c.run_stage(name, argv(s.jac_n, name), max(0.0, min(left, c.timeout_for(name, left))),
              lambda log: read_json(c.result_path(name)))
  if name not in c.results:  # cut off: the probe's figure stands
    c.results[name] = res
    c.write()


def stage_torch(c: Campaign) -> None:
  name = "torch_step"
  if importlib.util.find_spec("torch") is None:
    c.skip(name, "skipped: torch missing")
    return
  s = c.sizes
  argv = c.python("-m", "benchmarks.torch_step", "--config", s.config, "--batches",
                  s.torch_batches, "--modes", "shared,naive", "--precisions", "float32",
                  "--steps", str(s.torch_steps), "--repeats", str(s.torch_repeats), "--warmup",
                  str(s.torch_warmup), "--out", str(c.result_path(name)))
  c.run_stage(name, argv, c.timeout_for(name),
              lambda log: benchmark_result(c.result_path(name), log, "mode"),
              env=c.env(XLA_PYTHON_CLIENT_PREALLOCATE="false"))


def _job_result(run_dir: Path, n_iter: int, ms: float, ms_from: str, alloc_s: float,
                overhead_s: float) -> dict:
  """What a main job left: its metrics.json (if it got there), run.json's stage times."""
  return {"n_iter": n_iter, "ms_per_it_assumed": ms, "ms_per_it_from": ms_from,
          "allotted_s": round(alloc_s, 1), "overhead_assumed_s": overhead_s,
          "metrics": _scalars(read_json(run_dir / "metrics.json")),
          "run_json": read_json(run_dir / "run.json")}


def _scalars(m: dict | None) -> dict | None:
  """metrics.json without its large arrays (scalars, short lists and small dicts)."""
  if m is None:
    return None
  return {k: v for k, v in m.items()
          if not isinstance(v, (list, dict)) or len(json.dumps(v, default=str)) < 4000}


def _export_weights(c: Campaign, job: str) -> None:
  """The job's generator and emulator as .npz in DIR (the run may have been cut off: the
  newest checkpoint is taken)."""
  run = c.work / job
  info: dict = {}
  em = run / "emulator" / "emulator.npz"
  if em.is_file():
    shutil.copyfile(em, c.out / f"{job}_emulator.npz")
    info["emulator"] = {"file": f"{job}_emulator.npz", "bytes": em.stat().st_size}
  if (run / "model" / "checkpoints").is_dir():
    dest = c.out / f"{job}_generator.npz"
    t = min(120.0, max(0.0, c.remaining() - 1.0))
    argv = c.python("-m", "benchmarks.gpu_campaign", "export-generator", str(run / "model"),
                    str(dest))
    status, _, secs = run_command(argv, t, c.log(f"{job}_export"),
                                  c.env(JAX_PLATFORMS="cpu"))
    info["generator"] = ({"file": dest.name, "bytes": dest.stat().st_size, "seconds": round(
        secs, 1)} if status == "ok" and dest.is_file() else {"status": status})
  for k, v in info.items():
    if v.get("bytes", 0) > MAX_FILE_BYTES:
      c.notes.append(f"{v['file']}: {v['bytes'] / MiB:.1f} MiB, over {MAX_FILE_BYTES // MiB} "
                     f"MiB: it will not come back")
    v.setdefault("what", "generator without critics, float32 (checkpoint.load_cycle_model "
                 "reads it)" if k == "generator" else
                 "The Payne's npz layout (emulator.load_emulator)")
  c.results.setdefault(job, {})["weights"] = info


def stage_job(c: Campaign, job: str, alloc_s: float, overhead_s: float,
              n_iter: int | None = None) -> None:
  """apogee or new_lines with n_iter chosen to fill alloc_s; then weights and figures."""
  s = c.sizes
  timeout = max(0.0, min(alloc_s, c.remaining() - c.slices["pack"]))
  ms, ms_from = measured_ms_per_it(c.results, s.default_ms_per_it)
  if n_iter is None:
    n_iter = choose_n_iter(timeout, ms, overhead_s, s.n_iter_bounds)
  module = "experiments.apogee" if job == "apogee" else "experiments.new_lines"
  run_dir = c.work / job
  # A safety net under the estimate: training stops by the clock in time for the fits and the
  # report (the job's own `--train-limit-s`), should the iterations run slower than measured.
  train_limit = max(10.0, timeout - overhead_s)
  argv = c.python("-m", module, "--preset", s.preset, "--n-iter", str(n_iter), "--out",
                  str(run_dir), "--no-progress", "--overwrite", "--train-limit-s",
                  f"{train_limit:.0f}")
  c.settings[f"{job}_n_iter"] = {"n_iter": n_iter, "ms_per_it": ms, "from": ms_from,
                                 "allotted_s": round(timeout, 1), "overhead_s": overhead_s,
                                 "train_limit_s": round(train_limit)}
  print(f"[{job}] {n_iter} iterations at {ms:.2f} ms ({ms_from}) in {timeout:.0f} s, "
        f"{overhead_s:.0f} s assumed outside training", flush=True)
  c.run_stage(job, argv, timeout,
              lambda log: _job_result(run_dir, n_iter, ms, ms_from, timeout, overhead_s))
  _export_weights(c, job)
  with contextlib.suppress(OSError):
    c.pack_figures()
  c.write()


def stage_fit_trained(c: Campaign, slice_s: float) -> None:
  name = "fit_trained"
  run = c.work / "apogee"
  em, model = run / "emulator" / "emulator.npz", run / "model"
  if not em.is_file() or not (model / "checkpoints").is_dir():
    c.skip(name, "skipped: the apogee run left no trained emulator and model")
    return
  t = c.timeout_for(name, slice_s)
  if t < 0.5 * slice_s or t < MIN_STAGE_S:
    c.skip(name, f"skipped: no time left ({t:.0f} s)")
    return
  c.run_stage(name, _fit_argv(c, name, "--emulator", str(em), "--model", str(model)), t,
              lambda log: benchmark_result(c.result_path(name), log, "spectra_per_s"),
              note="this run's trained emulator and Cycle-StarNet (apogee stage)")


def run_campaign(c: Campaign, *, skip: Iterable[str] = (), allow_cpu: bool = False,
                 overhead_apogee_s: float | None = None,
                 overhead_new_lines_s: float | None = None, n_iter_apogee: int | None = None,
                 n_iter_new_lines: int | None = None) -> int:
  """Every stage in order; returns the exit code (0, or 3 when no GPU was found)."""
  skip = set(skip)
  s = c.sizes
  oh_a = s.overhead_apogee_s if overhead_apogee_s is None else overhead_apogee_s
  oh_n = s.overhead_new_lines_s if overhead_new_lines_s is None else overhead_new_lines_s
  c.settings.update(sizes=dataclasses.asdict(s), skip=sorted(skip),
                    overhead_apogee_s=oh_a, overhead_new_lines_s=oh_n)
  if "env" not in skip and not stage_env(c, allow_cpu):
    return 3
  speed: list[tuple[str, Callable[[Campaign], None]]] = [
      ("mock", stage_mock), ("train_step", stage_train_step),
      ("train_step_e2e", stage_train_step_e2e), ("fit", stage_fit),
      ("jacobians", stage_jacobians), ("torch_step", stage_torch), ("profile", stage_profile)]
  for name, fn in speed:
    if name in skip:
      c.skip(name, "skipped: --skip")
    else:
      fn(c)
  plan = plan_main(max(0.0, c.remaining() - c.slices["pack"]), c.budget_s, s)
  c.settings["main_plan_s"] = {k: round(v, 1) for k, v in plan.items()}
  if "apogee" in skip:
    c.skip("apogee", "skipped: --skip")
  else:
    stage_job(c, "apogee", plan["apogee"], oh_a, n_iter_apogee)
  if "fit_trained" in skip:
    c.skip("fit_trained", "skipped: --skip")
  else:
    stage_fit_trained(c, max(plan["fit_trained"], FIT_TRAINED_SLICE * c.budget_s))
  if "new_lines" in skip:
    c.skip("new_lines", "skipped: --skip")
  else:
    avail = c.remaining() - c.slices["pack"]
    need = oh_n + s.min_train_s
    if avail < need and not (c.tiny and avail >= 30):
      c.skip("new_lines", f"skipped: no time left ({avail:.0f} s, needs ≥ {need:.0f} s)")
    else:
      stage_job(c, "new_lines", avail, oh_n, n_iter_new_lines)
  c.write()
  return 0


# ---------------------------------------------------------------------------------------------
# Command line.


def _clear_work(work: Path) -> None:
  """Remove what an earlier campaign left in work (its own subfolders; the JAX compilation
  cache is kept: identical programs then load instead of compiling)."""
  for sub in ("mock", "apogee", "new_lines", "logs", "results", "trace"):
    shutil.rmtree(work / sub, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, type=Path, help="DIR: what comes back (flat, ≤ 8 files)")
  p.add_argument("--budget-s", required=True, type=float, help="seconds for the whole run")
  p.add_argument("--tiny", action="store_true", help="every stage on a CPU with tiny sizes")
  p.add_argument("--work", type=Path, default=None,
                 help="scratch folder (default /tmp/cyclestar_campaign[_tiny])")
  p.add_argument("--skip", default="", help=f"comma-separated stages to skip, from {STAGES}")
  p.add_argument("--allow-cpu", action="store_true", help="run the GPU sizes without a GPU")
  p.add_argument("--no-compile-cache", action="store_true",
                 help="no shared JAX persistent compilation cache between stages")
  p.add_argument("--overhead-apogee-s", type=float, default=None,
                 help="seconds of the apogee job outside training (default: GPU 240, tiny 150)")
  p.add_argument("--overhead-new-lines-s", type=float, default=None,
                 help="the same for new_lines (default: GPU 240, tiny 150)")
  p.add_argument("--n-iter-apogee", type=int, default=None, help="fixed instead of estimated")
  p.add_argument("--n-iter-new-lines", type=int, default=None, help="fixed instead of estimated")
  args = p.parse_args(argv)
  bad = [x for x in args.skip.split(",") if x and x not in STAGES]
  if bad:
    p.error(f"--skip: unknown stages {bad}; choose from {STAGES}")
  if not args.budget_s > 0:
    p.error("--budget-s must be > 0")
  return args


def _export_main(argv: list[str]) -> int:
  if len(argv) != 2:
    print("usage: python -m benchmarks.gpu_campaign export-generator RUN_DIR FILE.npz",
          file=sys.stderr)
    return 2
  print(json.dumps(export_generator(Path(argv[0]), Path(argv[1]))))
  return 0


def _on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
  raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "export-generator":
    return _export_main(argv[1:])
  args = parse_args(argv)
  sizes = TINY if args.tiny else GPU
  work = args.work or Path("/tmp/cyclestar_campaign" + ("_tiny" if args.tiny else ""))
  _clear_work(work)
  c = Campaign(args.out, work, args.budget_s, sizes, tiny=args.tiny,
               compile_cache=not args.no_compile_cache)
  print(f"GPU campaign{' (tiny, CPU check)' if args.tiny else ''}: budget {args.budget_s:.0f} s,"
        f" out {args.out}, work {work}")
  print("slices (s): " + ", ".join(f"{k} {v:.0f}" for k, v in c.slices.items())
        + "; apogee, fit_trained, new_lines share what is left")
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _on_signal)
  try:
    rc = run_campaign(c, skip=[x for x in args.skip.split(",") if x],
                      allow_cpu=args.allow_cpu or args.tiny,
                      overhead_apogee_s=args.overhead_apogee_s,
                      overhead_new_lines_s=args.overhead_new_lines_s,
                      n_iter_apogee=args.n_iter_apogee, n_iter_new_lines=args.n_iter_new_lines)
  except Interrupted as e:
    c.notes.append(f"interrupted by {e} at {c.elapsed():.0f} s")
    c.write()
    return 130
  c.write()
  summ = read_json(args.out / "campaign.json") or {}
  for row in summ.get("headline", []):
    met = "" if row.get("met") is None else (" met" if row["met"] else " NOT met")
    print(f"  {row['figure']}: {row['value']} {row['unit']}"
          + (f" (target {row['target']}:{met})" if "target" in row else ""))
  outs = summ.get("outputs", {})
  print(f"done in {c.elapsed():.0f} s: {outs.get('n_files')} files, "
        f"{outs.get('total_bytes', 0) / MiB:.1f} MiB in {args.out}"
        + ("" if outs.get("ok") else f"; PROBLEMS: {outs.get('problems')}"))
  return rc


if __name__ == "__main__":
  sys.exit(main())
