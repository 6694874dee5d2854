import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclestar_jax import config, networks


def _conv_transpose_numpy(x, w_torch, bias, stride):
  """PyTorch ConvTranspose1d semantics, channels-last in and out; w_torch is (in, out, k)."""
  b, length, _ = x.shape
  _, c_out, k = w_torch.shape
  out = np.zeros((b, (length - 1) * stride + k, c_out))
  for l in range(length):
    for j in range(k):
      out[:, l * stride + j, :] += x[:, l, :] @ w_torch[:, :, j]
  return out + bias


@pytest.mark.parametrize("length,c_in,c_out,k,s", [
    (24, 25, 16, 7, 2), (53, 8, 12, 7, 4), (10, 3, 5, 3, 3), (9, 4, 2, 2, 5), (6, 2, 3, 1, 1)])
def test_conv_transpose_matches_pytorch_semantics(length, c_in, c_out, k, s):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, length, c_in)).astype(np.float32)
  w_torch = rng.normal(size=(c_in, c_out, k)).astype(np.float32)  # PyTorch layout
  bias = rng.normal(size=(c_out,)).astype(np.float32)
  kernel = w_torch.transpose(2, 0, 1)  # → (k, in, out), as documented
  got = jax.jit(networks.conv_transpose_1d, static_argnums=3)(x, kernel, bias, s)
  assert got.shape == (3, (length - 1) * s + k, c_out)
  np.testing.assert_allclose(got, _conv_transpose_numpy(x, w_torch, bias, s), rtol=1e-5,
                             atol=1e-5)
  # lax.conv_transpose with transpose_kernel=True takes the kernel as (k, out, in); for k < s it
  # gives L·s + max(k − s, 0) pixels (docs/method.md), so compare on the common length.
  ref = jax.lax.conv_transpose(x, w_torch.transpose(2, 1, 0), (s,), "VALID",
                               dimension_numbers=("NWC", "WIO", "NWC"), transpose_kernel=True)
  n = min(ref.shape[1], got.shape[1])
  np.testing.assert_allclose(got[:, :n], ref[:, :n] + bias, rtol=1e-5, atol=1e-5)


def test_conv_transpose_gradients_match_lax():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 24, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(7, 6, 5)), jnp.float32)  # (k, in, out)
  t = jnp.asarray(rng.normal(size=(2, 53, 5)), jnp.float32)

  def ours(x, w):
    return jnp.sum(networks.conv_transpose_1d(x, w, None, 2) * t)

  def ref(x, w):
    y = jax.lax.conv_transpose(x, jnp.transpose(w, (0, 2, 1)), (2,), "VALID",
                               dimension_numbers=("NWC", "WIO", "NWC"), transpose_kernel=True)
    return jnp.sum(y * t)

  for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_full_size_shapes_and_parameter_counts():
  """Paper Table 2 / Appendix A and the reference parameter counts (docs/method.md, 'Networks')."""
  x = jax.ShapeDtypeStruct((2, 7167), jnp.float32)
  for name, zsp_ch, n_gen, n_critic in [("kurucz_to_apogee_1", 4, 2_686_815, 990_018),
                                        ("new_lines_1", 1, None, None)]:
    cfg = config.get_config(name)
    nets = networks.make_networks(cfg)
    gen, critic = jax.eval_shape(nets.init, jax.random.key(0))
    if n_gen is not None:
      assert networks.count_params(gen) == n_gen
      assert networks.count_params(critic) == n_critic
    interm = jax.eval_shape(nets.modules["enc_synth"].apply, {"params": gen["enc_synth"]},
                            jax.ShapeDtypeStruct((2, 7167, 1), jnp.float32))
    assert interm.shape == (2, 447, 64)  # the paper's 64 × 447
    out = jax.eval_shape(nets.cycle_forward, gen, x, x)
    assert out["zsh_synth"].shape == out["zsh_obs"].shape == (2, 24, 25)  # 25 × 24
    assert out["zsp_obs"].shape == (2, 24, zsp_ch)  # 4 × 24, or 1 × 24 for §4.2
    for k in ("x_synthsynth", "x_obsobs", "x_synthobs", "x_obssynth", "x_synthobssynth",
              "x_obssynthobs"):
      assert out[k].shape == (2, 7167)
    logits = jax.eval_shape(nets.critic_obs, critic, x, out["zsh_obs"], out["zsp_obs"])
    assert logits.shape == (2,)
  # The split latent of §4.2 differs from §4.1 by E_sp's last conv and D_sp's first layer only.
  assert 2_686_815 - networks.count_params(gen) == (32 * 3 + 3) + (3 * 32 * 7)


