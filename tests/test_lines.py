"""Line identification (cyclestar_jax.lines, paper §4.2) on the CPU with 8 fake devices.

The chain is a small random emulator (16 hidden units) and a tiny Cycle-StarNet: the `smoke`
preset with one conv layer per encoder and decoder and 197 network pixels (the emulator 197 +
47). XLA compiles forward-mode Jacobians of conv networks slowly on the CPU (~5 s for the
two-layer smoke encoders even at 197 pixels), so the tests compile as few programs as they can.
Detection and attribution are checked on hand-made spectra and derivative arrays whose answer is
known exactly.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cyclestar_jax import config, emulator, lines, networks
from cyclestar_jax import labels as L
from cyclestar_jax.chain import ModelChain, payne_scaled, split_features, synth_to_obs_scaled
from cyclestar_jax.checkpoint import CycleModel
from cyclestar_jax.mock import WorldConfig, masked_pixels, population
from cyclestar_jax.resources import N_DROP

N_NET = 197  # pixels the tiny networks see
TINY = dict(name="tiny_lines", n_pix=N_NET, filters_dom=(4,), kernels_dom=(5,), strides_dom=(2,),
            filters_sh=(4,), kernels_sh=(3,), strides_sh=(2,), filters_sp=(4,), kernels_sp=(3,),
            strides_sp=(2,), zsh_filters=3, zsp_filters=1, critic_filters_x=(4, 4),
            critic_kernels_x=(3, 3), critic_strides_x=(2, 2), critic_filters_z=(4, 4),
            critic_kernels_z=(1, 1), critic_strides_z=(1, 1))
MG, O, FE, TEFF = (L.label_index(n) for n in ("Mg", "O", "Fe", "Teff"))


def _random_emulator(rng, n_hidden: int, n_pix: int) -> dict:
  """Random emulator weights in `emulator.create_emulator_params`' layout (LeCun-normal
  kernels, small biases), drawn with NumPy: Flax's init would cost seconds of compilation."""
  sizes = (L.N_LABELS, n_hidden, n_hidden, n_pix)
  return {name: {"kernel": (rng.normal(size=sizes[i:i + 2]) / np.sqrt(sizes[i])).astype(
      np.float32), "bias": (0.1 * rng.normal(size=sizes[i + 1])).astype(np.float32)}
          for i, name in enumerate(emulator.LAYER_NAMES)}


@pytest.fixture(scope="module")
def chain():
  nets = networks.make_networks(dataclasses.replace(config.get_config("smoke"), **TINY))
  gen = nets.init(jax.random.PRNGKey(1))[0]
  em_params = _random_emulator(np.random.default_rng(0), n_hidden=16, n_pix=N_NET + N_DROP)
  y = population.sample_labels(64, np.random.default_rng(0))
  em = emulator.Emulator(params=em_params, y_min=y.min(0) - 0.1, y_max=y.max(0) + 0.1)
  return ModelChain(em, CycleModel(nets, gen))


@pytest.fixture(scope="module")
def stars(chain):
  rng = np.random.default_rng(3)
  y = population.sample_labels(11, rng)  # 11: not a multiple of the 8 devices (padding)
  z = rng.normal(size=(11, *chain.nets.cfg.zsp_shape)).astype(np.float32)
  return y.astype(np.float32), z


