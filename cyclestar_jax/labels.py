"""The 25 stellar labels of The Payne, in its order, and their scaling to [-0.5, 0.5].

Convention (kept everywhere in the package): physical labels are arrays [..., 25] in the order
of `LABEL_NAMES`, with Teff in K, log g in dex (cgs), vturb and vmacro in km/s, abundances
[X/H] in dex and C12/C13 as a plain isotope ratio. Scaled labels are
`(y - y_min) / (y_max - y_min) - 0.5` per label (docs/method.md), the emulator's input space.
"""

from __future__ import annotations

import numpy as np

LABEL_NAMES: tuple[str, ...] = (
    "Teff", "logg", "vturb",
    "C_H", "N_H", "O_H", "Na_H", "Mg_H", "Al_H", "Si_H", "P_H", "S_H", "K_H", "Ca_H", "Ti_H",
    "V_H", "Cr_H", "Mn_H", "Fe_H", "Co_H", "Ni_H", "Cu_H", "Ge_H",
    "C12_C13", "vmacro",
)  # fmt: skip
N_LABELS = len(LABEL_NAMES)

# Elements whose [X/H] are labels 3..22, in label order.
ELEMENTS: tuple[str, ...] = tuple(n[:-2] for n in LABEL_NAMES[3:23])
ABUNDANCE_SLICE = slice(3, 23)

LABEL_UNITS: dict[str, str] = {
    "Teff": "K", "logg": "dex (cgs)", "vturb": "km/s", "C12_C13": "ratio", "vmacro": "km/s",
    **{f"{e}_H": "dex" for e in ELEMENTS},
}  # fmt: skip

# Human-readable names as astronomers write them, for axes and tables.
LABEL_TEX: dict[str, str] = {
    "Teff": r"$T_\mathrm{eff}$", "logg": r"$\log g$", "vturb": r"$v_\mathrm{turb}$",
    "C12_C13": r"$^{12}$C/$^{13}$C", "vmacro": r"$v_\mathrm{macro}$",
    **{f"{e}_H": f"[{e}/H]" for e in ELEMENTS},
}  # fmt: skip


def label_index(name: str) -> int:
  """Position of a label in the 25-vector, accepting 'Fe_H', '[Fe/H]', 'Fe' or 'teff'."""
  key = name.strip()
  if key.startswith("[") and key.endswith("]") and "/" in key:
    key = key[1:-1].replace("/", "_")
  if key in ELEMENTS:
    key = f"{key}_H"
  lower = {n.lower(): i for i, n in enumerate(LABEL_NAMES)}
  if key.lower() not in lower:
    raise KeyError(f"unknown label {name!r}; expected one of {', '.join(LABEL_NAMES)}")
  return lower[key.lower()]


def _check_bounds(y_min: np.ndarray, y_max: np.ndarray) -> None:
  if y_min.shape[-1] != N_LABELS or y_max.shape[-1] != N_LABELS:
    raise ValueError(
        f"y_min/y_max must have {N_LABELS} labels, got {y_min.shape} and {y_max.shape}")
  if np.any(np.asarray(y_max) <= np.asarray(y_min)):
    bad = [LABEL_NAMES[i] for i in np.flatnonzero(np.asarray(y_max) <= np.asarray(y_min))]
    raise ValueError(f"y_max must exceed y_min for every label; not so for {bad}")


def scale_labels(y, y_min, y_max):
  """Physical labels [..., 25] → scaled labels in [-0.5, 0.5] inside the box (docs/method.md).

  Works on NumPy and JAX arrays alike (pure arithmetic, usable under jit/grad).
  """
  return (y - y_min) / (y_max - y_min) - 0.5


def unscale_labels(y_scaled, y_min, y_max):
  """Scaled labels [..., 25] → physical labels; the inverse of `scale_labels`."""
  return (y_scaled + 0.5) * (y_max - y_min) + y_min


def label_box(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """y_min and y_max [25] of a label set [N, 25], as The Payne defines its training box."""
  y = np.asarray(y, dtype=np.float64)
  if y.ndim != 2 or y.shape[1] != N_LABELS:
    raise ValueError(f"labels must have shape [N, {N_LABELS}], got {y.shape}")
  y_min, y_max = y.min(axis=0), y.max(axis=0)
  _check_bounds(y_min, y_max)
  return y_min, y_max


def outside_box(y: np.ndarray, y_min: np.ndarray, y_max: np.ndarray) -> np.ndarray:
  """Boolean [N] mask of label sets [N, 25] with any label outside [y_min, y_max]."""
  y = np.asarray(y)
  return np.any((y < y_min) | (y > y_max), axis=-1)


def abundance_fe_correlation(y: np.ndarray) -> dict[str, float]:
  """Pearson r of each abundance [X/H] with [Fe/H] over label sets y [n, 25] (NaN for a
  constant column): how far an emulator trained on them can tell the elements apart."""
  y = np.asarray(y, np.float64)
  fe = y[:, label_index("Fe_H")]
  out = {}
  for e in ELEMENTS:
    if e == "Fe":
      continue
    x = y[:, label_index(f"{e}_H")]
    ok = x.std() > 0 and fe.std() > 0
    out[f"{e}_H"] = float(np.corrcoef(x, fe)[0, 1]) if ok else float("nan")
  return out
