import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclestar_jax import config, parallel, resources
from cyclestar_jax import train_step as ts

N_PIX = resources.N_PIX_NET


def _mock_spectra(rng: np.random.Generator, n: int, observed: bool) -> dict:
  """Standardized toy spectra: shared absorption lines whose depths vary per star; the
  observed domain adds a continuum tilt, broader lines and noise (so the domains differ)."""
  mean, std = resources.spectra_mean_std()
  line_rng = np.random.default_rng(123)  # same line list in both domains
  centers = line_rng.uniform(0, N_PIX, 80)
  depth = line_rng.uniform(0.05, 0.5, 80)
  pix = np.arange(N_PIX)
  width = 3.0 if observed else 2.0
  profile = np.exp(-0.5 * ((pix[None, :] - centers[:, None]) / width) ** 2)  # [80, n_pix]
  strength = depth * np.exp(0.3 * rng.normal(size=(n, 1)))  # [n, 80]
  flux = np.exp(-strength @ profile)
  err = np.full_like(flux, resources.ERROR_FLOOR)
  msk = np.ones_like(flux)
  if observed:
    flux = flux * (1 + 0.02 * rng.normal(size=(n, 1)) * (pix / N_PIX - 0.5))
    err = np.full_like(flux, 0.01)
    flux = flux + err * rng.normal(size=flux.shape)
    msk = (rng.random(flux.shape) > 0.02).astype(np.float64)
  return {"x": ((flux - mean) / std).astype(np.float32),
          "x_err": (err / std).astype(np.float32), "x_msk": msk.astype(np.float32)}


def _batch(pool, rng, b):
  i, j = rng.integers(0, len(pool["synth"]["x"]), b), rng.integers(0, len(pool["obs"]["x"]), b)
  return {f"x_{d}{s}": pool[d][f"x{s}"][idx] for d, idx in (("synth", i), ("obs", j))
          for s in ("", "_err", "_msk")}


@pytest.fixture(scope="module")
def smoke():
  cfg = config.get_config("smoke")
  state = ts.create_train_state(cfg, jax.random.key(cfg.seed))
  rng = np.random.default_rng(0)
  pool = {"synth": _mock_spectra(rng, 48, False), "obs": _mock_spectra(rng, 48, True)}
  step = jax.jit(chex.assert_max_traces(ts.make_train_step(cfg), n=1))
  return cfg, state, pool, step


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def test_step_compiles_once_and_learns(smoke):
  cfg, state, pool, step = smoke
  rng = np.random.default_rng(1)
  key = jax.random.key(7)
  held_out = _batch(pool, np.random.default_rng(99), cfg.batch_size)
  _, before = step(state, held_out, key)  # metrics are the losses before the update
  for _ in range(40):
    state, metrics = step(state, _batch(pool, rng, cfg.batch_size), key)
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  assert int(state.step) == 40 and int(state.n_skipped) == 0
  _, after = step(state, held_out, key)
  for k in ("rec_synth", "rec_obs", "cc_synth", "cc_obs", "loss_gen"):
    assert after[k] < 0.7 * before[k], (k, float(before[k]), float(after[k]))
  assert float(after["lr_encoder"]) == pytest.approx(cfg.lr_encoder)


def test_nonfinite_step_is_skipped_and_counted(smoke):
  cfg, state, pool, step = smoke
  rng = np.random.default_rng(2)
  key = jax.random.key(0)
  batch = _batch(pool, rng, cfg.batch_size)
  bad = dict(batch, x_obs=batch["x_obs"].copy())
  bad["x_obs"][3, 100] = np.nan
  new, metrics = step(state, bad, key)
  assert float(metrics["skipped"]) == 1.0 and int(new.n_skipped) == int(state.n_skipped) + 1
  assert int(new.step) == int(state.step) + 1  # the data position moves on
  chex.assert_trees_all_equal((new.gen_params, new.critic_params, new.gen_opt, new.critic_opt),
                              (state.gen_params, state.critic_params, state.gen_opt,
                               state.critic_opt))
  inf_err = dict(batch, x_synth_err=np.zeros_like(batch["x_synth_err"]))  # 0/0 → NaN loss
  new2, metrics2 = step(new, inf_err, key)
  assert float(metrics2["skipped"]) == 1.0 and int(new2.n_skipped) == int(new.n_skipped) + 1
  new3, metrics3 = step(new2, batch, key)  # a good batch updates again
  assert float(metrics3["skipped"]) == 0.0 and int(new3.n_skipped) == int(new2.n_skipped)
  assert not np.array_equal(new3.gen_params["dec_obs"]["out"]["kernel"],
                            new2.gen_params["dec_obs"]["out"]["kernel"])


