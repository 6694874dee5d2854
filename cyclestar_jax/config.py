"""Cycle-StarNet configuration: architecture (paper Table 2) and training (Appendix B).

One frozen dataclass, `Config`, holds every hyper-parameter. Variants are made with
`dataclasses.replace` and checked on construction: the encoder strides and kernel sizes must
turn `n_pix` pixels into latents that the decoders turn back into exactly `n_pix` pixels, else
`ConfigError` says which chain fails and the lengths it produced.

Named presets (`get_config(name)`):
  - `kurucz_to_apogee_1`: the paper's APOGEE experiment (§4.1): Table 2, z_sp 4 × 24,
    λ_synth 3, λ_obs 9, λ_adv 1, 350k iterations.
  - `new_lines_1`: the missing-line experiment (§4.2): z_sp 1 × 24, λ_synth = λ_obs = 90.
  - `smoke`: a tiny network on the same 7167 pixels, for tests and quick runs (seconds on a CPU).

`from_ini(path)` reads the authors' `.ini` files (sections `[TRAINING]` and `[ARCHITECTURE]`;
`[DATA]` and `[Notes]` are read but ignored: data files are given on the command line). Keys
(authors' name → field):

  [TRAINING]                       [ARCHITECTURE]
  batchsize → batch_size           num_pixels → n_pix
  learning_rate_encoder → lr_encoder    activation → activation (LeakyReLU | ReLU | Sigmoid)
  learning_rate_decoder → lr_decoder    conv_filts_ae_dom / conv_filt_lens_ae_dom /
  learning_rate_discriminator → lr_critic   conv_strides_ae_dom → filters/kernels/strides_dom
  loss_weight_synth → lambda_synth      ..._ae_sh → *_sh, ..._ae_sp → *_sp
  loss_weight_obs → lambda_obs          shared_z_filters → zsh_filters
  loss_weight_gen → lambda_adv          split_z_filters → zsp_filters (0: no split latent)
  loss_weight_dis → lambda_critic       enc_out_norm → enc_out_norm
  lr_decay_batch_iters_rg → lr_boundaries_gen   conv_filts_dis_x / conv_filt_lens_dis_x /
  lr_decay_batch_iters_dis → lr_boundaries_critic   conv_strides_dis_x → critic_*_x
  lr_decay_rg → lr_decay_gen            ..._dis_z → critic_*_z
  lr_decay_dis → lr_decay_critic        conv_*_dis_c: accepted and ignored (the reference
  total_batch_iters → n_iter                network never builds these layers)
  use_real_as_true → use_real_as_true
  mask_synth_lines → mask_synth_lines

Keys of this package, optional in either section (not in the authors' files):
`adam_beta1`, `adam_beta2` (Adam's β, default 0.5, 0.999), `activation_slope` (LeakyReLU slope,
default 0.1 as in the reference), `seed` (data order and initialisation), `zsp_pairing`
(`batch` | `random`, see `Config.zsp_pairing`), `error_floor`, `error_mask_threshold`.
Older authors' files with `loss_weight_rec`/`loss_weight_cc` weigh the loss differently from
Eq. 1 and are refused with an explanation. Unknown keys are an error naming the key.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import math
import os

from cyclestar_jax import resources

ACTIVATIONS = ("leakyrelu", "relu", "sigmoid")
ZSP_PAIRINGS = ("batch", "random")


class ConfigError(ValueError):
  """A configuration that cannot build a working Cycle-StarNet, or an unreadable `.ini` file."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Every hyper-parameter of Cycle-StarNet. Defaults are the paper's APOGEE experiment."""

  name: str = "kurucz_to_apogee_1"  # label written into checkpoints and metrics
  # --- architecture (paper Table 2; authors' [ARCHITECTURE]) ---
  n_pix: int = resources.N_PIX_NET  # pixels per spectrum seen by the networks (7167)
  activation: str = "leakyrelu"  # one of ACTIVATIONS; applied after every conv but the last
  activation_slope: float = 0.1  # LeakyReLU negative slope (reference: 0.1)
  filters_dom: tuple[int, ...] = (32, 64)  # E_synth / E_obs conv filters; D_* mirror them
  kernels_dom: tuple[int, ...] = (7, 7)
  strides_dom: tuple[int, ...] = (4, 4)
  filters_sh: tuple[int, ...] = (128, 256, 512)  # E_sh conv filters; D_sh mirrors them
  kernels_sh: tuple[int, ...] = (7, 7, 7)
  strides_sh: tuple[int, ...] = (4, 2, 2)
  filters_sp: tuple[int, ...] = (32, 32, 32)  # E_sp conv filters; D_sp mirrors them
  kernels_sp: tuple[int, ...] = (7, 7, 7)
  strides_sp: tuple[int, ...] = (4, 2, 2)
  zsh_filters: int = 25  # channels of the shared latent z_sh
  zsp_filters: int = 4  # channels of the split latent z_sp (1 in §4.2; 0 = no split latent)
  enc_out_norm: bool = True  # instance norm (no affine, eps 1e-5) on z_sh and z_sp
  critic_filters_x: tuple[int, ...] = (16, 32, 64, 128, 256)  # critic branch on the spectrum
  critic_kernels_x: tuple[int, ...] = (7, 7, 7, 7, 7)
  critic_strides_x: tuple[int, ...] = (4, 4, 4, 4, 4)
  critic_filters_z: tuple[int, ...] = (32, 64, 128, 256, 512)  # critic branch on the latent
  critic_kernels_z: tuple[int, ...] = (1, 1, 1, 1, 1)
  critic_strides_z: tuple[int, ...] = (1, 1, 1, 1, 1)
  # --- training (paper Appendix B; authors' [TRAINING]) ---
  batch_size: int = 8  # spectra per domain per iteration (global, over all devices)
  lr_encoder: float = 1e-4  # Adam learning rate of E_synth, E_obs, E_sh, E_sp
  lr_decoder: float = 1e-4  # Adam learning rate of D_sh, D_sp, D_synth, D_obs
  lr_critic: float = 1e-4  # Adam learning rate of C_synth, C_obs
  adam_beta1: float = 0.5
  adam_beta2: float = 0.999
  lr_boundaries_gen: tuple[int, ...] = (50_000, 100_000, 150_000, 200_000)  # update counts
  lr_boundaries_critic: tuple[int, ...] = (50_000, 100_000, 150_000, 200_000)
  lr_decay_gen: float = 0.7  # learning rate × this at each boundary
  lr_decay_critic: float = 0.7
  lambda_synth: float = 3.0  # λ_synth of Eq. 1 (rec + cycle, synthetic domain)
  lambda_obs: float = 9.0  # λ_obs of Eq. 1 (rec + cycle, observed domain)
  lambda_adv: float = 1.0  # λ_adv of Eq. 1 (generator's adversarial terms)
  lambda_critic: float = 1.0  # weight of the critic loss (Eq. 4); authors' loss_weight_dis
  # Not in the paper: weight of the synthetic autoencoder's and cycle's distances on a third
  # batch of synthetic spectra whose labels vary each element on its own (the emulator's grid;
  # `losses.grid_terms`). The domains' spectra tie every abundance to [Fe/H], so without it the
  # shared latent needs to keep only their common direction, and Eq. 11 fits lose the rest.
  # 0 (the paper): no grid batch.
  lambda_grid: float = 0.0
  # With the grid term on: whether the grid batch also takes the synthetic cycle
  # (x_grid→obs→synth, through D_obs and E_obs) or only the synthetic autoencoder.
  grid_cycle: bool = True
  n_iter: int = 350_000  # iterations of the paper's run (the authors' .ini says 5e5)
  use_real_as_true: bool = False  # critics' "true" samples: inputs instead of reconstructions
  mask_synth_lines: bool = False  # §4.2: synthetic spectra have the masked lines at continuum
  # "batch": x_synth→obs borrows z_sp of the observed spectrum at the same batch position (the
  # reference; the two batches are shuffled independently, so this is a random pairing).
  # "random": a fresh permutation of the observed batch's z_sp per step, from the step's key.
  zsp_pairing: str = "batch"
  # Exponential moving average of the generator's weights, kept in the train state as
  # `gen_ema` and used for validation, fitting and derivatives (a common GAN practice that
  # averages out the oscillation of the adversarial game). 0 (the paper): gen_ema = gen_params.
  # The average's decay at update t is min(gen_ema_decay, (1 + t) / (10 + t)).
  gen_ema_decay: float = 0.0
  seed: int = 0  # initialisation and data order
  # --- data (docs/method.md, 'Pixels and standardization') ---
  error_floor: float = resources.ERROR_FLOOR  # raw-flux floor of errors (and synthetic error)
  # observed pixels with a raw error above this get mask 0
  error_mask_threshold: float = resources.ERROR_MASK_THRESHOLD

  def __post_init__(self):
    _validate(self)

  @property
  def use_split(self) -> bool:
    """Whether the observed domain has a split latent z_sp (zsp_filters > 0)."""
    return self.zsp_filters > 0

  @property
  def lengths(self) -> dict[str, int]:
    """Sequence lengths through the networks: `interm` (after E_synth/E_obs), `zsh`, `zsp`."""
    interm = _conv_chain(self.n_pix, self.kernels_dom, self.strides_dom)[-1]
    out = {"interm": interm, "zsh": _conv_chain(interm, self.kernels_sh, self.strides_sh)[-1]}
    if self.use_split:
      out["zsp"] = _conv_chain(interm, self.kernels_sp, self.strides_sp)[-1]
    return out

  @property
  def zsp_shape(self) -> tuple[int, int]:
    """(length, channels) of z_sp, channels-last; (24, 4) in §4.1, (24, 0) without split."""
    return (self.lengths["zsh"], self.zsp_filters)

  @property
  def critic_z_padding(self) -> int:
    """Zero padding of every conv of the critics' z-branch, as the reference computes it.

    The reference pads to keep the latent length ("same" padding of the first z layer) when its
    kernel is longer than 1, and uses no padding otherwise.
    """
    k, s, n = self.critic_kernels_z[0], self.critic_strides_z[0], self.lengths["zsh"]
    if k <= 1:
      return 0
    out = (n + s - 1) // s
    return max(0, (out - 1) * s + k - n) // 2


