"""Batched label fitting (Eq. 9, 10, 11): recovery within formal errors, agreement with scipy,
bad spectra, retries, radial velocity, Cycle-StarNet objectives, files and the CLI.

Fast by construction: small random emulators (hidden 64–128 units) on the full 7214-pixel grid,
the `smoke` networks, and a few hundred spectra at most; every label is free.
"""

import json
import os
import warnings

import chex
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclestar_jax import fitting as F
from cyclestar_jax.emulator import Emulator, create_emulator_params, emulator_apply, save_emulator
from cyclestar_jax.labels import N_LABELS, label_index, scale_labels, unscale_labels
from cyclestar_jax.resources import N_DROP, N_PIX, spectra_mean_std, wavelength

Y_MIN = np.array([3000.0, 0.0, 0.5] + [-2.0] * 20 + [5.0, 0.0])
Y_MAX = np.array([7000.0, 5.0, 3.0] + [0.6] * 20 + [90.0, 10.0])
KEY_LABELS = ("Teff", "logg", "Fe_H")


def _emulator(seed=0, hidden=128, n_pix=N_PIX, smooth=0.0) -> Emulator:
  """A random emulator giving flux 1 ± ~0.1 (optionally smooth along the pixels)."""
  params = create_emulator_params(jax.random.PRNGKey(seed), n_hidden=hidden, n_pix=n_pix)
  k = np.asarray(params["dense_2"]["kernel"]) * 0.1
  if smooth:
    from scipy.ndimage import gaussian_filter1d

    k = gaussian_filter1d(k, smooth, axis=1) * np.sqrt(2 * np.sqrt(np.pi) * smooth)
  params["dense_2"] = {"kernel": jnp.asarray(k, jnp.float32), "bias": jnp.ones(n_pix)}
  return Emulator(params=params, y_min=Y_MIN, y_max=Y_MAX)


def _mock(em: Emulator, n: int, sigma: float = 0.01, seed: int = 1):
  """Spectra from the emulator itself + Gaussian noise; truth and catalogue (truth + scatter)."""
  rng = np.random.default_rng(seed)
  theta = rng.uniform(-0.3, 0.3, (n, em.n_labels))
  flux = np.asarray(emulator_apply(em.params, jnp.asarray(theta, jnp.float32)))
  x = flux + sigma * rng.normal(size=flux.shape)
  err = np.full_like(x, sigma)
  y_cat = unscale_labels(theta + rng.normal(0, 0.03, theta.shape), Y_MIN, Y_MAX)
  return x.astype(np.float32), err.astype(np.float32), unscale_labels(theta, Y_MIN, Y_MAX), y_cat


def _payne64(params, theta, jac=False):
  """The emulator in NumPy float64 (an independent implementation for scipy), and optionally
  its Jacobian [n_pix, n_labels] (exact: the network is piecewise linear)."""
  h, d = np.asarray(theta, np.float64), np.eye(len(theta))
  for i, name in enumerate(("dense_0", "dense_1", "dense_2")):
    k = np.asarray(params[name]["kernel"], np.float64)
    h, d = h @ k + np.asarray(params[name]["bias"]), d @ k
    if i < 2:
      slope = np.where(h > 0, 1.0, 0.01)
      h, d = h * slope, d * slope
  return d.T if jac else h


@pytest.fixture(scope="module")
def emu():
  return _emulator(0)


@pytest.fixture(scope="module")
def fitter(emu):
  cfg = F.FitConfig(method="emulator", batch_size=64, starts=("catalogue", "median"))
  return F.LabelFitter(emu, cfg)


@pytest.fixture(scope="module")
def sample(emu):
  return _mock(emu, 160)


@pytest.fixture(scope="module")
def fitted(fitter, sample):
  x, err, y_true, y_cat = sample
  return fitter.fit(x, err, y_start=y_cat)


# ---------------------------------------------------------------------------------------------


