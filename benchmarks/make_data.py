"""Benchmark: generate and write observed mock spectra (issue 2: 100,000 in <= 5 min, 2 cores).

  python -m benchmarks.make_data [--n 100000] [--repeats 1] [--out DIR]

Prints JSON: spectra per second and the projected time for 100,000 spectra, median over the
repeats; the first (compiling) block is run before timing. Memory is bounded by BLOCK.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from cyclestar_jax import mock
from cyclestar_jax.mock import files


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=100_000, help="observed spectra per run")
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--out", type=Path, default=None, help="folder for the file (default: tmp)")
  args = p.parse_args(argv)
  world = mock.WorldConfig()
  sizes = mock.DataSizes(n_train=args.n, n_val=1, n_test=1)
  with tempfile.TemporaryDirectory(dir=args.out) as tmp:
    # Warm-up: compile the synthesizer for the block shape (and the tail block shapes).
    files.write_observed(Path(tmp) / "warm.h5", world,
                         mock.DataSizes(files.BLOCK, 1, 1), progress=False)
    times = []
    for r in range(args.repeats):
      path = Path(tmp) / f"obs{r}.h5"
      t0 = time.perf_counter()
      files.write_observed(path, world, sizes, progress=False)
      times.append(time.perf_counter() - t0)
      size_mb = path.stat().st_size / 1e6
      path.unlink()
  med = statistics.median(times)
  out = {
      "benchmark": "make_data.observed", "n_spectra": args.n, "repeats": args.repeats,
      "seconds_median": med, "seconds_all": times, "spectra_per_s": args.n / med,
      "projected_seconds_100k": 1e5 / (args.n / med), "file_mb": size_mb,
      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
      "device": str(jax.devices()[0]), "cpu_count": __import__("os").cpu_count(),
      "machine": platform.machine(), "jax": jax.__version__, "numpy": np.__version__,
  }
  print(json.dumps(out, indent=2))
  return out


if __name__ == "__main__":
  main()
