"""Label-fitting speed: spectra per second per method and batch size, printed as JSON.

  python -m benchmarks.fit [--methods obs,synth,emulator] [--n 32768] [--batch 1024,16384]
                           [--starts catalogue] [--repeats 3] [--config kurucz_to_apogee_1]
                           [--emulator PATH] [--model RUN_DIR] [--quality-n 256] [--out FILE]

For `--n` spectra made by the method's own model plus noise (S/N 100) at random labels inside
the box, with catalogue starts = truth + N(0, 0.05) in scaled units (a realistic catalogue),
times `LabelFitter.fit` per method and batch size (`FitConfig.batch_size`, fits side by side
over all devices). The first call (compilation) runs on one block of the same shape and is
excluded; the median of `--repeats` timed runs over all `--n` spectra is reported, with the
device. Weights are random unless `--emulator` / `--model` name trained ones: a full-size
emulator scaled to give flux 1 ± 0.05, and Table-2 networks (`--config`), randomly initialised.

Quality: on the first `--quality-n` spectra, the same fits are compared with an unhurried fit
(tol 1e-9, 3000 iterations) of the same model: Δχ² percentiles, the largest label difference in
units of the formal error, median χ²_R of both, and the widths of (fit − truth)/σ for Teff,
log g and [Fe/H] of both (1 for fits that are as good as the data allow).

Reference: the authors' code fits one spectrum in 0.7 s on one H100 (Eq. 11; benchmarks/README.md),
i.e. 1.43 spectra/s; `ratio_vs_reference_h100` divides by that and is meaningful only when this runs
on an H100 (on a CPU it compares a CPU with a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import emit_json
from cyclestar_jax.checkpoint import CycleModel, load_cycle_model
from cyclestar_jax.emulator import (
    Emulator,
    create_emulator_params,
    emulator_apply,
    load_emulator,
)
from cyclestar_jax.fitting import FitConfig, LabelFitter, LBFGSOptions
from cyclestar_jax.labels import N_LABELS, label_index, unscale_labels
from cyclestar_jax.resources import N_DROP, spectra_mean_std

REFERENCE_S_PER_SPECTRUM = 0.7  # authors' code, Eq. 11, one H100 (benchmarks/README.md)


def flux_like_emulator(seed: int = 0) -> Emulator:
  """A random full-size emulator whose spectra look like normalized flux (1 ± ~0.05)."""
  params = create_emulator_params(jax.random.PRNGKey(seed))
  params["dense_2"]["kernel"] = params["dense_2"]["kernel"] * 0.05
  params["dense_2"]["bias"] = jnp.ones_like(params["dense_2"]["bias"])
  y_min = np.array([3000.0, 0.0, 0.5] + [-2.0] * 20 + [5.0, 0.0])
  y_max = np.array([7000.0, 5.0, 3.0] + [0.6] * 20 + [90.0, 10.0])
  return Emulator(params=params, y_min=y_min, y_max=y_max)


def make_data(method: str, n: int, emulator: Emulator, cycle: CycleModel | None, *,
              seed: int = 0, snr: float = 100.0, batch: int = 1024):
  """Spectra [n, n_pix] from the method's own model + noise; truth and catalogue labels."""
  rng = np.random.default_rng(seed)
  theta = rng.uniform(-0.3, 0.3, (n, emulator.n_labels))
  y_true = unscale_labels(theta, emulator.y_min, emulator.y_max)
  y_cat = unscale_labels(np.clip(theta + rng.normal(0, 0.05, theta.shape), -0.5, 0.5),
                         emulator.y_min, emulator.y_max)
  payne = jax.jit(emulator_apply)
  flux = np.concatenate([np.asarray(payne(emulator.params, jnp.asarray(theta[a:a + batch],
                                                                       jnp.float32)))
                         for a in range(0, n, batch)])
  if method != "emulator":
    mean, std = spectra_mean_std()
    nets, gen = cycle.nets, cycle.gen_params

    @jax.jit
    def to_obs(x):  # T_synth→obs(Payne(y)) with z_sp of the same spectrum seen as observed
      xs = (x[:, N_DROP:] - mean) / std
      _, zsp = nets.encode_obs(gen, xs)
      return nets.decode_obs(gen, nets.encode_synth(gen, xs), zsp) * std + mean

    obs = np.concatenate([np.asarray(to_obs(jnp.asarray(flux[a:a + batch])))
                          for a in range(0, n, batch)])
    flux = np.concatenate([flux[:, :N_DROP], obs], axis=1)
  err = np.full(flux.shape, 1.0 / snr, np.float32)
  x = (flux + err * rng.normal(size=flux.shape)).astype(np.float32)
  return x, err, y_true, y_cat