def test_prepare_observed_weights():
  x = np.array([[1.0, 0.9, np.nan, 0.8, 1.1, 0.7]])
  err = np.array([[0.01, 0.001, 0.01, 0.06, 0.0, 0.02]])
  msk = np.array([[1, 1, 1, 1, 1, 0]])
  xs, w = F.prepare_observed(x, err, msk)
  # 0.001 is floored to 0.005; NaN flux, error > 0.05, zero error and mask 0 give weight 0.
  np.testing.assert_allclose(w, [[1e4, 4e4, 0, 0, 0, 0]], rtol=1e-6)
  np.testing.assert_array_equal(xs, np.float32([[1.0, 0.9, 1.0, 0.8, 1.1, 0.7]]))
  _, w = F.prepare_observed(x[:, :2], None, None)  # no errors: the floor everywhere
  np.testing.assert_allclose(w, [[4e4, 4e4]], rtol=1e-6)
  with pytest.raises(ValueError, match="x_err has shape"):
    F.prepare_observed(x, err[:, :3])


def test_config_validation():
  with pytest.raises(ValueError, match="method"):
    F.FitConfig(method="payne")
  with pytest.raises(ValueError, match="fit_rv"):
    F.FitConfig(method="obs", fit_rv=True)
  with pytest.raises(ValueError, match="n_grid"):
    F.FitConfig(starts=("grid",))
  with pytest.raises(KeyError, match="unknown label"):
    F.FitConfig(free_labels=("Teff", "Zr_H"))
  assert F.FitConfig(starts=("catalogue", "grid"), n_grid=3).n_starts == 4


def test_recovers_truth_within_formal_errors(fitted, sample):
  """Emulator spectra + noise: pulls (fit − truth)/σ have widths 0.8–1.2 (160 spectra)."""
  _, _, y_true, _ = sample
  assert np.all(fitted.flags == 0) and fitted.converged.all()
  pull = (fitted.y - y_true) / fitted.y_err
  for name in KEY_LABELS:
    width = np.std(pull[:, label_index(name)])
    assert 0.8 < width < 1.2, (name, width)
  widths = np.std(pull, axis=0)
  assert np.mean((widths > 0.8) & (widths < 1.2)) >= 0.9, widths
  assert abs(np.median(fitted.chi2_r) - 1.0) < 0.02
  assert abs(np.mean(fitted.mean_norm_resid)) < 0.01
  assert np.all(fitted.n_pix_fit == N_PIX)
  assert np.median(fitted.n_iter) < 60 and np.all(fitted.n_evals >= fitted.n_iter)
  assert set(np.unique(fitted.start)) <= {0, 1}


def test_one_device_equals_eight(emu, sample, fitted):
  """The sharded fit gives the same answers as the fit on a single device."""
  if jax.local_device_count() < 2:
    pytest.skip("needs several (fake) devices")
  x, err, _, y_cat = sample
  cfg = F.FitConfig(method="emulator", batch_size=8, starts=("catalogue", "median"))
  one = F.LabelFitter(emu, cfg, devices=jax.local_devices()[:1])
  assert one.n_dev == 1 and F.LabelFitter(emu, cfg).n_dev == jax.local_device_count()
  res = one.fit(x[:12], err[:12], y_start=y_cat[:12], y_median=np.median(y_cat, axis=0))
  # Same χ² to float32 precision; labels to a small fraction of their errors.
  np.testing.assert_allclose(res.chi2, fitted.chi2[:12], rtol=2e-5)
  assert np.max(np.abs(res.y - fitted.y[:12]) / fitted.y_err[:12]) < 0.1


def test_final_jacobians_in_bounded_blocks(emu, sample, monkeypatch):
  """However many slots, the Jacobians at the optimum are taken a few spectra at a time
  (memory); blocks that do not divide the rows give the same answers."""
  x, err, _, y_cat = sample
  cfg = F.FitConfig(method="emulator", batch_size=64, starts=("catalogue", "median"))

  def fit():
    return F.LabelFitter(emu, cfg, devices=jax.local_devices()[:1]).fit(
        x[:23], err[:23], y_start=y_cat[:23], y_median=np.median(y_cat, axis=0))

  whole = fit()
  per_spectrum = F.chunk._JACOBIAN_OVERHEAD * 4 * emu.n_labels * emu.n_pix
  monkeypatch.setattr(F.chunk, "_FINALIZE_BYTES", 5 * per_spectrum)  # blocks of 5 rows
  blocked = fit()
  np.testing.assert_array_equal(blocked.y, whole.y)
  np.testing.assert_allclose(blocked.chi2, whole.chi2, rtol=1e-6)
  np.testing.assert_allclose(blocked.y_err, whole.y_err, rtol=1e-4)


