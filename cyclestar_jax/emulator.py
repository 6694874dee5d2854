"""The Payne emulator (Ting et al. 2019; paper §3.1 and footnote 2): labels → synthetic spectrum.

Convention (kept in this module and in `emulator_train`):
- Physical labels `y` are [..., n_labels] in the order of `labels.LABEL_NAMES` (25 for APOGEE).
- Scaled labels are `scale_labels(y, y_min, y_max)`, in [-0.5, 0.5] inside the training box
  (docs/method.md); `y_min`, `y_max` [n_labels] travel with the weights in every file format.
- Flux is continuum-normalized, [..., n_pix] on the APOGEE grid (n_pix = 7214).
- `params` is the Flax parameter dict of `PayneMLP` without the "params" collection wrapper:
  `{"dense_0": {"kernel": [n_labels, H], "bias": [H]}, "dense_1": {"kernel": [H, H], ...},
  "dense_2": {"kernel": [H, n_pix], "bias": [n_pix]}}`. Flax kernels are (in, out); The Payne's
  npz and PyTorch's `Linear.weight` are (out, in), so every importer transposes.

The network is one MLP for the whole spectrum: Dense H, LeakyReLU(0.01), Dense H,
LeakyReLU(0.01), Dense n_pix, with H = 300 (2,269,514 parameters at 25 labels and 7214 pixels).

File formats read by `load_emulator`:
- The Payne's npz (`w_array_0..2` (out, in), `b_array_0..2`, `x_min`, `x_max`); `save_emulator`
  writes this same layout (plus `label_names` and `metadata_json`), so The Payne's own code reads
  our files too.
- The authors' PyTorch emulator file (`Payne`: state_dict of a `torch.nn.Sequential` with keys
  `0.weight`, `0.bias`, `2.weight`, ..., `y_min`, `y_max`), through the optional `torch` extra.
- An orbax checkpoint written by `emulator_train` (a directory).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from cyclestar_jax.chunks import map_chunks
from cyclestar_jax.fileio import atomic_write
from cyclestar_jax.labels import LABEL_NAMES, N_LABELS, outside_box, scale_labels
from cyclestar_jax.resources import N_PIX

N_HIDDEN = 300  # neurons per hidden layer of the reference emulator
NEGATIVE_SLOPE = 0.01  # LeakyReLU slope of the emulator (PyTorch's default, docs/method.md)
LAYER_NAMES = ("dense_0", "dense_1", "dense_2")
PAYNE_NPZ_KEYS = ("w_array_0", "w_array_1", "w_array_2", "b_array_0", "b_array_1", "b_array_2",
                  "x_min", "x_max")
TORCH_TOP_KEYS = ("Payne", "y_min", "y_max")
# Indices of the Linear layers inside the authors' torch.nn.Sequential (1 and 3 are LeakyReLU).
TORCH_LAYER_INDICES = (0, 2, 4)
FORMAT_TAG = "cyclestar_jax.emulator/1"

Params = dict[str, dict[str, jax.Array]]


class OutsideTrainingBoxWarning(UserWarning):
  """Labels passed to the emulator lie outside the box [y_min, y_max] it was trained on."""


class PayneMLP(nn.Module):
  """The Payne's single MLP: scaled labels [B, n_labels] → flux [B, n_pix]."""

  n_hidden: int = N_HIDDEN  # neurons per hidden layer
  n_pix: int = N_PIX  # output pixels
  negative_slope: float = NEGATIVE_SLOPE  # LeakyReLU slope
  precision: Any = None  # matmul precision (None = JAX default; TF32 on recent NVIDIA GPUs)

  @nn.compact
  def __call__(self, y_scaled: jax.Array) -> jax.Array:
    h = nn.Dense(self.n_hidden, precision=self.precision, name=LAYER_NAMES[0])(y_scaled)
    h = nn.leaky_relu(h, self.negative_slope)
    h = nn.Dense(self.n_hidden, precision=self.precision, name=LAYER_NAMES[1])(h)
    h = nn.leaky_relu(h, self.negative_slope)
    return nn.Dense(self.n_pix, precision=self.precision, name=LAYER_NAMES[2])(h)


def create_emulator_params(key: jax.Array, *, n_labels: int = N_LABELS, n_hidden: int = N_HIDDEN,
                           n_pix: int = N_PIX) -> Params:
  """Fresh emulator weights (Flax defaults: LeCun-normal kernels, zero biases).

  Args:
    key: PRNG key.
    n_labels: number of input labels.
    n_hidden: neurons per hidden layer.
    n_pix: output pixels.

  Returns:
    `params` in this module's convention (no "params" wrapper).
  """
  variables = PayneMLP(n_hidden=n_hidden, n_pix=n_pix).init(key, jnp.zeros((1, n_labels)))
  return flax.core.unfreeze(variables["params"])