def _conv_chain(n: int, kernels, strides, padding: int = 0) -> list[int]:
  """Lengths after each unpadded (or symmetrically padded) conv: [n, L1, L2, ...]."""
  out = [n]
  for k, s in zip(kernels, strides, strict=True):
    n = (n + 2 * padding - k) // s + 1
    out.append(n)
  return out


def _deconv_chain(n: int, kernels, strides) -> list[int]:
  """Lengths after each transposed conv, applied in reverse layer order: (L − 1)·s + k."""
  out = [n]
  for k, s in zip(reversed(kernels), reversed(strides), strict=True):
    n = (n - 1) * s + k
    out.append(n)
  return out


def _validate(cfg: Config) -> None:
  where = f"config {cfg.name!r}"
  for group in ("dom", "sh", "sp"):
    f, k, s = (getattr(cfg, f"{p}_{group}") for p in ("filters", "kernels", "strides"))
    if not len(f) == len(k) == len(s):
      raise ConfigError(f"{where}: filters_{group}, kernels_{group}, strides_{group} must have "
                        f"the same length, got {len(f)}, {len(k)}, {len(s)}")
  for branch in ("x", "z"):
    f, k, s = (getattr(cfg, f"critic_{p}_{branch}") for p in ("filters", "kernels", "strides"))
    if not len(f) == len(k) == len(s):
      raise ConfigError(f"{where}: critic_filters_{branch}, critic_kernels_{branch}, "
                        f"critic_strides_{branch} must have the same length, "
                        f"got {len(f)}, {len(k)}, {len(s)}")
  ints = (cfg.filters_dom + cfg.kernels_dom + cfg.strides_dom + cfg.filters_sh + cfg.kernels_sh
          + cfg.strides_sh + cfg.filters_sp + cfg.kernels_sp + cfg.strides_sp
          + cfg.critic_filters_x + cfg.critic_kernels_x + cfg.critic_strides_x
          + cfg.critic_filters_z + cfg.critic_kernels_z + cfg.critic_strides_z)
  if any((not isinstance(v, int)) or v < 1 for v in ints):
    raise ConfigError(f"{where}: every filter count, kernel size and stride must be an integer "
                      f"≥ 1")
  if not cfg.filters_dom:
    raise ConfigError(f"{where}: filters_dom must have at least one layer")
  if not 0.0 <= cfg.gen_ema_decay < 1.0:
    raise ConfigError(f"{where}: gen_ema_decay must be in [0, 1), got {cfg.gen_ema_decay}")
  if cfg.zsh_filters < 1 or cfg.zsp_filters < 0:
    raise ConfigError(f"{where}: zsh_filters must be ≥ 1 and zsp_filters ≥ 0, got "
                      f"{cfg.zsh_filters}, {cfg.zsp_filters}")
  if cfg.activation not in ACTIVATIONS:
    raise ConfigError(f"{where}: activation {cfg.activation!r} is not one of {ACTIVATIONS}")
  if cfg.zsp_pairing not in ZSP_PAIRINGS:
    raise ConfigError(f"{where}: zsp_pairing {cfg.zsp_pairing!r} is not one of {ZSP_PAIRINGS}")
  if cfg.batch_size < 1 or cfg.n_iter < 0:
    raise ConfigError(f"{where}: batch_size must be ≥ 1 and n_iter ≥ 0")
  for name in ("lr_encoder", "lr_decoder", "lr_critic", "lr_decay_gen", "lr_decay_critic",
               "error_floor", "error_mask_threshold"):
    v = getattr(cfg, name)
    if not (math.isfinite(v) and v > 0):
      raise ConfigError(f"{where}: {name} must be finite and > 0, got {v}")
  for name in ("lambda_synth", "lambda_obs", "lambda_adv", "lambda_critic", "lambda_grid"):
    v = getattr(cfg, name)
    if not (math.isfinite(v) and v >= 0):
      raise ConfigError(f"{where}: {name} must be finite and ≥ 0, got {v}")
  if not (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1):
    raise ConfigError(f"{where}: Adam betas must lie in [0, 1), got {cfg.adam_beta1}, "
                      f"{cfg.adam_beta2}")
  for name in ("lr_boundaries_gen", "lr_boundaries_critic"):
    b = getattr(cfg, name)
    if any(not isinstance(v, int) or v < 1 for v in b) or list(b) != sorted(set(b)):
      raise ConfigError(f"{where}: {name} must be increasing positive integers, got {b}")
  _validate_lengths(cfg, where)