def _tame(em: Emulator, seed: int = 0) -> Emulator:
  """The emulator with hidden biases moved so that most units stay on one side of their kink
  over the box: χ² is then nearly quadratic with one minimum (a random LeakyReLU network has
  local minima Δχ² ~ 1–5 apart, where two correct optimizers may stop in different ones)."""
  p = {k: {kk: np.asarray(vv, np.float64) for kk, vv in v.items()} for k, v in em.params.items()}
  h = np.random.default_rng(seed).uniform(-0.5, 0.5, (2000, em.n_labels))
  for name in ("dense_0", "dense_1"):
    pre = h @ p[name]["kernel"] + p[name]["bias"]
    med = np.median(pre, axis=0)
    p[name]["bias"] = p[name]["bias"] - med + np.sign(med) * 2.0 * pre.std(axis=0)
    pre = h @ p[name]["kernel"] + p[name]["bias"]
    h = np.where(pre > 0, pre, 0.01 * pre)
  params = {k: {kk: jnp.asarray(vv, jnp.float32) for kk, vv in v.items()} for k, v in p.items()}
  return Emulator(params=params, y_min=em.y_min, y_max=em.y_max)


@pytest.mark.parametrize("precondition", [False, True])
def test_matches_scipy_bounded_least_squares(emu, precondition):
  """The optimum equals scipy's bounded least squares (float64, independent model code, exact
  Jacobian, same start), including a star whose best fit sits on a bound of the box, with and
  without the Gauss–Newton diagonal scaling (`LBFGSOptions.precondition`)."""
  from scipy.optimize import least_squares

  em = _tame(emu)
  x, err, y_true, y_cat = _mock(em, 5, seed=7)
  theta = scale_labels(y_true, Y_MIN, Y_MAX)
  theta[4, 0] = 0.7  # Teff beyond the box: the bounded optimum is at +0.5
  x[4] = _payne64(em.params, theta[4]) + 0.01 * np.random.default_rng(0).normal(size=N_PIX)
  y_cat[4] = unscale_labels(np.clip(theta[4], -0.45, 0.45), Y_MIN, Y_MAX)
  cfg = F.FitConfig(method="emulator", batch_size=8, starts=("catalogue",),
                    lbfgs=F.LBFGSOptions(precondition=precondition))
  res = F.LabelFitter(em, cfg).fit(x, err, y_start=y_cat)
  for i in range(5):
    t0 = np.clip(scale_labels(y_cat[i], Y_MIN, Y_MAX), -0.49, 0.49)
    ref = least_squares(lambda t, i=i: (x[i] - _payne64(em.params, t)) / err[i], t0,
                        jac=lambda t, i=i: -_payne64(em.params, t, jac=True) / err[i][:, None],
                        bounds=(-0.5, 0.5), x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12)
    # χ² agrees to float32 precision of a sum over 7214 pixels, labels to ≪ 1σ.
    assert abs(res.chi2[i] - 2.0 * ref.cost) < 0.05, (i, res.chi2[i], 2.0 * ref.cost)
    ours = scale_labels(res.y[i], Y_MIN, Y_MAX)
    sigma = res.y_err[i] / (Y_MAX - Y_MIN)
    assert np.max(np.abs(ours - ref.x) / sigma) < 0.15, (i, np.abs(ours - ref.x) / sigma)
  assert ref.x[0] == pytest.approx(0.5) and res.y[4, 0] == pytest.approx(Y_MAX[0], abs=0.01)
  assert res.flags[4] == F.FLAGS["AT_BOUND"] and np.all(res.flags[:4] == 0)


def test_bad_spectra_are_flagged_and_spoil_nothing(fitter, sample, fitted):
  x, err, _, y_cat = sample
  n = 24
  x, err, msk = x[:n].copy(), err[:n].copy(), np.ones((n, N_PIX), bool)
  msk[3] = False  # all masked
  x[7] = np.nan  # no finite flux
  err[11] = 0.0  # zero errors
  x[15, :100] = np.nan  # a few bad pixels only: still fitted
  y_med = np.median(y_cat, axis=0)
  res = fitter.fit(x, err, msk, y_start=y_cat[:n], y_median=y_med)
  bad = [3, 7, 11]
  assert np.all(res.flags[bad] == F.FLAGS["BAD_DATA"])
  assert np.all(np.isnan(res.y[bad])) and np.all(res.start[bad] == -1)
  good = np.setdiff1d(np.arange(n), bad + [15])
  np.testing.assert_allclose(res.chi2[good], fitted.chi2[good], rtol=2e-5)
  assert np.all(np.abs(res.y[good] - fitted.y[good]) < 1e-3 * fitted.y_err[good])
  assert res.flags[15] == 0 and res.n_pix_fit[15] == N_PIX - 100
  assert np.all(np.isfinite(res.y[good])) and res.converged[good].all()


