"""The PyTorch reference step (benchmarks/torch_step.py) computes what the JAX step computes.

Skipped where torch is not installed (the GPU machine has it; CI does not).
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_step as ts_torch  # noqa: E402
from cyclestar_jax import config, losses, torch_import  # noqa: E402
from cyclestar_jax import train_step as ts_jax  # noqa: E402
from cyclestar_jax.networks import make_networks  # noqa: E402


@pytest.fixture(scope="module")
def setup():
  cfg = config.get_config("smoke")
  torch.manual_seed(0)
  model = ts_torch.CycleSN(cfg)
  gen, critic = torch_import.load_torch_cycle_model(model.state_dict(), cfg)
  host = ts_torch.random_batches(1, 3, cfg.n_pix, seed=1)[0]
  return cfg, model, gen, critic, host


def _torch_batch(host):
  return {k: torch.from_numpy(v) for k, v in host.items()}


def test_state_dict_has_the_reference_layout(setup):
  cfg, model, *_ = setup
  keys = set(model.state_dict())
  assert "encoder_sh.6.weight" in keys and "decoder_obs.4.weight" in keys
  assert "discriminator_obs.discriminator_z.8.weight" in keys
  assert "discriminator_obs.fc.bias" in keys


@pytest.mark.parametrize("mode", ["shared", "naive"])
def test_losses_equal_the_jax_losses(setup, mode):
  cfg, model, gen, critic, host = setup
  nets = make_networks(cfg)
  batch = {k: jax.numpy.asarray(v) for k, v in host.items()}
  _, (terms, out) = losses.generator_loss(gen, critic, batch, nets=nets)
  _, c_metrics = losses.critic_loss(critic, out, batch, nets=nets)
  step = ts_torch.TrainStep(model, mode)
  with torch.no_grad():
    _, t_terms, t_out = step.losses(_torch_batch(host))
    c_terms = ts_torch.critic_terms(model, t_out, joint=mode == "shared")
  for k in losses.GEN_TERMS:
    np.testing.assert_allclose(float(t_terms[k]), float(terms[k]), rtol=2e-4, err_msg=k)
  for k in losses.CRITIC_TERMS:
    np.testing.assert_allclose(float(c_terms[k]), float(c_metrics[k]), rtol=2e-4, err_msg=k)


def test_one_iteration_equals_the_jax_step(setup):
  cfg, _, gen, critic, host = setup
  torch.manual_seed(0)
  model = ts_torch.CycleSN(cfg)  # the same weights as `setup` (same seed)
  gen_tx, critic_tx = ts_jax.make_optimizers(cfg)
  state = ts_jax.create_train_state(cfg, jax.random.key(0)).replace(
      gen_params=gen, critic_params=critic, gen_opt=gen_tx.init(gen),
      critic_opt=critic_tx.init(critic), gen_ema=gen)
  batch = {k: jax.numpy.asarray(v) for k, v in host.items()}
  step = jax.jit(ts_jax.make_train_step(cfg))
  state, m0 = step(state, batch, jax.random.key(0))
  _, m1 = step(state, batch, jax.random.key(0))
  t_step = ts_torch.TrainStep(model, "shared")
  g0, c0 = t_step(_torch_batch(host))
  g1, c1 = t_step(_torch_batch(host))
  np.testing.assert_allclose([float(g0), float(c0)], [m0["loss_gen"], m0["loss_critic"]],
                             rtol=2e-4)
  np.testing.assert_allclose([float(g1), float(c1)], [m1["loss_gen"], m1["loss_critic"]],
                             rtol=2e-3)
  assert float(g1) != float(g0)


def test_time_case_runs():
  row = ts_torch.time_case(config.get_config("smoke"), 2, "naive", "float32",
                           device=torch.device("cpu"), steps=1, repeats=1, warmup=0)
  assert row["ms_per_it"] > 0 and row["network_applications"] == 31
  assert np.isfinite(row["loss_gen_last"])
