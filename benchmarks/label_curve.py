"""The label curve of a main-job run: at each kept checkpoint, Eq. 11 fits of the test stars
scored against the mock world's truth, beside the trainer's paired χ² and the label gains
(`pipeline.curve`), as JSON; Eq. 9 with the same emulator and stars once, as the bar to beat.

  python -m benchmarks.label_curve RUN_DIR [--n 256] [--every 3000 | --steps 20000,12000]
      [--max-iter 100] [--out FILE.json]

RUN_DIR is an `experiments.apogee` run folder on the mock world whose preset keeps its
checkpoints (`--preset long`). Rows already in `--out` are kept (the script resumes), and the
file is rewritten after every checkpoint, so it can run beside a training that is still going.
The Eq. 11 fits are the main job's (catalogue start, ≤ `--max-iter` accepted L-BFGS steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cyclestar_jax import checkpoint, fitting, h5io, mock
from cyclestar_jax.emulator import load_emulator
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.pipeline import curve

METHOD = {"eq9": "emulator", "eq11": "obs"}


def load_test_stars(run_dir: Path, n: int):
  """(emulator, the first n test spectra of the observed domain, their true labels [n, 25], the
  mock world) of a mock-world run folder (n is capped at the test split's size)."""
  em = load_emulator(run_dir / "emulator" / "emulator.npz")
  with h5io.SpectraFile(run_dir / "data" / "obs.h5") as f:
    n = min(n, f.n("test"))
    sp = f.read("test", 0, n)
    y_true = f.extra("labels_true", "test", 0, n)
    world = mock.WorldConfig.from_json_dict(f.attrs["world"])
  return em, sp, y_true, world


def fit_row(stem: str, em, cycle, sp, y_true: np.ndarray, max_iter: int) -> dict:
  """Fits of one method to the spectra `sp`, scored by `curve.label_errors_row`."""
  cfg = fitting.FitConfig(method=METHOD[stem], starts=("catalogue",), batch_size=256,
                          chunk_size=64, lbfgs=fitting.LBFGSOptions(max_iter=max_iter))
  fitter = fitting.LabelFitter(em, cfg, cycle_model=None if stem == "eq9" else cycle)
  t0 = time.perf_counter()
  res = fitter.fit(sp.x, sp.x_err, sp.x_msk, y_start=sp.y, progress=False)
  edge = (res.flags & fitting.FLAGS["AT_BOUND"]) > 0
  return {**curve.label_errors_row(res.y, y_true, edge), "fit_seconds": time.perf_counter() - t0}


def run(run_dir: Path, n: int, every: int, max_iter: int, done: dict,
        steps: list[int] | None = None):
  """The curve of the module docstring, extending `done` (a previous output) in place; yields
  it after the Eq. 9 row and after every checkpoint's row, so the caller can save as it goes.
  `steps` (None: every kept multiple of `every`, oldest first) picks the checkpoints, in that
  order."""
  em, sp, y_true, world = load_test_stars(run_dir, n)
  model_dir = run_dir / "model"
  if "eq9" not in done:
    done["eq9"] = fit_row("eq9", em, None, sp, y_true, max_iter)
    yield done
  ns = curve.N_CURVE_STARS

  def row(step: int) -> dict:
    cycle = checkpoint.load_cycle_model(model_dir, step=step)
    return {**curve.gains_row(em, cycle, sp.x[:ns], y_true[:ns], world),
            **fit_row("eq11", em, cycle, sp, y_true, max_iter)}

  yield from curve.add_rows(done, model_dir, curve.checkpoint_order(model_dir, every, steps), row)
  yield done


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("run_dir", type=Path)
  p.add_argument("--n", type=int, default=256, help="test stars fitted")
  p.add_argument("--every", type=int, default=3000, help="use checkpoints at multiples of this")
  p.add_argument("--steps", default=None,
                 help="comma-separated checkpoints, fitted in this order (None: --every)")
  p.add_argument("--max-iter", type=int, default=100, help="accepted L-BFGS steps per fit")
  p.add_argument("--out", type=Path, default=None, help="JSON file (resumed if present)")
  a = p.parse_args()
  done = json.loads(a.out.read_text()) if a.out and a.out.is_file() else {}
  done.update(run_dir=str(a.run_dir), n=a.n, max_iter=a.max_iter, labels=list(curve.CURVE_LABELS))
  steps = None if a.steps is None else [int(k) for k in a.steps.split(",")]
  for state in run(a.run_dir, a.n, a.every, a.max_iter, done, steps):
    if a.out:
      atomic_write_text(a.out, json.dumps(state, indent=1) + "\n")
  print(json.dumps(done, indent=1))


if __name__ == "__main__":
  main()
