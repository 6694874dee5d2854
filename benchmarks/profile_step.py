"""Where the time of one Cycle-StarNet training iteration goes, JSON on stdout.

  PYTHONPATH=. python3 -m benchmarks.profile_step [--config kurucz_to_apogee_1] [--batch 8]
      [--repeats 7] [--calls 10] [--out FILE]

The step's network applications are found by tracing it (every `CycleStarNet._apply` call is
recorded with its module and input shapes, so the table follows the code). Each distinct
(module, input shapes, what is differentiated) is then jitted alone as forward + backward (a
`jax.vjp` with unit cotangents: gradients with respect to the parameters, and to the inputs
where the generator's loss needs them) and timed: the median over `--repeats` runs of `--calls`
calls, each run ending in `block_until_ready`, after a compiling warm-up. Also timed alone: the
two Adam updates, and the whole jitted step.

Reported per component: applications per iteration, ms per application, ms per iteration, share
of the sum of components, XLA's FLOP count and the achieved GFLOP/s. For the whole step: ms,
FLOPs, and the compiled program's size (fusions, convolutions, dots: on a GPU each fusion is
roughly one kernel launch, which is what costs at batch 8, docs/devices.md). The sum of the parts
against the whole step says how much XLA fuses away or what the launches add. For a timeline on
a GPU, add `--profile DIR` to `benchmarks.train_step` and open it in TensorBoard or Perfetto.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import platform
import re
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import emit_json, random_batches
from cyclestar_jax import config, losses, networks
from cyclestar_jax import train_step as ts


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="kurucz_to_apogee_1", help="preset or .ini file")
  p.add_argument("--batch", type=int, default=8, help="per-domain batch size")
  p.add_argument("--repeats", type=int, default=7, help="timed runs (median reported)")
  p.add_argument("--calls", type=int, default=10, help="calls per timed run")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  args = p.parse_args(argv)
  if min(args.batch, args.repeats, args.calls) < 1:
    p.error("--batch, --repeats and --calls must be ≥ 1")
  return args


@dataclasses.dataclass(frozen=True)
class _Recording(networks.CycleStarNet):
  """The networks, recording every module application (name, input shapes) while traced."""

  log: list = dataclasses.field(default_factory=list, compare=False, hash=False)

  def _apply(self, params: dict, name: str, *args):
    self.log.append((name, tuple(tuple(a.shape) for a in args)))
    return super()._apply(params, name, *args)


def applications(cfg: config.Config) -> list[tuple[str, tuple, bool]]:
  """Every network application of one iteration: (module, input shapes, input grads needed).

  Generator-loss applications need gradients with respect to their inputs (they sit inside
  the generator's chain); the critic update's need only the critics' parameters.
  """
  base = networks.make_networks(cfg)
  rec = _Recording(cfg=base.cfg, modules=base.modules)
  gen, critic = jax.eval_shape(rec.init, jax.random.key(0))
  batch = random_batches(1, cfg.batch_size, cfg.n_pix, seed=0)[0]
  out = jax.eval_shape(
      lambda g, c, b: losses.generator_loss(g, c, b, nets=rec)[1][1], gen, critic, batch)
  n_gen = len(rec.log)
  jax.eval_shape(lambda c, o, b: losses.critic_loss(c, o, b, nets=rec), critic, out, batch)
  return [(name, shapes, i < n_gen) for i, (name, shapes) in enumerate(rec.log)]


def _time(fn: Callable, args: tuple, calls: int, repeats: int) -> float:
  """Median seconds per call of a jitted fn (warm-up call excluded)."""
  jax.block_until_ready(fn(*args))
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      r = fn(*args)
    jax.block_until_ready(r)
    runs.append((time.perf_counter() - t0) / calls)
  return statistics.median(runs)


def _flops(compiled) -> float | None:
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, list) else ca
  return float(ca["flops"]) if ca and "flops" in ca else None


def hlo_stats(compiled) -> dict[str, int]:
  """Counts in a compiled program: fusions (≈ kernels on a GPU), convolutions, dots."""
  text = compiled.as_text()
  return {"fusions": len(re.findall(r"=\s*\S+\s+fusion\(", text)),
          "convolutions": len(re.findall(r"\sconvolution\(", text)),
          "dots": len(re.findall(r"\sdot\(", text)),
          "instructions": len(re.findall(r"^\s+\S+ = ", text, re.M))}


def _component(nets, params: dict, name: str, shapes: tuple, input_grads: bool,
               rng: np.random.Generator, args) -> dict:
  inputs = tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)

  def fwd_bwd(p, *xs):
    if input_grads:
      y, vjp = jax.vjp(lambda p, *xs: nets._apply(p, name, *xs), p, *xs)
    else:
      y, vjp = jax.vjp(lambda p: nets._apply(p, name, *xs), p)
    return vjp(jnp.ones_like(y))

  fn = jax.jit(fwd_bwd)
  own = {name: params[name]}  # only this module's parameters, so no zero gradients are made
  compiled = fn.lower(own, *inputs).compile()
  sec = _time(fn, (own, *inputs), args.calls, args.repeats)
  flops = _flops(compiled)
  return {"ms": 1e3 * sec, "flops": flops,
          "gflop_per_s": None if flops is None else flops / sec / 1e9}


def run(args) -> dict:
  cfg = dataclasses.replace(config.get_config(args.config), batch_size=args.batch)
  nets = networks.make_networks(cfg)
  rng = np.random.default_rng(0)
  state = ts.create_train_state(cfg, jax.random.key(cfg.seed))
  params = {**state.gen_params, **state.critic_params}

  counts = collections.Counter(applications(cfg))
  rows = []
  for (name, shapes, input_grads), n in counts.items():
    t = _component(nets, params, name, shapes, input_grads, rng, args)
    rows.append({"module": name, "inputs": " ".join("×".join(map(str, s)) for s in shapes),
                 "grads": "params+inputs" if input_grads else "params",
                 "per_iteration": n, "ms_each": round(t["ms"], 4),
                 "ms_per_iteration": round(n * t["ms"], 4), "flops_each": t["flops"],
                 "gflop_per_s": None if t["gflop_per_s"] is None else round(t["gflop_per_s"], 1)})

  # The two optimizer updates (Adam over every parameter), with gradients shaped as params.
  gen_tx, critic_tx = ts.make_optimizers(cfg)

  def adam(state):
    g, _ = gen_tx.update(state.gen_params, state.gen_opt, state.gen_params)
    c, _ = critic_tx.update(state.critic_params, state.critic_opt, state.critic_params)
    return g, c

  adam_ms = 1e3 * _time(jax.jit(adam), (state,), args.calls, args.repeats)
  rows.append({"module": "adam updates (generator + critics)", "per_iteration": 1,
               "ms_each": round(adam_ms, 4), "ms_per_iteration": round(adam_ms, 4)})

  step = jax.jit(ts.make_train_step(cfg))
  batch, key = random_batches(1, cfg.batch_size, cfg.n_pix, seed=1)[0], jax.random.key(1)
  compiled = step.lower(state, batch, key).compile()
  step_ms = 1e3 * _time(lambda s: step(s, batch, key)[1]["loss_gen"], (state,), args.calls,
                        args.repeats)
  total = sum(r["ms_per_iteration"] for r in rows)
  for r in rows:
    r["share_of_parts"] = round(r["ms_per_iteration"] / total, 4)
  rows.sort(key=lambda r: -r["ms_per_iteration"])
  step_flops = _flops(compiled)
  devices = jax.devices()
  return {"benchmark": "profile_step", "config": cfg.name, "batch": cfg.batch_size,
          "device": f"{devices[0].device_kind} ({devices[0].platform})",
          "host": platform.processor() or platform.machine(), "jax": jax.__version__,
          "repeats": args.repeats, "calls": args.calls,
          "step": {"ms": round(step_ms, 4), "flops": step_flops,
                   "gflop_per_s": None if step_flops is None else
                   round(step_flops / step_ms / 1e6, 1), **hlo_stats(compiled)},
          "sum_of_parts_ms": round(total, 4), "step_over_parts": round(step_ms / total, 3),
          "network_applications_per_iteration": sum(counts.values()),
          "components": rows}


def main(argv=None) -> dict:
  args = parse_args(argv)
  return emit_json(run(args), args.out)


if __name__ == "__main__":
  main()
