"""Atomic file writes: a file this package writes is either the old one or the new one, never
half written (an interrupted or failed run loses nothing already on disk).

HDF5 spectra files have their own writer (`h5io.SpectraWriter`, same temp-file-and-rename
scheme, written in blocks); orbax checkpoints are atomic by themselves (`checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
  """Write a file through `write(fileobj)` so that `path` is never left half-written.

  The bytes go to a temporary file in the same directory, are flushed to disk, then renamed
  over `path` (`os.replace` is atomic on POSIX and Windows). On any error the temporary file is
  removed and a previous file at `path` is left untouched.

  Args:
    path: destination; its directory is created if needed.
    write: called once with a binary file object open for writing.

  Returns:
    `path` as a `Path`.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  """`atomic_write` of a UTF-8 text (a JSON summary, a config)."""
  return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_figure(fig, path: str | os.PathLike, **savefig_kw) -> Path:
  """Save a Matplotlib figure atomically (PNG unless `format` is given)."""
  savefig_kw.setdefault("format", Path(path).suffix.lstrip(".") or "png")
  return atomic_write(path, lambda f: fig.savefig(f, **savefig_kw))
