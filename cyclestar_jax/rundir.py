"""What every job does to its output folder or file before it writes: lock it, know what it owns,
fingerprint its inputs, and clean what a killed job left.

- `RunLock`: a lock file (`.lock` in a run folder, `<out>.lock` beside a results file) held for
  the job's life, naming the holder's PID and host. A second job on the same output is refused
  with them; the lock of a process that is gone (same host, PID not running) is taken over with
  a warning.
- `clear_owned`: `--overwrite` removes only the entries a job writes (known by name); anything
  else in the folder stays. `check_replace` refuses to replace a command's output files
  without `--overwrite`.
- `fingerprint` / `changed_inputs`: an input's size, mtime, a SHA-256 of its first and last MiB
  and (for HDF5) its datasets' shapes, so that a file replaced in place is noticed.
- `clean_temporary`: the temporary files of atomic writes (`fileio`, `h5io`) that a killed job
  left, removed by the next job holding the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import h5py

LOCK_NAME = ".lock"
_MIB = 1 << 20


class OutputLockedError(ValueError):
  """Another running job holds the output's lock."""


class NotARunFolderError(ValueError):
  """A non-empty folder that this job did not write (refused even with --overwrite)."""


# ---------------------------------------------------------------------------------------------
# Locks.


def _pid_alive(pid: int) -> bool:
  """Whether a process with this PID runs on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _read_holder(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


class RunLock:
  """An exclusive lock on an output (a folder or a file), held from `acquire` to `release`.

  Args:
    path: the lock file (`lock_path` of the output).
    what: the output in the refusal ("--out runs/x").
  """

  def __init__(self, path: str | os.PathLike, what: str):
    self.path = Path(path)
    self.what = what
    self._held = False

  def acquire(self) -> RunLock:
    """Take the lock, or raise `OutputLockedError` naming the holder's PID and host."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read_holder(self.path)
        if not self._stale(holder):
          raise OutputLockedError(
              f"{self.what}: in use by another job (PID {holder.get('pid', '?')} on host "
              f"{holder.get('host', '?')}, lock {self.path}); wait for it to finish, or "
              "delete the lock file if that job is gone") from None
        warnings.warn(f"{self.path}: taking over the lock of PID {holder.get('pid', '?')} on "
                      f"{holder.get('host', '?')}, which is no longer running", stacklevel=2)
        with contextlib.suppress(FileNotFoundError):
          os.unlink(self.path)
        continue
      with os.fdopen(fd, "w") as f:
        f.write(json.dumps(me))
      self._held = True
      return self
    raise OutputLockedError(f"{self.what}: could not take the lock {self.path}")

  def _stale(self, holder: dict) -> bool:
    """A lock whose process is gone: same host and PID not running (or an unreadable lock
    older than ten seconds, a job killed while writing it)."""
    if "pid" not in holder:
      with contextlib.suppress(FileNotFoundError):
        return time.time() - self.path.stat().st_mtime > 10
      return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"]))

  def release(self) -> None:
    """Drop the lock (only if this object holds it)."""
    if self._held:
      self._held = False
      if _read_holder(self.path).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
          os.unlink(self.path)

  def __enter__(self) -> RunLock:
    return self if self._held else self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def folder_lock(folder: str | os.PathLike, what: str | None = None) -> RunLock:
  """The lock of a run folder: FOLDER/.lock."""
  folder = Path(folder)
  return RunLock(folder / LOCK_NAME, what or f"--out {folder}")


def file_lock(out_file: str | os.PathLike, what: str | None = None) -> RunLock:
  """The lock of a results file: <out>.lock beside it."""
  out_file = Path(out_file)
  return RunLock(out_file.with_name(out_file.name + ".lock"), what or f"--out {out_file}")


# ---------------------------------------------------------------------------------------------
# What a job owns.


def check_out_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
  """Raise `ValueError` (one line naming `flag`) unless `folder` is, or can be made as, a
  writable folder: not an existing file, its nearest existing parent a writable folder."""
  folder = Path(folder)
  if folder.exists() and not folder.is_dir():
    raise ValueError(f"{flag} {folder}: is a file, expected a folder")
  p = folder
  while not p.exists():
    if p.parent == p:
      break
    p = p.parent
  if not (p.is_dir() and os.access(p, os.W_OK | os.X_OK)):
    raise ValueError(f"{flag} {folder}: cannot be written ({p} is not a writable folder)")
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"{flag} {folder}: cannot be made ({e.strerror or e})") from None
  return folder