def emulator_shape(params: Params) -> tuple[int, int, int]:
  """(n_labels, n_hidden, n_pix) of an emulator, read from its weight shapes."""
  n_labels, n_hidden = np.shape(params[LAYER_NAMES[0]]["kernel"])
  n_pix = np.shape(params[LAYER_NAMES[2]]["kernel"])[1]
  return int(n_labels), int(n_hidden), int(n_pix)


def emulator_apply(params: Params, y_scaled: jax.Array, *, precision: Any = None) -> jax.Array:
  """Pure emulator forward pass, usable inside jit, grad, jacfwd and vmap.

  Args:
    params: emulator weights (this module's convention).
    y_scaled: scaled labels [..., n_labels] (`scale_labels` output, [-0.5, 0.5] inside the box).
    precision: optional `jax.lax.Precision` for the three matmuls.

  Returns:
    Normalized flux [..., n_pix].
  """
  _, n_hidden, n_pix = emulator_shape(params)
  model = PayneMLP(n_hidden=n_hidden, n_pix=n_pix, precision=precision)
  return model.apply({"params": params}, y_scaled)


_apply_jit = jax.jit(emulator_apply)


def _label_name(i: int, n_labels: int) -> str:
  return LABEL_NAMES[i] if n_labels == N_LABELS else f"label {i}"


def check_training_box(y: np.ndarray, y_min: np.ndarray, y_max: np.ndarray, *,
                       source: str = "") -> np.ndarray:
  """Warn once (`OutsideTrainingBoxWarning`) if any label set lies outside [y_min, y_max].

  Args:
    y: physical labels [N, n_labels].
    y_min, y_max: training box [n_labels].
    source: where the emulator came from, quoted in the message.

  Returns:
    Boolean mask [N]: True for label sets with any label outside the box.
  """
  y = np.asarray(y)
  outside = outside_box(y, y_min, y_max)
  n_out = int(outside.sum())
  if n_out:
    below, above = (y < y_min).sum(axis=0), (y > y_max).sum(axis=0)
    n_labels = y.shape[-1]
    bad = np.flatnonzero(below + above)
    which = ", ".join(
        f"{_label_name(i, n_labels)} ({below[i]} below {y_min[i]:.4g}, "
        f"{above[i]} above {y_max[i]:.4g})" for i in bad[:8])
    if len(bad) > 8:
      which += f" and {len(bad) - 8} more labels"
    where = f" of {source}" if source else ""
    warnings.warn(
        f"{n_out} of {len(y)} label sets lie outside the emulator's training box{where}; "
        f"out of range: {which}. The emulator extrapolates there and is not to be trusted.",
        OutsideTrainingBoxWarning, stacklevel=3)
  return outside


@flax.struct.dataclass
class Emulator:
  """A trained emulator with its label scaling; a pytree, so it can pass through jit.

  Attributes:
    params: weights (this module's convention).
    y_min: lower edge of the training box, physical units [n_labels].
    y_max: upper edge of the training box, physical units [n_labels].
    source: the file or directory it was loaded from ("" if built in memory).
  """

  params: Params
  y_min: np.ndarray
  y_max: np.ndarray
  source: str = flax.struct.field(pytree_node=False, default="")

  @property
  def n_labels(self) -> int:
    return emulator_shape(self.params)[0]

  @property
  def n_pix(self) -> int:
    return emulator_shape(self.params)[2]

  def scale(self, y):
    """Physical labels [..., n_labels] → scaled labels (pure, works on jnp and np)."""
    return scale_labels(y, self.y_min, self.y_max)

  def __call__(self, y: jax.Array) -> jax.Array:
    """Pure flux [..., n_pix] from physical labels [..., n_labels]; no box check (jit-safe)."""
    return emulator_apply(self.params, self.scale(y))

  def predict(self, labels, *, chunk_size: int = 8192, check_box: bool = True) -> np.ndarray:
    """Flux from physical labels, evaluated in jitted chunks on the default device.

    Args:
      labels: physical labels [N, n_labels] or [n_labels].
      chunk_size: label sets per device call. Inputs are zero-padded to a power of two (if
        N <= chunk_size) or to whole chunks (`chunks.map_chunks`), so that repeated calls
        compile only a few shapes.
      check_box: warn (`OutsideTrainingBoxWarning`) about label sets outside the box.

    Returns:
      float32 flux [N, n_pix] (or [n_pix] for a single label set).
    """
    y = np.asarray(labels, dtype=np.float64)
    single = y.ndim == 1
    y = np.atleast_2d(y)
    if y.ndim != 2 or y.shape[1] != self.n_labels:
      raise ValueError(
          f"labels must have shape [N, {self.n_labels}] or [{self.n_labels}], got "
          f"{np.shape(labels)}")
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
      raise ValueError(f"labels have non-finite values in rows {np.flatnonzero(bad)[:10].tolist()}"
                       f"{' ...' if bad.sum() > 10 else ''}")
    if check_box:
      check_training_box(y, np.asarray(self.y_min), np.asarray(self.y_max), source=self.source)
    y_scaled = scale_labels(y, np.asarray(self.y_min), np.asarray(self.y_max)).astype(np.float32)
    flux = map_chunks(functools.partial(_apply_jit, self.params), [y_scaled], chunk_size)
    return flux[0] if single else flux


