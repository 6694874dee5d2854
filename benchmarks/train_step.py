"""Speed of one Cycle-StarNet training iteration (generator + critic update), JSON on stdout.

  PYTHONPATH=. python3 -m benchmarks.train_step [--config kurucz_to_apogee_1]
      [--batches 8,64,256] [--precisions float32,bf16] [--steps 20] [--repeats 5]
      [--steps-per-call N] [--check-steps 3] [--e2e --synth FILE --obs FILE] [--profile DIR]

For each per-domain batch size and precision: iterations/s and ms/iteration, the median of
`--repeats` timed runs of `--steps` iterations each, after a warm-up call that compiles; every
run ends with `block_until_ready` on the state. Batches are random standardized spectra staged
on the devices beforehand (the pure compute figure). With `--steps-per-call N` each call runs N
iterations as one `lax.scan` (`parallel.make_parallel_multi_step`), which pays the launch once
per N.

Precisions: `float32` (float32 arrays, the backend's default matmul/conv precision: TF32 on an
H100, as PyTorch's cuDNN default), `highest` (true float32 passes), `bf16` (float32 arrays and
parameters, matmuls and convolutions in one bfloat16 pass: `jax.default_matmul_precision`).
Each precision other than float32 is checked: from the same state, on the same batches, the
metrics of `--check-steps` iterations must agree with float32 to 1e-3 (relative), reported as
`max_rel_diff_vs_float32` and `agrees_1e-3`.

`--e2e` also measures, from the HDF5 files: the stream alone (`pipeline_alone`: batches/s of
`data.BatchStream`'s reader thread, no device work: the ceiling of a streamed run); end to end
through the stream (`e2e`: reading thread and prefetch, transfer to the devices, the step); and
end to end with the training split held on the devices (`e2e_staged`: `parallel.stage_on_devices`
once, then per call only row indices go to the devices, `train_step.make_staged_step`; what
`trainer.train` does when the split fits), each against the pre-staged figure.
Uses every device `jax.devices()` gives (data parallel over a one-axis mesh, the state
replicated and the batch split); the batch must divide by the device count.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import emit_json, random_batches
from cyclestar_jax import config, data, parallel
from cyclestar_jax import train_step as ts

PRECISIONS = {"float32": None, "highest": "highest", "bf16": "bfloat16"}
_LOSS_KEYS = ("loss_gen", "loss_critic", "rec_synth", "rec_obs", "cc_synth", "cc_obs",
              "gen_synth", "gen_obs", "dis_real_synth", "dis_fake_synth", "dis_real_obs",
              "dis_fake_obs")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="kurucz_to_apogee_1", help="preset or .ini file")
  p.add_argument("--batches", default="8,64,256", help="per-domain batch sizes, comma separated")
  p.add_argument("--precisions", default="float32,bf16",
                 help=f"comma separated, from {tuple(PRECISIONS)}")
  p.add_argument("--steps", type=int, default=20, help="iterations per timed run")
  p.add_argument("--repeats", type=int, default=5, help="timed runs (median reported)")
  p.add_argument("--steps-per-call", type=int, default=1,
                 help="iterations per compiled call (lax.scan over pre-staged batches)")
  p.add_argument("--check-steps", type=int, default=3,
                 help="iterations compared between each precision and float32 (0: no check)")
  p.add_argument("--e2e", action="store_true", help="also time from HDF5 files via the pipeline")
  p.add_argument("--synth", default="runs/mock/synth.h5", help="synthetic HDF5 file (--e2e)")
  p.add_argument("--obs", default="runs/mock/obs.h5", help="observed HDF5 file (--e2e)")
  p.add_argument("--prefetch", type=int, default=4, help="batches read ahead (--e2e)")
  p.add_argument("--profile", default=None,
                 help="write a jax.profiler trace of one timed run per case into this folder")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  args = p.parse_args(argv)
  bad = [x for x in args.precisions.split(",") if x not in PRECISIONS]
  if bad:
    p.error(f"--precisions: unknown {bad}; choose from {tuple(PRECISIONS)}")
  if min(args.steps, args.repeats, args.steps_per_call) < 1:
    p.error("--steps, --repeats and --steps-per-call must be ≥ 1")
  if args.steps % args.steps_per_call:
    p.error(f"--steps {args.steps} must be a multiple of --steps-per-call {args.steps_per_call}")
  return args


def _precision(name: str):
  """Context manager setting the matmul/conv precision of a precision mode (while tracing)."""
  value = PRECISIONS[name]
  return contextlib.nullcontext() if value is None else jax.default_matmul_precision(value)


def _stack(batches: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class _Runner:
  """The compiled step of one (batch, precision, steps-per-call) case on a mesh."""

  def __init__(self, cfg, mesh, precision: str, steps_per_call: int):
    self.mesh, self.precision, self.n = mesh, precision, steps_per_call
    if steps_per_call == 1:
      self.data_sharding = parallel.batch_sharding(mesh)
      self.fn = parallel.make_parallel_train_step(cfg, mesh)
    else:  # stacked batches [N, B, n_pix]: split the batch axis, not the iteration axis
      self.data_sharding = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(None, parallel.DATA_AXIS))
      self.fn = parallel.make_parallel_multi_step(cfg, mesh)

  def stage(self, batches: list[dict]) -> list[dict]:
    """Host batches → device arrays, grouped by steps_per_call."""
    groups = ([b for b in batches] if self.n == 1
              else [_stack(batches[i:i + self.n]) for i in range(0, len(batches), self.n)])
    return [jax.device_put(g, self.data_sharding) for g in groups]

  def __call__(self, state, staged, key):
    with _precision(self.precision):  # the precision is read when the call traces
      return self.fn(state, staged, key)


def _copy_state(state):
  return jax.tree.map(jnp.copy, state)


def _time_prestaged(runner: _Runner, state, staged: list, key, steps: int, repeats: int,
                    profile: str | None):
  calls = steps // runner.n
  t0 = time.perf_counter()
  state, _ = runner(state, staged[0], key)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  times = []
  for r in range(repeats):
    ctx = (jax.profiler.trace(profile) if profile and r == repeats - 1
           else contextlib.nullcontext())
    with ctx:
      t0 = time.perf_counter()
      for i in range(calls):
        state, _ = runner(state, staged[i % len(staged)], key)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return state, {"it_per_s": steps / med, "ms_per_it": 1e3 * med / steps,
                 "ms_per_it_runs": [round(1e3 * t / steps, 3) for t in times],
                 "warmup_s": round(compile_s, 2)}


def _check_precision(cfg, mesh, state0, host_batches: list[dict], key, precision: str,
                     check_steps: int, reference: list[dict] | None):
  """Metrics of `check_steps` single steps from state0 (per-step dicts of floats)."""
  runner = _Runner(cfg, mesh, precision, 1)
  staged = runner.stage(host_batches[:check_steps])
  state, out = _copy_state(state0), []
  for b in staged:
    state, m = runner(state, b, key)
    out.append({k: float(m[k]) for k in _LOSS_KEYS})
  if reference is None:
    return out, None
  rel = max(abs(a[k] - r[k]) / max(abs(r[k]), 1e-12)
            for a, r in zip(out, reference, strict=True) for k in _LOSS_KEYS)
  return out, rel


def _time_e2e(runner: _Runner, cfg, state, key, args) -> dict:
  """End-to-end it/s: HDF5 rows → standardize (reader thread) → device → step."""
  n = runner.n
  warm = max(2, n) * 2  # iterations before timing: compile, and let the reader fill its queue
  total = warm + args.steps * args.repeats
  with data.BatchStream(args.synth, args.obs, cfg) as stream:
    it = stream.iterate(0, total, prefetch=args.prefetch)
    times, done, t0 = [], 0, None
    try:
      while done < total:
        group = [next(it)[1] for _ in range(n)]
        batch = group[0] if n == 1 else _stack(group)
        state, _ = runner(state, jax.device_put(batch, runner.data_sharding), key)
        done += n
        if done == warm:
          jax.block_until_ready(state)
          t0 = time.perf_counter()
        elif done > warm and (done - warm) % args.steps == 0:
          jax.block_until_ready(state)
          t1 = time.perf_counter()
          times.append(t1 - t0)
          t0 = t1
    finally:
      it.close()
  med = statistics.median(times)
  return {"it_per_s": args.steps / med, "ms_per_it": 1e3 * med / args.steps,
          "files": [str(args.synth), str(args.obs)], "prefetch": args.prefetch}


def _time_pipeline_alone(cfg, args) -> dict:
  """Batches/s the HDF5 stream alone delivers (reader thread, no device work): the ceiling of
  the streamed end-to-end rate."""
  n = max(args.steps, 8)
  with data.BatchStream(args.synth, args.obs, cfg) as stream:
    it = stream.iterate(0, 4 + n * args.repeats, prefetch=args.prefetch)
    try:
      for _ in range(4):
        next(it)
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(n):
          next(it)
        times.append(time.perf_counter() - t0)
    finally:
      it.close()
  med = statistics.median(times)
  return {"batches_per_s": n / med, "ms_per_batch": 1e3 * med / n}


def _time_e2e_staged(cfg, mesh, precision: str, state, key, args) -> dict:
  """End-to-end it/s with the training split held on the devices (`parallel.stage_on_devices`):
  per call, the host computes the row indices and sends them; the step gathers its batch."""
  n = args.steps_per_call
  rep = parallel.replicated_sharding(mesh)
  fn = parallel.make_parallel_staged_step(cfg, mesh)
  with data.BatchStream(args.synth, args.obs, cfg) as stream:
    t0 = time.perf_counter()
    staged = parallel.stage_on_devices(stream, rep)
    jax.block_until_ready(staged)
    stage_s = time.perf_counter() - t0
    n_bytes = sum(a.nbytes for a in staged.values())

    def rows_of(first: int):
      return parallel.shard_rows(stream.rows_of_steps(first, n), mesh)

    with _precision(precision):
      state, _ = fn(state, staged, rows_of(0), key)
      jax.block_until_ready(state)
      times, step = [], n
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps // n):
          state, _ = fn(state, staged, rows_of(step), key)
          step += n
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {"it_per_s": args.steps / med, "ms_per_it": 1e3 * med / args.steps,
          "stage_s": round(stage_s, 2), "staged_bytes_per_device": int(n_bytes)}


def run(args) -> dict:
  base = config.get_config(args.config)
  devices = jax.devices()
  mesh = parallel.make_mesh(devices)
  key = parallel.replicate(jax.random.key(0), mesh)
  state0 = parallel.replicate(ts.create_train_state(base, jax.random.key(base.seed)), mesh)
  precisions = args.precisions.split(",")
  results = []
  for b in (int(x) for x in args.batches.split(",")):
    cfg = dataclasses.replace(base, batch_size=b)
    parallel.check_batch_size(b, mesh)
    n_stage = max(args.steps_per_call, min(args.steps, 8 if b <= 64 else 4))
    n_stage = -(-n_stage // args.steps_per_call) * args.steps_per_call
    host = random_batches(max(n_stage, args.check_steps), b, cfg.n_pix, seed=b)
    reference = None
    for prec in precisions:
      row = {"batch": b, "precision": prec, "steps_per_call": args.steps_per_call}
      if args.check_steps and ("float32" in precisions or prec == "float32"):
        if reference is None:
          reference, _ = _check_precision(cfg, mesh, state0, host, key, "float32",
                                          args.check_steps, None)
        if prec != "float32":
          _, rel = _check_precision(cfg, mesh, state0, host, key, prec, args.check_steps,
                                    reference)
          row.update({"max_rel_diff_vs_float32": rel, "agrees_1e-3": bool(rel <= 1e-3)})
      runner = _Runner(cfg, mesh, prec, args.steps_per_call)
      staged = runner.stage(host[:n_stage])
      profile = f"{args.profile}/b{b}_{prec}" if args.profile else None
      state, timing = _time_prestaged(runner, _copy_state(state0), staged, key, args.steps,
                                      args.repeats, profile)
      row["prestaged"] = timing
      del staged
      if args.e2e:
        row["pipeline_alone"] = _time_pipeline_alone(cfg, args)
        row["e2e"] = _time_e2e(runner, cfg, state, key, args)
        row["e2e_over_prestaged"] = row["e2e"]["it_per_s"] / timing["it_per_s"]
        del state
        row["e2e_staged"] = _time_e2e_staged(cfg, mesh, prec, _copy_state(state0), key, args)
        row["e2e_staged_over_prestaged"] = row["e2e_staged"]["it_per_s"] / timing["it_per_s"]
      else:
        del state
      results.append(row)
      print(json.dumps(row), file=sys.stderr, flush=True)
  return {"benchmark": "train_step", "config": base.name,
          "device": f"{len(devices)} × {devices[0].device_kind} ({devices[0].platform})",
          "host": platform.processor() or platform.machine(), "jax": jax.__version__,
          "steps": args.steps, "repeats": args.repeats, "steps_per_call": args.steps_per_call,
          "results": results}


def main(argv=None) -> dict:
  args = parse_args(argv)
  out = run(args)
  return emit_json(out, args.out)


if __name__ == "__main__":
  main()
