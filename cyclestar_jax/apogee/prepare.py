"""`prepare`: many apStar/asStar files → OUT/obs.h5 (the reference format), OUT/skipped.csv,
OUT/normalization.png and OUT/prepare.json (counts and timings): `--mode observed`. Its pieces
(`read_files`, `select`, `write_obs`, `finish`) also make `--mode paper` (`apogee.paper`).

The files are read in shards of `PrepareConfig.shard_files` by spawned worker processes (not
forked: the caller may have imported JAX); each shard is written to OUT/.parts/ as soon as it is
read, so memory stays bounded and an interrupted run resumes with the shards not yet written
(OUT/.parts/manifest.json pins the files and settings; another set is refused). When every shard
is there they are merged: catalogue cuts, duplicate keys, the split by fractions and seed, and
OUT/obs.h5 written atomically (SpectraWriter) one shard at a time; obs.h5 is written last, so
its presence means a complete run, refused without `overwrite`.

Failures: a wrong kind of input (not FITS, an apVisit, another grid, an aspcapStar without the
option) stops the job at once; a damaged file in a batch is skipped and listed in skipped.csv
(the first files are read before any worker starts, so a single bad file, or a batch whose first
files are all damaged, stops with its one-line message before any long work).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cyclestar_jax import h5io
from cyclestar_jax.apogee import catalog
from cyclestar_jax.apogee.config import CutConfig, PrepareConfig, ReadConfig
from cyclestar_jax.apogee.errors import CorruptFileError, StarRejected, WrongInputError
from cyclestar_jax.apogee.plot import plot_normalization
from cyclestar_jax.apogee.spectra import file_kind, read_star
from cyclestar_jax.fileio import atomic_write, atomic_write_text
from cyclestar_jax.labels import N_LABELS
from cyclestar_jax.resources import N_PIX

OBS_FILE, SKIPPED_FILE, PLOT_FILE, SUMMARY_FILE = (
    "obs.h5", "skipped.csv", "normalization.png", "prepare.json")
SYNTH_FILE = "synth.h5"  # --mode paper (`apogee.paper`)
OUTPUTS = (OBS_FILE, SYNTH_FILE, SKIPPED_FILE, PLOT_FILE, SUMMARY_FILE)
PARTS = ".parts"
PREFLIGHT = 8  # files read in this process before the workers start
STRING_FIELDS = ("apogee_id", "telescope", "field", "path")
_DEFAULT = PrepareConfig()


# ---------------------------------------------------------------------------------------------
# The files.


def find_files(apstar: str | None, files_list: str | None, *, allow_aspcap: bool = False
               ) -> list[str]:
  """The star files, sorted and unique: a folder (walked for apStar-*/asStar-* files, and
  aspcapStar-* with `allow_aspcap`), a glob, one file, and/or a text file of paths (one a line,
  blank lines and '#' comments skipped; relative paths are relative to the list file).

  Raises:
    FileNotFoundError naming the path or glob that matches nothing.
  """
  kinds = ("apStar", "asStar") + (("aspcapStar",) if allow_aspcap else ())
  out: list[str] = []
  if apstar is not None:
    if os.path.isdir(apstar):
      for root, dirs, names in os.walk(apstar):
        dirs.sort()
        out += [os.path.join(root, n) for n in sorted(names)
                if file_kind(n) in kinds and ".fits" in n]
      if not out:
        raise FileNotFoundError(f"{apstar}: folder holds no {'/'.join(kinds)} *.fits file")
    elif os.path.isfile(apstar):
      out.append(apstar)
    else:
      out = sorted(glob.glob(apstar, recursive=True))
      out = [p for p in out if os.path.isfile(p)]
      if not out:
        raise FileNotFoundError(f"--apstar {apstar}: no such file or folder, and as a glob it "
                                "matches no file")
  if files_list is not None:
    if not os.path.isfile(files_list):
      raise FileNotFoundError(f"{files_list}: no such list file")
    base = os.path.dirname(os.path.abspath(files_list))
    n0 = len(out)
    with open(files_list) as fh:
      for line in fh:
        p = line.strip()
        if p and not p.startswith("#"):
          out.append(p if os.path.isabs(p) else os.path.join(base, p))
    if len(out) == n0:
      raise FileNotFoundError(f"{files_list}: the list holds no path")
  if apstar is None and files_list is None:
    raise ValueError("no input: give a folder or glob of apStar files, or a list of paths")
  return sorted(set(out))


# ---------------------------------------------------------------------------------------------
# Worker side: one shard.


@dataclasses.dataclass(frozen=True)
class ShardResult:
  """What a worker reports: rows written, files skipped, or the one-line message that stops
  the job (`fatal`)."""

  index: int
  n_files: int
  n_rows: int
  fatal: str | None = None


def _shard_path(parts: Path, index: int) -> Path:
  return parts / f"shard-{index:06d}.npz"


def read_shard(index: int, paths: list[str], read: ReadConfig, cuts: CutConfig, parts: str
               ) -> ShardResult:
  """Reads one shard's files and writes PARTS/shard-<index>.npz (atomically). Top-level, so
  spawned workers can run it."""
  rows: dict[str, list] = {k: [] for k in ("x", "x_err", "x_msk", "snr") + STRING_FIELDS}
  skipped: list[tuple[str, str, str]] = []
  for p in paths:
    try:
      star = read_star(p, read, cuts)
    except WrongInputError as e:
      return ShardResult(index, len(paths), 0, fatal=str(e))
    except StarRejected as e:
      skipped.append((p, e.reason, str(e)))
      continue
    except CorruptFileError as e:
      skipped.append((p, "corrupt", str(e)))
      continue
    except Exception as e:  # noqa: BLE001  (an isolated damaged file must not stop the batch)
      skipped.append((p, "corrupt", f"{p}: {type(e).__name__}: {e}"))
      continue
    h = star.header
    for k, v in (("x", star.norm.x), ("x_err", star.norm.x_err), ("x_msk", star.norm.x_msk),
                 ("snr", h.snr), ("apogee_id", h.apogee_id), ("telescope", h.telescope),
                 ("field", h.field), ("path", p)):
      rows[k].append(v)
  n = len(rows["x"])
  arrays = {
      "x": np.asarray(rows["x"], np.float32).reshape(n, N_PIX),
      "x_err": np.asarray(rows["x_err"], np.float32).reshape(n, N_PIX),
      "x_msk": np.asarray(rows["x_msk"], bool).reshape(n, N_PIX),
      "snr": np.asarray(rows["snr"], np.float32),
      **{k: np.asarray(rows[k], dtype=str) for k in STRING_FIELDS},
      "skip_file": np.asarray([s[0] for s in skipped], dtype=str),
      "skip_reason": np.asarray([s[1] for s in skipped], dtype=str),
      "skip_message": np.asarray([s[2] for s in skipped], dtype=str),
  }
  atomic_write(_shard_path(Path(parts), index), lambda fh: np.savez(fh, **arrays))
  return ShardResult(index, len(paths), n)


# ---------------------------------------------------------------------------------------------
# Main side.


def _manifest(files: list[str], cfg: PrepareConfig) -> dict:
  cfg_dict = dataclasses.asdict(cfg)
  for k in ("workers", "n_plot"):  # not part of what is computed
    cfg_dict.pop(k)
  sha = hashlib.sha256("\n".join(files).encode()).hexdigest()
  return {"format": 1, "n_files": len(files), "files_sha256": sha, "config": cfg_dict}


def check_outputs(out: Path, overwrite: bool) -> None:
  """Refuses a complete run's folder (obs.h5 or synth.h5 there) without `overwrite`.

  Raises:
    NotADirectoryError, FileExistsError (one line naming the file).
  """
  if out.exists() and not out.is_dir():
    raise NotADirectoryError(f"{out}: is a file, expected an output folder")
  for name in (OBS_FILE, SYNTH_FILE):
    if (out / name).exists() and not overwrite:
      raise FileExistsError(f"{out / name} exists (a complete run); pass --overwrite to "
                            "replace it")


def _start(out: Path, files: list[str], cfg: PrepareConfig, overwrite: bool) -> tuple[Path, int]:
  """Checks OUT and returns (parts folder, shards already written)."""
  parts = out / PARTS
  check_outputs(out, overwrite)
  if overwrite:
    for name in OUTPUTS:
      (out / name).unlink(missing_ok=True)
  if overwrite and parts.exists():
    shutil.rmtree(parts)
  parts.mkdir(parents=True, exist_ok=True)
  manifest = json.loads(json.dumps(_manifest(files, cfg)))
  mpath = parts / "manifest.json"
  if mpath.exists():
    old = json.loads(mpath.read_text())
    if old != manifest:
      what = "files" if old.get("files_sha256") != manifest["files_sha256"] else "settings"
      raise ValueError(f"{out}: holds an interrupted run with other {what}; run it with the "
                       "same input and options to resume, or pass --overwrite to start again")
  else:
    atomic_write_text(mpath, json.dumps(manifest, indent=1))
  done = sum(1 for p in parts.glob("shard-*.npz"))
  return parts, done


def preflight(files: list[str], cfg: PrepareConfig) -> None:
  """Reads the first files here: a wrong kind of input, or first files that are all damaged,
  stop the job (one-line message) before any worker starts."""
  first = files[:PREFLIGHT]
  corrupt = []
  for p in first:
    try:
      read_star(p, cfg.read, cfg.cuts)
    except StarRejected:
      pass
    except CorruptFileError as e:
      corrupt.append(e)
  if corrupt and len(corrupt) == len(first):
    raise corrupt[0]


def _run_shards(files: list[str], parts: Path, cfg: PrepareConfig, progress: bool) -> None:
  k = cfg.shard_files
  todo = [i for i in range(-(-len(files) // k)) if not _shard_path(parts, i).exists()]
  done_files = len(files) - sum(len(files[i * k:(i + 1) * k]) for i in todo)
  bar = tqdm(total=len(files), initial=done_files, unit="files", desc="apStar",
             disable=not progress, smoothing=0.1, dynamic_ncols=True)
  try:
    if cfg.workers == 0:
      for i in todo:
        r = read_shard(i, files[i * k:(i + 1) * k], cfg.read, cfg.cuts, str(parts))
        if r.fatal:
          raise WrongInputError(r.fatal)
        bar.update(r.n_files)
      return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx) as ex:
      pending, queue = set(), list(todo)
      while queue or pending:
        while queue and len(pending) < 2 * cfg.workers:  # a bounded window of shards in flight
          i = queue.pop(0)
          pending.add(ex.submit(read_shard, i, files[i * k:(i + 1) * k], cfg.read, cfg.cuts,
                                str(parts)))
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
          r = fut.result()
          if r.fatal:
            for f in pending:
              f.cancel()
            raise WrongInputError(r.fatal)
          bar.update(r.n_files)
  finally:
    bar.close()


def _load_meta(parts: Path, n_shards: int) -> dict[str, np.ndarray]:
  """The small per-row arrays of every shard, concatenated, with each row's shard index."""
  keys = ("snr",) + STRING_FIELDS + ("skip_file", "skip_reason", "skip_message")
  acc: dict[str, list] = {k: [] for k in keys + ("shard",)}
  for i in range(n_shards):
    with np.load(_shard_path(parts, i), allow_pickle=False) as z:
      for k in keys:
        acc[k].append(z[k])
      acc["shard"].append(np.full(len(z["snr"]), i))
  return {k: np.concatenate(v) if v else np.empty(0) for k, v in acc.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class Reading:
  """Every file read into OUT/.parts/ shards.

  Attributes:
    out: the output folder. parts: its shard folder. meta: per-row arrays of the spectra read
      ("snr", "apogee_id", "telescope", "field", "path", "shard" [n]) and of the files skipped
      ("skip_file", "skip_reason", "skip_message"). files: files given. resumed: shards found
      from an interrupted run. seconds: wall time of the reading.
  """

  out: Path
  parts: Path
  meta: dict[str, np.ndarray]
  files: int
  resumed: int
  seconds: float


def read_files(files: list[str], out_dir: str | os.PathLike, cfg: PrepareConfig, *,
               overwrite: bool = False, progress: bool = True) -> Reading:
  """Reads (or resumes reading) every file into shards (module docstring).

  Raises:
    WrongInputError / CorruptFileError / ValueError / FileExistsError: one-line messages.
  """
  cfg.check()
  if not files:
    raise FileNotFoundError("no apStar files given")
  out = Path(out_dir)
  check_outputs(out, overwrite)
  t0 = time.perf_counter()
  preflight(files, cfg)
  parts, done = _start(out, files, cfg, overwrite)
  _run_shards(files, parts, cfg, progress)
  meta = _load_meta(parts, -(-len(files) // cfg.shard_files))
  return Reading(out, parts, meta, len(files), done, time.perf_counter() - t0)


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
  """Which rows of a `Reading` are written.

  Attributes:
    keep: [n] bool. cat_row: [n] catalogue row (−1: none). skipped: (file, reason, message) of
      every file or row left out (the files' own and the catalogue's).
  """

  keep: np.ndarray
  cat_row: np.ndarray
  skipped: list[tuple[str, str, str]]


def select(reading: Reading, cat: catalog.Catalogue | None, cuts: CutConfig) -> Selection:
  """The rows kept after the catalogue cuts and the duplicate keys (the highest-S/N file of a
  key is kept), with the files skipped while reading."""
  meta = reading.meta
  skipped = [(str(f), str(r), str(m)) for f, r, m in
             zip(meta["skip_file"], meta["skip_reason"], meta["skip_message"], strict=True)]
  n = len(meta["snr"])
  keep = np.ones(n, bool)
  cat_row = np.full(n, -1)
  matcher = catalog.Matcher.of(cat) if cat is not None else None
  for r in range(n):
    if matcher is None:
      continue
    row = matcher.find(meta["apogee_id"][r], meta["telescope"][r], meta["field"][r])
    why = catalog.catalogue_reason(cat, row, cuts)
    if why:
      keep[r] = False
      skipped.append((meta["path"][r], why[0], f"{meta['path'][r]}: {why[1]}"))
    else:
      cat_row[r] = row
  best: dict[tuple, int] = {}
  for r in np.argsort(-meta["snr"], kind="stable"):
    if not keep[r]:
      continue
    key = (meta["apogee_id"][r], meta["telescope"][r], meta["field"][r])
    if key in best:
      keep[r] = False
      skipped.append((meta["path"][r], "duplicate",
                      f"{meta['path'][r]}: same APOGEE_ID/TELESCOPE/FIELD as "
                      f"{meta['path'][best[key]]} (higher S/N, kept)"))
    else:
      best[key] = r
  return Selection(keep, cat_row, skipped)


def assign_splits(n: int, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
  """Split index [n] (0 train, 1 val, 2 test): exactly round(f·n) val and test rows, drawn by
  a permutation seeded with `seed`."""
  n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
  perm = np.random.default_rng(seed).permutation(n)
  out = np.zeros(n, np.int8)
  out[perm[n - n_val - n_test:n - n_test]] = 1
  out[perm[n - n_test:]] = 2
  return out


def write_obs(path: Path, reading: Reading, sel: Selection, split: np.ndarray,
              cat: catalog.Catalogue | None, cfg: PrepareConfig, attrs: dict | None = None
              ) -> dict[str, int]:
  """OUT/obs.h5 from the kept rows, one shard at a time (`SpectraWriter`, atomic).

  Args:
    path: obs.h5. reading, sel: the rows (`sel.keep`) and their catalogue rows. split: [n_kept]
      split index of each kept row, in row order. cat: labels (None: NaN). cfg: stored as an
      attribute. attrs: more file attributes.

  Returns:
    Rows per split.
  """
  names, meta, keep = h5io.SPLITS, reading.meta, sel.keep
  sizes = {s: int(np.sum(split == i)) for i, s in enumerate(names)}
  split_all = np.full(len(keep), -1, np.int8)
  split_all[keep] = split
  attrs = {"paired_splits": [], "source": "cyclestar_jax.apogee.prepare",
           "prepare_config": json.dumps(dataclasses.asdict(cfg)),
           "catalogue": cat.source if cat is not None else "", **(attrs or {})}
  extra = {k: ((), str) for k in STRING_FIELDS}
  offset = dict.fromkeys(names, 0)
  labels_all = np.full((len(keep), N_LABELS), np.nan)
  if cat is not None:
    has = sel.cat_row >= 0
    labels_all[has] = cat.labels[sel.cat_row[has]]
  with h5io.SpectraWriter(path, sizes, extra_fields=extra, attrs=attrs) as w:
    for i in np.unique(meta["shard"][keep]).tolist():
      rows = np.flatnonzero(meta["shard"] == i)
      with np.load(_shard_path(reading.parts, i), allow_pickle=False) as z:
        block = {k: z[k] for k in ("x", "x_err", "x_msk")}
      for si, s in enumerate(names):
        local = np.flatnonzero(split_all[rows] == si)
        if not len(local):
          continue
        g = rows[local]
        w.write(s, offset[s], x=block["x"][local], x_err=block["x_err"][local],
                x_msk=block["x_msk"][local], y=labels_all[g], snr=meta["snr"][g],
                **{k: meta[k][g].astype(object) for k in STRING_FIELDS})
        offset[s] += len(local)
  return sizes


def _write_skipped(path: Path, skipped: list[tuple[str, str, str]]) -> None:
  buf = io.StringIO()
  wr = csv.writer(buf)
  wr.writerow(["file", "reason", "message"])
  wr.writerows(skipped)
  atomic_write_text(path, buf.getvalue())


def plot_kept(reading: Reading, keep: np.ndarray, cfg: PrepareConfig) -> None:
  """OUT/normalization.png of `cfg.n_plot` kept stars spread over the rows (none: no file)."""
  n_keep = int(keep.sum())
  if not cfg.n_plot or not n_keep:
    return
  picks = np.flatnonzero(keep)[np.linspace(0, n_keep - 1, min(cfg.n_plot, n_keep)).astype(int)]
  stars = [read_star(str(reading.meta["path"][r]), cfg.read) for r in np.unique(picks)]
  plot_normalization(stars, reading.out / PLOT_FILE)


def finish(reading: Reading, skipped: list[tuple[str, str, str]], summary: dict) -> dict:
  """Writes OUT/skipped.csv and OUT/prepare.json (the summary, with the reading's counts and
  timings added) and removes the shards; returns the summary."""
  _write_skipped(reading.out / SKIPPED_FILE, skipped)
  summary = {"files": reading.files, **summary,
             "skipped": dict(Counter(r for _, r, _ in skipped)),
             "resumed_shards": reading.resumed, "read_seconds": round(reading.seconds, 2)}
  atomic_write_text(reading.out / SUMMARY_FILE, json.dumps(summary, indent=1))
  shutil.rmtree(reading.parts, ignore_errors=True)
  return summary


def prepare(files: list[str], out_dir: str | os.PathLike, cfg: PrepareConfig = _DEFAULT,
            catalogue: catalog.Catalogue | None = None, *, overwrite: bool = False,
            progress: bool = True) -> dict:
  """Reads `files` into OUT/obs.h5 (module docstring); `--mode observed`.

  Args:
    files: star files (`find_files`). out_dir: the output folder. cfg: `PrepareConfig`.
    catalogue: labels and catalogue cuts (`catalog.read_catalogue`); None: labels NaN.
    overwrite: replace a complete run. progress: a progress bar (files/s, ETA).

  Returns:
    The summary (also OUT/prepare.json): counts per split and per skip reason, timings.

  Raises:
    WrongInputError / CorruptFileError / ValueError / FileExistsError: one-line messages.
  """
  t0 = time.perf_counter()
  reading = read_files(files, out_dir, cfg, overwrite=overwrite, progress=progress)
  sel = select(reading, catalogue, cfg.cuts)
  n_keep = int(sel.keep.sum())
  if n_keep == 0:
    _write_skipped(reading.out / SKIPPED_FILE, sel.skipped)
    raise ValueError(f"no star of the {len(files)} files passed the cuts; see "
                     f"{reading.out / SKIPPED_FILE}")
  split = assign_splits(n_keep, cfg.fractions, cfg.seed)
  plot_kept(reading, sel.keep, cfg)
  sizes = write_obs(reading.out / OBS_FILE, reading, sel, split, catalogue, cfg)
  return finish(reading, sel.skipped, {
      "mode": "observed", "stars": n_keep, "splits": sizes,
      "seconds": round(time.perf_counter() - t0, 2),
      "catalogue": catalogue.source if catalogue is not None else None,
      "catalogue_notes": list(catalogue.notes) if catalogue is not None else []})
