import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclestar_jax import config, losses, networks


def test_distance_hand_computed():
  pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  target = jnp.array([[0.0, 2.0], [1.0, 3.0]])
  err = jnp.array([[0.5, 1.0], [2.0, 0.25]])
  msk = jnp.array([[1.0, 1.0], [0.0, 1.0]])
  # residual·mask/err = [[2, 0], [0, 4]] → squares [[4, 0], [0, 16]] → mean 5
  assert float(jax.jit(losses.distance)(pred, target, err, msk)) == pytest.approx(5.0)


def test_distance_shape_mismatch_is_named():
  with pytest.raises(ValueError, match="pred .*target"):
    losses.distance(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones((2, 3)), jnp.ones((2, 3)))


def test_bce_and_accuracy_hand_computed():
  logits = jnp.array([0.0, np.log(3.0), 2.0, -1.0])  # sigmoid: 0.5, 0.75, 0.8808, 0.2689
  bce = jax.jit(losses.bce_logits, static_argnums=1)
  p = 1 / (1 + np.exp(-np.array([0.0, np.log(3.0), 2.0, -1.0])))
  assert float(bce(logits, 1.0)) == pytest.approx(np.mean(-np.log(p)), rel=1e-6)
  assert float(bce(logits, 0.0)) == pytest.approx(np.mean(-np.log(1 - p)), rel=1e-6)
  assert float(bce(logits[:2], 1.0)) == pytest.approx((np.log(2) + np.log(4 / 3)) / 2, rel=1e-6)
  # Numerically safe where sigmoid + log would give inf.
  assert float(bce(jnp.array([-200.0]), 1.0)) == pytest.approx(200.0)
  acc = jax.jit(losses.accuracy, static_argnums=1)
  assert float(acc(logits, 1.0)) == pytest.approx(0.5)  # logit 0 counts as "fake"
  assert float(acc(jnp.array([-1.0, 2.0, 3.0, 0.5]), 1.0)) == pytest.approx(0.75)
  assert float(acc(jnp.array([-1.0, 2.0, 3.0, 0.5]), 0.0)) == pytest.approx(0.25)


def test_objectives_weigh_terms_as_eq1():
  cfg = config.get_config("kurucz_to_apogee_1")  # λ_synth 3, λ_obs 9, λ_adv 1
  terms = dict(zip(losses.GEN_TERMS, map(jnp.float32, [1, 3, 2, 4, 5, 6]), strict=True))
  # rec_synth 1, rec_obs 3, cc_synth 2, cc_obs 4, gen 5 + 6: 3·3 + 9·7 + 11 = 83
  assert float(jax.jit(functools.partial(losses.generator_objective, cfg=cfg))(terms)) == 83.0
  nl = config.get_config("new_lines_1")
  assert float(losses.generator_objective(terms, nl)) == 90 * 3 + 90 * 7 + 11
  crit = dict(zip(losses.CRITIC_TERMS, map(jnp.float32, [0.5, 1.0, 1.5, 2.0]), strict=True))
  assert float(losses.critic_objective(crit, dataclasses.replace(cfg, lambda_critic=2.0))) == 10


def _batch(rng, b, n_pix):
  x = rng.normal(size=(b, n_pix)).astype(np.float32)
  return {"x_synth": x, "x_synth_err": np.full_like(x, 0.1), "x_synth_msk": np.ones_like(x),
          "x_obs": x[::-1] + 0.1, "x_obs_err": np.full_like(x, 0.3),
          "x_obs_msk": (rng.random(x.shape) > 0.1).astype(np.float32)}


def test_generator_and_critic_losses_compose_the_networks():
  cfg = config.get_config("smoke")
  nets = networks.make_networks(cfg)
  gen, critic = nets.init(jax.random.key(0))
  batch = _batch(np.random.default_rng(0), 2, cfg.n_pix)

  @jax.jit
  def run(gen, critic, batch):
    g_loss, (terms, out) = losses.generator_loss(gen, critic, batch, nets=nets)
    c_loss, c_metrics = losses.critic_loss(critic, out, batch, nets=nets)
    # The same quantities written out from the paper's equations.
    xs, xo = batch["x_synth"], batch["x_obs"]
    zs = nets.encode_synth(gen, xs)
    zo, zpo = nets.encode_obs(gen, xo)
    x_so = nets.decode_obs(gen, zs, zpo)
    x_os = nets.decode_synth(gen, zo)
    zso, zpso = nets.encode_obs(gen, x_so)
    x_oso = nets.decode_obs(gen, nets.encode_synth(gen, x_os), zpo)
    ref = {
        "rec_synth": losses.distance(nets.decode_synth(gen, zs), xs, batch["x_synth_err"],
                                     batch["x_synth_msk"]),
        "cc_obs": losses.distance(x_oso, xo, batch["x_obs_err"], batch["x_obs_msk"]),
        "gen_obs": losses.bce_logits(nets.critic_obs(critic, x_so, zs, zpso), 1.0),
        "dis_fake_synth": losses.bce_logits(nets.critic_synth(critic, x_os, zo), 0.0),
        "dis_real_obs": losses.bce_logits(
            nets.critic_obs(critic, nets.decode_obs(gen, zo, zpo), zo, zpo), 1.0),
    }
    return g_loss, terms, c_loss, c_metrics, ref

  g_loss, terms, c_loss, c_metrics, ref = run(gen, critic, batch)
  for k, v in ref.items():
    got = terms[k] if k in terms else c_metrics[k]
    np.testing.assert_allclose(got, v, rtol=1e-5)
  np.testing.assert_allclose(g_loss, losses.generator_objective(terms, cfg), rtol=1e-6)
  np.testing.assert_allclose(c_loss, sum(c_metrics[k] for k in losses.CRITIC_TERMS), rtol=1e-6)
  assert all(0.0 <= float(c_metrics[k]) <= 1.0 for k in losses.CRITIC_ACCURACIES)
  # Masked observed pixels do not count: changing them leaves the distance unchanged.
  b2 = dict(batch, x_obs=np.where(batch["x_obs_msk"] > 0, batch["x_obs"], 1e6))
  np.testing.assert_allclose(losses.distance(jnp.asarray(batch["x_obs"]), b2["x_obs"],
                                             batch["x_obs_err"], batch["x_obs_msk"]), 0.0)


