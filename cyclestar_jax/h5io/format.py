"""The reference HDF5 format's names, fields and in-memory block (`Spectra`), shared by the
reader and the writer (the format itself: the `cyclestar_jax.h5io` docstring)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from cyclestar_jax.labels import N_LABELS

SPLITS: tuple[str, ...] = ("train", "val", "test")
FIELDS: tuple[str, ...] = ("spectra", "spectra_err", "spectra_msk", "labels", "snr")

# Keyword of `SpectraWriter.write` / attribute of `Spectra` for each field.
ARG_OF_FIELD = {
    "spectra": "x", "spectra_err": "x_err", "spectra_msk": "x_msk", "labels": "y", "snr": "snr",
}  # fmt: skip
DISK_DTYPE = {
    "spectra": np.float32, "spectra_err": np.float32, "spectra_msk": np.uint8,
    "labels": np.float64, "snr": np.float32,
}  # fmt: skip
JSON_ATTRS = ("world",)  # attributes that must hold a JSON object


class BadPixelWarning(UserWarning):
  """Non-finite flux or non-positive / non-finite errors were masked during a read.

  Attributes:
    counts: dict of counts, keys `flux_nonfinite`, `err_nonfinite`, `err_nonpositive`,
      `labels_nonfinite`, `snr_nonfinite` (only the nonzero ones).
  """

  def __init__(self, message: str, counts: Mapping[str, int] | None = None):
    super().__init__(message)
    self.counts = dict(counts or {})


def dataset_name(field: str, split: str) -> str:
  """The reference dataset name of a field in a split: `dataset_name("spectra", "train")` is
  `"spectra train"`."""
  if not field or " " in field:
    raise ValueError(f"field name must be non-empty without spaces, got {field!r}")
  if not split or any(c.isspace() for c in split):
    raise ValueError(f"split name must be non-empty without spaces, got {split!r}")
  return f"{field} {split}"


@dataclasses.dataclass(frozen=True, eq=False)
class Spectra:
  """One block of rows of one split, in memory.

  Attributes:
    x: [N, n_pix] float32 continuum-normalized flux.
    x_err: [N, n_pix] float32 1-sigma flux errors in raw flux units; None if the file has none.
    x_msk: [N, n_pix] bool, True = good pixel; None if the file has no mask (and no bad pixel
      was found in this block).
    y: [N, 25] float64 physical labels in `LABEL_NAMES` order; None if the file has none.
    snr: [N] float32 signal-to-noise ratio; None if the file has none.
  """

  x: np.ndarray
  x_err: np.ndarray | None = None
  x_msk: np.ndarray | None = None
  y: np.ndarray | None = None
  snr: np.ndarray | None = None

  def __post_init__(self):
    if self.x.ndim != 2:
      raise ValueError(f"Spectra.x must be [N, n_pix], got shape {self.x.shape}")
    n = self.x.shape[0]
    for name, want in (("x_err", self.x.shape), ("x_msk", self.x.shape),
                       ("y", (n, N_LABELS)), ("snr", (n,))):
      v = getattr(self, name)
      if v is not None and v.shape != want:
        raise ValueError(f"Spectra.{name} has shape {v.shape}; expected {want}")

  def __len__(self) -> int:
    return int(self.x.shape[0])
