"""Import the authors' PyTorch Cycle-StarNet checkpoints (`cycle_model` state dict).

Needs the optional extra: `pip install .[torch]` (torch is imported only when a file is read).

Key layout of the reference (`CycleSN` in the authors' `network.py`; docs/data_format.md): every
sub-network is a `torch.nn.Sequential` whose activation modules take an index but hold no
weights, so the weighted layers sit at even indices 0, 2, 4, ...:
  - `encoder_synth`, `encoder_obs`: Conv1d per `filters_dom` layer → `{i}.weight`, `{i}.bias`;
  - `encoder_sh`, `encoder_sp`: Conv1d per layer, then the k1 latent Conv1d (then
    `InstanceNorm1d` without affine parameters or running statistics: no keys);
  - `decoder_sh`, `decoder_sp`: ConvTranspose1d per layer, in reverse layer order;
  - `decoder_synth`, `decoder_obs`: ConvTranspose1d per layer, then the k1 spectrum Conv1d;
  - `discriminator_synth`, `discriminator_obs`: `discriminator_x.{i}` and `discriminator_z.{i}`
    Conv1d, then `fc` (Linear on the channel-major flatten of both branches, as ours).
The emulator (`emulator.*`) is not part of these networks and is ignored (see `emulator`).

Layout conversions (networks.py module docstring): Conv1d (out, in, k) → kernel (k, in, out);
ConvTranspose1d (in, out, k) → kernel (k, in, out), no flip; Linear (1, F) → (F, 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np

from cyclestar_jax.config import Config
from cyclestar_jax.networks import CRITIC_KEYS, make_networks

# Our network name → the reference module name.
TORCH_NAMES = {"enc_synth": "encoder_synth", "enc_obs": "encoder_obs", "enc_sh": "encoder_sh",
               "enc_sp": "encoder_sp", "dec_sh": "decoder_sh", "dec_sp": "decoder_sp",
               "dec_synth": "decoder_synth", "dec_obs": "decoder_obs",
               "critic_synth": "discriminator_synth", "critic_obs": "discriminator_obs"}


class TorchImportError(ValueError):
  """A PyTorch checkpoint that does not fit the config's networks (names the key and shape)."""


def _import_torch():
  try:
    # Deferred import (torch: optional and heavy).
    import torch
  except ImportError as e:
    raise ImportError("reading PyTorch checkpoints needs torch: install the optional extra "
                      "with `pip install .[torch]` (or `pip install torch`)") from e
  return torch


def _layer_map(name: str, tree: dict) -> dict[str, tuple[str, str]]:
  """{torch key prefix: (our layer name, kind)} for one of our networks' param dicts.

  kind: "conv" (Conv1d), "deconv" (ConvTranspose1d), "fc" (Linear).
  """
  t = TORCH_NAMES[name]
  out: dict[str, tuple[str, str]] = {}
  if name.startswith(("enc", "dec")):
    # Sequential(layer, activation, ...) then the optional k1 conv: our names and kinds.
    layer, kind, last = (("conv", "conv", "z") if name.startswith("enc")
                         else ("dconv", "deconv", "out"))
    n = sum(1 for k in tree if k.startswith(layer))
    for i in range(n):
      out[f"{t}.{2 * i}"] = (f"{layer}{i}", kind)
    if last in tree:
      out[f"{t}.{2 * n}"] = (last, "conv")
  else:
    for branch in ("x", "z"):
      n = sum(1 for k in tree if k[0] == branch and k[1:].isdigit())
      for i in range(n):
        out[f"{t}.discriminator_{branch}.{2 * i}"] = (f"{branch}{i}", "conv")
    out[f"{t}.fc"] = ("fc", "fc")
  return out


def _to_ours(w: np.ndarray, kind: str, part: str) -> np.ndarray:
  if part == "bias":
    return w
  if kind == "conv":
    return w.transpose(2, 1, 0)  # (out, in, k) → (k, in, out)
  if kind == "deconv":
    return w.transpose(2, 0, 1)  # (in, out, k) → (k, in, out)
  return w.T  # Linear (out, in) → Dense (in, out)


