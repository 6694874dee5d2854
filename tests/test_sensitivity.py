"""Label sensitivity (cyclestar_jax.sensitivity): gains on hand-made derivative spectra, and the
synthetic round trip's derivatives against finite differences on the tiny chain of test_lines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_lines import chain, stars  # noqa: F401  (fixtures)

from cyclestar_jax import lines, sensitivity
from cyclestar_jax.chain import autoencode_synth, payne_scaled
from cyclestar_jax.resources import N_DROP


def test_gain_and_correlation_hand_computed():
  n, p = 3, 40
  e1 = np.zeros((n, p, 1))
  e1[:, 5] = 1.0
  e2 = np.zeros((n, p, 1))
  e2[:, 9] = 1.0
  rng = np.random.default_rng(0)
  ref_random = rng.normal(size=(n, p, 1))
  d_ref = np.concatenate([e1, ref_random, np.zeros((n, p, 1))], axis=2)
  # label 0: 2·ref + 3·(orthogonal) → gain 2, r = 2/√13; label 1: half the reference → 0.5, 1;
  # label 2: no reference response → NaN.
  d_model = np.concatenate([2 * e1 + 3 * e2, 0.5 * ref_random, rng.normal(size=(n, p, 1))],
                           axis=2)
  out = sensitivity.derivative_gain(d_model, d_ref)
  np.testing.assert_allclose(out["gain"][:2], [2.0, 0.5], rtol=1e-12)
  np.testing.assert_allclose(out["r"][:2], [2 / np.sqrt(13), 1.0], rtol=1e-12)
  assert np.isnan(out["gain"][2]) and np.isnan(out["r"][2])


def test_gain_is_the_median_over_stars():
  d_ref = np.ones((3, 4, 1))
  d_model = np.array([0.1, 0.5, 3.0])[:, None, None] * d_ref
  assert sensitivity.derivative_gain(d_model, d_ref)["gain"][0] == pytest.approx(0.5)


def test_gain_refuses_mismatched_shapes():
  with pytest.raises(ValueError, match=r"\[n, n_pix, K\]"):
    sensitivity.derivative_gain(np.zeros((2, 5, 3)), np.zeros((2, 5, 4)))


def test_autoencoder_derivatives_match_finite_differences(chain, stars):  # noqa: F811
  y = stars[0][:3]
  d = sensitivity.autoencoder_derivatives(chain, y)
  assert d.shape == (3, chain.nets.cfg.n_pix, 25)
  nets, params = chain.nets, chain.params
  width = lines.box_width(chain)
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    theta = jnp.asarray(chain.scale(y.astype(np.float64)), jnp.float64)

    def ae(t):
      return autoencode_synth(nets, p64["gen"], payne_scaled(p64["emulator"], t)[None, N_DROP:])[0]

    step, ae = 1e-6, jax.jit(ae)
    fd = np.stack([np.stack([(ae(t + step * e) - ae(t - step * e)) / (2 * step)
                             for e in jnp.eye(25)], axis=1) for t in theta]) / width
  scale = np.abs(fd).max(axis=1, keepdims=True) + 1e-12
  np.testing.assert_allclose(d / scale, fd / scale, atol=1e-4)
