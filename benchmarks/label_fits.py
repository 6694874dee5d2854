"""Label experiments on a trained main-job run: Eq. 9 and Eq. 11 fits of its test stars under
variants of the fit, scored against the mock world's truth, printed as JSON.

  python -m benchmarks.label_fits RUN_DIR [--n 128] [--methods eq9,eq11]
      [--free all,aspcap] [--starts catalogue] [--max-iter 100] [--out FILE]

RUN_DIR is an `experiments.apogee` output folder (data/obs.h5 with `labels_true`, the emulator,
the model). Each (method, free-label set) pair fits the first `--n` test stars and reports, per
label of `KEY_LABELS`, bias and scatter (half the 16–84 width) of fitted − true, the fraction at
the emulator's box edge, the median χ²_R (|r| ≤ 5) and the seconds. Free-label sets:

- `all`: the 25 labels (the paper's fits).
- `aspcap`: the labels of ASPCAP's first stage (García Pérez et al. 2016) free: Teff, log g,
  vturb, [Fe/H], [C/H], [N/H], [O/H], [Mg/H] (for α), vmacro; the other 16 held at their
  catalogue values (`FitConfig.free_labels`; on the mock the truth + 0.05 dex, so this variant
  leans on the catalogue for them, and says how much the weakly constrained labels cost).
- `truth-start`: all 25 free, started from the true labels (where the model's own optimum near
  the truth lies; diagnostic only, needs the truth).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks._common import emit_json
from benchmarks.label_curve import load_test_stars
from cyclestar_jax import fitting, metrics
from cyclestar_jax.pipeline.evaluate import _observed_weights, fit_models
from cyclestar_jax.resources import N_DROP

KEY_LABELS = ("Teff", "logg", "Fe_H", "Mg_H", "C_H", "N_H")
ASPCAP_FREE = ("Teff", "logg", "vturb", "Fe_H", "C_H", "N_H", "O_H", "Mg_H", "vmacro")
METHOD = {"eq9": "emulator", "eq11": "obs"}


def run(run_dir: Path, n: int, methods: list[str], free_sets: list[str], starts: tuple[str, ...],
        max_iter: int) -> dict:
  """The fits of the module docstring; returns {f"{method}/{free}": statistics}."""
  em, sp, y_true, _ = load_test_stars(run_dir, n)
  cycle = fitting.load_cycle_model(run_dir / "model")
  err, good = _observed_weights(sp)
  out = {}
  for stem in methods:
    for free in free_sets:
      y_start = y_true if free == "truth-start" else sp.y
      cfg = fitting.FitConfig(method=METHOD[stem], starts=starts,
                              lbfgs=fitting.LBFGSOptions(max_iter=max_iter),
                              batch_size=256, chunk_size=64,
                              free_labels=ASPCAP_FREE if free == "aspcap" else None)
      fitter = fitting.LabelFitter(em, cfg, cycle_model=None if stem == "eq9" else cycle)
      t0 = time.perf_counter()
      res = fitter.fit(sp.x, sp.x_err, sp.x_msk, y_start=y_start, progress=True,
                       desc=f"{stem} {free}")
      seconds = time.perf_counter() - t0
      model = fit_models(stem, res.y, sp.x, em, cycle)
      r = metrics.normalized_residual(model, sp.x[:, N_DROP:], err, good)
      errs = metrics.label_errors(res.y, y_true)
      out[f"{stem}/{free}"] = {
          "labels": {k: errs[k] for k in KEY_LABELS},
          "chi2r": metrics.fit_quality(r)["chi2r"],
          "at_box_edge": float(np.mean((res.flags & fitting.FLAGS["AT_BOUND"]) > 0)),
          "converged": float(np.mean(res.converged)), "seconds": seconds, "n": n}
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("run_dir", type=Path)
  p.add_argument("--n", type=int, default=128)
  p.add_argument("--methods", default="eq9,eq11")
  p.add_argument("--free", default="all,aspcap", help="free-label sets: all, aspcap, truth-start")
  p.add_argument("--starts", default="catalogue")
  p.add_argument("--max-iter", type=int, default=100)
  p.add_argument("--out", default=None)
  a = p.parse_args()
  res = run(a.run_dir, a.n, a.methods.split(","), a.free.split(","),
            tuple(a.starts.split(",")), a.max_iter)
  emit_json({"run_dir": str(a.run_dir), "max_iter": a.max_iter, "starts": a.starts,
             "results": res}, a.out)


if __name__ == "__main__":
  main()