def test_derivatives_match_finite_differences_and_check_grads(chain, stars):
  y, z = stars
  n = len(y)
  d = lines.derivative_spectra(chain, y, z)
  assert d["d_payne"].shape == d["d_synth_to_obs"].shape == (n, N_NET, 25)
  width = lines.box_width(chain)
  nets = chain.nets
  # The reference in float64: central differences of the chain's own functions, θ step 1e-6
  # (no LeakyReLU kink crossed, rounding ~1e-10), for all 25 labels of every star.
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), chain.params)
    theta = jnp.asarray(chain.scale(y.astype(np.float64)), jnp.float64)  # [n, 25]
    z64 = jnp.asarray(z, jnp.float64)

    def models(t, zz):
      h = split_features(nets, p64["gen"], zz[None])[0]
      x = payne_scaled(p64["emulator"], t)[N_DROP:]
      return jnp.concatenate([x, synth_to_obs_scaled(nets, p64, t, h)])

    step = 1e-6
    t_pm = theta[:, None, None] + step * jnp.eye(25)[None, None] * jnp.array([1.0, -1.0])[
        None, :, None, None]  # [n stars, ±, 25 labels, 25]
    z_pm = jnp.broadcast_to(z64[:, None, None], (n, 2, 25, *z64.shape[1:]))
    out = jax.jit(jax.vmap(models))(jnp.concatenate([t_pm.reshape(-1, 25), theta]),
                                    jnp.concatenate([z_pm.reshape(-1, *z64.shape[1:]), z64]))
    primal, out = np.asarray(out[-n:]), out[:-n].reshape(n, 2, 25, -1)
    fd = np.asarray((out[:, 0] - out[:, 1]) / (2 * step)).transpose(0, 2, 1) / width
    check_grads(jax.jit(lambda t: models(t, z64[0])), (theta[0],), order=1, modes=("fwd",),
                eps=1e-6)
  np.testing.assert_allclose(d["payne"], primal[:, :N_NET], atol=1e-5)
  np.testing.assert_allclose(d["synth_to_obs"], primal[:, N_NET:], atol=1e-5)
  for key, ref in (("d_payne", fd[:, :N_NET]), ("d_synth_to_obs", fd[:, N_NET:])):
    scale = np.abs(ref).max(axis=1, keepdims=True)  # per star and label (physical units)
    np.testing.assert_allclose(d[key] / scale, ref / scale, atol=1e-4)