def test_initialisation_follows_reference():
  cfg = config.get_config("smoke")
  gen, critic = networks.make_networks(cfg).init(jax.random.key(0))
  for tree in (gen, critic):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = [p.key for p in path]
      if names[-2] == "fc":  # PyTorch Linear default: U(±1/sqrt(fan_in)), weight and bias
        fan_in = tree[names[0]]["fc"]["kernel"].shape[0]
        assert np.abs(leaf).max() <= 1 / math.sqrt(fan_in)
      elif names[-1] == "bias":
        np.testing.assert_array_equal(leaf, np.float32(0.01))
      else:
        k, c_in, c_out = leaf.shape
        limit = math.sqrt(6 / (k * c_in + k * c_out))  # Glorot uniform, as xavier_uniform_
        assert np.abs(leaf).max() <= limit and np.abs(leaf).max() > 0.5 * limit


def test_instance_norm_without_affine():
  rng = np.random.default_rng(2)
  z = rng.normal(3.0, 2.0, size=(4, 24, 5)).astype(np.float32)
  got = np.asarray(networks.instance_norm(z))
  want = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  cfg = config.get_config("smoke")
  nets = networks.make_networks(cfg)
  gen, _ = nets.init(jax.random.key(1))
  zsh, zsp = nets.encode_obs(gen, jnp.asarray(rng.normal(size=(2, 7167)), jnp.float32))
  for lat in (zsh, zsp):
    np.testing.assert_allclose(np.asarray(lat).mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lat).std(1), 1.0, atol=1e-2)


def test_critic_flattens_channel_major_like_pytorch():
  """fc input index c·L + l (PyTorch's (B, C, L) flatten), x branch first, then z."""
  cfg = config.get_config("smoke")
  nets = networks.make_networks(cfg)
  _, critic = nets.init(jax.random.key(3))
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 7167)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(2, 24, cfg.zsh_filters)), jnp.float32)
  module = nets.modules["critic_synth"]
  p = critic["critic_synth"]
  _, inter = module.apply({"params": p}, x, z, capture_intermediates=True)
  hx = jax.nn.leaky_relu(inter["intermediates"]["x4"]["__call__"][0], 0.1)  # [B, Lx, Cx]
  hz = jax.nn.leaky_relu(inter["intermediates"]["z4"]["__call__"][0], 0.1)  # [B, Lz, Cz]
  lx, cx = hx.shape[1:]
  for index, want in [(2 * lx + 1, hx[:, 1, 2]), (lx * cx + 3 * 24 + 5, hz[:, 5, 3])]:
    kernel = jnp.zeros_like(p["fc"]["kernel"]).at[index, 0].set(1.0)
    q = {**p, "fc": {"kernel": kernel, "bias": jnp.zeros(1)}}
    np.testing.assert_allclose(module.apply({"params": q}, x, z), want, rtol=1e-6)


def test_no_split_latent_config():
  cfg = dataclasses.replace(config.get_config("smoke"), zsp_filters=0)
  nets = networks.make_networks(cfg)
  gen, critic = jax.eval_shape(nets.init, jax.random.key(0))
  assert "enc_sp" not in gen and "dec_sp" not in gen
  x = jax.ShapeDtypeStruct((2, 7167), jnp.float32)
  out = jax.eval_shape(nets.cycle_forward, gen, x, x)
  assert "zsp_obs" not in out and out["x_synthobs"].shape == (2, 7167)


# ---- config: presets, the authors' .ini files, round-trip validation ----