def _to_torch_shape(shape: tuple[int, ...], kind: str, part: str) -> tuple[int, ...]:
  if part == "bias":
    return shape
  if kind == "conv":
    return (shape[2], shape[1], shape[0])
  if kind == "deconv":
    return (shape[1], shape[2], shape[0])
  return (shape[1], shape[0])


def _read_state_dict(path_or_state_dict, weights_only: bool) -> tuple[Mapping, str]:
  if isinstance(path_or_state_dict, Mapping):
    sd, where = path_or_state_dict, "state dict"
  else:
    path = os.fspath(path_or_state_dict)
    if not os.path.isfile(path):
      raise TorchImportError(f"{path}: no such checkpoint file")
    torch = _import_torch()
    try:
      sd = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; all mean "cannot read"
      hint = (" (a trusted file holding more than tensors may need weights_only=False)"
              if weights_only else "")
      raise TorchImportError(f"{path}: cannot read as a PyTorch checkpoint: {e}{hint}") from e
    where = path
    if not isinstance(sd, Mapping):
      raise TorchImportError(f"{path}: expected a dict, got {type(sd).__name__}")
  if "cycle_model" in sd:
    sd = sd["cycle_model"]
    where = f"{where}['cycle_model']"
  return sd, where


def _as_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor
    v = v.detach().cpu().float().numpy()
  return np.asarray(v, np.float32)


def load_torch_cycle_model(path_or_state_dict, cfg: Config, *,
                           weights_only: bool = True) -> tuple[dict, dict]:
  """Convert the authors' Cycle-StarNet weights into our (generator, critic) parameters.

  Args:
    path_or_state_dict: a checkpoint file written by the authors' training (a dict holding
      `cycle_model`), or such a dict, or the `cycle_model` state dict itself (tensors or
      arrays).
    cfg: the config the checkpoint was trained with (e.g. `from_ini` of its `.ini` file).
    weights_only: passed to `torch.load`; keep True unless the file is trusted and holds
      pickled objects torch refuses to load safely.

  Returns:
    (gen_params, critic_params): dicts of float32 arrays laid out as `make_networks(cfg).init`
    returns them.

  Raises:
    TorchImportError: unreadable file; a key the config needs is missing or has the wrong
      shape (naming the key, its shape and the expected shape); keys the config has no layer
      for (e.g. a checkpoint of another architecture).
    ImportError: a file was given and torch is not installed.
  """
  sd, where = _read_state_dict(path_or_state_dict, weights_only)
  nets = make_networks(cfg)
  shapes = jax.eval_shape(nets.init, jax.random.key(0))
  gen_shapes, critic_shapes = shapes
  trees = {**gen_shapes, **critic_shapes}
  used: set[str] = set()
  params: dict[str, dict] = {}
  for name, tree in trees.items():
    params[name] = {}
    for prefix, (layer, kind) in _layer_map(name, tree).items():
      params[name][layer] = {}
      for part, ours in (("weight", "kernel"), ("bias", "bias")):
        key = f"{prefix}.{part}"
        want = tuple(tree[layer][ours].shape)
        want_torch = _to_torch_shape(want, kind, part)
        if key not in sd:
          raise TorchImportError(f"{where}: key {key!r} is missing; config {cfg.name!r} "
                                 f"expects shape {want_torch}")
        w = _as_numpy(sd[key])
        if w.shape != want_torch:
          raise TorchImportError(f"{where}: key {key!r} has shape {w.shape}; config "
                                 f"{cfg.name!r} expects {want_torch}")
        params[name][layer][ours] = _to_ours(w, kind, part).copy()
        used.add(key)
  extra = sorted(k for k in sd if k not in used and not k.startswith("emulator."))
  if extra:
    raise TorchImportError(f"{where}: keys with no layer in config {cfg.name!r}: "
                           f"{extra[:8]}{' ...' if len(extra) > 8 else ''} (a checkpoint of "
                           f"another architecture?)")
  gen = {k: params[k] for k in gen_shapes}
  critic = {k: params[k] for k in CRITIC_KEYS}
  return gen, critic