def _validate_lengths(cfg: Config, where: str) -> None:
  """The round trip n_pix → z → n_pix must be exact, and every conv must fit its input."""

  def chain(n, kernels, strides, label, padding=0):
    lengths = _conv_chain(n, kernels, strides, padding)
    if any(v < 1 for v in lengths):
      raise ConfigError(f"{where}: {label} (kernels {tuple(kernels)}, strides {tuple(strides)})"
                        f" runs out of pixels: lengths {lengths}")
    return lengths

  enc_dom = chain(cfg.n_pix, cfg.kernels_dom, cfg.strides_dom, "E_synth/E_obs")
  interm = enc_dom[-1]
  enc_sh = chain(interm, cfg.kernels_sh, cfg.strides_sh, "E_sh")
  dec_sh = _deconv_chain(enc_sh[-1], cfg.kernels_sh, cfg.strides_sh)
  dec_dom = _deconv_chain(interm, cfg.kernels_dom, cfg.strides_dom)
  hint = ("each conv must satisfy (L − k) % s == 0 so that the transposed conv, of output "
          "length (L − 1)·s + k, gives L back")
  if dec_dom[-1] != cfg.n_pix:
    raise ConfigError(f"{where}: strides {cfg.strides_dom} and kernels {cfg.kernels_dom} of "
                      f"E_synth/E_obs take {cfg.n_pix} pixels to lengths {enc_dom[1:]}, and "
                      f"D_synth/D_obs take {interm} back to {dec_dom[-1]}, not {cfg.n_pix}: "
                      f"{hint}")
  if dec_sh[-1] != interm:
    raise ConfigError(f"{where}: strides {cfg.strides_sh} and kernels {cfg.kernels_sh} of E_sh "
                      f"take {interm} to lengths {enc_sh[1:]}, and D_sh takes {enc_sh[-1]} back "
                      f"to {dec_sh[-1]}, not {interm} (so the spectrum would have "
                      f"{_deconv_chain(dec_sh[-1], cfg.kernels_dom, cfg.strides_dom)[-1]} "
                      f"pixels, not {cfg.n_pix}): {hint}")
  if cfg.use_split:
    enc_sp = chain(interm, cfg.kernels_sp, cfg.strides_sp, "E_sp")
    dec_sp = _deconv_chain(enc_sp[-1], cfg.kernels_sp, cfg.strides_sp)
    if dec_sp[-1] != interm:
      raise ConfigError(f"{where}: strides {cfg.strides_sp} and kernels {cfg.kernels_sp} of "
                        f"E_sp take {interm} to lengths {enc_sp[1:]}, and D_sp takes "
                        f"{enc_sp[-1]} back to {dec_sp[-1]}, not {interm}: {hint}")
    if enc_sp[-1] != enc_sh[-1]:
      raise ConfigError(f"{where}: z_sp has length {enc_sp[-1]} but z_sh has {enc_sh[-1]}; the "
                        f"critic C_obs concatenates them along channels, so they must match")
  chain(cfg.n_pix, cfg.critic_kernels_x, cfg.critic_strides_x, "the critics' spectrum branch")
  chain(enc_sh[-1], cfg.critic_kernels_z, cfg.critic_strides_z, "the critics' latent branch",
        padding=cfg.critic_z_padding)