def time_fit(fitter: LabelFitter, x, err, y_cat, repeats: int) -> tuple[dict, object]:
  """Median wall time of fitter.fit over all spectra, compilation excluded."""
  n = len(x)
  rows = fitter.chunk_rows(n)
  y_median = fitter.default_median(y_cat)
  k = fitter.n_dev
  list(fitter.fit_blocks([(x[:k], err[:k], None, y_cat[:k])], y_median=y_median, rows=rows))
  times, res = [], None
  for _ in range(repeats):
    t = time.perf_counter()
    res = fitter.fit(x, err, y_start=y_cat, y_median=y_median)
    times.append(time.perf_counter() - t)
  return {"median_s": statistics.median(times), "times_s": times,
          "spectra_per_s": n / statistics.median(times)}, res


def quality(res, ref, y_true=None) -> dict:
  """Δχ² against an unhurried fit, the largest label difference in formal errors, and (with
  the truth) the widths of (fit − truth)/σ for Teff, log g, [Fe/H] of both fits."""
  d = res.chi2 - ref.chi2
  dy = np.nanmax(np.abs(res.y - ref.y) / ref.y_err, axis=1)
  out = {"dchi2_p50": float(np.nanpercentile(d, 50)), "dchi2_p95": float(np.nanpercentile(d, 95)),
         "dchi2_max": float(np.nanmax(d)), "frac_dchi2_gt_1": float(np.mean(d > 1.0)),
         "max_dy_over_err_p50": float(np.nanpercentile(dy, 50)),
         "max_dy_over_err_p95": float(np.nanpercentile(dy, 95)),
         "max_dy_over_err_max": float(np.nanmax(dy)),
         "chi2_r_p50": float(np.nanmedian(res.chi2_r)),
         "chi2_r_p50_unhurried": float(np.nanmedian(ref.chi2_r))}
  if y_true is not None and len(y_true) == len(res.y) and res.y.shape[1] == N_LABELS:
    for name in ("Teff", "logg", "Fe_H"):
      i = label_index(name)
      out[f"pull_width_{name}"] = float(np.nanstd((res.y[:, i] - y_true[:, i]) / res.y_err[:, i]))
      out[f"pull_width_{name}_unhurried"] = float(
          np.nanstd((ref.y[:, i] - y_true[:, i]) / ref.y_err[:, i]))
  return out


