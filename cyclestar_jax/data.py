"""Training data from reference-format HDF5 files: standardization and shuffled batches (NumPy).

Standardization (docs/method.md), applied to raw rows of `h5io.SpectraFile`:
  - keep the last `cfg.n_pix` pixels (drop the first 47 of the 7214-pixel grid);
  - flux x' = (x − 0.97746492) / 0.05180881 (`resources.spectra_mean_std()`);
  - errors: floored at `cfg.error_floor` (`resources.ERROR_FLOOR`, 0.005 raw flux) then divided
    by the same std;
    synthetic spectra get the floor everywhere, whatever the file holds;
  - masks (float 0/1): the file's mask (h5io already masks NaN/inf flux and bad errors) and,
    for observed spectra, 0 where the raw error exceeds `cfg.error_mask_threshold` (0.05);
    synthetic spectra get 1 except where the file flags a bad pixel;
  - `cfg.mask_synth_lines` (paper §4.2): synthetic flux set to the continuum (1.0) over the
    masked features (`resources.kurucz_response()["total_mask"]`) before standardizing, as the
    reference does; a no-op on files already written that way.

Pixel count (one rule for training): the files' spectra must have exactly `cfg.n_pix + 47`
pixels (7214, the APOGEE grid, for the default 7167-pixel networks; docs/method.md), both files
the same (`check_pixel_count`).

Usable pixels: a training split must have something to learn from (`BatchStream.check_usable`):
at least `MIN_USABLE_FRACTION` (1%) of its network pixels unmasked and at least `batch_size`
spectra (every one, in a smaller split) with `MIN_PIXELS_PER_SPECTRUM` (100) unmasked pixels,
counted on up to
`USABLE_SAMPLE_ROWS` (2,048) rows spread evenly over the split (all rows of a smaller split).

Batches: each domain is read in its own shuffled order (unpaired), epoch by epoch; the rows of
global step s are positions [s·B, (s+1)·B) of an endless stream whose epoch e is a permutation
drawn from (seed, domain, e). A batch is therefore a pure function of (seed, step): resuming at
step s gives exactly the batches an uninterrupted run would have seen. Only the rows of a batch
are read (memory bounded for files larger than RAM); a background thread reads ahead.
With several processes, each reads its own slice of every global batch.

Grid batches (optional, `Config.lambda_grid` > 0): a third stream `grid` of synthetic spectra
at labels that vary each element on its own (the emulator's training grid, e.g. the mock's
`payne_grid.h5`), standardized as synthetic spectra and shuffled like the others (domain index
2 in the seed). Only the synthetic autoencoder and the synthetic cycle see them (`losses`).
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cyclestar_jax import h5io, resources
from cyclestar_jax.config import Config

DOMAINS = ("synth", "obs")
GRID = "grid"  # the optional third stream: synthetic spectra at decorrelated labels
MIN_USABLE_FRACTION = 0.01  # a training split needs at least 1% of its network pixels unmasked
MIN_PIXELS_PER_SPECTRUM = 100  # unmasked pixels that make a spectrum count as usable
USABLE_SAMPLE_ROWS = 2048  # rows checked by `usable_pixels` (spread evenly over the split)


def check_pixel_count(n_pix_file: int, cfg: Config, where: str) -> None:
  """The one pixel-count rule of training: spectra on disk have exactly `cfg.n_pix + N_DROP`
  pixels (7214 = the APOGEE grid for the default 7167-pixel networks, docs/method.md).

  Args:
    n_pix_file: pixels per spectrum in the file(s).
    cfg: config (n_pix: pixels the networks see).
    where: the file(s), for the message.

  Raises:
    ValueError: naming the file(s), the count found and the count the config needs.
  """
  want = cfg.n_pix + resources.N_DROP
  if n_pix_file != want:
    raise ValueError(f"{where}: {n_pix_file} pixels per spectrum; config {cfg.name!r} needs "
                     f"exactly {want} (n_pix {cfg.n_pix} + the {resources.N_DROP} leading pixels "
                     f"the networks drop; {resources.N_PIX} is the APOGEE grid)")


def observed_errors(x_err: np.ndarray, x_msk: np.ndarray | None, *, error_floor: float,
                    error_mask_threshold: float) -> tuple[np.ndarray, np.ndarray]:
  """Which observed pixels count, and their floored errors (docs/method.md), in raw flux units.

  Args:
    x_err: [B, P] raw 1σ errors.
    x_msk: [B, P] file mask (True/1 = good) or None.
    error_floor: errors are raised to at least this (`resources.ERROR_FLOOR`, 0.005).
    error_mask_threshold: pixels whose raw error exceeds this are bad (0.05).

  Returns:
    (err [B, P] float32 = max(x_err, error_floor), good [B, P] bool: flagged good, error
    finite, positive and not above the threshold).
  """
  good = np.isfinite(x_err) & (x_err > 0) & (x_err <= error_mask_threshold)
  if x_msk is not None:
    good &= np.asarray(x_msk).astype(bool)
  return np.maximum(x_err, error_floor).astype(np.float32), good


def standardize(sp: h5io.Spectra, domain: str, cfg: Config) -> dict[str, np.ndarray]:
  """Turn raw rows of one domain into network inputs (module docstring).

  Args:
    sp: raw rows from `h5io.SpectraFile.read`: x [B, P] flux, x_err [B, P] raw errors or None,
      x_msk [B, P] bool or None; P ≥ cfg.n_pix (7214 for the reference grid).
    domain: "synth" or "obs".
    cfg: config (n_pix, error_floor, error_mask_threshold, mask_synth_lines).

  Returns:
    {"x", "x_err", "x_msk"}: float32 [B, cfg.n_pix] standardized flux, standardized errors,
    0/1 mask.
  """
  if domain not in DOMAINS:
    raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
  n_pix = sp.x.shape[1]
  drop = n_pix - cfg.n_pix
  if drop < 0:
    raise ValueError(f"spectra have {n_pix} pixels, fewer than the {cfg.n_pix} the networks "
                     f"need (config {cfg.name!r})")
  mean, std = resources.spectra_mean_std()
  x = sp.x.astype(np.float32)
  if domain == "synth" and cfg.mask_synth_lines:
    line_mask = _line_mask(n_pix)
    x = x.copy()
    x[:, line_mask] = 1.0
  x = x[:, drop:]
  msk = np.ones(x.shape, bool) if sp.x_msk is None else sp.x_msk[:, drop:].astype(bool)
  if domain == "synth" or sp.x_err is None:
    err = np.full(x.shape, cfg.error_floor, np.float32)
  else:
    err, msk = observed_errors(sp.x_err[:, drop:], msk, error_floor=cfg.error_floor,
                               error_mask_threshold=cfg.error_mask_threshold)
  return {"x": ((x - mean) / std).astype(np.float32),
          "x_err": (err / std).astype(np.float32), "x_msk": msk.astype(np.float32)}


@functools.cache
def _line_mask(n_pix: int) -> np.ndarray:
  mask = resources.kurucz_response()["total_mask"].astype(bool)
  if mask.shape != (n_pix,):
    raise ValueError(f"mask_synth_lines needs spectra on the {mask.shape[0]}-pixel APOGEE grid, "
                     f"got {n_pix} pixels")
  return mask


def _epoch_permutation(seed: int, domain: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, domain, epoch]).permutation(n)


@dataclasses.dataclass
class _Domain:
  file: h5io.SpectraFile
  index: int  # 0 synth, 1 obs, 2 grid: part of the shuffle seed
  n: int
  kind: str  # how `standardize` treats it: "synth" or "obs"
  cache: dict = dataclasses.field(default_factory=dict)

  def rows(self, seed: int, positions: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(positions, self.n)
    out = np.empty(len(positions), np.int64)
    for e in np.unique(epochs):
      if e not in self.cache:
        if len(self.cache) >= 2:
          self.cache.pop(min(self.cache))
        self.cache[e] = _epoch_permutation(seed, self.index, int(e), self.n)
      sel = epochs == e
      out[sel] = self.cache[e][offsets[sel]]
    return out


class BatchStream:
  """Shuffled, unpaired batches of both domains, a pure function of (seed, step).

  Args:
    synth_path, obs_path: reference-format HDF5 files of the two domains.
    cfg: config (batch_size is the global batch per domain; seed orders the data).
    grid_path: optional file of synthetic spectra at decorrelated labels, read as a third
      stream `grid` (module docstring); required when `cfg.lambda_grid` > 0, refused otherwise.
    split: split to draw from (default "train").
    process_index, process_count: this process's slice of every global batch (multi-host).

  Raises:
    ValueError: the files have different pixel counts, or not `cfg.n_pix + 47`
      (`check_pixel_count`), or a split is empty (naming the files), or `grid_path` and
      `cfg.lambda_grid` disagree.
  """

  def __init__(self, synth_path, obs_path, cfg: Config, *, split: str = "train",
               process_index: int = 0, process_count: int = 1, grid_path=None):
    self.cfg, self.split = cfg, split
    if cfg.batch_size % process_count:
      raise ValueError(f"batch size {cfg.batch_size} does not split over {process_count} "
                       f"processes")
    self.local_batch = cfg.batch_size // process_count
    self._local = slice(process_index * self.local_batch, (process_index + 1) * self.local_batch)
    if (grid_path is None) != (cfg.lambda_grid == 0):
      raise ValueError(f"config {cfg.name!r}: lambda_grid = {cfg.lambda_grid} needs a grid file "
                       f"exactly when it is > 0; got grid_path={grid_path!r}")
    files = {"synth": h5io.SpectraFile(synth_path, n_pix=None),
             "obs": h5io.SpectraFile(obs_path, n_pix=None)}
    try:
      if grid_path is not None:
        files[GRID] = h5io.SpectraFile(grid_path, n_pix=None)
      p_s = files["synth"].n_pix
      for f in files.values():
        if f.n_pix != p_s:
          raise ValueError(f"pixel counts differ: {synth_path} has {p_s} pixels per spectrum, "
                           f"{f.path} has {f.n_pix}; every stream must share one grid")
      check_pixel_count(p_s, cfg, ", ".join(str(f.path) for f in files.values()))
      self._domains = {}
      for i, (name, f) in enumerate(files.items()):
        if split not in f.splits:
          raise ValueError(f"{f.path}: no split {split!r} (has {f.splits})")
        n = f.n(split)
        if n == 0:
          raise ValueError(f"{f.path}: split {split!r} is empty")
        self._domains[name] = _Domain(f, i, n, "obs" if name == "obs" else "synth")
    except BaseException:
      for f in files.values():
        f.close()
      raise
    self.n_pix_file = p_s

  def sizes(self) -> dict[str, int]:
    """Spectra per stream in the split ("synth", "obs" and, with a grid, "grid")."""
    return {k: d.n for k, d in self._domains.items()}

  def paths(self) -> dict[str, Path]:
    """The file of each domain."""
    return {k: d.file.path for k, d in self._domains.items()}

  def standardized_split(self, domain: str, *, block: int = 4096) -> dict[str, np.ndarray]:
    """The whole split of one domain standardized in host memory (what staging copies to the
    devices), read block by block: {"x", "x_err"} float32 and {"x_msk"} uint8 [N, n_pix]."""
    d = self._domains[domain]
    return _standardized_split(d.file, d.kind, self.cfg, self.split, block)

  def check_usable(self, *, max_rows: int = USABLE_SAMPLE_ROWS) -> dict[str, dict]:
    """Refuse a split with too little to learn from (module docstring), before any compilation.

    Returns:
      {domain: `usable_pixels` counts}.

    Raises:
      ValueError: naming the file, the split, the counts and the threshold.
    """
    out = {}
    for name, d in self._domains.items():
      u = usable_pixels(d.file, d.kind, self.cfg, self.split, max_rows=max_rows)
      what = (f"{d.file.path}: split {self.split!r} ({'observed' if name == 'obs' else 'synthetic'}"
              f" domain, {u['rows_checked']} of {d.n} spectra checked)")
      why = (f"(mask 0 in the file, raw error ≤ 0, > {self.cfg.error_mask_threshold} or not "
             "finite, or NaN/inf flux)")
      if u["pixels_usable"] == 0:
        raise ValueError(f"{what}: every pixel is masked {why}; nothing to train on")
      if u["fraction"] < MIN_USABLE_FRACTION:
        raise ValueError(f"{what}: only {u['fraction']:.3%} of the pixels are usable, fewer than "
                         f"the {MIN_USABLE_FRACTION:.0%} training needs {why}")
      if u["spectra_usable"] < min(self.cfg.batch_size, u["rows_checked"]):
        raise ValueError(f"{what}: only {u['spectra_usable']} spectra have at least "
                         f"{MIN_PIXELS_PER_SPECTRUM} usable pixels, fewer than the batch size "
                         f"{self.cfg.batch_size} {why}")
      out[name] = u
    return out

  def rows_at(self, step: int) -> dict[str, np.ndarray]:
    """Row indices [local batch] of each domain used at a global step (for this process)."""
    b = self.cfg.batch_size
    positions = np.arange(step * b, (step + 1) * b, dtype=np.int64)[self._local]
    return {k: d.rows(self.cfg.seed, positions) for k, d in self._domains.items()}

  def rows_of_steps(self, first: int, n: int) -> dict[str, np.ndarray]:
    """Row indices of global steps [first, first + n) for this process, as the staged step
    takes them (`train_step.make_staged_step`): {"synth", "obs"} int32 [local batch] when n is
    1, else [n, local batch]."""
    steps = [self.rows_at(s) for s in range(first, first + n)]
    return {d: (steps[0][d] if n == 1 else np.stack([r[d] for r in steps])).astype(np.int32)
            for d in self._domains}

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """The batch of a global step: `x_synth`, `x_synth_err`, `x_synth_msk`, `x_obs`, ... as
    float32 [local batch, n_pix] (see `standardize`)."""
    out = {}
    for name, rows in self.rows_at(step).items():
      sp = self._domains[name].file.read(self.split, rows=rows)
      for k, v in standardize(sp, self._domains[name].kind, self.cfg).items():
        out[k.replace("x", f"x_{name}", 1)] = v
    return out

  def iterate(self, start_step: int = 0, stop_step: int | None = None, *,
              prefetch: int = 4) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield (step, batch) from `start_step`, read ahead by a background thread.

    Args:
      start_step: first global step (a resumed run passes its data position).
      stop_step: one past the last step; None = endless.
      prefetch: batches kept ready (bounds memory: prefetch × batch).
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def worker():
      step = start_step
      try:
        while not stop.is_set() and (stop_step is None or step < stop_step):
          item = (step, self.batch_at(step))
          while not stop.is_set():
            try:
              q.put(item, timeout=0.1)
              break
            except queue.Full:
              continue
          step += 1
        q.put(("done", None))
      except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
        q.put(("error", e))

    thread = threading.Thread(target=worker, name="BatchStream", daemon=True)
    thread.start()
    try:
      while True:
        step, batch = q.get()
        if step == "done":
          return
        if step == "error":
          raise batch
        yield step, batch
    finally:
      stop.set()
      thread.join(timeout=5)

  def close(self) -> None:
    """Close both files."""
    for d in self._domains.values():
      d.file.close()

  def __enter__(self) -> BatchStream:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_standardized(path: str | Path, domain: str, cfg: Config, split: str = "val",
                      max_rows: int | None = None) -> dict[str, np.ndarray]:
  """The first `max_rows` rows of a split (`h5io.read_split`), standardized (e.g. a validation
  set); the file must pass `check_pixel_count`.

  Returns:
    {"x", "x_err", "x_msk"} float32 [N, n_pix], plus "y" [N, 25] labels when the file has them.
  """
  sp = h5io.read_split(path, split, stop=max_rows, n_pix=None)
  check_pixel_count(sp.x.shape[1], cfg, str(path))
  out = standardize(sp, domain, cfg)
  if sp.y is not None:
    out["y"] = sp.y
  return out


# ---------------------------------------------------------------------------------------------
# Whole splits in host memory: what `parallel.stage_on_devices` copies to the devices (the fast
# path when the training splits fit).

STAGED_BYTES_PER_PIXEL = 9  # float32 flux + float32 error + uint8 mask


def staged_nbytes(n_spectra: int, n_pix: int) -> int:
  """Device bytes (per device: the arrays are replicated) of `n_spectra` staged spectra."""
  return STAGED_BYTES_PER_PIXEL * int(n_spectra) * int(n_pix)


def load_standardized(path, domain: str, cfg: Config, split: str = "train", *,
                      block: int = 4096) -> dict[str, np.ndarray]:
  """A whole split standardized in host memory, read block by block (sequential reads).

  Returns:
    {"x", "x_err"} float32 [N, cfg.n_pix] and {"x_msk"} uint8 [N, cfg.n_pix]: the values
    `standardize` gives, with the 0/1 mask stored in one byte.
  """
  with h5io.SpectraFile(path, n_pix=None) as f:
    return _standardized_split(f, domain, cfg, split, block)


def _standardized_split(f: h5io.SpectraFile, domain: str, cfg: Config, split: str,
                        block: int = 4096) -> dict[str, np.ndarray]:
  """`load_standardized` of an open file."""
  n = f.n(split)
  out = {"x": np.empty((n, cfg.n_pix), np.float32),
         "x_err": np.empty((n, cfg.n_pix), np.float32),
         "x_msk": np.empty((n, cfg.n_pix), np.uint8)}
  for start in range(0, n, block):
    stop = min(start + block, n)
    for k, v in standardize(f.read(split, start, stop), domain, cfg).items():
      out[k][start:stop] = v
  return out


def usable_pixels(f: h5io.SpectraFile, domain: str, cfg: Config, split: str = "train", *,
                  max_rows: int = USABLE_SAMPLE_ROWS, block: int = 512) -> dict[str, float]:
  """Unmasked network pixels of a split (the mask `standardize` gives), on up to `max_rows`
  rows spread evenly over it (all rows when the split is smaller).

  Returns:
    {"rows_checked", "pixels_usable" (count), "fraction" (of the checked pixels),
    "spectra_usable" (checked rows with ≥ `MIN_PIXELS_PER_SPECTRUM` usable pixels)}.
  """
  n = f.n(split)
  rows = np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(np.int64))
  per_row = np.empty(len(rows), np.int64)
  with warnings.catch_warnings():  # bad pixels are reported when the batches are read
    warnings.simplefilter("ignore", h5io.BadPixelWarning)
    for i in range(0, len(rows), block):
      msk = standardize(f.read(split, rows=rows[i:i + block]), domain, cfg)["x_msk"]
      per_row[i:i + block] = np.count_nonzero(msk, axis=1)
  total = int(per_row.sum())
  return {"rows_checked": int(len(rows)), "pixels_usable": total,
          "fraction": total / max(len(rows) * cfg.n_pix, 1),
          "spectra_usable": int(np.count_nonzero(per_row >= MIN_PIXELS_PER_SPECTRUM))}