# ----------------------------------------------------------------------------------------------
# Presets.

_KURUCZ_TO_APOGEE_1 = Config()

_PRESETS: dict[str, Config] = {
    "kurucz_to_apogee_1": _KURUCZ_TO_APOGEE_1,
    "new_lines_1": dataclasses.replace(
        _KURUCZ_TO_APOGEE_1, name="new_lines_1", zsp_filters=1, lambda_synth=90.0,
        lambda_obs=90.0, mask_synth_lines=True),
    # Same pixel count and strides as Table 2 (so it trains on real-format files), ~40k
    # parameters instead of 3.7M; larger learning rates so a few hundred steps show learning.
    "smoke": dataclasses.replace(
        _KURUCZ_TO_APOGEE_1, name="smoke", filters_dom=(8, 16), filters_sh=(16, 16, 16),
        filters_sp=(8, 8, 8), zsh_filters=6, zsp_filters=2,
        critic_filters_x=(4, 8, 8, 16, 16), critic_filters_z=(8, 8, 16, 16, 16),
        lr_encoder=3e-3, lr_decoder=3e-3, lr_critic=3e-3, lr_boundaries_gen=(200,),
        lr_boundaries_critic=(200,), n_iter=300),
}


def preset_names() -> tuple[str, ...]:
  """Names accepted by `get_config`."""
  return tuple(_PRESETS)