def test_reducers_equal_the_full_computation(chain, stars, capsys):
  y, z = stars
  feats = lines.Features(start=[N_DROP - 3, 60, 90, 100, 150, N_DROP + N_NET - 4, 10],
                         end=[N_DROP + 5, 68, 96, 112, 151, N_DROP + N_NET + 2, 20],
                         label=[MG, FE, L.label_index("C"), L.label_index("N"), O, MG, FE])
  pix = np.zeros(N_NET + N_DROP, bool)
  pix[[60, 61, 62, 100, 101, 200]] = True
  x_true = np.random.default_rng(5).uniform(0.8, 1.0, (11, N_NET + N_DROP)).astype(np.float32)
  bins = lines.TeffLoggBins(teff_edges=(3000.0, 4500.0, 8000.0), logg_edges=(0.0, 3.0, 5.5))
  red = {"a": lines.attribution_reducer(feats, bins=bins, keep_scores=True),
         "r": lines.recovery_reducer(pix, bins=bins)}
  out = lines.reduce_label_sets(chain, y, z, red, extras={"x_true": x_true}, chunk_per_device=1)
  full = lines.derivative_spectra(chain, y, z)
  ref = lines.attribute_features(full["d_payne"], full["d_synth_to_obs"], feats)
  a = out["a"]
  assert a["n"] == 11 and a["winner"].shape == (11, 7)
  np.testing.assert_allclose(a["score"], ref["score"], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(a["winner"], ref["predicted"])
  assert (a["winner"][:, -1] == -1).all()  # wholly in the 47 dropped pixels
  np.testing.assert_allclose(a["mean_attribution"], ref["attribution"].mean(0), rtol=1e-4,
                             atol=1e-6)
  assert a["accuracy"] == pytest.approx(lines.attribution_accuracy(
      np.where(np.arange(7) == 6, -1, feats.label), ref["predicted"])["accuracy"])
  rec = lines.recovery_errors(full["synth_to_obs"], full["payne"], x_true[:, N_DROP:],
                              pix[N_DROP:], y, bins=bins)
  for k in ("recovered", "no_recovery"):
    assert out["r"][k] == pytest.approx(rec[k], rel=1e-5)
    np.testing.assert_allclose(out["r"][f"{k}_binned"], rec[f"{k}_binned"], rtol=1e-5)
  np.testing.assert_array_equal(out["r"]["bin_counts"], rec["bin_counts"])
  assert out["r"]["bin_counts"].sum() == 11
  # One z_sp [L, C] shared by all label sets = the same z_sp given to each.
  zm = lines.mean_zsp(z)
  shared = lines.reduce_label_sets(chain, y, zm, {"r": red["r"]}, extras={"x_true": x_true},
                                   chunk_per_device=1)["r"]
  capsys.readouterr()
  each = lines.reduce_label_sets(chain, y, np.broadcast_to(zm, z.shape), red,  # compiled above
                                 extras={"x_true": x_true}, chunk_per_device=1,
                                 progress=True)["r"]
  assert "derivatives" in capsys.readouterr().err  # the bar, over the 11 label sets
  np.testing.assert_allclose(shared["per_star"]["recovered"], each["per_star"]["recovered"],
                             rtol=1e-6)
  assert not np.allclose(shared["per_star"]["recovered"], out["r"]["per_star"]["recovered"])


def test_strong_and_recovered_features_and_detection_scores_are_exact():
  jac = np.zeros((120, 25))
  jac[10:16, MG] = [-0.03, -0.05, -0.12, -0.08, -0.03, -0.01]  # feature 10:15 (seed at 12)
  jac[40:44, MG] = -0.05  # below −0.02 but never below −0.1: no feature
  jac[70:73, FE] = [-0.025, -0.2, -0.021]
  jac[:, TEFF] = -1.0  # not an abundance
  f = lines.strong_features(jac, offset=N_DROP)
  np.testing.assert_array_equal(f.start, [10 + N_DROP, 70 + N_DROP])
  np.testing.assert_array_equal(f.end, [15 + N_DROP, 73 + N_DROP])
  np.testing.assert_array_equal(f.label, [MG, FE])
  assert f.element == ["Mg", "Fe"]

  x_payne = np.ones(200)
  x_so = np.ones(200)
  x_so[20:26] -= [0.004, 0.01, 0.05, 0.03, 0.006, 0.001]  # found: 21:25 (grown to −0.005)
  x_so[60:63] -= 0.015  # above the threshold: not found
  x_so[100:104] -= 0.03  # found, not removed: spurious
  x_so[150:152] -= 0.025  # found, overlaps the second removed feature
  found = lines.recovered_features(x_so, x_payne, offset=0)
  np.testing.assert_array_equal(found.start, [21, 100, 150])
  np.testing.assert_array_equal(found.end, [25, 104, 152])
  truth = lines.Features(start=[22, 140, 60], end=[30, 151, 63], label=[MG, FE, O])
  s = lines.detection_scores(found, truth)
  assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
  np.testing.assert_array_equal(s["recovered"], [True, True, False])
  np.testing.assert_array_equal(s["spurious"], [False, True, False])


def test_broad_responders_do_not_win_a_feature_they_do_not_own():
  """Mg owns a missing line at 50:58; O has a broad small response everywhere that, summed
  over the feature, beats Mg's; Fe (electron donor) weakens every line; Teff is no candidate."""
  p = 300
  d_payne = np.zeros((p, 25), np.float32)
  d_so = np.zeros((p, 25), np.float32)
  d_so[53:56, MG] = -0.05  # the line the transfer added: −0.15 over the feature
  d_so[:, O] = -0.025  # broad: −0.2 over the feature
  d_so[:, FE] = 0.01
  d_so[50:58, TEFF] = -1.0
  d_so[200:204, O] -= 0.2  # an O line the transfer also added
  feats = lines.Features(start=[50 + N_DROP, 200 + N_DROP], end=[58 + N_DROP, 204 + N_DROP],
                         label=[MG, O])  # on the 7214 grid; the arrays are network pixels
  raw = lines.attribution_scores(jnp.asarray(d_payne), jnp.asarray(d_so), jnp.asarray([50, 200]),
                                 jnp.asarray([58, 204]))["attribution"]
  assert np.asarray(lines.ABUNDANCE_LABELS)[np.argmin(raw[0])] == O  # raw sums would say O
  out = lines.attribute_features(d_payne, d_so, feats)
  np.testing.assert_array_equal(out["predicted"], [MG, O])
  np.testing.assert_array_equal(out["predicted_raw_sums"], [O, O])
  assert out["ranking"][0, 0] == MG and TEFF not in out["ranking"]
  assert out["ranking"][0, -1] == FE  # positive: the line weakens with Fe
  acc = lines.attribution_accuracy(feats.label, out["predicted"])
  assert acc["accuracy"] == 1.0 and acc["n_scored"] == 2


def test_owner_response_against_the_truth():
  """Two Mg features and one Fe feature; the model gives Mg's lines half the true response and
  makes the Fe line respond to O more than to Fe."""
  p = 300
  truth = np.zeros((p, 25), np.float32)
  model = np.zeros((p, 25), np.float32)
  truth[10:14, MG], truth[40:42, MG] = -0.1, -0.3  # feature sums −0.4 and −0.6
  model[10:14, MG], model[40:42, MG] = -0.05, -0.15  # −0.2 and −0.3
  truth[100:105, FE] = -0.2  # −1.0
  model[100:105, FE], model[100:105, O] = -0.02, -0.1  # −0.1 and −0.5
  feats = lines.Features(start=np.array([10, 40, 100]) + N_DROP,
                         end=np.array([14, 42, 105]) + N_DROP, label=[MG, MG, FE])
  r = lines.owner_response(model, truth, feats)
  assert set(r) == {"Mg_H", "Fe_H"}
  assert r["Mg_H"]["n_features"] == 2
  np.testing.assert_allclose([r["Mg_H"]["own_model"], r["Mg_H"]["own_truth"],
                              r["Mg_H"]["own_ratio"]], [-0.25, -0.5, 0.5], rtol=1e-5)
  assert r["Mg_H"]["top_model"] == r["Mg_H"]["top_truth"] == "Mg_H"
  np.testing.assert_allclose([r["Fe_H"]["own_model"], r["Fe_H"]["top_model_value"]],
                             [-0.1, -0.5], rtol=1e-5)
  assert r["Fe_H"]["top_model"] == "O_H" and r["Fe_H"]["top_truth"] == "Fe_H"


def test_cn_confusion_and_accuracy():
  c, n = L.label_index("C"), L.label_index("N")
  true = np.array([c, c, n, n, MG, FE, -1])
  pred = np.array([[c, n, n, O, MG, MG, FE], [n, n, c, c, FE, FE, MG]])
  table = lines.cn_confusion(true, pred)
  np.testing.assert_array_equal(table, [[1, 3, 0], [2, 1, 1]])
  acc = lines.attribution_accuracy(true, pred)
  assert acc["n_scored"] == 4 and acc["n_correct"] == 2 and acc["accuracy"] == 0.5
  assert acc["cn_group_accuracy"] == pytest.approx(7 / 8)


def test_zsp_choices(chain, stars):
  y_min, y_max = np.zeros(25), np.ones(25)
  y_max[0] = 1000.0  # Teff: a 1000 K wide box
  y_obs = np.zeros((3, 25))
  y_obs[:, 0] = [0.0, 400.0, 100.0]
  y_obs[:, 1] = [0.0, 0.0, 0.6]
  y = np.zeros((2, 25))
  y[:, 0] = [150.0, 380.0]  # the first's nearest in raw units would be star 2
  y[:, 1] = [0.0, 0.0]
  np.testing.assert_array_equal(lines.nearest_observed(y, y_obs, y_min, y_max, chunk=4), [0, 1])
  z_obs = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)
  np.testing.assert_array_equal(lines.zsp_for_labels(y, y_obs, z_obs, y_min, y_max), z_obs[[0, 1]])
  np.testing.assert_allclose(lines.zsp_for_labels(y, y_obs, z_obs, y_min, y_max, "mean"),
                             z_obs.mean(0))
  assert lines.DEFAULT_ZSP == "nearest"
  with pytest.raises(ValueError):
    lines.zsp_for_labels(y, y_obs, z_obs, y_min, y_max, "median")
  # With every observed star's z_sp the same, the two choices agree exactly.
  ys, z = stars
  z_same = np.repeat(z[:1], 5, axis=0)
  feats = lines.Features(start=[60, 100], end=[68, 112], label=[FE, MG])
  s = lines.zsp_choice_sensitivity(chain, ys[:6], ys[6:], z_same,
                                   lines.attribution_reducer(feats), chunk_per_device=1)
  assert s["winner_agreement"] == 1.0 and s["predicted_agreement"] == 1.0
  assert s["mean_score_max_rel_diff"] < 1e-5


