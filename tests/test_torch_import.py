"""Import of the authors' PyTorch checkpoints: outputs match reference torch modules."""

import dataclasses
import sys

import jax
import numpy as np
import pytest

from cyclestar_jax import config, torch_import
from cyclestar_jax.networks import make_networks

torch = pytest.importorskip("torch")
nn = torch.nn


def _reference_cycle_model(cfg) -> "nn.Module":
  """The reference networks from torch.nn layers, with the reference's module and key names
  (docs/data_format.md): Sequentials with weightless activation modules between the weighted layers,
  InstanceNorm1d without affine parameters on the latents, channel-first flatten in the critic."""
  act = nn.LeakyReLU(cfg.activation_slope)

  def encoder(c_in, filters, kernels, strides, z_filters=0):
    layers = []
    for f, k, s in zip(filters, kernels, strides, strict=True):
      layers += [nn.Conv1d(c_in, f, k, s), act]
      c_in = f
    if z_filters:
      layers += [nn.Conv1d(c_in, z_filters, 1, 1), nn.InstanceNorm1d(z_filters)]
    return nn.Sequential(*layers)

  def decoder(c_in, filters, kernels, strides, out_x=False):
    layers = []
    for f, k, s in zip(filters[::-1], kernels[::-1], strides[::-1], strict=True):
      layers += [nn.ConvTranspose1d(c_in, f, k, s), act]
      c_in = f
    if out_x:
      layers.append(nn.Conv1d(c_in, 1, 1, 1))
    return nn.Sequential(*layers)

  class Critic(nn.Module):
    def __init__(self, z_channels):
      super().__init__()
      self.discriminator_x = encoder(1, cfg.critic_filters_x, cfg.critic_kernels_x,
                                     cfg.critic_strides_x)
      pad = cfg.critic_z_padding
      layers, c_in = [], z_channels
      for f, k, s in zip(cfg.critic_filters_z, cfg.critic_kernels_z, cfg.critic_strides_z,
                         strict=True):
        layers += [nn.Conv1d(c_in, f, k, s, padding=pad), act]
        c_in = f
      self.discriminator_z = nn.Sequential(*layers)
      n_x = self.discriminator_x(torch.zeros(1, 1, cfg.n_pix)).numel()
      n_z = self.discriminator_z(torch.zeros(1, z_channels, cfg.lengths["zsh"])).numel()
      self.fc = nn.Linear(n_x + n_z, 1)

    def forward(self, x, z):  # logits; the reference's sigmoid is in our loss
      h = torch.cat([self.discriminator_x(x).view(x.size(0), -1),
                     self.discriminator_z(z).view(x.size(0), -1)], 1)
      return self.fc(h)[:, 0]

  dom = (cfg.filters_dom, cfg.kernels_dom, cfg.strides_dom)
  sh = (cfg.filters_sh, cfg.kernels_sh, cfg.strides_sh)
  sp = (cfg.filters_sp, cfg.kernels_sp, cfg.strides_sp)
  m = nn.Module()
  m.encoder_synth, m.encoder_obs = encoder(1, *dom), encoder(1, *dom)
  m.encoder_sh = encoder(cfg.filters_dom[-1], *sh, z_filters=cfg.zsh_filters)
  m.encoder_sp = encoder(cfg.filters_dom[-1], *sp, z_filters=cfg.zsp_filters)
  m.decoder_sh = decoder(cfg.zsh_filters, *sh)
  m.decoder_sp = decoder(cfg.zsp_filters, *sp)
  m.decoder_synth = decoder(cfg.filters_sh[0], *dom, out_x=True)
  m.decoder_obs = decoder(cfg.filters_sh[0] + cfg.filters_sp[0], *dom, out_x=True)
  m.discriminator_synth = Critic(cfg.zsh_filters)
  m.discriminator_obs = Critic(cfg.zsh_filters + cfg.zsp_filters)
  m.emulator = nn.Sequential(nn.Linear(25, 3), nn.LeakyReLU(0.01), nn.Linear(3, 7))
  with torch.no_grad():  # non-trivial biases, so a misplaced bias shows
    for p in m.parameters():
      if p.ndim == 1:
        p.uniform_(-0.1, 0.1)
  return m.eval()


@pytest.fixture(scope="module")
def smoke_pair(tmp_path_factory):
  cfg = config.get_config("smoke")
  torch.manual_seed(0)
  ref = _reference_cycle_model(cfg)
  path = tmp_path_factory.mktemp("ckpt") / "cycle_sn.pth.tar"
  torch.save({"batch_iters": 10, "cycle_model": ref.state_dict()}, path)
  return cfg, ref, path


def _t(a):
  return torch.from_numpy(np.ascontiguousarray(a))