def test_nonfinite_start_is_retried_and_flagged():
  """A start where the model overflows is retried from the median; all-overflow fails."""
  em = _emulator(3, hidden=64)
  x, err, _, y_cat = _mock(em, 6, seed=5)
  p = {k: dict(v) for k, v in em.params.items()}
  # Hidden unit 0 of both layers carries leaky(leaky(θ_Teff − 0.35)) alone, and adds 1e17 times
  # it to every pixel: χ² overflows for scaled Teff ≳ 0.37, and it and its gradient stay finite
  # below.
  p["dense_0"]["kernel"] = p["dense_0"]["kernel"].at[:, 0].set(0.0).at[0, 0].set(1.0)
  p["dense_0"]["bias"] = p["dense_0"]["bias"].at[0].set(-0.35)
  p["dense_1"]["kernel"] = (p["dense_1"]["kernel"].at[0, :].set(0.0).at[:, 0].set(0.0)
                            .at[0, 0].set(1.0))
  p["dense_1"]["bias"] = p["dense_1"]["bias"].at[0].set(0.0)
  p["dense_2"]["kernel"] = p["dense_2"]["kernel"].at[0, :].set(1e17)
  bomb = F.LabelFitter(Emulator(params=p, y_min=Y_MIN, y_max=Y_MAX), F.FitConfig(
      method="emulator", batch_size=8, starts=("catalogue",)))
  y_cat[:2, 0] = unscale_labels(np.full(N_LABELS, 0.45), Y_MIN, Y_MAX)[0]
  res = bomb.fit(x, err, y_start=y_cat)
  assert np.all(res.flags[:2] & F.FLAGS["RETRIED"]) and not np.any(res.flags[2:] &
                                                                    F.FLAGS["RETRIED"])
  assert np.all(np.isfinite(res.y)) and np.all(np.isfinite(res.chi2))
  assert np.all(scale_labels(res.y, Y_MIN, Y_MAX)[:, 0] < 0.38)
  # Flux of 1e38 makes χ² infinite everywhere: every start and fallback fails.
  res = bomb.fit(np.full_like(x, 1e38), err, y_start=y_cat)
  assert np.all(res.flags == F.FLAGS["FAILED"] | F.FLAGS["RETRIED"])
  assert np.all(np.isnan(res.y)) and np.all(res.start == -1)


def test_pixel_count_mismatch_is_an_error_before_fitting(fitter, tmp_path):
  with pytest.raises(F.PixelCountError, match="7000 pixels but the model gives 7214"):
    fitter.fit(np.ones((2, 7000)), np.ones((2, 7000)))
  from cyclestar_jax.config import get_config
  from cyclestar_jax.networks import make_networks

  small = _emulator(0, hidden=8, n_pix=7100)
  with pytest.raises(F.PixelCountError, match="differ by the 47 dropped"):
    F.LabelFitter(small, F.FitConfig(method="obs"), cycle_model=F.CycleModel(
        make_networks(get_config("smoke")), {}))
  path = tmp_path / "obs.h5"
  with h5py.File(path, "w") as h:
    h["spectra test"] = np.ones((3, 7000), np.float32)
  emu_path = save_emulator(tmp_path / "emu.npz", fitter.emulator.params, Y_MIN, Y_MAX)
  with pytest.raises(F.PixelCountError, match=r"obs.h5 \(test\) has spectra of 7000"):
    F.fit_file(F.FitJob(path, tmp_path / "out.h5", F.FitConfig(method="emulator", batch_size=8),
                        model_dir=emu_path))
  assert not (tmp_path / "out.h5").exists()


