"""Benchmark: reading apStar files into the reference format (issue 24: ≥ 200 files/s on 2 cores,
DR17's 650,000 stars in under an hour).

  python -m benchmarks.apogee_read [--n 2000] [--workers 2] [--dir DIR] [--out result.json]

Writes N single-visit float32 DR17-layout apStar files (the real star's co-add, a distinct OBJID
per file), then times `apogee.prepare` on them twice: with a cold page cache (after
`echo 3 > /proc/sys/vm/drop_caches`, when permitted: the JSON says whether it was) and warm
(the files just read). Reports files/s of the reading phase (spawned workers, shards) and of the
whole job (merge into obs.h5 included), and the peak resident memory of the main process and of
the largest worker. Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import emit_json
from cyclestar_jax.apogee import grid, prepare
from cyclestar_jax.apogee.config import PrepareConfig
from cyclestar_jax.apogee.writefits import StarRows, apstar_header, write_apstar

REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / \
    "apStar-dr17-2M17335483-2753043.fits"


def write_files(d: Path, n: int) -> float:
  """N single-visit apStar files: one written by astropy from the real star's co-add, copied
  with a distinct OBJID (and file name) each; returns seconds."""
  from astropy.io import fits

  with fits.open(REAL) as f:
    flux, err, mask = f[1].data[0], f[2].data[0], f[3].data[0].astype(np.int16)
  t = time.perf_counter()
  tmpl = Path(write_apstar(d.parent / "template.fits", StarRows(flux[None], err[None], mask[None]),
                           apstar_header("2M00000000", snr=150.0, nvisits=1, field="bench")))
  raw = tmpl.read_bytes()
  tmpl.unlink()
  for i in range(n):
    (d / f"apStar-dr17-2M{i:08d}.fits").write_bytes(
        raw.replace(b"'2M00000000'", f"'2M{i:08d}'".encode(), 1))
  return time.perf_counter() - t


def drop_caches() -> str:
  """Empties the page cache if permitted; returns what happened."""
  try:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as fh:
      fh.write("3\n")
    return "dropped (echo 3 > /proc/sys/vm/drop_caches)"
  except OSError as e:
    return f"not permitted ({e.strerror}): the 'cold' run may be partly warm"


def _cpu_s() -> float:
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(files: list[str], out: Path, cfg: PrepareConfig) -> dict:
  """One prepare; CPU seconds of this process and its (finished) workers give files per CPU
  second, which does not depend on how many other jobs share the machine."""
  c0 = _cpu_s()
  s = prepare.prepare(files, out, cfg, overwrite=True, progress=False)
  cpu = _cpu_s() - c0
  return {"read_s": s["read_seconds"], "total_s": s["seconds"], "cpu_s": round(cpu, 2),
          "files_per_cpu_s": round(len(files) / cpu, 1),
          "read_files_per_s": round(len(files) / s["read_seconds"], 1),
          "total_files_per_s": round(len(files) / s["seconds"], 1), "stars": s["stars"]}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=2000)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--dir", type=Path, default=None, help="folder for the files (default: tmp)")
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)
  cfg = PrepareConfig(workers=args.workers, n_plot=0)
  with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
    d = Path(tmp) / "apo25m" / "bench"
    d.mkdir(parents=True)
    t_write = write_files(d, args.n)
    files = prepare.find_files(str(d), None)
    mb = sum(os.path.getsize(f) for f in files) / 1e6
    cache = drop_caches()
    cold = run(files, Path(tmp) / "out", cfg)
    warm = run(files, Path(tmp) / "out", cfg)
  main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
  child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
  return emit_json({
      "benchmark": "apogee_read", "n_files": args.n, "workers": args.workers,
      "file": f"single-visit DR17 layout, float32, {mb / args.n * 1e3:.0f} kB each",
      "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
      "load_avg_1min": round(os.getloadavg()[0], 2), "write_s": round(t_write, 1),
      "page_cache_cold": cache, "cold": cold, "warm": warm,
      "peak_rss_gb": {"main": round(main_rss, 3), "largest_worker": round(child_rss, 3)},
      "grid_pixels": int(grid.payne_indices().size),
  }, args.out)


if __name__ == "__main__":
  main()