def run(methods=("obs", "synth", "emulator"), n: int = 32768, batches=(1024, 16384),
        starts=("catalogue",), repeats: int = 3, config_name: str = "kurucz_to_apogee_1",
        emulator_path: str | None = None, model_dir: str | None = None, quality_n: int = 256,
        chunk_size: int = 16384, seed: int = 0, tol: float = LBFGSOptions.tol,
        patience: int = LBFGSOptions.patience) -> dict:
  """All timings; returns the JSON-ready dict."""
  emulator = load_emulator(emulator_path) if emulator_path else flux_like_emulator(seed)
  cycle = None
  if any(m != "emulator" for m in methods):
    if model_dir:
      cycle = load_cycle_model(model_dir)
    else:
      from cyclestar_jax.config import get_config
      from cyclestar_jax.networks import make_networks

      nets = make_networks(get_config(config_name))
      cycle = CycleModel(nets=nets, gen_params=nets.init(jax.random.PRNGKey(seed + 1))[0])
  dev = jax.devices()[0]
  out = {"benchmark": "fit", "device": str(dev), "device_kind": dev.device_kind,
         "platform": dev.platform, "n_devices": jax.local_device_count(),
         "jax": jax.__version__, "host": platform.node(), "cpu_count": os.cpu_count(),
         "n": n, "starts": list(starts), "repeats": repeats, "snr": 100.0,
         "network_config": None if cycle is None else cycle.nets.cfg.name,
         "trained_weights": bool(emulator_path or model_dir),
         "reference_s_per_spectrum_h100": REFERENCE_S_PER_SPECTRUM, "results": []}
  for method in methods:
    x, err, y_true, y_cat = make_data(method, n, emulator, cycle, seed=seed)
    qn = min(quality_n, n)
    ref = None
    if qn:
      slow = FitConfig(method=method, starts=starts, batch_size=min(batches),
                       chunk_size=chunk_size,
                       lbfgs=LBFGSOptions(tol=1e-9, max_iter=3000, max_evals=6000))
      ref = LabelFitter(emulator, slow, cycle_model=cycle).fit(x[:qn], err[:qn],
                                                               y_start=y_cat[:qn])
    for batch in batches:
      # A chunk holds several jobs per slot, so that slots freed by converged fits find work.
      cfg = FitConfig(method=method, starts=starts, batch_size=batch,
                      chunk_size=max(chunk_size, 4 * batch),
                      lbfgs=LBFGSOptions(tol=tol, patience=patience))
      fitter = LabelFitter(emulator, cfg, cycle_model=cycle)
      timing, res = time_fit(fitter, x, err, y_cat, repeats)
      fitted = res.start >= 0
      row = {"method": method, "batch": batch, **timing,
             "ratio_vs_reference_h100": timing["spectra_per_s"] * REFERENCE_S_PER_SPECTRUM,
             "iterations_p50": float(np.median(res.n_iter[fitted])),
             "iterations_p95": float(np.percentile(res.n_iter[fitted], 95)),
             "evals_p50": float(np.median(res.n_evals[fitted])),
             "loop_iters": res.timing.get("loop_iters"),
             "converged_fraction": float(res.converged.mean()),
             "chi2_r_p50": float(np.nanmedian(res.chi2_r)),
             "config": {k: v for k, v in cfg.record().items()
                        if k in ("tol", "patience", "max_iter", "max_evals", "memory_size",
                                 "chunk_size")}}
      if ref is not None:
        sub = dataclasses.replace(res, **{f: getattr(res, f)[:qn] for f in (
            "y", "y_err", "chi2", "chi2_r")})
        row["quality_vs_unhurried"] = {"n": qn, **quality(sub, ref, y_true[:qn])}
      out["results"].append(row)
      print(json.dumps(row), flush=True)
  return out


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default="obs,synth,emulator")
  p.add_argument("--n", type=int, default=32768, help="spectra per timed run")
  p.add_argument("--batch", default="1024,16384", help="comma-separated batch sizes (slots)")
  p.add_argument("--starts", default="catalogue", help="start kinds (the reference: catalogue)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--config", default="kurucz_to_apogee_1", help="network preset (random init)")
  p.add_argument("--emulator", default=None, help="emulator file (default: random, flux-like)")
  p.add_argument("--model", default=None, help="trained run directory (default: random)")
  p.add_argument("--quality-n", type=int, default=256,
                 help="spectra compared with an unhurried fit (0: skip)")
  p.add_argument("--chunk-size", type=int, default=16384)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tol", type=float, default=LBFGSOptions.tol, help="LBFGSOptions.tol")
  p.add_argument("--patience", type=int, default=LBFGSOptions.patience,
                 help="LBFGSOptions.patience")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  args = p.parse_args(argv)
  res = run(methods=tuple(args.methods.split(",")), n=args.n,
            batches=tuple(int(b) for b in args.batch.split(",")),
            starts=tuple(args.starts.split(",")), repeats=args.repeats,
            config_name=args.config, emulator_path=args.emulator, model_dir=args.model,
            quality_n=args.quality_n, chunk_size=args.chunk_size, seed=args.seed,
            tol=args.tol, patience=args.patience)
  return emit_json(res, args.out)


if __name__ == "__main__":
  main()