_AUTHORS_INI = """[DATA]
spectra_norm_file = mean_and_std_PAYNE_specs.npy
data_file_synth = csn_kurucz.h5
data_file_obs = csn_apogee.h5

[TRAINING]
batchsize = 8
learning_rate_encoder = 0.0001
learning_rate_decoder = 0.0001
learning_rate_discriminator = 0.0001
loss_weight_synth = 3
loss_weight_obs = 9
loss_weight_gen = 1
loss_weight_dis = 1
lr_decay_batch_iters_rg = [5e4,10e4,15e4,20e4,25e5]
lr_decay_batch_iters_dis = [5e4,10e4,15e4,20e4,25e5]
lr_decay_rg = 0.7
lr_decay_dis = 0.7
total_batch_iters = 5e5
use_real_as_true = False
mask_synth_lines = False

[ARCHITECTURE]
num_pixels = 7167
activation = LeakyReLU
conv_filts_ae_dom = [32, 64]
conv_filt_lens_ae_dom = [7, 7]
conv_strides_ae_dom = [4, 4]
conv_filts_ae_sh = [128, 256, 512]
conv_filt_lens_ae_sh = [7, 7, 7]
conv_strides_ae_sh = [4, 2, 2]
conv_filts_ae_sp = [32, 32, 32]
conv_filt_lens_ae_sp = [7, 7, 7]
conv_strides_ae_sp = [4, 2, 2]
enc_out_norm = True
shared_z_filters = 25
split_z_filters = 4
conv_filts_dis_x = [16, 32, 64, 128, 256]
conv_strides_dis_x = [4, 4, 4, 4, 4]
conv_filt_lens_dis_x = [7, 7, 7, 7, 7]
conv_filts_dis_z = [32, 64, 128, 256, 512]
conv_strides_dis_z = [1, 1, 1, 1, 1]
conv_filt_lens_dis_z = [1, 1, 1, 1, 1]
conv_filts_dis_c = [128, 64]
conv_strides_dis_c = [2, 2]
conv_filt_lens_dis_c = [2, 2]

[Notes]
comment = Original architecture
"""  # the authors' configs/kurucz_to_apogee_1.ini, as published


def test_authors_ini_reads_as_the_preset(tmp_path):
  path = tmp_path / "kurucz_to_apogee_1.ini"
  path.write_text(_AUTHORS_INI)
  cfg = config.from_ini(path)
  preset = config.get_config("kurucz_to_apogee_1")
  assert cfg.lr_boundaries_gen == (50_000, 100_000, 150_000, 200_000, 2_500_000)
  assert cfg.n_iter == 500_000  # the file's value; the paper's run (and the preset) is 350k
  same = dataclasses.replace(cfg, lr_boundaries_gen=preset.lr_boundaries_gen,
                             lr_boundaries_critic=preset.lr_boundaries_critic, n_iter=350_000)
  assert same == preset
  nl = tmp_path / "new_lines_1.ini"
  nl.write_text(_AUTHORS_INI.replace("split_z_filters = 4", "split_z_filters = 1")
                .replace("loss_weight_synth = 3", "loss_weight_synth = 90")
                .replace("loss_weight_obs = 9", "loss_weight_obs = 90")
                .replace("mask_synth_lines = False", "mask_synth_lines = True")
                )
  got = dataclasses.replace(config.from_ini(nl), lr_boundaries_gen=preset.lr_boundaries_gen,
                            lr_boundaries_critic=preset.lr_boundaries_critic, n_iter=350_000)
  assert got == config.get_config("new_lines_1")
  assert config.get_config(str(nl)).zsp_filters == 1  # a path works wherever a name does


def test_ini_errors_name_file_and_key(tmp_path):
  bad = tmp_path / "typo.ini"
  bad.write_text(_AUTHORS_INI.replace("batchsize", "batch_sise"))
  with pytest.raises(config.ConfigError, match=r"typo.ini: \[TRAINING\] batch_sise: unknown"):
    config.from_ini(bad)
  old = tmp_path / "old.ini"
  old.write_text(_AUTHORS_INI.replace("loss_weight_synth = 3", "loss_weight_rec = 3"))
  with pytest.raises(config.ConfigError, match="loss_weight_rec"):
    config.from_ini(old)
  garbled = tmp_path / "garbled.ini"
  garbled.write_text(_AUTHORS_INI.replace("conv_strides_ae_sh = [4, 2, 2]",
                                          "conv_strides_ae_sh = [4, 2"))
  with pytest.raises(config.ConfigError, match="conv_strides_ae_sh"):
    config.from_ini(garbled)
  with pytest.raises(config.ConfigError, match="unknown config 'nope'"):
    config.get_config("nope")