# ---------------------------------------------------------------------------------------------
# Conversions between layouts.


def params_from_payne_arrays(weights, biases) -> Params:
  """Params from (out, in) weight matrices and biases, as The Payne and PyTorch store them."""
  return {name: {"kernel": jnp.asarray(np.asarray(w, np.float32).T),
                 "bias": jnp.asarray(np.asarray(b, np.float32))}
          for name, w, b in zip(LAYER_NAMES, weights, biases, strict=True)}


def params_to_payne_arrays(params: Params) -> dict[str, np.ndarray]:
  """The Payne's npz arrays (`w_array_i` (out, in), `b_array_i`) from params."""
  out = {}
  for i, name in enumerate(LAYER_NAMES):
    out[f"w_array_{i}"] = np.asarray(params[name]["kernel"], np.float32).T.copy()
    out[f"b_array_{i}"] = np.asarray(params[name]["bias"], np.float32)
  return out


def _check_layer_shapes(source: str, weights, biases, y_min, y_max,
                        names: tuple[str, ...]) -> None:
  """Errors naming the file and field for inconsistent (out, in) layer shapes."""
  w0 = np.shape(weights[0])
  if len(w0) != 2:
    raise ValueError(
        f"{source}: {names[0]} has shape {w0}; expected a 2-D (hidden, n_labels) matrix of the "
        "single-MLP Payne (per-pixel networks of Ting et al. 2019 are not supported)")
  n_hidden, n_labels = w0
  n_pix = np.shape(weights[2])[0] if np.ndim(weights[2]) == 2 else -1
  expected = [(n_hidden, n_labels), (n_hidden, n_hidden), (n_pix, n_hidden),
              (n_hidden,), (n_hidden,), (n_pix,), (n_labels,), (n_labels,)]
  for name, arr, exp in zip(names, [*weights, *biases, y_min, y_max], expected, strict=True):
    if np.shape(arr) != exp:
      raise ValueError(f"{source}: {name} has shape {np.shape(arr)}, expected {exp}")
  if not np.all(np.asarray(y_max) > np.asarray(y_min)):
    bad = np.flatnonzero(~(np.asarray(y_max) > np.asarray(y_min))).tolist()
    raise ValueError(f"{source}: {names[7]} must exceed {names[6]} for every label; "
                     f"not so at label indices {bad}")


def params_from_torch_state_dict(state_dict: Mapping[str, Any], *, prefix: str = "",
                                 source: str = "state_dict") -> Params:
  """Params from the authors' `torch.nn.Sequential` state_dict (`0.weight`, ..., `4.bias`).

  Args:
    state_dict: mapping of names to tensors or arrays.
    prefix: key prefix, e.g. "emulator." for the emulator inside a Cycle-StarNet `cycle_model`.
    source: name quoted in errors.

  Returns:
    `params` in this module's convention.
  """
  keys = [f"{prefix}{i}.{k}" for k in ("weight", "bias") for i in TORCH_LAYER_INDICES]
  missing = [k for k in keys if k not in state_dict]
  if missing:
    raise KeyError(f"{source} is missing keys {missing}; expected {keys}")
  weights = [_to_numpy(state_dict[f"{prefix}{i}.weight"]) for i in TORCH_LAYER_INDICES]
  biases = [_to_numpy(state_dict[f"{prefix}{i}.bias"]) for i in TORCH_LAYER_INDICES]
  return params_from_payne_arrays(weights, biases)


