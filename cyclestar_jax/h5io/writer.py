"""Atomic, validated writing of reference-format files in row blocks (`SpectraWriter`)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cyclestar_jax.h5io.format import ARG_OF_FIELD, DISK_DTYPE, FIELDS, dataset_name
from cyclestar_jax.labels import N_LABELS
from cyclestar_jax.resources import N_PIX

# Target chunk sizes in bytes: (256, 7214) float32 uncompressed, as the data loader reads whole
# row blocks; small chunks when compressed, since a compressed chunk is always read whole.
_CHUNK_BYTES = 256 * N_PIX * 4
_CHUNK_BYTES_COMPRESSED = 16 * N_PIX * 4


def _json_default(v: Any) -> Any:
  if isinstance(v, np.ndarray):
    return v.tolist()
  if isinstance(v, np.generic):
    return v.item()
  if dataclasses.is_dataclass(v) and not isinstance(v, type):
    return dataclasses.asdict(v)
  if isinstance(v, os.PathLike):
    return os.fspath(v)
  raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _chunk_rows(n_rows: int, row_bytes: int, compressed: bool) -> int:
  target = _CHUNK_BYTES_COMPRESSED if compressed else _CHUNK_BYTES
  return max(1, min(n_rows, target // max(row_bytes, 1)))


def _missing_ranges(written: np.ndarray) -> list[tuple[int, int]]:
  edges = np.diff(np.concatenate([[0], (~written).astype(np.int8), [0]]))
  lo, hi = np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()
  return list(zip(lo, hi, strict=True))


SPACE_MARGIN = 1.02  # free space asked for beyond the datasets' bytes (HDF5's own metadata)


def check_free_space(path: Path, n_bytes: int) -> None:
  """Refuse, before anything is written, a file of `n_bytes` that its folder cannot hold: one
  OSError (ENOSPC) naming the path, the size and the free space. (HDF5 fails badly on a full
  disk: tracebacks at every object's release, then a crash.)"""
  free = shutil.disk_usage(path.parent).free
  if n_bytes * SPACE_MARGIN > free:
    raise OSError(errno.ENOSPC, f"{path}: needs {n_bytes / 1e6:,.1f} MB but {path.parent} has "
                  f"{free / 1e6:,.1f} MB free; free some space or write elsewhere")


class SpectraWriter:
  """Writes a reference-format HDF5 file in row blocks, atomically.

  Args:
    path: the target file; written as a hidden temporary file in the same folder and renamed
      onto `path` on success (see the module docstring).
    sizes: rows per split, e.g. {"train": 100_000, "val": 1000, "test": 1000}.
    n_pix: pixels per spectrum.
    fields: the reference fields to write (must include "spectra"); every `write` call must
      give all of them.
    extra_fields: extra per-row datasets `"<name> <split>"`: {name: (row_shape, dtype)}, e.g.
      {"labels_true": ((25,), np.float64)}, or `str` for UTF-8 strings (e.g. {"apogee_id":
      ((), str)}, read back as str by `SpectraFile.extra`); given to `write` as keyword
      arguments `name=...`.
    attrs: file attributes; dict values (e.g. "world", the mock world's settings) are stored as
      JSON strings, lists of strings (e.g. "paired_splits") as string arrays.
    compression: h5py compression ("gzip", "lzf", a gzip level 0-9) or None (default, fastest).

  Example:
    with SpectraWriter(path, {"train": n}) as w:
      for start in range(0, n, 4096):
        w.write("train", start, x=..., x_err=..., x_msk=..., y=..., snr=...)
  """

  def __init__(self, path: str | os.PathLike, sizes: Mapping[str, int], *, n_pix: int = N_PIX,
               fields: Sequence[str] = FIELDS,
               extra_fields: Mapping[str, tuple[tuple[int, ...], Any]] | None = None,
               attrs: Mapping[str, Any] | None = None, compression: str | int | None = None):
    self.path = Path(path)
    if not self.path.parent.is_dir():
      raise FileNotFoundError(f"{self.path}: folder {str(self.path.parent)!r} does not exist")
    if self.path.is_dir():
      raise ValueError(f"{self.path}: is a directory, expected a file path")
    self.n_pix = int(n_pix)
    if self.n_pix < 1:
      raise ValueError(f"{self.path}: n_pix must be >= 1, got {n_pix}")
    self.fields = tuple(fields)
    unknown = [f for f in self.fields if f not in FIELDS]
    if unknown or "spectra" not in self.fields:
      raise ValueError(
          f"{self.path}: fields must be a subset of {FIELDS} including 'spectra', got "
          f"{self.fields}")
    if not sizes:
      raise ValueError(f"{self.path}: sizes is empty; expected e.g. {{'train': N}}")
    self.sizes = {}
    for split, n in sizes.items():
      dataset_name("spectra", split)  # validates the split name
      if int(n) != n or n < 0:
        raise ValueError(f"{self.path}: sizes[{split!r}] = {n!r}; expected an integer >= 0")
      self.sizes[split] = int(n)
    self.extra_fields: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for name, spec in (extra_fields or {}).items():
      if name in FIELDS or name in ARG_OF_FIELD.values() or not name or " " in name:
        raise ValueError(
            f"{self.path}: extra field name {name!r} must be non-empty, without spaces, and "
            f"not one of {FIELDS + tuple(ARG_OF_FIELD.values())}")
      try:
        shape, dtype = spec
        dt = np.dtype(h5py.string_dtype()) if dtype is str else np.dtype(dtype)
        self.extra_fields[name] = (tuple(int(s) for s in shape), dt)
      except (TypeError, ValueError) as e:
        raise ValueError(
            f"{self.path}: extra_fields[{name!r}] = {spec!r}; expected (row_shape, dtype), "
            f"e.g. ((25,), np.float64) ({e})") from None
    self.compression = compression
    if compression is None:  # compressed sizes are not known in advance
      check_free_space(self.path, self.n_bytes())
    self._written = {s: np.zeros(n, dtype=bool) for s, n in self.sizes.items()}
    self._tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}")
    self._f: h5py.File | None = h5py.File(self._tmp, "x")
    try:
      self._create(attrs or {})
    except BaseException:
      self.abort()
      raise

  def row_specs(self) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(dataset stem, row shape, disk dtype) of every per-row dataset of a split."""
    shapes = {"spectra": (self.n_pix,), "spectra_err": (self.n_pix,),
              "spectra_msk": (self.n_pix,), "labels": (N_LABELS,), "snr": ()}
    specs = [(fld, shapes[fld], np.dtype(DISK_DTYPE[fld])) for fld in self.fields]
    return specs + [(name, shape, dt) for name, (shape, dt) in self.extra_fields.items()]

  def n_bytes(self) -> int:
    """Bytes of the uncompressed datasets (a variable-length string counted as 64 bytes)."""
    row = sum(int(np.prod(shape, dtype=np.int64)) * (64 if dt.kind == "O" else dt.itemsize)
              for _, shape, dt in self.row_specs())
    return row * sum(self.sizes.values())

  def _create(self, attrs: Mapping[str, Any]) -> None:
    f = self._f
    for k, v in attrs.items():
      if isinstance(v, (list, tuple)) and all(isinstance(e, str) for e in v):
        v = np.array(v, dtype=h5py.string_dtype())  # read back as a list of str
      try:
        f.attrs[k] = json.dumps(v, default=_json_default) if isinstance(v, Mapping) else v
      except (TypeError, ValueError) as e:
        raise TypeError(
            f"{self.path}: attribute {k!r} = {v!r:.80} cannot be stored ({e}); use numbers, "
            "strings, arrays or JSON-serializable dicts") from None
    comp = self.compression
    kw = {"compression": comp, "shuffle": True} if comp is not None else {}
    for split, n in self.sizes.items():
      for name, row_shape, dtype in self.row_specs():
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        chunks = (_chunk_rows(n, row_bytes, comp is not None),) + row_shape if n else None
        f.create_dataset(dataset_name(name, split), shape=(n,) + row_shape, dtype=dtype,
                         chunks=chunks, **(kw if n else {}))

  def write(self, split: str, start: int, *, x: np.ndarray, x_err: np.ndarray | None = None,
            x_msk: np.ndarray | None = None, y: np.ndarray | None = None,
            snr: np.ndarray | None = None, **extra: np.ndarray) -> None:
    """Writes rows [start, start + B) of a split.

    Args:
      split: a split of `sizes`.
      start: first row.
      x: [B, n_pix] flux. x_err: [B, n_pix] raw flux errors. x_msk: [B, n_pix] bool or 0/1,
        True = good. y: [B, 25] physical labels. snr: [B]. Each must be given iff its field is
        in `fields`. extra: one [B, *row_shape] array per declared extra field.

    Raises:
      ValueError / KeyError / IndexError naming the file, split and field on bad input.
    """
    f = self._open_file()
    if split not in self.sizes:
      raise KeyError(f"{self.path}: split {split!r} not declared in sizes {self.sizes}")
    given = {"spectra": x, "spectra_err": x_err, "spectra_msk": x_msk, "labels": y, "snr": snr}
    for field, arr in given.items():
      arg = ARG_OF_FIELD[field]
      if field in self.fields and arr is None:
        raise ValueError(
            f"{self.path}: write to split {split!r}: {arg!r} (dataset "
            f"{dataset_name(field, split)!r}) missing; fields {self.fields} are declared")
      if field not in self.fields and arr is not None:
        raise ValueError(
            f"{self.path}: write to split {split!r}: {arg!r} given but field {field!r} is not "
            f"in the declared fields {self.fields}")
    unknown = sorted(set(extra) - set(self.extra_fields))
    missing = sorted(set(self.extra_fields) - set(extra))
    if unknown or missing:
      what = (f"extra fields missing {missing}" if missing else "") + \
          (", " if missing and unknown else "") + \
          (f"unknown arguments {unknown}" if unknown else "")
      raise ValueError(
          f"{self.path}: write to split {split!r}: {what}; declared extra fields: "
          f"{sorted(self.extra_fields)}")
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != self.n_pix:
      raise ValueError(
          f"{self.path}: write to split {split!r}: 'x' (dataset "
          f"{dataset_name('spectra', split)!r}) has shape {x.shape}; expected [B, {self.n_pix}] "
          f"({self.n_pix} pixels)")
    b = x.shape[0]
    start = int(start)
    n = self.sizes[split]
    if not 0 <= start <= start + b <= n:
      raise IndexError(
          f"{self.path}: write to split {split!r}: rows [{start}, {start + b}) out of range; "
          f"the split has rows [0, {n})")
    rows = {
        "spectra": (self.n_pix,), "spectra_err": (self.n_pix,), "spectra_msk": (self.n_pix,),
        "labels": (N_LABELS,), "snr": (),
    }  # fmt: skip
    out: dict[str, np.ndarray] = {}
    for field in self.fields:
      out[field] = self._check(split, field, ARG_OF_FIELD[field], given[field],
                               (b,) + rows[field], np.dtype(DISK_DTYPE[field]))
    for name, (row_shape, dtype) in self.extra_fields.items():
      out[name] = self._check(split, name, name, extra[name], (b,) + row_shape, dtype)
    if b == 0:
      return
    try:
      for name, arr in out.items():
        if arr.dtype.kind == "O":  # strings: h5py converts them, write_direct cannot
          f[dataset_name(name, split)][start:start + b] = arr
        else:
          f[dataset_name(name, split)].write_direct(arr, dest_sel=np.s_[start:start + b])
    except OSError as e:  # h5py's message names neither the file nor the cause first
      self.abort()
      full = "No space left" in str(e) or getattr(e, "errno", None) == errno.ENOSPC
      raise OSError(errno.ENOSPC if full else getattr(e, "errno", None) or errno.EIO,
                    f"{self.path}: cannot be written ("
                    + ("no space left on the device" if full else " ".join(str(e).split()))
                    + "); nothing was left behind") from None
    self._written[split][start:start + b] = True

  def _check(self, split: str, name: str, arg: str, arr, shape: tuple[int, ...],
             dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(arr)
    if name == "snr" and arr.shape == shape + (1,):
      arr = arr.reshape(shape)
    what = f"{self.path}: write to split {split!r}: {arg!r} (dataset {dataset_name(name, split)!r})"
    if arr.shape != shape:
      hint = {"spectra_err": f" ({self.n_pix} pixels)", "spectra_msk": f" ({self.n_pix} pixels)",
              "labels": f" ({N_LABELS} labels in LABEL_NAMES order)"}.get(name, "")
      raise ValueError(f"{what} has shape {arr.shape}; expected {shape}{hint}")
    if dtype.kind == "O":
      if arr.size and not all(isinstance(v, (str, bytes)) for v in arr.flat):
        raise ValueError(f"{what} holds non-strings; expected str")
      return np.asarray(arr, dtype=object)
    if arr.dtype.kind not in "biuf" and arr.dtype.kind != dtype.kind:
      raise ValueError(f"{what} has dtype {arr.dtype}; expected numbers ({dtype})")
    if name == "spectra_msk" and arr.dtype != np.bool_:
      if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{what} holds values other than 0/1; expected bool (True = good)")
    if name == "spectra_msk" and arr.dtype == np.bool_:
      return np.ascontiguousarray(arr).view(np.uint8)
    return np.ascontiguousarray(arr, dtype=dtype)

  def _open_file(self) -> h5py.File:
    if self._f is None:
      raise ValueError(f"{self.path}: the writer is closed")
    return self._f

  def missing_rows(self) -> dict[str, list[tuple[int, int]]]:
    """Row ranges [lo, hi) not yet written, per split (empty lists when complete)."""
    return {s: _missing_ranges(w) for s, w in self._written.items()}

  def close(self) -> None:
    """Finishes: renames the temporary file onto `path` if every row was written.

    Raises:
      ValueError: rows are missing (the message lists them); the temporary file is removed
        and an existing file at `path` is left as it was.
    """
    if self._f is None:
      return
    missing = {s: r for s, r in self.missing_rows().items() if r}
    if missing:
      self.abort()
      desc = "; ".join(
          f"split {s!r}: rows " + ", ".join(f"[{a}, {b})" for a, b in r[:5]) +
          (f" and {len(r) - 5} more ranges" if len(r) > 5 else "") + f" of {self.sizes[s]}"
          for s, r in missing.items())
      raise ValueError(f"{self.path}: not written, rows missing: {desc}; the file was left as "
                       "it was")
    self._f.close()
    self._f = None
    os.replace(self._tmp, self.path)

  def abort(self) -> None:
    """Discards everything written: closes and deletes the temporary file (idempotent)."""
    if self._f is not None:
      try:
        with contextlib.suppress(OSError, RuntimeError):  # e.g. a full disk: flush fails
          self._f.close()
      finally:
        self._f = None
        self._tmp.unlink(missing_ok=True)

  def __enter__(self) -> SpectraWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.abort()
    else:
      self.close()

  def __del__(self):
    # A writer dropped without close() must not leave its temporary file behind.
    if getattr(self, "_f", None) is not None:
      try:
        self.abort()
      except Exception:  # noqa: BLE001  (interpreter shutdown)
        pass