def test_learning_rate_schedule_matches_multisteplr():
  sched = ts.lr_schedules(config.get_config("kurucz_to_apogee_1"))
  # MultiStepLR stepped after each update: update n (0-based count) uses 0.7^(#milestones ≤ n).
  for count, want in [(0, 1e-4), (49_999, 1e-4), (50_000, 7e-5), (100_000, 4.9e-5),
                      (199_999, 1e-4 * 0.7**3), (200_000, 1e-4 * 0.7**4),
                      (349_999, 1e-4 * 0.7**4)]:
    for k in ("encoder", "decoder", "critic"):
      assert float(sched[k](count)) == pytest.approx(want, rel=1e-6)


def _gradients_from_first_step(state) -> tuple[dict, dict]:
  """After one Adam step from zero moments, mu = (1 − β1)·g: the step's gradients."""
  enc = state.gen_opt.inner_states["encoder"].inner_state[0].mu
  dec = state.gen_opt.inner_states["decoder"].inner_state[0].mu
  gen = {k: (enc if k.startswith("enc") else dec)[k] for k in state.gen_params}
  scale = 1 / (1 - 0.5)
  return (jax.tree.map(lambda m: scale * m, gen),
          jax.tree.map(lambda m: scale * m, state.critic_opt[0].mu))