def clear_owned(folder: str | os.PathLike, names: Iterable[str]) -> list[str]:
  """Remove the entries `names` of `folder` (files or folders), nothing else; returns those
  removed. The job's own lock is never among them."""
  folder = Path(folder)
  removed = []
  for name in names:
    p = folder / name
    if name == LOCK_NAME or not (p.exists() or p.is_symlink()):
      continue
    if p.is_dir() and not p.is_symlink():
      shutil.rmtree(p)
    else:
      p.unlink()
    removed.append(name)
  return removed


def foreign_entries(folder: str | os.PathLike, names: Iterable[str]) -> list[str]:
  """Entries of `folder` that are not among `names` (nor the lock)."""
  known = set(names) | {LOCK_NAME}
  return sorted(p.name for p in Path(folder).iterdir() if p.name not in known)


def check_replace(folder: str | os.PathLike, names: Iterable[str], overwrite: bool) -> None:
  """Raise `ValueError` if `folder` holds any of the files `names` a command writes and
  `overwrite` is not given."""
  there = [n for n in names if (Path(folder) / n).exists()]
  if there and not overwrite:
    raise ValueError(f"--out {folder}: already holds {', '.join(there)}; pass --overwrite to "
                     "replace them (or choose another --out)")


# ---------------------------------------------------------------------------------------------
# Input fingerprints.


def _head_tail_sha(path: Path, size: int) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    h.update(f.read(_MIB))
    if size > _MIB:
      f.seek(max(_MIB, size - _MIB))
      h.update(f.read(_MIB))
  return h.hexdigest()[:32]


def _h5_shapes(path: Path) -> dict | None:
  """{dataset: shape} of an HDF5 file, or None when it is not one."""
  try:
    with h5py.File(path, "r") as h:
      return {k: list(v.shape) for k, v in h.items() if hasattr(v, "shape")}
  except (OSError, ValueError):
    return None


def fingerprint(path: str | os.PathLike) -> dict:
  """A cheap identity of an input: a file's size, mtime, SHA-256 (32 hex) of its first and
  last MiB and HDF5 shapes; a folder's files' names, sizes and mtimes (hashed)."""
  path = Path(path)
  if path.is_dir():
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
      if p.is_file() and p.name != LOCK_NAME:
        st = p.stat()
        h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return {"folder": h.hexdigest()[:32]}
  st = path.stat()
  fp = {"size": st.st_size, "mtime": st.st_mtime, "sha_head_tail": _head_tail_sha(path,
                                                                                  st.st_size)}
  shapes = _h5_shapes(path) if path.suffix in (".h5", ".hdf5") else None
  if shapes is not None:
    fp["shapes"] = shapes
  return fp


def fingerprints(inputs: dict[str, str | os.PathLike | None]) -> dict[str, dict]:
  """{flag: {"path", **fingerprint}} of the inputs given (None skipped)."""
  return {flag: {"path": str(Path(p).resolve()), **fingerprint(p)}
          for flag, p in inputs.items() if p is not None}


def changed_inputs(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
  """Lines naming each input whose content differs from the recorded one (an mtime alone
  that moved, with equal size, hash and shapes, is not a change: a copy or a touch)."""
  out = []
  for flag, fp in new.items():
    was = old.get(flag)
    if was is None:
      continue
    keys = [k for k in ("size", "sha_head_tail", "shapes", "folder") if was.get(k) != fp.get(k)]
    if keys:
      out.append(f"{flag} {fp['path']} changed since this run used it ({', '.join(keys)} "
                 "differ)")
  return out


# ---------------------------------------------------------------------------------------------
# Leftovers of killed jobs.


def _is_temporary(name: str) -> bool:
  """Names of `fileio.atomic_write` (.NAME.XXXX.tmp) and `h5io.SpectraWriter`
  (.NAME.tmp-XXXX) temporary files."""
  return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)


def clean_temporary(folder: str | os.PathLike) -> list[Path]:
  """Remove the temporary files under `folder` (call with the folder's lock held: no running
  job writes them); returns those removed."""
  folder = Path(folder)
  if not folder.is_dir():
    return []
  removed = []
  for p in folder.rglob(".*"):
    if p.is_file() and _is_temporary(p.name):
      with contextlib.suppress(FileNotFoundError):
        p.unlink()
        removed.append(p)
  return removed