def _to_numpy(a) -> np.ndarray:
  if hasattr(a, "detach"):  # torch.Tensor, without importing torch
    a = a.detach().cpu().numpy()
  return np.asarray(a)


# ---------------------------------------------------------------------------------------------
# Loading.


def load_payne_npz(path: str | os.PathLike) -> Emulator:
  """Emulator from The Payne's npz format (also what `save_emulator` writes).

  Raises:
    KeyError: naming the file and the missing keys.
    ValueError: naming the file and the field with an unexpected shape.
  """
  path = Path(path)
  with np.load(path, allow_pickle=False) as data:
    missing = [k for k in PAYNE_NPZ_KEYS if k not in data.files]
    if missing:
      raise KeyError(f"emulator file {path} is missing keys {missing}; The Payne's npz format "
                     f"needs {list(PAYNE_NPZ_KEYS)} (found {sorted(data.files)})")
    if "w_array_3" in data.files:
      raise ValueError(f"{path}: has w_array_3, a deeper network than The Payne's 3-layer MLP; "
                       "not supported")
    arrays = {k: data[k] for k in PAYNE_NPZ_KEYS}
  weights = [arrays[f"w_array_{i}"] for i in range(3)]
  biases = [arrays[f"b_array_{i}"] for i in range(3)]
  _check_layer_shapes(str(path), weights, biases, arrays["x_min"], arrays["x_max"],
                      PAYNE_NPZ_KEYS[:6] + ("x_min", "x_max"))
  return Emulator(params=params_from_payne_arrays(weights, biases),
                  y_min=np.asarray(arrays["x_min"], np.float64),
                  y_max=np.asarray(arrays["x_max"], np.float64), source=str(path))


def load_torch_emulator(path: str | os.PathLike, *, weights_only: bool = True) -> Emulator:
  """Emulator from the authors' PyTorch file (`Payne` state_dict, `y_min`, `y_max`).

  Needs the optional `torch` extra (`pip install cyclestar_jax[torch]`).

  Args:
    path: the `.pth`/`.pt` file.
    weights_only: passed to `torch.load`; set False only for a file you trust (arbitrary
      pickled objects can run code when loaded).

  Raises:
    ImportError: torch is not installed.
    KeyError: naming the file and the missing keys.
  """
  try:
    # Deferred import (torch: optional and heavy).
    import torch
  except ImportError as e:
    raise ImportError(f"reading the PyTorch emulator {path} needs torch: "
                      "pip install 'cyclestar_jax[torch]'") from e
  path = Path(path)
  try:
    ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
  except Exception as e:
    if not weights_only:
      raise
    raise ValueError(
        f"{path}: torch.load(weights_only=True) failed ({e}); if you trust this file, call "
        "load_torch_emulator(path, weights_only=False)") from e
  if not isinstance(ckpt, Mapping):
    raise ValueError(f"{path}: expected a dict with keys {list(TORCH_TOP_KEYS)}, "
                     f"got {type(ckpt).__name__}")
  missing = [k for k in TORCH_TOP_KEYS if k not in ckpt]
  if missing:
    raise KeyError(f"emulator file {path} is missing keys {missing}; the authors' PyTorch "
                   f"format needs {list(TORCH_TOP_KEYS)} (found {sorted(map(str, ckpt))})")
  sd = ckpt["Payne"]
  if not isinstance(sd, Mapping):
    raise ValueError(f"{path}: 'Payne' must be a state_dict, got {type(sd).__name__}")
  params = params_from_torch_state_dict(sd, source=f"emulator file {path} ['Payne']")
  y_min = _to_numpy(ckpt["y_min"]).astype(np.float64).reshape(-1)
  y_max = _to_numpy(ckpt["y_max"]).astype(np.float64).reshape(-1)
  keys = [f"{i}.{k}" for k in ("weight", "bias") for i in TORCH_LAYER_INDICES]
  arrays = [_to_numpy(sd[k]) for k in keys]
  _check_layer_shapes(str(path), arrays[:3], arrays[3:], y_min, y_max,
                      tuple(f"Payne['{k}']" for k in keys) + ("y_min", "y_max"))
  return Emulator(params=params, y_min=y_min, y_max=y_max, source=str(path))


def checkpoint_tree(params: Params, y_min, y_max) -> dict[str, Any]:
  """The pytree `emulator_train` saves with orbax: {"params", "y_min", "y_max"}."""
  return {"params": params, "y_min": np.asarray(y_min, np.float64),
          "y_max": np.asarray(y_max, np.float64)}