def test_data_parallel_step_equals_single_device(smoke):
  cfg, state, pool, step = smoke
  assert jax.device_count() == 8, "tests/conftest.py fakes 8 CPU devices"
  mesh = parallel.make_mesh()
  pstep = parallel.make_parallel_train_step(cfg, mesh)
  rng = np.random.default_rng(3)
  key = jax.random.key(5)
  batch = _batch(pool, rng, cfg.batch_size)
  want_state, want_metrics = step(state, batch, key)

  pstate = parallel.replicate(_copy(state), mesh)
  sharded = parallel.shard_batch(batch, mesh)
  assert len(sharded["x_obs"].sharding.device_set) == 8
  assert sharded["x_obs"].addressable_shards[0].data.shape == (cfg.batch_size // 8, N_PIX)
  got_state, got_metrics = pstep(pstate, sharded, parallel.replicate(key, mesh))

  # Same losses, same gradients (Adam's moments) and same counters.
  for k in want_metrics:
    np.testing.assert_allclose(got_metrics[k], want_metrics[k], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close((got_state.gen_opt, got_state.critic_opt, got_state.step),
                              (want_state.gen_opt, want_state.critic_opt, want_state.step),
                              rtol=1e-5, atol=1e-5)
  # Same parameters, except where the gradient is rounding noise: a channel that stays in one
  # linear regime of LeakyReLU before an instance norm has a gradient that is exactly zero in
  # exact arithmetic, and Adam's first step turns its noise into ±lr in either layout (noise: a
  # gradient below 1e-5 of the largest, where the per-device sums round differently).
  grads = jax.tree.leaves(_gradients_from_first_step(want_state))
  new = jax.tree.leaves((got_state.gen_params, got_state.critic_params))
  ref = jax.tree.leaves((want_state.gen_params, want_state.critic_params))
  old = jax.tree.leaves((state.gen_params, state.critic_params))
  n_noise = 0
  for a, b, o, g in zip(new, ref, old, grads, strict=True):
    a, b, o, g = map(np.asarray, (a, b, o, g))
    noise = np.abs(g) < 1e-5 * np.abs(g).max()
    n_noise += int(noise.sum())
    np.testing.assert_allclose(a[~noise], b[~noise], rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(a - o)[noise] <= 1.001 * cfg.lr_encoder)
  assert n_noise < 1e-3 * sum(x.size for x in grads)
  # A second call reuses the compiled step (no retrace), and the state is replicated.
  got_state, _ = pstep(got_state, parallel.shard_batch(_batch(pool, rng, cfg.batch_size), mesh),
                       parallel.replicate(key, mesh))
  assert pstep._cache_size() == 1
  assert got_state.gen_params["enc_sh"]["z"]["kernel"].sharding.is_fully_replicated
  with pytest.raises(ValueError, match="does not split over 8 devices"):
    parallel.shard_batch({k: v[:6] for k, v in batch.items()}, mesh)


def test_multi_step_equals_single_steps(smoke):
  cfg, state, pool, step = smoke
  n = 3
  rng = np.random.default_rng(4)
  key = jax.random.key(11)
  batches = [_batch(pool, rng, cfg.batch_size) for _ in range(n)]
  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  multi = jax.jit(ts.make_multi_step(cfg))
  got_state, got_metrics = multi(_copy(state), stacked, key)

  want_state, want_metrics = state, []
  for b in batches:
    want_state, m = step(want_state, b, key)
    want_metrics.append(m)
  assert int(got_state.step) == int(state.step) + n
  # Same numbers up to rounding. XLA fuses the scanned body differently from the single step,
  # and Adam's first steps (update ≈ ±lr for any gradient well above its noise) turn rounding
  # differences of tiny gradients into parameter differences below lr: so the losses of every
  # step are compared tightly, and the parameters to within the learning rate. A gradient norm
  # after the first step is the most sensitive of the metrics to those parameter differences
  # (CI measured 1.9e-4 relative at the third step), so it gets 1e-3 there.
  for k in want_metrics[0]:
    assert got_metrics[k].shape == (n,)
    want = np.array([m[k] for m in want_metrics])
    np.testing.assert_allclose(got_metrics[k][0], want[0], rtol=1e-4, atol=1e-6, err_msg=k)
    rtol = 1e-3 if k.startswith("grad_norm") else 1e-4
    np.testing.assert_allclose(got_metrics[k][1:], want[1:], rtol=rtol, atol=1e-6, err_msg=k)
  assert int(got_state.n_skipped) == int(want_state.n_skipped)
  chex.assert_trees_all_close((got_state.gen_params, got_state.critic_params),
                              (want_state.gen_params, want_state.critic_params),
                              rtol=0, atol=cfg.lr_encoder)
  with pytest.raises(ValueError, match="leading"):
    multi(_copy(state), dict(stacked, x_obs=stacked["x_obs"][:2]), key)


def test_step_applies_each_network_once_per_shared_batch():
  """Kernel count (what costs on a GPU at batch 8, docs/devices.md): one iteration of the Table 2
  config applies 19 networks (31 if each call took one domain's batch): enc_sh and dec_sh
  twice on both domains' batches, D_sp once, the critic update one call per critic."""
  from benchmarks.profile_step import applications
  apps = applications(config.get_config("kurucz_to_apogee_1"))
  per_module = collections.Counter(name for name, _, _ in apps)
  assert per_module == {"enc_synth": 2, "enc_obs": 2, "enc_sh": 2, "enc_sp": 2, "dec_sh": 2,
                        "dec_sp": 1, "dec_synth": 2, "dec_obs": 2, "critic_synth": 2,
                        "critic_obs": 2}
  batches = {name: sorted(shapes[0][0] for n, shapes, _ in apps if n == name)
             for name in per_module}
  assert batches["enc_sh"] == batches["dec_sh"] == [16, 16]  # batch 8 per domain
  critic_update = [(n, s[0][0]) for n, s, gen_side in apps if not gen_side]
  assert critic_update == [("critic_synth", 16), ("critic_obs", 16)]


def test_data_parallel_step_only_averages_gradients(smoke):
  """Over 8 devices the compiled step communicates by all-reduce alone (each device works on
  its slice; XLA's partitioner left to itself had resharded activations with all-to-alls,
  collective permutes and all-gathers)."""
  cfg, state, pool, _ = smoke
  mesh = parallel.make_mesh()
  batch = parallel.shard_batch(_batch(pool, np.random.default_rng(0), cfg.batch_size), mesh)
  hlo = parallel.make_parallel_train_step(cfg, mesh).lower(
      parallel.replicate(state, mesh), batch, parallel.replicate(jax.random.key(0), mesh)
  ).compile().as_text()
  assert "all-reduce" in hlo
  for op in ("all-to-all", "collective-permute", "all-gather"):
    assert op not in hlo, op