def test_bins_and_removed_features():
  bins = lines.TeffLoggBins(teff_edges=(4000.0, 5000.0, 6000.0), logg_edges=(1.0, 3.0))
  y = np.zeros((4, 25), np.float32)
  y[:, 0] = [4500.0, 5500.0, 3000.0, 5000.0]
  y[:, 1] = [2.0, 2.0, 2.0, 3.5]
  np.testing.assert_array_equal(np.asarray(bins.index(jnp.asarray(y))), [0, 1, 2, 2])
  means, counts = lines.binned_mean(np.array([1.0, 2.0, 5.0, 7.0]), y, bins)
  np.testing.assert_array_equal(counts, [[1], [1]])
  np.testing.assert_allclose(means, [[1.0], [2.0]])
  world = WorldConfig(experiment="new_lines")
  rem = lines.removed_features(world)
  assert len(rem) == 133 and set(rem.label) <= set(lines.ABUNDANCE_LABELS)
  np.testing.assert_array_equal(rem.pixel_mask(), masked_pixels(world))


def test_identify_lines_on_a_hand_made_star():
  """A star whose transfer adds an Mg and an Fe line (both removed) but not a removed C line;
  both models share an Si line; O responds a little everywhere."""
  p, si = 300, L.label_index("Si")
  x_p = np.ones((1, p), np.float32)
  x_p[0, 120:125] -= 0.1
  x_so = x_p.copy()
  x_so[0, 50:58] -= [0.006, 0.01, 0.03, 0.08, 0.08, 0.03, 0.01, 0.006]
  x_so[0, 200:206] -= [0.01, 0.05, 0.05, 0.05, 0.05, 0.01]
  x_so[0, 280:284] -= 0.01  # a wiggle above the threshold
  d_p = np.zeros((1, p, 25), np.float32)
  d_p[0, 120:125, si] = -0.15
  d_so = d_p.copy()
  d_so[0, 52:57, MG] = [-0.05, -0.05, -0.12, -0.05, -0.05]
  d_so[0, 200:206, FE] = -0.12
  d_so[0, :, O] = -0.025
  spectra = {"payne": x_p, "synth_to_obs": x_so, "d_payne": d_p, "d_synth_to_obs": d_so}
  removed = lines.Features(start=np.array([50, 200, 260]) + N_DROP,
                           end=np.array([58, 206, 265]) + N_DROP,
                           label=[MG, FE, L.label_index("C")])
  out = lines.identify_lines(spectra, removed)
  np.testing.assert_array_equal(out["recovered"].start, np.array([50, 200]) + N_DROP)
  np.testing.assert_array_equal(out["recovered"].end, np.array([58, 206]) + N_DROP)
  assert out["detection"]["precision"] == 1.0
  assert out["detection"]["recall"] == pytest.approx(2 / 3)
  np.testing.assert_array_equal(out["removed_attribution"]["predicted"][:2], [MG, FE])
  assert out["removed_attribution"]["accuracy"]["accuracy"] == 1.0
  np.testing.assert_array_equal(out["removed_attribution"]["accuracy"]["cn_confusion"],
                                [[0, 0, 1], [0, 0, 0]])
  np.testing.assert_array_equal(out["recovered_attribution"]["owner"], [MG, FE])
  np.testing.assert_array_equal(out["recovered_attribution"]["predicted"], [MG, FE])
  assert out["strong_payne"].element == ["Si"]
  assert out["strong_synth_to_obs"].element == ["Mg", "Si", "Fe"]
