"""Cycle-StarNet networks (paper §3.2.1, Table 2; docs/method.md): encoders, decoders, critics.

Convention: arrays are channels-last, as Flax is: spectra [B, n_pix] (a channel axis is added
inside), intermediate representations [B, L, C], latents z_sh [B, 24, 25] and z_sp [B, 24, 4]
for Table 2. The paper and the authors' PyTorch code write channels first (B, C, L), so their
"25 × 24" latent is our (24, 25). Where this matters for importing the authors' weights:
  - Conv1d weights: PyTorch (out, in, k) → Flax `Conv` kernel (k, in, out) = W.transpose(2, 1, 0).
  - ConvTranspose1d weights: PyTorch (in, out, k) → our `ConvTranspose1D` kernel (k, in, out)
    = W.transpose(2, 0, 1); same semantics, output length (L − 1)·s + k, no flip.
  - The critics flatten their two branches in PyTorch's channel-major order (a [B, L, C] array is
    transposed to [B, C, L] before the flatten), so the authors' `fc.weight` (1, F) imports as
    its transpose (F, 1) with no permutation.

The transposed convolution is written as one matmul plus an overlap-add of the shifted outputs
(`conv_transpose_1d`) instead of Flax's `ConvTranspose`: under XLA the latter's weight
gradient is very slow for these strided 1-D layers (docs/method.md).

Parameters live in two plain dicts: generator `{enc_synth, enc_obs, enc_sh, enc_sp, dec_sh,
dec_sp, dec_synth, dec_obs}` and critics `{critic_synth, critic_obs}` (no `enc_sp`/`dec_sp` when
the config has no split latent). Weights are Glorot-uniform and conv biases 0.01, as the
reference initialises them; the critics' dense layer keeps PyTorch's `Linear` default.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyclestar_jax.config import Config

INSTANCE_NORM_EPS = 1e-5  # PyTorch InstanceNorm1d default
_BIAS_INIT = 0.01  # the reference fills every conv bias with 0.01


def _activation(name: str, slope: float) -> Callable[[jax.Array], jax.Array]:
  if name == "leakyrelu":
    return lambda x: nn.leaky_relu(x, negative_slope=slope)
  if name == "relu":
    return nn.relu
  if name == "sigmoid":
    return nn.sigmoid
  raise ValueError(f"unknown activation {name!r}")


def instance_norm(z: jax.Array, eps: float = INSTANCE_NORM_EPS) -> jax.Array:
  """Instance norm without affine parameters: each (sample, channel) over its length.

  Args:
    z: [B, L, C].
    eps: added to the (biased) variance, as PyTorch's `InstanceNorm1d`.

  Returns:
    [B, L, C] with zero mean and unit variance along L.
  """
  mean = jnp.mean(z, axis=1, keepdims=True)
  var = jnp.mean(jnp.square(z - mean), axis=1, keepdims=True)
  return (z - mean) * jax.lax.rsqrt(var + eps)


def conv_transpose_1d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None,
                      stride: int) -> jax.Array:
  """Transposed 1-D convolution with PyTorch's semantics, as one matmul plus an overlap-add.

  out[b, l·s + j, o] = Σ_i x[b, l, i] · kernel[j, i, o] + bias[o]; output length (L − 1)·s + k.

  The k taps are padded to a multiple q·s of the stride, so the matmul output [B, L, q, s, C]
  is q shifted blocks of s pixels that are added with q static pads, then cropped.

  Args:
    x: [B, L, C_in].
    kernel: [k, C_in, C_out] (PyTorch's ConvTranspose1d weight (C_in, C_out, k) transposed by
      (2, 0, 1)).
    bias: [C_out] or None.
    stride: s ≥ 1.

  Returns:
    [B, (L − 1)·s + k, C_out].
  """
  b, length, c_in = x.shape
  k, c_in_k, c_out = kernel.shape
  if c_in_k != c_in:
    raise ValueError(f"conv_transpose_1d: input has {c_in} channels, kernel expects {c_in_k}")
  q = -(-k // stride)  # blocks of `stride` taps
  w = jnp.pad(kernel, ((0, q * stride - k), (0, 0), (0, 0)))  # [q·s, C_in, C_out]
  w = jnp.transpose(w, (1, 0, 2)).reshape(c_in, q * stride * c_out)
  y = jnp.dot(x.reshape(b * length, c_in), w).reshape(b, length, q, stride * c_out)
  out = None
  for j in range(q):  # block j of taps lands j blocks of s pixels further on
    part = jnp.pad(y[:, :, j], ((0, 0), (j, q - 1 - j), (0, 0)))
    out = part if out is None else out + part
  out = out.reshape(b, (length + q - 1) * stride, c_out)[:, : (length - 1) * stride + k]
  if bias is not None:
    out = out + bias
  return out


class ConvTranspose1D(nn.Module):
  """PyTorch-style `ConvTranspose1d` (no padding) on channels-last input, via `conv_transpose_1d`.

  Params: `kernel` [k, C_in, C_out] (Glorot-uniform), `bias` [C_out] (0.01).
  """

  features: int
  kernel_size: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, L, C_in] → [B, (L − 1)·stride + kernel_size, features]."""
    kernel = self.param("kernel", nn.initializers.glorot_uniform(),
                        (self.kernel_size, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.constant(_BIAS_INIT), (self.features,), jnp.float32)
    return conv_transpose_1d(x, kernel.astype(x.dtype), bias.astype(x.dtype), self.stride)


def _conv(features: int, kernel: int, stride: int, name: str, padding: int = 0) -> nn.Conv:
  return nn.Conv(features, kernel_size=(kernel,), strides=(stride,),
                 padding=((padding, padding),), kernel_init=nn.initializers.glorot_uniform(),
                 bias_init=nn.initializers.constant(_BIAS_INIT), name=name)


class LatentConv(nn.Module):
  """The k1 conv that makes a latent: params `kernel` [1, C_in, C_out] and `bias` [C_out], as
  a Flax `Conv` of kernel size 1 has them.

  Followed by instance norm, the bias has no effect on the output (the norm removes any
  per-channel constant), so its gradient is zero up to rounding, and Adam would turn that
  rounding noise into ±lr steps that differ between device layouts. The bias is then kept (for
  the reference's parameter count and weight import) but not trained (`train_bias=False`).
  """

  features: int
  train_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, L, C_in] → [B, L, features]."""
    kernel = self.param("kernel", nn.initializers.glorot_uniform(),
                        (1, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.constant(_BIAS_INIT), (self.features,), jnp.float32)
    if not self.train_bias:
      bias = jax.lax.stop_gradient(bias)
    return jnp.dot(x, kernel[0].astype(x.dtype)) + bias.astype(x.dtype)


class Encoder(nn.Module):
  """Strided convs with activations; optionally a k1 conv to `z_filters` plus instance norm.

  E_synth/E_obs have no latent layer (`z_filters` 0); E_sh and E_sp end in one (Table 2).
  Params: `conv{i}` for each strided conv, `z` for the latent conv (see `LatentConv`).
  """

  filters: tuple[int, ...]
  kernels: tuple[int, ...]
  strides: tuple[int, ...]
  activation: str
  slope: float
  z_filters: int = 0
  out_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, L, C] → [B, L', filters[-1]] (no latent) or [B, L', z_filters]."""
    act = _activation(self.activation, self.slope)
    for i, (f, k, s) in enumerate(zip(self.filters, self.kernels, self.strides, strict=True)):
      x = act(_conv(f, k, s, f"conv{i}")(x))
    if self.z_filters:
      x = LatentConv(self.z_filters, train_bias=not self.out_norm, name="z")(x)
      if self.out_norm:
        x = instance_norm(x)
    return x