def get_config(name: str) -> Config:
  """A named preset (`kurucz_to_apogee_1`, `new_lines_1`, `smoke`) or a path to an `.ini` file."""
  if name in _PRESETS:
    return _PRESETS[name]
  if name.endswith(".ini") or os.path.exists(name):
    return from_ini(name)
  raise ConfigError(f"unknown config {name!r}: expected one of {preset_names()} or an .ini file")


# ----------------------------------------------------------------------------------------------
# The authors' .ini files.

_INI_ARCH = {
    "num_pixels": ("n_pix", "int"), "activation": ("activation", "activation"),
    "conv_filts_ae_dom": ("filters_dom", "ints"), "conv_filt_lens_ae_dom": ("kernels_dom", "ints"),
    "conv_strides_ae_dom": ("strides_dom", "ints"), "conv_filts_ae_sh": ("filters_sh", "ints"),
    "conv_filt_lens_ae_sh": ("kernels_sh", "ints"), "conv_strides_ae_sh": ("strides_sh", "ints"),
    "conv_filts_ae_sp": ("filters_sp", "ints"), "conv_filt_lens_ae_sp": ("kernels_sp", "ints"),
    "conv_strides_ae_sp": ("strides_sp", "ints"), "enc_out_norm": ("enc_out_norm", "bool"),
    "shared_z_filters": ("zsh_filters", "int"), "split_z_filters": ("zsp_filters", "int"),
    "conv_filts_dis_x": ("critic_filters_x", "ints"),
    "conv_filt_lens_dis_x": ("critic_kernels_x", "ints"),
    "conv_strides_dis_x": ("critic_strides_x", "ints"),
    "conv_filts_dis_z": ("critic_filters_z", "ints"),
    "conv_filt_lens_dis_z": ("critic_kernels_z", "ints"),
    "conv_strides_dis_z": ("critic_strides_z", "ints"),
}  # fmt: skip
_INI_ARCH_IGNORED = ("conv_filts_dis_c", "conv_strides_dis_c", "conv_filt_lens_dis_c")
_INI_TRAIN = {
    "batchsize": ("batch_size", "int"), "learning_rate_encoder": ("lr_encoder", "float"),
    "learning_rate_decoder": ("lr_decoder", "float"),
    "learning_rate_discriminator": ("lr_critic", "float"),
    "loss_weight_synth": ("lambda_synth", "float"), "loss_weight_obs": ("lambda_obs", "float"),
    "loss_weight_gen": ("lambda_adv", "float"), "loss_weight_dis": ("lambda_critic", "float"),
    "lr_decay_batch_iters_rg": ("lr_boundaries_gen", "iters"),
    "lr_decay_batch_iters_dis": ("lr_boundaries_critic", "iters"),
    "lr_decay_rg": ("lr_decay_gen", "float"), "lr_decay_dis": ("lr_decay_critic", "float"),
    "total_batch_iters": ("n_iter", "iter"), "use_real_as_true": ("use_real_as_true", "bool"),
    "mask_synth_lines": ("mask_synth_lines", "bool"),
}  # fmt: skip
_INI_OURS = {
    "adam_beta1": ("adam_beta1", "float"), "adam_beta2": ("adam_beta2", "float"),
    "activation_slope": ("activation_slope", "float"), "seed": ("seed", "int"),
    "zsp_pairing": ("zsp_pairing", "str"), "error_floor": ("error_floor", "float"),
    "error_mask_threshold": ("error_mask_threshold", "float"),
    "lambda_grid": ("lambda_grid", "float"), "grid_cycle": ("grid_cycle", "bool"),
}  # fmt: skip


