"""The calibrated model chain: y ↦ Payne(y) and y ↦ T_synth→obs(Payne(y), z_sp) (paper Eq. 8, 11).

One place for the composition that the label fits (Eq. 10, 11), the main job's report and the
derivative spectra of the line identification all use:

    x_synth = Payne(y)                                  [7214] raw normalized flux
    x_synth→obs = D_obs(D_sh(E_sh(E_synth(s(x_synth[47:])))), D_sp(z_sp)) · std + mean
                                                        [7167] raw normalized flux

with s the standardization of docs/method.md (x' = (x − mean)/std) and the first 47 pixels dropped
(the networks see 7167). z_sp is the split latent of an observed star (`encode_split`); decoding
it once (`split_features`, h_sp = D_sp(z_sp)) and reusing h_sp is what a fit of one star does.

Two layers: pure functions of explicit parameters (`payne_scaled`, `synth_to_obs_scaled`, on one
star's scaled labels θ ∈ [−0.5, 0.5]^25, for jit / vmap / jacfwd inside other code), and a
`ModelChain` with batched conveniences on physical labels.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import numpy as np

from cyclestar_jax.chunks import map_chunks
from cyclestar_jax.emulator import Emulator, emulator_apply
from cyclestar_jax.resources import N_DROP, spectra_mean_std

_MEAN, _STD = spectra_mean_std()


def standardize(x: jax.Array) -> jax.Array:
  """Raw normalized flux → the networks' standardized units (docs/method.md)."""
  return (x - _MEAN) / _STD


def unstandardize(x: jax.Array) -> jax.Array:
  """The networks' standardized units → raw normalized flux."""
  return x * _STD + _MEAN


def payne_scaled(em_params: Any, theta: jax.Array) -> jax.Array:
  """Payne(θ): scaled labels [..., n_labels] → raw flux [..., n_pix_emulator] (7214)."""
  return emulator_apply(em_params, theta)


def transfer_synth_to_obs(nets: Any, gen_params: dict, x_synth: jax.Array,
                          h_sp: jax.Array | None) -> jax.Array:
  """T_synth→obs of raw synthetic spectra [B, 7167] with decoded split features h_sp
  [B, L_interm, C_sp] (None without a split latent) → raw observed-domain flux [B, 7167]."""
  h_sh = nets.decode_shared(gen_params, nets.encode_synth(gen_params, standardize(x_synth)))
  return unstandardize(nets.decode_obs_from(gen_params, h_sh, h_sp))


def autoencode_synth(nets: Any, gen_params: dict, x_synth: jax.Array) -> jax.Array:
  """T_synth→synth = D_synth(D_sh(E_sh(E_synth(·)))) of raw synthetic spectra [B, 7167] → raw flux
  [B, 7167]: the synthetic domain's own round trip through the shared latent."""
  z_sh = nets.encode_synth(gen_params, standardize(x_synth))
  return unstandardize(nets.decode_synth(gen_params, z_sh))


def synth_to_obs_scaled(nets: Any, params: dict, theta: jax.Array,
                        h_sp: jax.Array | None) -> jax.Array:
  """T_synth→obs(Payne(θ)) of one star: θ [n_labels], h_sp [L_interm, C_sp] or None →
  raw flux [7167].

  Args:
    nets: the `networks.CycleStarNet`.
    params: {"emulator": emulator params, "gen": generator params}.
    theta: scaled labels.
    h_sp: D_sp(z_sp) of the star (`split_features`), or None without a split latent.
  """
  x_synth = payne_scaled(params["emulator"], theta)[N_DROP:]
  h = None if h_sp is None else h_sp[None]
  return transfer_synth_to_obs(nets, params["gen"], x_synth[None], h)[0]


def encode_split(nets: Any, gen_params: dict, x_obs: jax.Array) -> jax.Array | None:
  """z_sp [B, L_z, C_sp] of raw observed spectra [B, 7214] (None without a split latent)."""
  if not nets.cfg.use_split:
    return None
  _, zsp = nets.encode_obs(gen_params, standardize(x_obs[:, N_DROP:]))
  return zsp