def test_converted_networks_match_torch(smoke_pair):
  cfg, ref, path = smoke_pair
  gen, critic = torch_import.load_torch_cycle_model(path, cfg)
  nets = make_networks(cfg)
  params = {**gen, **critic}
  rng = np.random.default_rng(0)
  b, lz, li = 3, cfg.lengths["zsh"], cfg.lengths["interm"]
  x = rng.normal(size=(b, cfg.n_pix)).astype(np.float32)
  interm = rng.normal(size=(b, li, cfg.filters_dom[-1])).astype(np.float32)
  zsh = rng.normal(size=(b, lz, cfg.zsh_filters)).astype(np.float32)
  zsp = rng.normal(size=(b, lz, cfg.zsp_filters)).astype(np.float32)
  d_sh = rng.normal(size=(b, li, cfg.filters_sh[0])).astype(np.float32)
  d_obs = rng.normal(size=(b, li, cfg.filters_sh[0] + cfg.filters_sp[0])).astype(np.float32)
  cl = lambda a: _t(a.transpose(0, 2, 1))  # noqa: E731 - [B, L, C] → torch (B, C, L)
  cases = {  # ours: (inputs, torch call)
      "enc_synth": ((x[..., None],), lambda: ref.encoder_synth(_t(x)[:, None])),
      "enc_obs": ((x[..., None],), lambda: ref.encoder_obs(_t(x)[:, None])),
      "enc_sh": ((interm,), lambda: ref.encoder_sh(cl(interm))),
      "enc_sp": ((interm,), lambda: ref.encoder_sp(cl(interm))),
      "dec_sh": ((zsh,), lambda: ref.decoder_sh(cl(zsh))),
      "dec_sp": ((zsp,), lambda: ref.decoder_sp(cl(zsp))),
      "dec_synth": ((d_sh,), lambda: ref.decoder_synth(cl(d_sh))[:, 0]),
      "dec_obs": ((d_obs,), lambda: ref.decoder_obs(cl(d_obs))[:, 0]),
      "critic_synth": ((x, zsh), lambda: ref.discriminator_synth(_t(x)[:, None], cl(zsh))),
      "critic_obs": ((x, np.concatenate([zsh, zsp], -1)),
                     lambda: ref.discriminator_obs(_t(x)[:, None],
                                                   cl(np.concatenate([zsh, zsp], -1)))),
  }  # fmt: skip
  assert set(cases) == set(params)
  for name, (inputs, torch_fn) in cases.items():
    got = np.asarray(nets._apply(params, name, *inputs))
    with torch.no_grad():
      want = torch_fn().numpy()
    if want.ndim == 3:
      want = want.transpose(0, 2, 1)
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
  # Whole pipelines too: the shared latent of a synthetic spectrum and its transfer.
  sd = ref.state_dict()
  gen2, _ = torch_import.load_torch_cycle_model(sd, cfg)  # a state dict works as a file does
  z = np.asarray(nets.encode_synth(gen2, x))
  with torch.no_grad():
    z_ref = ref.encoder_sh(ref.encoder_synth(_t(x)[:, None])).numpy().transpose(0, 2, 1)
  np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)


def test_full_size_keys_and_shapes():
  cfg = config.get_config("kurucz_to_apogee_1")
  ref = _reference_cycle_model(cfg)
  n_ref = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("emulator"))
  assert n_ref == 2_686_815 + 990_018  # the reference parameter counts (docs/method.md, 'Networks')
  gen, critic = torch_import.load_torch_cycle_model(ref.state_dict(), cfg)
  want = jax.eval_shape(make_networks(cfg).init, jax.random.key(0))
  got = jax.tree.map(lambda a: (a.shape, str(a.dtype)), (gen, critic))
  assert got == jax.tree.map(lambda a: (a.shape, str(a.dtype)), want)


def test_bad_checkpoints_are_named(smoke_pair, tmp_path, monkeypatch):
  cfg, ref, path = smoke_pair
  sd = dict(ref.state_dict())
  missing = {k: v for k, v in sd.items() if k != "decoder_obs.2.weight"}
  with pytest.raises(torch_import.TorchImportError,
                     match=r"'decoder_obs.2.weight' is missing; .* expects shape \(16, 8, 7\)"):
    torch_import.load_torch_cycle_model(missing, cfg)
  bad = dict(sd, **{"encoder_sh.6.weight": torch.zeros(6, 16, 3)})
  with pytest.raises(torch_import.TorchImportError,
                     match=r"'encoder_sh.6.weight' has shape \(6, 16, 3\); .* expects "
                           r"\(6, 16, 1\)"):
    torch_import.load_torch_cycle_model(bad, cfg)
  other = dataclasses.replace(cfg, zsp_filters=0)  # a checkpoint with a split latent
  with pytest.raises(torch_import.TorchImportError,
                     match=r"'decoder_obs.0.weight' has shape \(24, 16, 7\)"):
    torch_import.load_torch_cycle_model(sd, other)
  extra = dict(sd, **{"encoder_synth.4.weight": torch.zeros(4, 16, 7)})
  with pytest.raises(torch_import.TorchImportError, match="no layer .*encoder_synth.4.weight"):
    torch_import.load_torch_cycle_model(extra, cfg)
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a checkpoint")
  with pytest.raises(torch_import.TorchImportError, match="junk.pth: cannot read"):
    torch_import.load_torch_cycle_model(junk, cfg)
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  with pytest.raises(ImportError, match=r"pip install \.\[torch\]"):
    torch_import.load_torch_cycle_model(path, cfg)