def _parse_value(text: str, kind: str, where: str):
  text = text.strip()
  try:
    if kind == "int":
      v = float(text)
      if v != int(v):
        raise ValueError("not an integer")
      return int(v)
    if kind == "iter":
      return int(round(float(text)))
    if kind == "float":
      return float(text)
    if kind == "str":
      return text
    if kind == "activation":
      return text.lower()
    if kind == "bool":
      low = text.lower()
      if low in ("1", "true", "yes", "on", "t", "y"):
        return True
      if low in ("0", "false", "no", "off", "f", "n"):
        return False
      raise ValueError("not a boolean")
    if kind in ("ints", "iters"):
      v = ast.literal_eval(text)  # the authors write Python lists: [5e4, 10e4]
      if not isinstance(v, (list, tuple)):
        raise ValueError("not a list")
      if kind == "iters":
        return tuple(int(round(float(x))) for x in v)
      if any(float(x) != int(x) for x in v):
        raise ValueError("not a list of integers")
      return tuple(int(x) for x in v)
  except (ValueError, SyntaxError, TypeError) as e:
    raise ConfigError(f"{where} = {text!r}: cannot read as {kind} ({e})") from None
  raise AssertionError(kind)


def from_ini(path: str | os.PathLike, name: str | None = None) -> Config:
  """Read a Config from the authors' `.ini` format (see the module docstring for the keys).

  Args:
    path: the `.ini` file.
    name: the config's name; default the file name without extension.

  Returns:
    A validated `Config`; fields the file does not set keep the `kurucz_to_apogee_1` values.

  Raises:
    ConfigError: missing file or section, unknown key, unreadable value, or a network that
      does not round-trip (naming the file and key).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f"{path}: no such config file")
  parser = configparser.ConfigParser(interpolation=None)
  try:
    parser.read(path)
  except configparser.Error as e:
    raise ConfigError(f"{path}: not a valid .ini file ({e})") from None
  for section in ("TRAINING", "ARCHITECTURE"):
    if section not in parser:
      raise ConfigError(f"{path}: section [{section}] is missing")
  updates: dict = {"name": name or os.path.splitext(os.path.basename(path))[0]}
  for section, table in (("TRAINING", _INI_TRAIN), ("ARCHITECTURE", _INI_ARCH)):
    keys = parser[section]
    if section == "TRAINING" and ("loss_weight_rec" in keys or "loss_weight_cc" in keys):
      raise ConfigError(
          f"{path}: [TRAINING] uses loss_weight_rec/loss_weight_cc (an older form that weighs "
          f"reconstruction and cycle terms, not domains); Eq. 1 needs loss_weight_synth and "
          f"loss_weight_obs")
    for key, text in keys.items():
      where = f"{path}: [{section}] {key}"
      if key in table:
        field, kind = table[key]
      elif key in _INI_OURS:
        field, kind = _INI_OURS[key]
      elif section == "ARCHITECTURE" and key in _INI_ARCH_IGNORED:
        continue
      else:
        known = sorted(table) + sorted(_INI_OURS)
        raise ConfigError(f"{where}: unknown key; known keys: {', '.join(known)}")
      updates[field] = _parse_value(text, kind, where)
  try:
    return dataclasses.replace(_KURUCZ_TO_APOGEE_1, **updates)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None