class Decoder(nn.Module):
  """Transposed convs in reverse layer order with activations; optionally a k1 conv to 1 channel.

  D_sh/D_sp mirror E_sh/E_sp; D_synth/D_obs mirror E_synth/E_obs and end in the spectrum conv.
  Params: `dconv{i}` (i counts the decoder's own layers), `out` for the spectrum conv.
  """

  filters: tuple[int, ...]  # the mirrored encoder's filters, in the encoder's order
  kernels: tuple[int, ...]
  strides: tuple[int, ...]
  activation: str
  slope: float
  out_x: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, L, C] → [B, L', filters[0]], or [B, L'] spectrum when `out_x`."""
    act = _activation(self.activation, self.slope)
    layers = list(zip(self.filters, self.kernels, self.strides, strict=True))[::-1]
    for i, (f, k, s) in enumerate(layers):
      x = act(ConvTranspose1D(f, k, s, name=f"dconv{i}")(x))
    if self.out_x:
      x = _conv(1, 1, 1, "out")(x)[..., 0]
    return x


def _torch_linear_bias_init(key, shape, dtype=jnp.float32, fan_in: int = 1):
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class Critic(nn.Module):
  """Critic C_synth or C_obs: a spectrum branch and a latent branch, flattened, one logit.

  Params: `x{i}` and `z{i}` convs, `fc` dense. The flatten follows PyTorch's channel-major
  order (see the module docstring). Returns logits; the reference's sigmoid is in the loss.
  """

  filters_x: tuple[int, ...]
  kernels_x: tuple[int, ...]
  strides_x: tuple[int, ...]
  filters_z: tuple[int, ...]
  kernels_z: tuple[int, ...]
  strides_z: tuple[int, ...]
  z_padding: int
  activation: str
  slope: float

  @nn.compact
  def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
    """x [B, n_pix] spectrum, z [B, L_z, C_z] latent → [B] logits."""
    act = _activation(self.activation, self.slope)
    hx = x[..., None]
    for i, (f, k, s) in enumerate(zip(self.filters_x, self.kernels_x, self.strides_x,
                                      strict=True)):
      hx = act(_conv(f, k, s, f"x{i}")(hx))
    hz = z
    for i, (f, k, s) in enumerate(zip(self.filters_z, self.kernels_z, self.strides_z,
                                      strict=True)):
      hz = act(_conv(f, k, s, f"z{i}", padding=self.z_padding)(hz))
    b = x.shape[0]
    flat = jnp.concatenate([jnp.transpose(hx, (0, 2, 1)).reshape(b, -1),
                            jnp.transpose(hz, (0, 2, 1)).reshape(b, -1)], axis=1)
    fan_in = flat.shape[1]
    logit = nn.Dense(1, kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                     bias_init=lambda k, s, d=jnp.float32: _torch_linear_bias_init(k, s, d, fan_in),
                     name="fc")(flat)
    return logit[:, 0]


GEN_KEYS = ("enc_synth", "enc_obs", "enc_sh", "enc_sp", "dec_sh", "dec_sp", "dec_synth",
            "dec_obs")
CRITIC_KEYS = ("critic_synth", "critic_obs")


@dataclasses.dataclass(frozen=True, eq=False)
class CycleStarNet:
  """The ten Cycle-StarNet networks of one config and pure functions of their parameters.

  Build with `make_networks(cfg)`. Every method is a pure function of explicit parameters, so
  it can be jitted, differentiated and vmapped. Hashed and compared by identity, so an instance
  can be a static argument of `jax.jit` (a jitted function compiles once per instance).
  """

  cfg: Config
  modules: dict

  @property
  def gen_keys(self) -> tuple[str, ...]:
    """Names of the generator's networks (without `enc_sp`/`dec_sp` when there is no split)."""
    return tuple(k for k in GEN_KEYS if k in self.modules)

  def init(self, key: jax.Array) -> tuple[dict, dict]:
    """Initial (generator params, critic params), drawn as the reference initialises them.

    Conv kernels Glorot-uniform, conv biases 0.01, the critics' dense layer U(±1/sqrt(fan_in))
    (PyTorch's `Linear` default) for kernel and bias: the distributions of the modules' own
    initializers, but drawn from one uniform vector, because XLA compiles each separate
    threefry draw slowly on the CPU (one draw: ~0.5 s to compile, forty: ~20 s).
    """
    shapes = jax.eval_shape(self._init_modules, key)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    limits = []  # half-width of each leaf's uniform distribution; None: constant bias
    for path, leaf in flat:
      names = [p.key for p in path]
      if names[-2] == "fc":  # critic dense layer: fan_in is its kernel's first dimension
        limits.append(1.0 / math.sqrt(_lookup(shapes, names[:-1])["kernel"].shape[0]))
      elif names[-1] == "bias":
        limits.append(None)
      else:  # conv kernel [k, C_in, C_out]: fan_in k·C_in, fan_out k·C_out
        k, c_in, c_out = leaf.shape
        limits.append(math.sqrt(6.0 / (k * c_in + k * c_out)))
    n_random = sum(math.prod(leaf.shape) for (_, leaf), lim in zip(flat, limits, strict=True)
                   if lim is not None)
    u = jax.random.uniform(key, (n_random,), jnp.float32, -1.0, 1.0)
    leaves, offset = [], 0
    for (_, leaf), limit in zip(flat, limits, strict=True):
      if limit is None:
        leaves.append(jnp.full(leaf.shape, _BIAS_INIT, leaf.dtype))
        continue
      n = math.prod(leaf.shape)
      leaves.append((u[offset:offset + n] * limit).reshape(leaf.shape).astype(leaf.dtype))
      offset += n
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    return ({n: params[n] for n in self.gen_keys}, {n: params[n] for n in CRITIC_KEYS})

  def _init_modules(self, key: jax.Array) -> dict:
    """Params of every module from its own Flax initializers (used for shapes by `init`)."""
    cfg, m = self.cfg, self.modules
    b = 1
    x = jnp.zeros((b, cfg.n_pix, 1), jnp.float32)
    lz = cfg.lengths["zsh"]
    interm = jnp.zeros((b, cfg.lengths["interm"], cfg.filters_dom[-1]), jnp.float32)
    zsh = jnp.zeros((b, lz, cfg.zsh_filters), jnp.float32)
    zsp = jnp.zeros((b, lz, cfg.zsp_filters), jnp.float32)
    dec_in_synth = jnp.zeros((b, cfg.lengths["interm"], self._dec_sh_channels), jnp.float32)
    dec_in_obs = jnp.zeros((b, cfg.lengths["interm"], self._dec_obs_channels), jnp.float32)
    inputs = {"enc_synth": (x,), "enc_obs": (x,), "enc_sh": (interm,), "enc_sp": (interm,),
              "dec_sh": (zsh,), "dec_sp": (zsp,), "dec_synth": (dec_in_synth,),
              "dec_obs": (dec_in_obs,),
              "critic_synth": (x[..., 0], zsh),
              "critic_obs": (x[..., 0], jnp.concatenate([zsh, zsp], axis=-1))}
    names = self.gen_keys + CRITIC_KEYS
    keys = dict(zip(names, jax.random.split(key, len(names)), strict=True))
    return {n: m[n].init(keys[n], *inputs[n])["params"] for n in names}

  @property
  def _dec_sh_channels(self) -> int:
    return self.cfg.filters_sh[0] if self.cfg.filters_sh else self.cfg.zsh_filters

  @property
  def _dec_obs_channels(self) -> int:
    if not self.cfg.use_split:
      return self._dec_sh_channels
    sp = self.cfg.filters_sp[0] if self.cfg.filters_sp else self.cfg.zsp_filters
    return self._dec_sh_channels + sp

  def _apply(self, params: dict, name: str, *args) -> jax.Array:
    return self.modules[name].apply({"params": params[name]}, *args)

  def encode_synth(self, gen_params: dict, x: jax.Array) -> jax.Array:
    """E_sh(E_synth(x)): standardized synthetic spectra [B, n_pix] → z_sh [B, L_z, C_sh]."""
    return self._apply(gen_params, "enc_sh", self._apply(gen_params, "enc_synth", x[..., None]))

  def encode_obs(self, gen_params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """E_sh/E_sp(E_obs(x)): observed spectra [B, n_pix] → (z_sh, z_sp [B, L_z, C_sp] or None)."""
    interm = self._apply(gen_params, "enc_obs", x[..., None])
    zsh = self._apply(gen_params, "enc_sh", interm)
    zsp = self._apply(gen_params, "enc_sp", interm) if self.cfg.use_split else None
    return zsh, zsp

  def decode_synth(self, gen_params: dict, zsh: jax.Array) -> jax.Array:
    """D_synth(D_sh(z_sh)): z_sh [B, L_z, C_sh] → standardized synthetic spectra [B, n_pix]."""
    return self._apply(gen_params, "dec_synth", self.decode_shared(gen_params, zsh))

  def decode_obs(self, gen_params: dict, zsh: jax.Array, zsp: jax.Array | None) -> jax.Array:
    """D_obs(concat(D_sh(z_sh), D_sp(z_sp))) → standardized observed spectra [B, n_pix]."""
    h_sp = self.decode_split(gen_params, zsp) if self.cfg.use_split else None
    return self.decode_obs_from(gen_params, self.decode_shared(gen_params, zsh), h_sp)

  def decode_shared(self, gen_params: dict, zsh: jax.Array) -> jax.Array:
    """D_sh(z_sh): shared latent [B, L_z, C_sh] → [B, L_interm, C] (input of D_synth, D_obs)."""
    return self._apply(gen_params, "dec_sh", zsh)

  def decode_split(self, gen_params: dict, zsp: jax.Array) -> jax.Array:
    """D_sp(z_sp): split latent [B, L_z, C_sp] → its half of D_obs's input [B, L_interm, C]."""
    return self._apply(gen_params, "dec_sp", zsp)

  def decode_obs_from(self, gen_params: dict, h_sh: jax.Array, h_sp: jax.Array | None) -> jax.Array:
    """D_obs(concat(h_sh, h_sp)) from decoded latents: D_sh(z_sh) [B, L_interm, C_sh] and
    D_sp(z_sp) [B, L_interm, C_sp] (None without a split latent) → spectra [B, n_pix].

    Lets a caller decode a fixed z_sp once (`decode_split`) and reuse it, as the label fit does.
    """
    h = h_sh if h_sp is None else jnp.concatenate([h_sh, h_sp], axis=-1)
    return self._apply(gen_params, "dec_obs", h)

  def _apply_joint(self, params: dict, name: str, *inputs: jax.Array) -> list[jax.Array]:
    """Module `name` applied once to several batches stacked along axis 0, split back.

    Every network acts on each sample independently (instance norm included), so this equals
    one application per batch, with half the kernels of two calls (what costs at batch 8 on a
    GPU is the kernel count, docs/devices.md, 'Launches and kernel count').
    """
    ends = list(itertools.accumulate(x.shape[0] for x in inputs))[:-1]
    return jnp.split(self._apply(params, name, jnp.concatenate(inputs, axis=0)), ends, axis=0)

  def critic_synth(self, critic_params: dict, x: jax.Array, zsh: jax.Array) -> jax.Array:
    """C_synth logits [B] for spectra [B, n_pix] paired with z_sh [B, L_z, C_sh]."""
    return self._apply(critic_params, "critic_synth", x, zsh)

  def critic_obs(self, critic_params: dict, x: jax.Array, zsh: jax.Array,
                 zsp: jax.Array | None) -> jax.Array:
    """C_obs logits [B] for spectra [B, n_pix] paired with concat(z_sh, z_sp) along channels."""
    z = jnp.concatenate([zsh, zsp], axis=-1) if self.cfg.use_split else zsh
    return self._apply(critic_params, "critic_obs", x, z)

  def critic_synth_joint(self, critic_params: dict,
                         *pairs: tuple[jax.Array, jax.Array]) -> list[jax.Array]:
    """C_synth logits for several (x [B_i, n_pix], z_sh [B_i, L_z, C_sh]) batches in one
    application (see `_apply_joint`): a list of [B_i] logits."""
    ends = list(itertools.accumulate(x.shape[0] for x, _ in pairs))[:-1]
    x = jnp.concatenate([x for x, _ in pairs], axis=0)
    z = jnp.concatenate([z for _, z in pairs], axis=0)
    return jnp.split(self.critic_synth(critic_params, x, z), ends)

  def critic_obs_joint(self, critic_params: dict,
                       *triples: tuple[jax.Array, jax.Array, jax.Array | None]) -> list[jax.Array]:
    """C_obs logits for several (x, z_sh, z_sp) batches in one application: a list of [B_i]."""
    ends = list(itertools.accumulate(t[0].shape[0] for t in triples))[:-1]
    x, zsh = (jnp.concatenate([t[i] for t in triples], axis=0) for i in (0, 1))
    zsp = (jnp.concatenate([t[2] for t in triples], axis=0) if self.cfg.use_split else None)
    return jnp.split(self.critic_obs(critic_params, x, zsh, zsp), ends)

  def cycle_forward(self, gen_params: dict, x_synth: jax.Array, x_obs: jax.Array,
                    zsp_perm: jax.Array | None = None) -> dict[str, jax.Array]:
    """The generator's forward pass of one training iteration (docs/method.md, Eq. 2, 5, 6).

    Args:
      gen_params: generator parameters.
      x_synth: standardized synthetic spectra [B, n_pix].
      x_obs: standardized observed spectra [B, n_pix].
      zsp_perm: optional permutation [B] choosing which observed spectrum lends its z_sp to
        each synthetic one for x_synth→obs (default: the same batch position, as the reference).

    Returns:
      Dict of spectra [B, n_pix]: `x_synthsynth`, `x_obsobs`, `x_synthobs`, `x_obssynth`,
      `x_synthobssynth`, `x_obssynthobs`; latents [B, L_z, C]: `zsh_synth`, `zsh_obs`, `zsp_obs`,
      `zsh_synthobs`, `zsp_synthobs`, `zsh_obssynth`, and `zsp_lent` (the z_sp used for
      x_synthobs). z_sp entries are absent without a split latent.
    """
    p, split = gen_params, self.cfg.use_split
    # Every shared network runs once on the two domains' batches together (`_apply_joint`),
    # and each D_sh / D_sp output is computed once and reused, as D_sh(z_sh_synth) feeds both
    # x_synth→synth and x_synth→obs.
    interm_synth = self._apply(p, "enc_synth", x_synth[..., None])
    interm_obs = self._apply(p, "enc_obs", x_obs[..., None])
    zsh_synth, zsh_obs = self._apply_joint(p, "enc_sh", interm_synth, interm_obs)
    zsp_obs = self._apply(p, "enc_sp", interm_obs) if split else None
    h_synth, h_obs = self._apply_joint(p, "dec_sh", zsh_synth, zsh_obs)
    hsp_obs = hsp_lent = zsp_lent = None
    if split:
      hsp_obs = self.decode_split(p, zsp_obs)
      zsp_lent, hsp_lent = ((zsp_obs, hsp_obs) if zsp_perm is None
                            else (zsp_obs[zsp_perm], hsp_obs[zsp_perm]))
    x_synthsynth, x_obssynth = self._apply_joint(p, "dec_synth", h_synth, h_obs)
    def cat(h, hsp):  # D_obs's input: D_sh output, then D_sp output along channels
      return h if hsp is None else jnp.concatenate([h, hsp], axis=-1)

    x_obsobs, x_synthobs = self._apply_joint(p, "dec_obs", cat(h_obs, hsp_obs),
                                             cat(h_synth, hsp_lent))
    # Cycle: back through the other domain's encoder (Eq. 5, 6).
    interm_obssynth = self._apply(p, "enc_synth", x_obssynth[..., None])
    interm_synthobs = self._apply(p, "enc_obs", x_synthobs[..., None])
    zsh_obssynth, zsh_synthobs = self._apply_joint(p, "enc_sh", interm_obssynth, interm_synthobs)
    zsp_synthobs = self._apply(p, "enc_sp", interm_synthobs) if split else None
    h_obssynth, h_synthobs = self._apply_joint(p, "dec_sh", zsh_obssynth, zsh_synthobs)
    # Back to the observed domain with the original z_sp (paper §3.2.6).
    x_obssynthobs = self.decode_obs_from(p, h_obssynth, hsp_obs)
    x_synthobssynth = self._apply(p, "dec_synth", h_synthobs)
    out = {"x_synthsynth": x_synthsynth, "x_obsobs": x_obsobs, "x_synthobs": x_synthobs,
           "x_obssynth": x_obssynth, "x_synthobssynth": x_synthobssynth,
           "x_obssynthobs": x_obssynthobs, "zsh_synth": zsh_synth, "zsh_obs": zsh_obs,
           "zsh_synthobs": zsh_synthobs, "zsh_obssynth": zsh_obssynth}
    if self.cfg.use_split:
      out.update(zsp_obs=zsp_obs, zsp_synthobs=zsp_synthobs, zsp_lent=zsp_lent)
    return out

  def grid_forward(self, gen_params: dict, x_grid: jax.Array,
                   zsp_lent: jax.Array | None) -> dict[str, jax.Array]:
    """The synthetic round trips of a grid batch (`Config.lambda_grid`; not in the paper).

    Args:
      gen_params: generator parameters.
      x_grid: standardized synthetic spectra at decorrelated labels [B, n_pix].
      zsp_lent: the z_sp lent to x_grid→obs [B, L_z, C_sp] (the observed batch's, as for
        x_synth→obs), or None without a split latent.

    Returns:
      {"x_gridgrid": D_synth(D_sh(z_sh)), and with `cfg.grid_cycle` "x_gridobssynth":
      x_grid→obs→synth}, each [B, n_pix].
    """
    p = gen_params
    h = self.decode_shared(p, self.encode_synth(p, x_grid))
    out = {"x_gridgrid": self._apply(p, "dec_synth", h)}
    if self.cfg.grid_cycle:
      hsp = self.decode_split(p, zsp_lent) if self.cfg.use_split else None
      zsh_gridobs, _ = self.encode_obs(p, self.decode_obs_from(p, h, hsp))
      out["x_gridobssynth"] = self.decode_synth(p, zsh_gridobs)
    return out


def _lookup(tree: dict, names: list[str]) -> dict:
  for n in names:
    tree = tree[n]
  return tree


def make_networks(cfg: Config) -> CycleStarNet:
  """Build the Flax modules of Table 2 for a config (no parameters are allocated)."""
  act, slope = cfg.activation, cfg.activation_slope
  dom = dict(filters=cfg.filters_dom, kernels=cfg.kernels_dom, strides=cfg.strides_dom,
             activation=act, slope=slope)
  sh = dict(filters=cfg.filters_sh, kernels=cfg.kernels_sh, strides=cfg.strides_sh,
            activation=act, slope=slope)
  sp = dict(filters=cfg.filters_sp, kernels=cfg.kernels_sp, strides=cfg.strides_sp,
            activation=act, slope=slope)
  critic = dict(filters_x=cfg.critic_filters_x, kernels_x=cfg.critic_kernels_x,
                strides_x=cfg.critic_strides_x, filters_z=cfg.critic_filters_z,
                kernels_z=cfg.critic_kernels_z, strides_z=cfg.critic_strides_z,
                z_padding=cfg.critic_z_padding, activation=act, slope=slope)
  modules = {
      "enc_synth": Encoder(**dom), "enc_obs": Encoder(**dom),
      "enc_sh": Encoder(**sh, z_filters=cfg.zsh_filters, out_norm=cfg.enc_out_norm),
      "dec_sh": Decoder(**sh),
      "dec_synth": Decoder(**dom, out_x=True), "dec_obs": Decoder(**dom, out_x=True),
      "critic_synth": Critic(**critic), "critic_obs": Critic(**critic),
  }  # fmt: skip
  if cfg.use_split:
    modules["enc_sp"] = Encoder(**sp, z_filters=cfg.zsp_filters, out_norm=cfg.enc_out_norm)
    modules["dec_sp"] = Decoder(**sp)
  return CycleStarNet(cfg=cfg, modules=modules)


def count_params(tree) -> int:
  """Number of scalar parameters in a pytree of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
