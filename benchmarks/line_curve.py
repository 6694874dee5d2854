"""The line-identification curve of a new_lines run: at each kept checkpoint, the recovery error
of the removed lines, the attribution (pooled, Fe's, the reference star's), the added Fe lines'
response to [Fe/H] against the truth's, the label gains and the trainer's paired χ², as JSON
(`pipeline.new_lines.evaluate.curve_row`).

  python -m benchmarks.line_curve RUN_DIR [--n-sets 256] [--every 2000 | --steps 6000,24000]
      [--out FILE.json]

RUN_DIR is an `experiments.new_lines` run folder whose preset keeps its checkpoints (`--preset
long`). The label sets are the job's (`evaluate.label_sets`, its seed), fewer of them (the job
itself uses 2,000). Rows already in `--out` are kept (the script resumes), and the file is
rewritten after every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cyclestar_jax import checkpoint, h5io, mock
from cyclestar_jax.chain import ModelChain
from cyclestar_jax.emulator import load_emulator
from cyclestar_jax.fileio import atomic_write_text
from cyclestar_jax.pipeline import curve
from cyclestar_jax.pipeline.new_lines import evaluate

N_OBS = 256  # observed test stars whose z_sp the label sets borrow (the job's n_eval)


def run(run_dir: Path, n_sets: int, every: int, done: dict, steps: list[int] | None = None,
        seed: int = 0):
  """The curve of the module docstring, extending `done` (a previous output) in place; yields
  it after every checkpoint's row. `steps` (None: every kept multiple of `every`, oldest first)
  picks the checkpoints, in that order; `seed` is the job's (the label sets')."""
  em = load_emulator(run_dir / "emulator" / "emulator.npz")
  with h5io.SpectraFile(run_dir / "data" / "obs.h5") as f:
    n = min(N_OBS, f.n("test"))
    x_obs = f.read("test", 0, n).x
    y_obs = f.extra("labels_true", "test", 0, n)
    world = mock.WorldConfig.from_json_dict(f.attrs["world"])
  y, x_true = evaluate.label_sets(n_sets, em, seed)
  model_dir = run_dir / "model"

  def row(step: int) -> dict:
    t0 = time.perf_counter()
    mc = ModelChain(em, checkpoint.load_cycle_model(model_dir, step=step))
    return {**evaluate.curve_row(mc, world, x_obs, y_obs, y, x_true),
            "seconds": time.perf_counter() - t0}

  yield from curve.add_rows(done, model_dir, curve.checkpoint_order(model_dir, every, steps), row)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("run_dir", type=Path)
  p.add_argument("--n-sets", type=int, default=256, help="label sets per checkpoint")
  p.add_argument("--every", type=int, default=2000, help="use checkpoints at multiples of this")
  p.add_argument("--steps", default=None,
                 help="comma-separated checkpoints, in this order (None: --every)")
  p.add_argument("--seed", type=int, default=0, help="the job's seed (its label sets)")
  p.add_argument("--out", type=Path, default=None, help="JSON file (resumed if present)")
  a = p.parse_args()
  done = json.loads(a.out.read_text()) if a.out and a.out.is_file() else {}
  if done and done.get("n_sets") != a.n_sets:
    p.error(f"{a.out}: its rows have n_sets {done.get('n_sets')}, not --n-sets {a.n_sets}")
  done.update(run_dir=str(a.run_dir), n_sets=a.n_sets, seed=a.seed)
  steps = None if a.steps is None else [int(k) for k in a.steps.split(",")]
  for state in run(a.run_dir, a.n_sets, a.every, done, steps, a.seed):
    if a.out:
      atomic_write_text(a.out, json.dumps(state, indent=1) + "\n")
  print(json.dumps(done, indent=1))


if __name__ == "__main__":
  main()