def test_radial_velocity_fit():
  """Eq. 9 with The Payne's Doppler term recovers rv within its formal error."""
  em = _emulator(2, hidden=64, smooth=3.0)
  rng = np.random.default_rng(4)
  n = 24
  theta = rng.uniform(-0.3, 0.3, (n, N_LABELS))
  rv = rng.uniform(-5.0, 5.0, n)
  lw = np.log10(wavelength())
  model = jax.jit(jax.vmap(lambda t, v: F.doppler_shift(emulator_apply(em.params, t), v, lw)))
  x = np.asarray(model(jnp.asarray(theta, jnp.float32), jnp.asarray(rv, jnp.float32)))
  x = x + 0.01 * rng.normal(size=x.shape)
  y_cat = unscale_labels(theta + rng.normal(0, 0.03, theta.shape), Y_MIN, Y_MAX)
  cfg = F.FitConfig(method="emulator", fit_rv=True, batch_size=8, starts=("catalogue",))
  res = F.LabelFitter(em, cfg).fit(x, np.full_like(x, 0.01), y_start=y_cat)
  pull = (res.rv - rv) / res.rv_err
  assert np.all(np.isfinite(pull)) and np.std(pull) < 1.6 and np.all(np.abs(pull) < 5)
  assert np.median(res.rv_err) < 1.0  # km/s


def test_doppler_shift_moves_a_line():
  lw = np.log10(wavelength())
  lam = wavelength()
  centre = lam[4000]
  flux = 1 - 0.5 * np.exp(-0.5 * ((lam - centre) / 0.6) ** 2)
  shifted = np.asarray(F.doppler_shift(jnp.asarray(flux, jnp.float32), jnp.float32(30.0), lw))
  sl = slice(3950, 4050)
  w = 1 - shifted[sl]
  moved = np.sum(w * lam[sl]) / np.sum(w) - centre
  assert moved == pytest.approx(centre * 30.0 / F.SPEED_OF_LIGHT_KMS, rel=0.02)
  np.testing.assert_allclose(F.doppler_shift(jnp.asarray(flux), 0.0, lw), flux, atol=1e-6)


@pytest.fixture(scope="module")
def smoke_model():
  from cyclestar_jax.config import get_config
  from cyclestar_jax.networks import make_networks

  nets = make_networks(get_config("smoke"))
  return F.CycleModel(nets=nets, gen_params=nets.init(jax.random.PRNGKey(1))[0])


def test_cycle_objectives_end_to_end(smoke_model):
  """Eq. 10 and 11 with a randomly initialised smoke network run and give finite fits; the
  Eq. 11 model is T_synth→obs(Payne(θ)) with the star's own z_sp."""
  em = _emulator(1, hidden=64)
  x, err, _, y_cat = _mock(em, 8, seed=2)
  nets, gen = smoke_model.nets, smoke_model.gen_params
  mean, std = spectra_mean_std()
  # Eq. 10 end to end here; Eq. 11 end to end in the CLI test below.
  cfg = F.FitConfig(method="synth", batch_size=8, starts=("catalogue",),
                    lbfgs=F.LBFGSOptions(max_iter=40))
  res = F.LabelFitter(em, cfg, cycle_model=smoke_model).fit(x, err, y_start=y_cat)
  assert np.all(np.isfinite(res.y)) and np.all(np.isfinite(res.chi2))
  assert np.all(res.n_iter > 0) and np.all(res.n_pix_fit == N_PIX - N_DROP)
  assert not np.any(res.flags & (F.FLAGS["BAD_DATA"] | F.FLAGS["FAILED"]))
  obj = F.make_objective("obs", N_LABELS, N_PIX, nets=nets)
  params = {"emulator": em.params, "gen": gen}

  @jax.jit
  def both(x, theta):
    _, _, zsp = obj.prepare(params, x, jnp.ones_like(x))
    payne = (emulator_apply(em.params, theta)[N_DROP:] - mean) / std
    expect = nets.decode_obs(gen, nets.encode_synth(gen, payne[None]),
                             nets.encode_obs(gen, (x[:, N_DROP:] - mean) / std)[1])[0]
    return obj.model(params, zsp[0], theta), expect * std + mean

  got, expect = both(jnp.asarray(x[:1]), jnp.asarray(scale_labels(y_cat[0], Y_MIN, Y_MAX),
                                                      jnp.float32))
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)