def test_batch_errors_are_named():
  cfg = config.get_config("smoke")
  nets = networks.make_networks(cfg)
  gen, critic = jax.eval_shape(nets.init, jax.random.key(0))
  batch = _batch(np.random.default_rng(0), 2, cfg.n_pix)
  with pytest.raises(KeyError, match="x_obs_msk"):
    losses.generator_loss(gen, critic, {k: v for k, v in batch.items() if k != "x_obs_msk"},
                          nets=nets)
  with pytest.raises(ValueError, match="x_obs_err.*7167"):
    losses.generator_loss(gen, critic, dict(batch, x_obs_err=batch["x_obs_err"][:, :7000]),
                          nets=nets)


def _with_grid(batch, rng):
  xg = rng.normal(size=batch["x_synth"].shape).astype(np.float32)
  return dict(batch, x_grid=xg, x_grid_err=np.full_like(xg, 0.2), x_grid_msk=np.ones_like(xg))


def test_grid_terms_are_the_synthetic_round_trips_of_the_grid_batch():
  """λ_grid > 0 adds d(x_grid→synth, x_grid) and d(x_grid→obs→synth, x_grid), the z_sp lent by
  the observed batch, to Eq. 1; λ_grid = 0 is the paper's loss, grid rows or not."""
  cfg = dataclasses.replace(config.get_config("smoke"), lambda_grid=2.5)
  nets = networks.make_networks(cfg)
  gen, critic = nets.init(jax.random.key(0))
  rng = np.random.default_rng(1)
  batch = _with_grid(_batch(rng, 2, cfg.n_pix), rng)

  @jax.jit
  def run(gen, critic, batch):
    g_loss, (terms, _) = losses.generator_loss(gen, critic, batch, nets=nets)
    xg, err, msk = batch["x_grid"], batch["x_grid_err"], batch["x_grid_msk"]
    zg = nets.encode_synth(gen, xg)
    _, zpo = nets.encode_obs(gen, batch["x_obs"])
    zgo, _ = nets.encode_obs(gen, nets.decode_obs(gen, zg, zpo))
    ref = {"rec_grid": losses.distance(nets.decode_synth(gen, zg), xg, err, msk),
           "cc_grid": losses.distance(nets.decode_synth(gen, zgo), xg, err, msk)}
    return g_loss, terms, ref

  g_loss, terms, ref = run(gen, critic, batch)
  for k in losses.GRID_TERMS:
    np.testing.assert_allclose(terms[k], ref[k], rtol=1e-5, err_msg=k)
    assert float(terms[k]) > 0
  paper = dataclasses.replace(cfg, lambda_grid=0.0)
  p_loss, (p_terms, _) = losses.generator_loss(gen, critic, batch,
                                               nets=networks.make_networks(paper))
  assert set(p_terms) == set(losses.GEN_TERMS)
  np.testing.assert_allclose(g_loss, p_loss + 2.5 * (terms["rec_grid"] + terms["cc_grid"]),
                             rtol=1e-5)
  # grid_cycle off: the grid batch takes the synthetic autoencoder only.
  rec_only = dataclasses.replace(cfg, grid_cycle=False)
  r_loss, (r_terms, _) = losses.generator_loss(gen, critic, batch,
                                               nets=networks.make_networks(rec_only))
  assert "cc_grid" not in r_terms
  np.testing.assert_allclose(r_terms["rec_grid"], ref["rec_grid"], rtol=1e-5)
  np.testing.assert_allclose(r_loss, p_loss + 2.5 * r_terms["rec_grid"], rtol=1e-5)


def test_grid_batch_errors_are_named():
  cfg = dataclasses.replace(config.get_config("smoke"), lambda_grid=1.0)
  nets = networks.make_networks(cfg)
  gen, critic = jax.eval_shape(nets.init, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = _batch(rng, 2, cfg.n_pix)
  assert losses.batch_keys(cfg) == losses.BATCH_KEYS + losses.GRID_KEYS
  with pytest.raises(KeyError, match="x_grid"):
    losses.generator_loss(gen, critic, batch, nets=nets)
  grid = _with_grid(batch, rng)
  with pytest.raises(ValueError, match="differ in size.*x_grid"):
    losses.generator_loss(gen, critic, dict(grid, **{k: grid[k][:1] for k in losses.GRID_KEYS}),
                          nets=nets)
  with pytest.raises(config.ConfigError, match="lambda_grid"):
    dataclasses.replace(cfg, lambda_grid=-1.0)
