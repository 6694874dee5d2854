"""Same-GPU reference: one eager PyTorch Cycle-StarNet training iteration, timed, JSON on stdout.

  PYTHONPATH=. python3 -m benchmarks.torch_step [--config kurucz_to_apogee_1] [--batches 8,256]
      [--modes shared,naive] [--precisions float32[,bf16]] [--steps 10] [--repeats 3]
      [--warmup 3] [--device cuda|cpu] [--out FILE]

What it times: one iteration = one generator update (Eq. 1, critics fixed) and one critic update
(Eq. 4) on the generator outputs of that same forward pass, held fixed, with two Adam optimizers
(β = (0.5, 0.999), eps 1e-8; the encoders' and decoders' learning rates as parameter groups):
what `cyclestar_jax.train_step` does. Per-domain batch of random standardized spectra resident
on the device (the pre-staged figure of `benchmarks.train_step`); median over `--repeats` runs
of `--steps` iterations, after `--warmup` iterations that are not timed (cuDNN's first calls);
`torch.cuda.synchronize()` before every clock read.

How it was written: by hand for this benchmark, in plain `torch.nn` (no code of the authors' or
from elsewhere), from this package's `config.py` (Table 2), `networks.py` (layers, lengths,
instance norm, flatten order), `losses.py` (Eq. 1, 3, 4, 7) and `train_step.py` (update order).
Modules and state-dict keys follow the authors' layout as `cyclestar_jax.torch_import`
documents it (Sequentials with weightless activations between the weighted layers,
`discriminator_x` / `discriminator_z` / `fc`), so `torch_import.load_torch_cycle_model` reads
its weights and `tests/test_torch_step.py` checks that its losses equal the JAX step's. Nothing
here imports JAX (one process must not hold both frameworks' GPU memory pools).

Modes:
  - `shared`: the same work as the JAX step: every network that both domains use runs once on
    the two batches stacked, D_sh / D_sp outputs are reused (19 network applications), and the
    generator's backward pass computes gradients of the generator only (`backward(inputs=...)`).
  - `naive`: a straightforward port: one call per network application (31), and the
    generator's `backward()` also fills the critics' gradients, which the critic update then
    zeroes (what a plain PyTorch training loop does).

What differs from the JAX step, so that the comparison is of the same arithmetic: no check for
non-finite losses or gradients (the JAX step keeps the old state on such a step), no gradient
norms, learning-rate metrics or accuracies, no moving average of the generator (the `paper`
preset has none), and no per-step metrics brought to the host (one synchronize per timed run).
The transposed convolutions are cuDNN's `ConvTranspose1d`; the JAX networks write them as one
matmul plus an overlap-add. Precision `float32` leaves PyTorch's defaults (cuDNN convolutions
may use TF32, `torch.backends.cudnn.allow_tf32`; matmuls follow `allow_tf32` of
`torch.backends.cuda.matmul`, reported), the counterpart of JAX's default precision; `bf16`
runs the forward passes under `torch.autocast(dtype=torch.bfloat16)`.

Reference (benchmarks/README.md): the authors' PyTorch code on one H100, 47.3 / 53.1 / 74.3 ms per
iteration at batch 8 / 64 / 256 without data loading.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cyclestar_jax import config as cs_config
from cyclestar_jax import resources

MODES = ("shared", "naive")
PRECISIONS = ("float32", "bf16")
BATCH_KEYS = ("x_synth", "x_synth_err", "x_synth_msk", "x_obs", "x_obs_err", "x_obs_msk")
GEN_TERMS = ("rec_synth", "rec_obs", "cc_synth", "cc_obs", "gen_synth", "gen_obs")
CRITIC_TERMS = ("dis_real_synth", "dis_fake_synth", "dis_real_obs", "dis_fake_obs")
APPLICATIONS = {"shared": 19, "naive": 31}  # network applications per iteration
BIAS_INIT = 0.01  # the reference fills every conv bias with 0.01


# ---------------------------------------------------------------------------------------------
# Networks (channels first, [B, C, L], as PyTorch and the authors' code).


def _activation(cfg: cs_config.Config) -> nn.Module:
  if cfg.activation == "leakyrelu":
    return nn.LeakyReLU(cfg.activation_slope)
  return nn.ReLU() if cfg.activation == "relu" else nn.Sigmoid()


def make_encoder(cfg: cs_config.Config, c_in: int, filters, kernels, strides,
                 z_filters: int = 0) -> nn.Sequential:
  """Strided Conv1d + activation per layer; with `z_filters`, a k1 Conv1d to the latent and
  (cfg.enc_out_norm) InstanceNorm1d without affine parameters, eps 1e-5.
  [B, c_in, L] → [B, C, L']."""
  layers: list[nn.Module] = []
  for f, k, s in zip(filters, kernels, strides, strict=True):
    layers += [nn.Conv1d(c_in, f, k, s), _activation(cfg)]
    c_in = f
  if z_filters:
    latent = nn.Conv1d(c_in, z_filters, 1, 1)
    layers.append(latent)
    if cfg.enc_out_norm:
      layers.append(nn.InstanceNorm1d(z_filters, eps=1e-5))
      latent.bias.requires_grad_(False)  # removed by the norm; not trained (networks.LatentConv)
  return nn.Sequential(*layers)


def make_decoder(cfg: cs_config.Config, c_in: int, filters, kernels, strides,
                 out_x: bool = False) -> nn.Sequential:
  """ConvTranspose1d + activation per layer, in reverse layer order (output length
  (L − 1)·s + k); with `out_x`, a k1 Conv1d to one channel. [B, c_in, L] → [B, C, L']."""
  layers: list[nn.Module] = []
  for f, k, s in zip(filters[::-1], kernels[::-1], strides[::-1], strict=True):
    layers += [nn.ConvTranspose1d(c_in, f, k, s), _activation(cfg)]
    c_in = f
  if out_x:
    layers.append(nn.Conv1d(c_in, 1, 1, 1))
  return nn.Sequential(*layers)


class Critic(nn.Module):
  """C_synth or C_obs: a spectrum branch and a latent branch, flattened channel-major, one logit.

  forward(x [B, n_pix], z [B, C_z, L_z]) → logits [B].
  """

  def __init__(self, cfg: cs_config.Config, z_channels: int):
    super().__init__()
    x_layers: list[nn.Module] = []
    c = 1
    for f, k, s in zip(cfg.critic_filters_x, cfg.critic_kernels_x, cfg.critic_strides_x,
                       strict=True):
      x_layers += [nn.Conv1d(c, f, k, s), _activation(cfg)]
      c = f
    z_layers: list[nn.Module] = []
    c = z_channels
    for f, k, s in zip(cfg.critic_filters_z, cfg.critic_kernels_z, cfg.critic_strides_z,
                       strict=True):
      z_layers += [nn.Conv1d(c, f, k, s, padding=cfg.critic_z_padding), _activation(cfg)]
      c = f
    self.discriminator_x = nn.Sequential(*x_layers)
    self.discriminator_z = nn.Sequential(*z_layers)
    with torch.no_grad():
      n_x = self.discriminator_x(torch.zeros(1, 1, cfg.n_pix)).numel()
      n_z = self.discriminator_z(torch.zeros(1, z_channels, cfg.lengths["zsh"])).numel()
    self.fc = nn.Linear(n_x + n_z, 1)

  def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    hx = self.discriminator_x(x[:, None, :]).flatten(1)
    hz = self.discriminator_z(z).flatten(1)
    return self.fc(torch.cat([hx, hz], dim=1))[:, 0]


class CycleSN(nn.Module):
  """The ten Cycle-StarNet networks of a config (Table 2 by default), the authors' names."""

  def __init__(self, cfg: cs_config.Config):
    super().__init__()
    if not cfg.use_split:
      raise ValueError("torch_step: configs without a split latent (zsp_filters 0) are not "
                       "supported")
    self.cfg = cfg
    dom = (cfg.filters_dom, cfg.kernels_dom, cfg.strides_dom)
    sh = (cfg.filters_sh, cfg.kernels_sh, cfg.strides_sh)
    sp = (cfg.filters_sp, cfg.kernels_sp, cfg.strides_sp)
    c_dom = cfg.filters_dom[-1]
    self.encoder_synth = make_encoder(cfg, 1, *dom)
    self.encoder_obs = make_encoder(cfg, 1, *dom)
    self.encoder_sh = make_encoder(cfg, c_dom, *sh, z_filters=cfg.zsh_filters)
    self.encoder_sp = make_encoder(cfg, c_dom, *sp, z_filters=cfg.zsp_filters)
    self.decoder_sh = make_decoder(cfg, cfg.zsh_filters, *sh)
    self.decoder_sp = make_decoder(cfg, cfg.zsp_filters, *sp)
    self.decoder_synth = make_decoder(cfg, cfg.filters_sh[0], *dom, out_x=True)
    self.decoder_obs = make_decoder(cfg, cfg.filters_sh[0] + cfg.filters_sp[0], *dom, out_x=True)
    self.discriminator_synth = Critic(cfg, cfg.zsh_filters)
    self.discriminator_obs = Critic(cfg, cfg.zsh_filters + cfg.zsp_filters)
    self.reset_parameters()

  def reset_parameters(self) -> None:
    """Conv kernels Glorot-uniform, conv biases 0.01 (the reference); `fc` keeps torch's default."""
    for m in self.modules():
      if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
        nn.init.xavier_uniform_(m.weight)
        nn.init.constant_(m.bias, BIAS_INIT)

  def generator_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(encoder, decoder) parameters that are trained."""
    enc = [p for n in ("encoder_synth", "encoder_obs", "encoder_sh", "encoder_sp")
           for p in getattr(self, n).parameters() if p.requires_grad]
    dec = [p for n in ("decoder_sh", "decoder_sp", "decoder_synth", "decoder_obs")
           for p in getattr(self, n).parameters() if p.requires_grad]
    return enc, dec

  def critic_parameters(self) -> list[nn.Parameter]:
    return (list(self.discriminator_synth.parameters())
            + list(self.discriminator_obs.parameters()))


def _spectrum(decoder: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
  return decoder(h)[:, 0, :]


def forward_shared(m: CycleSN, xs: torch.Tensor, xo: torch.Tensor) -> dict[str, torch.Tensor]:
  """The generator's forward pass as `CycleStarNet.cycle_forward` computes it: shared networks
  once on both batches stacked, D_sh / D_sp outputs reused. xs, xo [B, n_pix] → outputs."""
  b = xs.shape[0]
  cat = torch.cat
  i_s, i_o = m.encoder_synth(xs[:, None]), m.encoder_obs(xo[:, None])
  zsh_s, zsh_o = m.encoder_sh(cat([i_s, i_o])).split(b)
  zsp_o = m.encoder_sp(i_o)
  h_s, h_o = m.decoder_sh(cat([zsh_s, zsh_o])).split(b)
  hsp_o = m.decoder_sp(zsp_o)
  x_ss, x_os = _spectrum(m.decoder_synth, cat([h_s, h_o])).split(b)
  x_oo, x_so = _spectrum(m.decoder_obs, cat([cat([h_o, hsp_o], 1), cat([h_s, hsp_o], 1)])).split(b)
  i_os, i_so = m.encoder_synth(x_os[:, None]), m.encoder_obs(x_so[:, None])
  zsh_os, zsh_so = m.encoder_sh(cat([i_os, i_so])).split(b)
  zsp_so = m.encoder_sp(i_so)
  h_os, h_so = m.decoder_sh(cat([zsh_os, zsh_so])).split(b)
  x_oso = _spectrum(m.decoder_obs, cat([h_os, hsp_o], 1))
  x_sos = _spectrum(m.decoder_synth, h_so)
  return {"x_synthsynth": x_ss, "x_obsobs": x_oo, "x_synthobs": x_so, "x_obssynth": x_os,
          "x_synthobssynth": x_sos, "x_obssynthobs": x_oso, "zsh_synth": zsh_s,
          "zsh_obs": zsh_o, "zsp_obs": zsp_o, "zsh_synthobs": zsh_so, "zsh_obssynth": zsh_os,
          "zsp_synthobs": zsp_so}


def forward_naive(m: CycleSN, xs: torch.Tensor, xo: torch.Tensor) -> dict[str, torch.Tensor]:
  """The same outputs with one call per network application, nothing stacked or reused."""
  cat = torch.cat
  zsh_s = m.encoder_sh(m.encoder_synth(xs[:, None]))
  i_o = m.encoder_obs(xo[:, None])
  zsh_o, zsp_o = m.encoder_sh(i_o), m.encoder_sp(i_o)
  x_ss = _spectrum(m.decoder_synth, m.decoder_sh(zsh_s))
  x_os = _spectrum(m.decoder_synth, m.decoder_sh(zsh_o))
  x_oo = _spectrum(m.decoder_obs, cat([m.decoder_sh(zsh_o), m.decoder_sp(zsp_o)], 1))
  x_so = _spectrum(m.decoder_obs, cat([m.decoder_sh(zsh_s), m.decoder_sp(zsp_o)], 1))
  zsh_os = m.encoder_sh(m.encoder_synth(x_os[:, None]))
  i_so = m.encoder_obs(x_so[:, None])
  zsh_so, zsp_so = m.encoder_sh(i_so), m.encoder_sp(i_so)
  x_oso = _spectrum(m.decoder_obs, cat([m.decoder_sh(zsh_os), m.decoder_sp(zsp_o)], 1))
  x_sos = _spectrum(m.decoder_synth, m.decoder_sh(zsh_so))
  return {"x_synthsynth": x_ss, "x_obsobs": x_oo, "x_synthobs": x_so, "x_obssynth": x_os,
          "x_synthobssynth": x_sos, "x_obssynthobs": x_oso, "zsh_synth": zsh_s,
          "zsh_obs": zsh_o, "zsp_obs": zsp_o, "zsh_synthobs": zsh_so, "zsh_obssynth": zsh_os,
          "zsp_synthobs": zsp_so}


# ---------------------------------------------------------------------------------------------
# Losses (losses.py).


def distance(pred: torch.Tensor, target: torch.Tensor, err: torch.Tensor,
             msk: torch.Tensor) -> torch.Tensor:
  """Eq. 3 / 7: mean(((pred − target)·msk/err)²) over samples and pixels, [B, n_pix] each."""
  return torch.mean(torch.square((pred - target) * msk / err))


def bce(logits: torch.Tensor, label: float) -> torch.Tensor:
  """Mean binary cross-entropy of logits [B] against a constant label (Eq. 4)."""
  return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def generator_terms(m: CycleSN, out: dict, batch: dict) -> dict[str, torch.Tensor]:
  """The six terms of Eq. 1 (critics held fixed; the generator wants "true", label 1)."""
  xs, xo = batch["x_synth"], batch["x_obs"]
  logit_s = m.discriminator_synth(out["x_obssynth"], out["zsh_obs"])
  logit_o = m.discriminator_obs(out["x_synthobs"],
                                torch.cat([out["zsh_synth"], out["zsp_synthobs"]], 1))
  return {
      "rec_synth": distance(out["x_synthsynth"], xs, batch["x_synth_err"], batch["x_synth_msk"]),
      "rec_obs": distance(out["x_obsobs"], xo, batch["x_obs_err"], batch["x_obs_msk"]),
      "cc_synth": distance(out["x_synthobssynth"], xs, batch["x_synth_err"],
                           batch["x_synth_msk"]),
      "cc_obs": distance(out["x_obssynthobs"], xo, batch["x_obs_err"], batch["x_obs_msk"]),
      "gen_synth": bce(logit_s, 1.0), "gen_obs": bce(logit_o, 1.0)}


def generator_objective(terms: dict, cfg: cs_config.Config) -> torch.Tensor:
  """Eq. 1: λ_synth (rec + cc)_synth + λ_obs (rec + cc)_obs + λ_adv (gen_synth + gen_obs)."""
  return (cfg.lambda_synth * (terms["rec_synth"] + terms["cc_synth"])
          + cfg.lambda_obs * (terms["rec_obs"] + terms["cc_obs"])
          + cfg.lambda_adv * (terms["gen_synth"] + terms["gen_obs"]))


def critic_terms(m: CycleSN, out: dict, *, joint: bool) -> dict[str, torch.Tensor]:
  """Eq. 4's four terms on generator outputs (already detached): "true" = within-domain
  reconstructions with their latents, "fake" = transferred spectra. `joint`: one application
  per critic on real and fake stacked (as losses.critic_loss)."""
  cat = torch.cat
  z_real_obs = cat([out["zsh_obs"], out["zsp_obs"]], 1)
  z_fake_obs = cat([out["zsh_synth"], out["zsp_synthobs"]], 1)
  if joint:
    b = out["x_synthsynth"].shape[0]
    rs, fs = m.discriminator_synth(cat([out["x_synthsynth"], out["x_obssynth"]]),
                                   cat([out["zsh_synth"], out["zsh_obs"]])).split(b)
    ro, fo = m.discriminator_obs(cat([out["x_obsobs"], out["x_synthobs"]]),
                                 cat([z_real_obs, z_fake_obs])).split(b)
  else:
    rs = m.discriminator_synth(out["x_synthsynth"], out["zsh_synth"])
    fs = m.discriminator_synth(out["x_obssynth"], out["zsh_obs"])
    ro = m.discriminator_obs(out["x_obsobs"], z_real_obs)
    fo = m.discriminator_obs(out["x_synthobs"], z_fake_obs)
  return {"dis_real_synth": bce(rs, 1.0), "dis_fake_synth": bce(fs, 0.0),
          "dis_real_obs": bce(ro, 1.0), "dis_fake_obs": bce(fo, 0.0)}


# ---------------------------------------------------------------------------------------------
# The training iteration.


class TrainStep:
  """One training iteration of a `CycleSN` (generator update, then critic update).

  Args:
    model: the networks, on their device.
    mode: "shared" or "naive" (module docstring).
    precision: "float32" (PyTorch defaults) or "bf16" (forward passes under autocast).
  """

  def __init__(self, model: CycleSN, mode: str = "shared", precision: str = "float32"):
    if mode not in MODES or precision not in PRECISIONS:
      raise ValueError(f"mode {mode!r} / precision {precision!r}: choose from {MODES} / "
                       f"{PRECISIONS}")
    cfg = model.cfg
    self.model, self.mode, self.precision = model, mode, precision
    enc, dec = model.generator_parameters()
    self.gen_params = enc + dec
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    self.gen_opt = torch.optim.Adam([{"params": enc, "lr": cfg.lr_encoder},
                                     {"params": dec, "lr": cfg.lr_decoder}], betas=betas, eps=1e-8)
    self.critic_opt = torch.optim.Adam(model.critic_parameters(), lr=cfg.lr_critic, betas=betas,
                                       eps=1e-8)
    self.device_type = next(model.parameters()).device.type

  def _autocast(self):
    if self.precision == "bf16":
      return torch.autocast(self.device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def losses(self, batch: dict) -> tuple[torch.Tensor, dict, dict]:
    """(Eq. 1 loss, generator terms, forward outputs) of a batch, with gradients attached."""
    fwd = forward_shared if self.mode == "shared" else forward_naive
    with self._autocast():
      out = fwd(self.model, batch["x_synth"], batch["x_obs"])
      terms = generator_terms(self.model, out, batch)
      loss = generator_objective(terms, self.model.cfg)
    return loss, terms, out

  def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration on a batch (`BATCH_KEYS` → [B, n_pix] tensors on the device); returns
    the (generator, critic) losses before the update, still on the device."""
    g_loss, _, out = self.losses(batch)
    self.gen_opt.zero_grad(set_to_none=True)
    if self.mode == "shared":
      g_loss.backward(inputs=self.gen_params)
    else:
      g_loss.backward()
    self.gen_opt.step()
    held = {k: v.detach() for k, v in out.items()}
    with self._autocast():
      c_terms = critic_terms(self.model, held, joint=self.mode == "shared")
      c_loss = self.model.cfg.lambda_critic * sum(c_terms[k] for k in CRITIC_TERMS)
    self.critic_opt.zero_grad(set_to_none=True)
    c_loss.backward()
    self.critic_opt.step()
    return g_loss.detach(), c_loss.detach()


# ---------------------------------------------------------------------------------------------
# Timing.


def random_batches(n: int, b: int, n_pix: int, seed: int) -> list[dict[str, np.ndarray]]:
  """n batches of b random standardized spectra per domain (as benchmarks._common does; timing
  does not depend on the values): flux 1 − U(0, 0.1), error 0.01, 2 % of pixels masked."""
  rng = np.random.default_rng(seed)
  mean, std = resources.spectra_mean_std()
  out = []
  for _ in range(n):
    batch = {}
    for d in ("synth", "obs"):
      raw = 1.0 - 0.1 * rng.random((b, n_pix), np.float32)
      batch[f"x_{d}"] = (raw - mean) / std
      batch[f"x_{d}_err"] = np.full((b, n_pix), 0.01 / std, np.float32)
      batch[f"x_{d}_msk"] = (rng.random((b, n_pix)) > 0.02).astype(np.float32)
    out.append({k: np.asarray(v, np.float32) for k, v in batch.items()})
  return out


def _sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def time_case(cfg: cs_config.Config, batch: int, mode: str, precision: str, *,
              device: torch.device, steps: int, repeats: int, warmup: int,
              seed: int = 0) -> dict:
  """ms per iteration (median of `repeats` runs of `steps` iterations, after `warmup`
  untimed ones) of one (batch, mode, precision) case; a fresh model and optimizers."""
  torch.manual_seed(seed)
  model = CycleSN(cfg).to(device)
  step = TrainStep(model, mode, precision)
  host = random_batches(4, batch, cfg.n_pix, seed=batch)
  staged = [{k: torch.from_numpy(v).to(device) for k, v in b.items()} for b in host]
  t0 = time.perf_counter()
  for i in range(warmup):
    losses = step(staged[i % len(staged)])
  _sync(device)
  warmup_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
      losses = step(staged[i % len(staged)])
    _sync(device)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {"batch": batch, "mode": mode, "precision": precision,
          "network_applications": APPLICATIONS[mode], "ms_per_it": 1e3 * med / steps,
          "it_per_s": steps / med, "ms_per_it_runs": [round(1e3 * t / steps, 3) for t in times],
          "warmup_s": round(warmup_s, 3), "loss_gen_last": float(losses[0]),
          "loss_critic_last": float(losses[1])}


def _count(params) -> int:
  return int(sum(p.numel() for p in params))


def run(config_name: str = "kurucz_to_apogee_1", batches=(8, 256), modes=MODES,
        precisions=("float32",), steps: int = 10, repeats: int = 3, warmup: int = 3,
        device: str | None = None) -> dict:
  """Every case; the JSON-ready dict (each row also printed to stderr as it is done)."""
  cfg = cs_config.get_config(config_name)
  dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
  probe = CycleSN(cfg)
  enc, dec = probe.generator_parameters()
  out = {"benchmark": "torch_step", "config": cfg.name, "device": (
      torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"),
      "platform": dev.type, "torch": torch.__version__, "cuda": torch.version.cuda,
      "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
      "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
      "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
      "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
      "n_params_gen_trained": _count(enc + dec), "n_params_critic": _count(
          probe.critic_parameters()), "steps": steps, "repeats": repeats, "warmup": warmup,
      "how": "eager PyTorch written for this benchmark (benchmarks/torch_step.py docstring)",
      "results": []}
  del probe
  for b in batches:
    for mode in modes:
      for prec in precisions:
        row = time_case(cfg, b, mode, prec, device=dev, steps=steps, repeats=repeats,
                        warmup=warmup)
        out["results"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
  return out


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="kurucz_to_apogee_1", help="network preset or .ini file")
  p.add_argument("--batches", default="8,256", help="per-domain batch sizes, comma separated")
  p.add_argument("--modes", default="shared,naive", help=f"comma separated, from {MODES}")
  p.add_argument("--precisions", default="float32", help=f"comma separated, from {PRECISIONS}")
  p.add_argument("--steps", type=int, default=10, help="iterations per timed run")
  p.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
  p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
  p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  args = p.parse_args(argv)
  modes, precs = args.modes.split(","), args.precisions.split(",")
  if any(m not in MODES for m in modes) or any(x not in PRECISIONS for x in precs):
    p.error(f"--modes from {MODES}, --precisions from {PRECISIONS}")
  if min(args.steps, args.repeats) < 1 or args.warmup < 0:
    p.error("--steps and --repeats must be ≥ 1, --warmup ≥ 0")
  res = run(args.config, tuple(int(b) for b in args.batches.split(",")), tuple(modes),
            tuple(precs), args.steps, args.repeats, args.warmup, args.device)
  text = json.dumps(res, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return res


if __name__ == "__main__":
  main()