def test_incompatible_strides_are_refused_with_the_lengths(tmp_path):
  base = config.get_config("kurucz_to_apogee_1")
  with pytest.raises(config.ConfigError, match=r"E_sh .* back to 439, not 447 .*7039 pixels"):
    dataclasses.replace(base, strides_sh=(4, 2, 3))  # 447 → 111 → 53 → 16 → 52 → 109 → 439
  with pytest.raises(config.ConfigError, match=r"D_synth/D_obs take 447 back to 7167, not 7168"):
    dataclasses.replace(base, n_pix=7168)
  with pytest.raises(config.ConfigError, match="z_sp has length"):
    dataclasses.replace(base, strides_sp=(4, 4, 1), kernels_sp=(7, 3, 7))
  bad = tmp_path / "bad.ini"
  bad.write_text(_AUTHORS_INI.replace("conv_filt_lens_ae_dom = [7, 7]",
                                      "conv_filt_lens_ae_dom = [7, 5]"))
  with pytest.raises(config.ConfigError, match="bad.ini: .*E_synth/E_obs"):
    config.from_ini(bad)
  # An architecture of another authors' config that does round-trip (k3 s2, "same"-padded z).
  other = dataclasses.replace(base, filters_dom=(8, 8, 8, 8), kernels_dom=(3,) * 4,
                              strides_dom=(2,) * 4, filters_sh=(8, 8), kernels_sh=(3, 3),
                              strides_sh=(2, 2), filters_sp=(4, 4), kernels_sp=(3, 3),
                              strides_sp=(2, 2), critic_kernels_z=(3,) * 5)
  assert other.lengths == {"interm": 447, "zsh": 111, "zsp": 111}
  assert other.critic_z_padding == 1
  nets = networks.make_networks(other)
  gen, critic = jax.eval_shape(nets.init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((2, 7167), jnp.float32)
  out = jax.eval_shape(nets.cycle_forward, gen, x, x)
  assert out["x_obssynthobs"].shape == (2, 7167)
  assert critic["critic_obs"]["fc"]["kernel"].shape[0] == 256 * 6 + 512 * 111


def _cycle_forward_plain(nets, gen, xs, xo, perm):
  """The forward pass of docs/method.md written one network call at a time (no shared batches)."""
  zs = nets.encode_synth(gen, xs)
  zo, zpo = nets.encode_obs(gen, xo)
  lent = None if zpo is None else (zpo if perm is None else zpo[perm])
  x_so = nets.decode_obs(gen, zs, lent)
  x_os = nets.decode_synth(gen, zo)
  zos = nets.encode_synth(gen, x_os)
  zso, zpso = nets.encode_obs(gen, x_so)
  out = {"x_synthsynth": nets.decode_synth(gen, zs), "x_obsobs": nets.decode_obs(gen, zo, zpo),
         "x_synthobs": x_so, "x_obssynth": x_os, "x_synthobssynth": nets.decode_synth(gen, zso),
         "x_obssynthobs": nets.decode_obs(gen, zos, zpo), "zsh_synth": zs, "zsh_obs": zo,
         "zsh_synthobs": zso, "zsh_obssynth": zos}
  if zpo is not None:
    out.update(zsp_obs=zpo, zsp_synthobs=zpso, zsp_lent=lent)
  return out


@pytest.mark.parametrize("zsp_filters,perm", [(4, None), (4, [2, 0, 1]), (0, None)])
def test_shared_batch_forward_equals_one_call_per_network(zsp_filters, perm):
  """cycle_forward runs each shared network once on both domains' batches together and reuses
  D_sh / D_sp outputs: the result equals the plain composition of single calls."""
  cfg = dataclasses.replace(config.get_config("smoke"), zsp_filters=zsp_filters)
  nets = networks.make_networks(cfg)
  gen, _ = nets.init(jax.random.key(1))
  rng = np.random.default_rng(0)
  xs, xo = (jnp.asarray(rng.normal(size=(3, cfg.n_pix)), jnp.float32) for _ in range(2))
  perm = None if perm is None else jnp.asarray(perm)
  got = jax.jit(nets.cycle_forward)(gen, xs, xo, perm)
  want = jax.jit(functools.partial(_cycle_forward_plain, nets))(gen, xs, xo, perm)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
  # The critics' joint calls split back in order.
  _, critic = nets.init(jax.random.key(2))
  real, fake = nets.critic_synth_joint(critic, (xs, got["zsh_synth"]), (xo, got["zsh_obs"]))
  np.testing.assert_allclose(fake, nets.critic_synth(critic, xo, got["zsh_obs"]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(real, nets.critic_synth(critic, xs, got["zsh_synth"]), rtol=1e-5,
                             atol=1e-6)