def test_results_file_round_trip(fitted, tmp_path):
  path = tmp_path / "fit.h5"
  rows = np.arange(100, 100 + len(fitted))
  fitted.flags[2] |= F.FLAGS["NOT_CONVERGED"]
  try:
    h5, csv_path = F.save_results(path, fitted, rows=rows, attrs={"split": "test"})
  finally:
    fitted.flags[2] &= ~F.FLAGS["NOT_CONVERGED"]
  res, rows_back, attrs = F.read_results(h5)
  np.testing.assert_array_equal(rows_back, rows)
  for name in ("y", "y_err", "chi2", "chi2_r", "n_iter", "converged", "start", "y_start"):
    np.testing.assert_array_equal(getattr(res, name), getattr(fitted, name), err_msg=name)
  assert res.flags[2] == F.FLAGS["NOT_CONVERGED"] and res.method == "emulator"
  assert attrs["split"] == "test" and json.loads(attrs["flags"]) == F.FLAGS
  assert json.loads(attrs["label_names"])[0] == "Teff"
  lines = csv_path.read_text().splitlines()
  assert lines[0].startswith("row,Teff,Teff_err,logg,logg_err,Fe_H,Fe_H_err,chi2_r")
  assert len(lines) == len(fitted) + 1 and lines[3].endswith(",1,NOT_CONVERGED")
  assert float(lines[1].split(",")[1]) == pytest.approx(fitted.y[0, 0], rel=1e-5)
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
  with h5py.File(tmp_path / "other.h5", "w") as h:
    h["labels"] = np.zeros((1, 25))
  with pytest.raises(ValueError, match="format"):
    F.read_results(tmp_path / "other.h5")


def _write_obs(path, x, err, y):
  from cyclestar_jax.h5io import SpectraWriter

  with SpectraWriter(path, {"test": len(x)}) as w:
    w.write("test", 0, x=x, x_err=err, x_msk=np.ones(x.shape, bool), y=y,
            snr=np.full(len(x), 100.0))


def test_cli_emulator_and_obs_run_dir(tmp_path, smoke_model):
  """The CLI fits a file with an emulator (Eq. 9) and with a trained run directory (Eq. 11)."""
  from cyclestar_jax import checkpoint
  from cyclestar_jax.config import get_config
  from cyclestar_jax.train_step import create_train_state
  from experiments import fit_labels

  em = _emulator(4, hidden=32)
  x, err, _, y_cat = _mock(em, 6, seed=3)
  x[2] = np.nan
  obs = tmp_path / "obs.h5"
  _write_obs(obs, x, err, y_cat)
  emu_dir = tmp_path / "emulator"
  save_emulator(emu_dir / "emulator.npz", em.params, Y_MIN, Y_MAX)
  out = tmp_path / "fit_emu.h5"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # h5io's BadPixelWarning for row 2
    summary = fit_labels.main(["--model", str(emu_dir), "--obs", str(obs), "--method",
                               "emulator", "--out", str(out), "--batch-size", "8",
                               "--start", "1", "--no-progress"])
  assert summary["n"] == 5 and summary["n_fitted"] == 4 and summary["flags"]["BAD_DATA"] == 1
  res, rows, attrs = F.read_results(out)
  np.testing.assert_array_equal(rows, np.arange(1, 6))
  assert res.flags[1] == F.FLAGS["BAD_DATA"] and attrs["split"] == "test"
  assert out.with_suffix(".csv").exists()

  # A run directory as experiments.train writes it: config.json + checkpoints/.
  cfg = get_config("smoke")
  state = create_train_state(cfg, jax.random.PRNGKey(0))
  state = state.replace(gen_params=smoke_model.gen_params, gen_ema=smoke_model.gen_params)
  run = tmp_path / "run"
  ck = checkpoint.Checkpointer(run / "checkpoints", cfg)
  ck.save(state)
  ck.close()
  import dataclasses

  (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
  loaded = F.load_cycle_model(run)
  chex.assert_trees_all_equal(loaded.gen_params, smoke_model.gen_params)
  with pytest.raises(FileNotFoundError, match="--emulator"):
    fit_labels.main(["--model", str(run), "--obs", str(obs), "--out", str(out)])
  out2 = tmp_path / "fit_obs.h5"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    summary = fit_labels.main(["--model", str(run), "--emulator", str(emu_dir), "--obs",
                               str(obs), "--out", str(out2), "--batch-size", "8",
                               "--starts", "catalogue", "--max-iter", "30", "--no-progress"])
  res, _, attrs = F.read_results(out2)
  assert attrs["method"] == "obs" and attrs["equation"] == "Eq. 11"
  assert summary["n_fitted"] == 5 and np.all(np.isfinite(np.delete(res.y, 2, axis=0)))
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    F.load_cycle_model(tmp_path)