def split_features(nets: Any, gen_params: dict, z_sp: jax.Array | None) -> jax.Array | None:
  """h_sp = D_sp(z_sp): [B, L_z, C_sp] → [B, L_interm, C] (None passes through)."""
  if z_sp is None or not nets.cfg.use_split:
    return None
  return nets.decode_split(gen_params, z_sp)


@flax.struct.dataclass
class ModelChain:
  """An emulator and (optionally) a trained Cycle-StarNet generator, composed.

  A pytree (the emulator's and the generator's parameters are its leaves), so a `ModelChain`
  can be an argument of a jitted function: `jax.jit(lambda mc, y: mc.payne(y))` compiles once
  per network object and input shape, whatever the weights.

  Attributes:
    emulator: The Payne (`emulator.load_emulator`), with its physical label box.
    cycle: the trained generator (`checkpoint.load_cycle_model`), or None for Payne alone.
  """

  emulator: Emulator
  cycle: Any = None

  @property
  def nets(self):
    if self.cycle is None:
      raise ValueError("this ModelChain has no Cycle-StarNet (cycle=None)")
    return self.cycle.nets

  @property
  def params(self) -> dict:
    """{"emulator": ..., "gen": ...} for the pure functions of this module."""
    p = {"emulator": self.emulator.params}
    if self.cycle is not None:
      p["gen"] = self.cycle.gen_params
    return p

  def scale(self, y):
    """Physical labels [..., 25] → scaled θ."""
    return self.emulator.scale(y)

  def payne(self, y: jax.Array) -> jax.Array:
    """Payne(y): physical labels [..., 25] → raw flux [..., 7214] (pure, no box check)."""
    return payne_scaled(self.emulator.params, self.scale(y))

  def encode_split(self, x_obs: jax.Array) -> jax.Array | None:
    """z_sp [B, L_z, C_sp] of raw observed spectra [B, 7214]."""
    return encode_split(self.nets, self.cycle.gen_params, x_obs)

  def synth_to_obs(self, y: jax.Array, z_sp: jax.Array | None) -> jax.Array:
    """T_synth→obs(Payne(y), z_sp): physical labels [B, 25], z_sp [B, L_z, C_sp] (or None) →
    raw observed-domain flux [B, 7167] (pure)."""
    x_synth = self.payne(y)[..., N_DROP:]
    h_sp = split_features(self.nets, self.cycle.gen_params, z_sp)
    return transfer_synth_to_obs(self.nets, self.cycle.gen_params, x_synth, h_sp)

  def predict(self, y: np.ndarray, z_sp: np.ndarray | None = None, *,
              chunk: int = 256) -> dict[str, np.ndarray]:
    """Both models on the host in jitted chunks (`chunks.map_chunks`): {"payne": [N, 7214],
    "synth_to_obs": [N, 7167] (only with a Cycle-StarNet)}; physical labels y [N, 25], z_sp
    [N, L_z, C_sp]."""
    y = np.asarray(y, np.float32)
    out = {"payne": map_chunks(functools.partial(_payne, self), [y], chunk)}
    if self.cycle is not None:
      if z_sp is None:
        out["synth_to_obs"] = map_chunks(functools.partial(_synth_to_obs, self, z_sp=None),
                                         [y], chunk)
      else:
        out["synth_to_obs"] = map_chunks(lambda yb, zb: _synth_to_obs(self, yb, z_sp=zb),
                                         [y, np.asarray(z_sp, np.float32)], chunk)
    return out


@jax.jit
def _payne(mc: ModelChain, y: jax.Array) -> jax.Array:
  return mc.payne(y)


@jax.jit
def _synth_to_obs(mc: ModelChain, y: jax.Array, z_sp: jax.Array | None) -> jax.Array:
  return mc.synth_to_obs(y, z_sp)