def load_orbax_emulator(path: str | os.PathLike) -> Emulator:
  """Emulator from an orbax checkpoint directory written by `emulator_train`.

  `path` is either the CheckpointManager directory (the latest step is read; training keeps
  only the best one) or one step's directory inside it.
  """
  # Deferred import (orbax: heavy, only for checkpoint folders).
  import orbax.checkpoint as ocp

  path = Path(path).absolute()
  if (path / "default").is_dir():  # one step's directory
    tree = ocp.StandardCheckpointer().restore(path / "default")
  else:
    with ocp.CheckpointManager(path) as manager:
      step = manager.latest_step()
      if step is None:
        raise FileNotFoundError(f"{path}: no orbax checkpoint found in this directory")
      tree = manager.restore(step, args=ocp.args.StandardRestore())
  missing = [k for k in ("params", "y_min", "y_max") if k not in tree]
  if missing:
    raise KeyError(f"emulator checkpoint {path} is missing keys {missing}")
  params = {name: {k: jnp.asarray(v) for k, v in layer.items()}
            for name, layer in tree["params"].items()}
  missing = [n for n in LAYER_NAMES if n not in params]
  if missing:
    raise KeyError(f"emulator checkpoint {path} is missing layers {missing}")
  return Emulator(params=params, y_min=np.asarray(tree["y_min"], np.float64),
                  y_max=np.asarray(tree["y_max"], np.float64), source=str(path))


def _is_torch_zip(path: Path) -> bool:
  """True for PyTorch's zip serialization (an archive holding `*/data.pkl`)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("data.pkl") for n in z.namelist())


def load_emulator(path: str | os.PathLike) -> Emulator:
  """Load an emulator from any supported format (chosen by what `path` is).

  - a directory: the output folder of `experiments.train_emulator` (its `emulator.npz`, else
    its `checkpoint/`), or an orbax checkpoint directory itself;
  - `.pt`, `.pth` or a PyTorch archive: the authors' PyTorch file (needs torch);
  - otherwise: The Payne's npz format (what `save_emulator` writes).

  Returns:
    `Emulator` with `.predict(labels)`, `.params`, `.y_min`, `.y_max`.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"emulator file {path} does not exist")
  if path.is_dir():
    if (path / "emulator.npz").is_file():
      return load_emulator(path / "emulator.npz")
    if (path / "checkpoint").is_dir():
      return load_orbax_emulator(path / "checkpoint")
    return load_orbax_emulator(path)
  if path.suffix.lower() in (".pt", ".pth") or _is_torch_zip(path):
    return load_torch_emulator(path)
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not an npz archive, PyTorch file or orbax checkpoint directory")
  return load_payne_npz(path)


# ---------------------------------------------------------------------------------------------
# Saving.


def save_emulator(path: str | os.PathLike, params: Params, y_min, y_max, *,
                  label_names: tuple[str, ...] | None = None,
                  metadata: Mapping[str, Any] | None = None) -> Path:
  """Save an emulator atomically in The Payne's npz layout (readable by The Payne's code).

  Args:
    path: output file, written exactly as named (".npz" is not appended).
    params: emulator weights (this module's convention).
    y_min, y_max: training box [n_labels], physical units; stored as `x_min`, `x_max`.
    label_names: names of the labels (default `LABEL_NAMES` for 25 labels).
    metadata: JSON-serializable provenance (training config, metrics, ...).

  Returns:
    The path written.
  """
  n_labels, _, _ = emulator_shape(params)
  y_min = np.asarray(y_min, np.float64).reshape(-1)
  y_max = np.asarray(y_max, np.float64).reshape(-1)
  if y_min.shape != (n_labels,) or y_max.shape != (n_labels,):
    raise ValueError(f"y_min/y_max must have shape ({n_labels},), got {y_min.shape} and "
                     f"{y_max.shape}")
  if label_names is None:
    label_names = LABEL_NAMES if n_labels == N_LABELS else tuple(
        f"label_{i}" for i in range(n_labels))
  arrays = {**params_to_payne_arrays(params), "x_min": y_min, "x_max": y_max,
            "label_names": np.asarray(label_names, dtype=str),
            "format": np.asarray(FORMAT_TAG),
            "metadata_json": np.asarray(json.dumps(dict(metadata or {}), default=str))}
  return atomic_write(path, lambda f: np.savez(f, **arrays))


def read_emulator_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """The `metadata` dict stored by `save_emulator` ({} for files without one)."""
  with np.load(path, allow_pickle=False) as data:
    if "metadata_json" not in data.files:
      return {}
    return json.loads(str(data["metadata_json"]))
