"""The Payne emulator: network, loaders (npz, PyTorch, orbax), save, box check and training."""

import json
import os
import warnings

import chex
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyclestar_jax import emulator as emu
from cyclestar_jax import emulator_train as et
from cyclestar_jax import networks, plots
from cyclestar_jax.labels import LABEL_NAMES, N_LABELS, scale_labels
from cyclestar_jax.resources import N_PIX

N_PIX_SMALL = 40  # pixels of the small emulators used where the size does not matter


def _numpy_payne(w, b, x_min, x_max, y):
  """The Payne's own formula (spectral_model.py) in NumPy, float64: w are (out, in)."""
  h = (y - x_min) / (x_max - x_min) - 0.5
  for i in range(3):
    h = h @ np.asarray(w[i], np.float64).T + b[i]
    if i < 2:
      h = np.where(h > 0, h, 0.01 * h)
  return h


def _random_payne_arrays(rng, n_hidden=16, n_pix=N_PIX_SMALL, n_labels=N_LABELS):
  shapes = [(n_hidden, n_labels), (n_hidden, n_hidden), (n_pix, n_hidden)]
  w = [rng.normal(size=s).astype(np.float32) / np.sqrt(s[1]) for s in shapes]
  b = [rng.normal(size=s[0]).astype(np.float32) * 0.1 for s in shapes]
  x_min = rng.uniform(-1, 0, n_labels)
  x_max = x_min + rng.uniform(0.5, 2, n_labels)
  return w, b, x_min, x_max


def _small_emulator(seed=0, n_hidden=16, n_pix=N_PIX_SMALL):
  w, b, x_min, x_max = _random_payne_arrays(np.random.default_rng(seed), n_hidden, n_pix)
  return emu.Emulator(params=emu.params_from_payne_arrays(w, b), y_min=x_min, y_max=x_max)


def _labels_in_box(em, n, seed=1):
  rng = np.random.default_rng(seed)
  return em.y_min + (em.y_max - em.y_min) * rng.uniform(0.01, 0.99, (n, em.n_labels))


def test_full_size_network_shapes_and_parameter_count():
  params = jax.eval_shape(emu.create_emulator_params, jax.random.PRNGKey(0))  # no allocation
  assert networks.count_params(params) == 2_269_514  # docs/method.md, the reference emulator
  assert {k: v["kernel"].shape for k, v in params.items()} == {
      "dense_0": (25, 300), "dense_1": (300, 300), "dense_2": (300, 7214)}
  flux = jax.eval_shape(emu.emulator_apply, params, jnp.zeros((3, N_LABELS)))
  assert flux.shape == (3, N_PIX) and flux.dtype == jnp.float32
  assert emu.emulator_shape(params) == (25, 300, 7214)


def test_pure_apply_equals_predict_and_composes_with_transforms():
  em = _small_emulator()
  y = _labels_in_box(em, 37)
  pure = jax.jit(emu.emulator_apply)(em.params, jnp.asarray(scale_labels(y, em.y_min, em.y_max),
                                                            jnp.float32))
  np.testing.assert_allclose(em.predict(y), pure, rtol=1e-6, atol=1e-6)
  # chunked path (padded last chunk) and a single label set give the same numbers
  np.testing.assert_allclose(em.predict(y, chunk_size=8), pure, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(em.predict(y[5]), pure[5], rtol=1e-6, atol=1e-6)
  # inputs are padded to a few shapes: 33..64 label sets share one compiled program
  y64 = _labels_in_box(em, 64, seed=2)
  em.predict(y64[:33])
  compiled = emu._apply_jit._cache_size()
  for n in (34, 50, 64):
    np.testing.assert_allclose(em.predict(y64[:n]), em.predict(y64)[:n], rtol=1e-6, atol=1e-6)
  assert emu._apply_jit._cache_size() == compiled
  # the Emulator is a pytree: jit, vmap(jacfwd) and grad go through it
  np.testing.assert_allclose(jax.jit(lambda e, yy: e(yy))(em, y), pure, rtol=1e-5, atol=1e-6)
  jac = jax.vmap(jax.jacfwd(em))(jnp.asarray(y[:4], jnp.float32))
  assert jac.shape == (4, N_PIX_SMALL, N_LABELS)
  eps = 1e-3 * (em.y_max[0] - em.y_min[0])
  dy = np.zeros(N_LABELS)
  dy[0] = eps
  fd = (_numpy_payne(*_arrays(em), y[:4] + dy) - _numpy_payne(*_arrays(em), y[:4] - dy)) / (2 * eps)
  np.testing.assert_allclose(jac[:, :, 0], fd, rtol=2e-2, atol=2e-3)


def _arrays(em):
  a = emu.params_to_payne_arrays(em.params)
  return ([a[f"w_array_{i}"] for i in range(3)], [a[f"b_array_{i}"] for i in range(3)],
          em.y_min, em.y_max)


def test_bad_labels_are_errors():
  em = _small_emulator()
  with pytest.raises(ValueError, match=r"\[N, 25\]"):
    em.predict(np.zeros((3, 24)))
  y = _labels_in_box(em, 4)
  y[2, 3] = np.nan
  with pytest.raises(ValueError, match=r"non-finite values in rows \[2\]"):
    em.predict(y)


def test_payne_npz_loader_matches_numpy(tmp_path):
  rng = np.random.default_rng(3)
  w, b, x_min, x_max = _random_payne_arrays(rng, n_hidden=24, n_pix=N_PIX)
  path = tmp_path / "NN_normalized_spectra.npz"
  np.savez(path, **{f"w_array_{i}": w[i] for i in range(3)},
           **{f"b_array_{i}": b[i] for i in range(3)}, x_min=x_min, x_max=x_max)
  em = emu.load_emulator(path)
  assert em.source == str(path) and em.n_pix == N_PIX
  np.testing.assert_array_equal(em.y_min, x_min)
  y = x_min + (x_max - x_min) * rng.uniform(size=(20, N_LABELS))
  np.testing.assert_allclose(em.predict(y), _numpy_payne(w, b, x_min, x_max, y),
                             rtol=1e-5, atol=1e-5)


def test_torch_loader_matches_numpy(tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  n_hidden = 20
  model = torch.nn.Sequential(torch.nn.Linear(N_LABELS, n_hidden), torch.nn.LeakyReLU(0.01),
                              torch.nn.Linear(n_hidden, n_hidden), torch.nn.LeakyReLU(0.01),
                              torch.nn.Linear(n_hidden, N_PIX_SMALL))
  y_min = torch.rand(N_LABELS) - 1.0
  y_max = y_min + 0.5 + torch.rand(N_LABELS)
  path = tmp_path / "emulator.pth"
  torch.save({"Payne": model.state_dict(), "y_min": y_min, "y_max": y_max}, path)
  em = emu.load_emulator(path)
  y = (y_min + (y_max - y_min) * torch.rand(9, N_LABELS)).numpy().astype(np.float64)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  ref = _numpy_payne([sd["0.weight"], sd["2.weight"], sd["4.weight"]],
                     [sd["0.bias"], sd["2.bias"], sd["4.bias"]], y_min.numpy(), y_max.numpy(), y)
  np.testing.assert_allclose(em.predict(y), ref, rtol=1e-5, atol=1e-5)
  with torch.no_grad():
    out = model((torch.from_numpy(y).float() - y_min) / (y_max - y_min) - 0.5).numpy()
  np.testing.assert_allclose(em.predict(y), out, rtol=1e-5, atol=1e-5)
  # missing keys, top level and inside the state_dict
  bad = tmp_path / "bad.pth"
  torch.save({"Payne": {k: v for k, v in model.state_dict().items() if k != "4.weight"},
              "y_min": y_min}, bad)
  with pytest.raises(KeyError, match=r"bad\.pth.*\['y_max'\]"):
    emu.load_emulator(bad)
  torch.save({"Payne": {k: v for k, v in model.state_dict().items() if k != "4.weight"},
              "y_min": y_min, "y_max": y_max}, bad)
  with pytest.raises(KeyError, match=r"bad\.pth.*\['4\.weight'\]"):
    emu.load_emulator(bad)


def test_state_dict_conversion_and_missing_keys():
  em = _small_emulator(seed=5)
  w, b, _, _ = _arrays(em)
  sd = {"emulator.0.weight": w[0], "emulator.0.bias": b[0], "emulator.2.weight": w[1],
        "emulator.2.bias": b[1], "emulator.4.weight": w[2], "emulator.4.bias": b[2]}
  params = emu.params_from_torch_state_dict(sd, prefix="emulator.")
  jax.tree.map(np.testing.assert_array_equal, params, em.params)
  del sd["emulator.2.bias"]
  with pytest.raises(KeyError, match=r"cycle_model is missing keys \['emulator\.2\.bias'\]"):
    emu.params_from_torch_state_dict(sd, prefix="emulator.", source="cycle_model")


def test_npz_missing_keys_and_bad_shapes_are_named(tmp_path):
  w, b, x_min, x_max = _random_payne_arrays(np.random.default_rng(0))
  path = tmp_path / "partial.npz"
  np.savez(path, w_array_0=w[0], w_array_1=w[1], b_array_0=b[0], b_array_1=b[1], b_array_2=b[2],
           x_min=x_min)
  with pytest.raises(KeyError, match=r"partial\.npz is missing keys \['w_array_2', 'x_max'\]"):
    emu.load_emulator(path)
  path = tmp_path / "wrong.npz"
  np.savez(path, w_array_0=w[0], w_array_1=w[1][:, :5], w_array_2=w[2], b_array_0=b[0],
           b_array_1=b[1], b_array_2=b[2], x_min=x_min, x_max=x_max)
  with pytest.raises(ValueError, match=r"wrong\.npz: w_array_1 has shape \(16, 5\), "
                                       r"expected \(16, 16\)"):
    emu.load_emulator(path)
  with pytest.raises(FileNotFoundError, match="nowhere.npz"):
    emu.load_emulator(tmp_path / "nowhere.npz")


def test_outside_box_warns_once_with_count_and_labels():
  em = _small_emulator()
  y = _labels_in_box(em, 5)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    em.predict(y)  # inside: no warning
  y[1, 0] = em.y_max[0] + 1.0  # Teff above
  y[3, 18] = em.y_min[18] - 0.1  # [Fe/H] below
  y[3, 0] = em.y_min[0] - 5.0  # Teff below
  with pytest.warns(emu.OutsideTrainingBoxWarning) as record:
    flux = em.predict(y)
  assert len(record) == 1 and flux.shape == (5, N_PIX_SMALL)
  msg = str(record[0].message)
  assert "2 of 5 label sets" in msg
  assert "Teff (1 below" in msg and "1 above" in msg and "Fe_H (1 below" in msg
  assert "logg" not in msg
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    em.predict(y, check_box=False)


def test_save_round_trip_is_payne_format(tmp_path):
  em = _small_emulator(seed=2)
  path = emu.save_emulator(tmp_path / "emu.npz", em.params, em.y_min, em.y_max,
                           metadata={"note": "test"})
  with np.load(path) as data:
    assert set(emu.PAYNE_NPZ_KEYS) <= set(data.files)
    assert tuple(data["label_names"]) == LABEL_NAMES
  back = emu.load_emulator(path)
  jax.tree.map(np.testing.assert_array_equal, back.params, em.params)
  np.testing.assert_array_equal(back.y_max, em.y_max)
  assert emu.read_emulator_metadata(path) == {"note": "test"}


def test_save_is_atomic(tmp_path, monkeypatch):
  em = _small_emulator(seed=2)
  path = tmp_path / "emu.npz"
  emu.save_emulator(path, em.params, em.y_min, em.y_max)
  before = path.read_bytes()

  def half_then_fail(f, **arrays):
    f.write(b"PK\x03\x04 half an archive")
    raise OSError("disk full (simulated)")

  monkeypatch.setattr(np, "savez", half_then_fail)
  other = _small_emulator(seed=9)
  with pytest.raises(OSError, match="simulated"):
    emu.save_emulator(path, other.params, other.y_min, other.y_max)
  monkeypatch.undo()
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["emu.npz"]  # no temporary file left behind
  y = _labels_in_box(em, 3)
  np.testing.assert_array_equal(emu.load_emulator(path).predict(y), em.predict(y))


def test_learning_rate_schedule_and_output_folding():
  cfg = et.EmulatorTrainConfig(learning_rate=1e-3, final_lr_ratio=1e-2, warmup_fraction=0.1)
  lr = et.learning_rate(np.array([0.0, 0.05, 0.1, 0.55, 1.0, 2.0]), cfg)
  np.testing.assert_allclose(lr, [1e-5, 5e-4, 1e-3, 1e-4, 1e-5, 1e-5], rtol=1e-12)
  em = _small_emulator()
  y_scaled = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 0.5, (6, N_LABELS)), jnp.float32)
  x_mean = jnp.linspace(0.9, 1.0, N_PIX_SMALL)
  folded = et.fold_output_scaling(em.params, x_mean, 0.05)
  np.testing.assert_allclose(emu.emulator_apply(folded, y_scaled),
                             emu.emulator_apply(em.params, y_scaled) * 0.05 + x_mean,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="optimizer"):
    et.EmulatorTrainConfig(optimizer="sgd")


def _synthetic_spectra(n, seed):
  """Smooth labels → flux: 30 Gaussian lines whose depths depend on Teff and 3 abundances."""
  rng = np.random.default_rng(seed)
  lo = np.array([3500.0, 0.0, 0.5] + [-1.0] * 20 + [5.0, 1.0])
  hi = np.array([6500.0, 5.0, 2.5] + [0.5] * 20 + [40.0, 10.0])
  y = rng.uniform(lo, hi, (n, N_LABELS))
  lines = np.random.default_rng(0)
  centers = lines.uniform(50, N_PIX - 50, 30)
  elem = lines.choice([7, 18, 20], 30)  # Mg, Fe, Ni
  width = lines.uniform(1.5, 4.0, 30)  # pixels
  depth = 0.3 * (1 + y[:, elem]) / 1.5 * (5040 / y[:, :1])  # [n, 30]
  profile = np.exp(-0.5 * ((np.arange(N_PIX) - centers[:, None]) / width[:, None]) ** 2)
  return np.exp(-depth @ profile).astype(np.float32), y


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "synth.h5"
  with h5py.File(path, "w") as f:
    for split, n, seed in (("train", 256, 1), ("val", 64, 2), ("test", 64, 3)):
      x, y = _synthetic_spectra(n, seed)
      f[f"spectra {split}"] = x
      f[f"labels {split}"] = y
  return path


def test_tiny_training_writes_outputs_and_checkpoint_reloads(synth_file, tmp_path):
  cfg = et.EmulatorTrainConfig(n_hidden=32, batch_size=32, learning_rate=1e-2, max_epochs=25,
                               patience=25, eval_batch_size=48, teff_bin_width=1000.0)
  out = tmp_path / "emulator"
  summary, residual = et.train_emulator(synth_file, out, cfg, progress=False)
  assert residual.shape[0] == 64  # the held-out spectra
  hist = summary["training"]["history"]
  assert len(hist["epoch"]) == 25 and summary["training"]["stop_reason"] == "max_epochs"
  assert min(hist["val_mse"]) < 0.3 * hist["val_mse"][0]  # validation loss went down

  metrics = json.loads((out / "metrics.json").read_text())
  held = metrics["held_out"]
  assert held["n"] == 64 and metrics["n_train"] == 256 and metrics["held_out_split"] == "test"
  assert 0 < held["median_abs"] <= held["p99_abs"] <= held["max_abs"]
  assert sum(b["n"] for b in held["per_teff_bin"]) == 64
  assert all(b["teff_hi"] - b["teff_lo"] == 1000.0 for b in held["per_teff_bin"])
  assert set(held["per_chip"]) == {"blue", "green", "red"}
  assert not (out / "residuals.png").exists()  # the trainer draws no figure; its callers do
  plots.plot_emulator_run(residual, summary, out / "residuals.png")
  assert (out / "residuals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  from_npz = emu.load_emulator(out / "emulator.npz")
  from_ckpt = emu.load_emulator(out / "checkpoint")
  x_test, y_test = _synthetic_spectra(64, 3)
  pred = from_npz.predict(y_test, check_box=False)
  np.testing.assert_array_equal(from_ckpt.predict(y_test, check_box=False), pred)
  np.testing.assert_array_equal(from_ckpt.y_min, from_npz.y_min)
  np.testing.assert_array_equal(emu.load_emulator(out).predict(y_test, check_box=False), pred)
  # the reported metric is the metric of the saved emulator
  assert np.median(np.abs(pred - x_test)) == pytest.approx(held["median_abs"], rel=1e-5)
  # much better than the mean training spectrum
  x_train, _ = _synthetic_spectra(256, 1)
  assert held["mean_abs"] < 0.5 * np.mean(np.abs(x_train.mean(0) - x_test))


def test_fit_stops_on_time_limit_and_rejects_bad_data():
  x, y = _synthetic_spectra(64, 4)
  x, y = x[:, :N_PIX_SMALL], y
  # patience as long as the epoch budget: only the clock can stop it, however fast the machine
  cfg = et.EmulatorTrainConfig(n_hidden=8, batch_size=32, max_epochs=10**6, patience=10**6,
                               time_limit_s=5.0)
  train, val = et.SpectraSet(x[:48], y[:48]), et.SpectraSet(x[48:], y[48:])
  res = et.fit_emulator(train, val, cfg, progress=False)
  assert res.stop_reason == "time_limit" and 2 <= len(res.history["epoch"]) < 10**6
  # the schedule decays over the time budget: the last learning rate is near the final one
  assert res.history["lr"][-1] < 0.2 * cfg.learning_rate
  # early stopping: with a zero learning rate the validation loss never improves after epoch 1
  frozen = et.EmulatorTrainConfig(n_hidden=8, batch_size=32, max_epochs=50, patience=3,
                                  learning_rate=0.0)
  res = et.fit_emulator(train, val, frozen, progress=False)
  assert (res.stop_reason, res.best_epoch, len(res.history["epoch"])) == ("early_stopping", 1, 4)
  x_bad = x.copy()
  x_bad[3, 2] = np.nan
  with pytest.raises(ValueError, match="train set: x has non-finite"):
    et.fit_emulator(et.SpectraSet(x_bad[:48], y[:48]), val, cfg, progress=False)


def test_file_without_val_and_test_splits(tmp_path):
  path = tmp_path / "train_only.h5"
  x, y = _synthetic_spectra(80, 5)
  with h5py.File(path, "w") as f:
    f["spectra train"] = x
    f["labels train"] = y
  cfg = et.EmulatorTrainConfig(n_hidden=8, batch_size=32, max_epochs=2, val_fraction=0.25)
  summary, _ = et.train_emulator(path, tmp_path / "out", cfg, progress=False)
  assert summary["n_train"] == 60 and summary["n_val"] == 20
  assert summary["held_out"]["n"] == 20 and "no test split" in summary["held_out_split"]
  with h5py.File(path, "a") as f:
    del f["labels train"]
  with pytest.raises(ValueError, match=r"train_only\.h5: split 'train' has no 'labels train'"):
    et.train_emulator(path, tmp_path / "out2", cfg, progress=False)


def test_masked_pixels_are_no_training_target():
  """Masked pixels steer nothing: whatever flux they hold, the fit is the same (loss, scaling,
  validation); an all-good mask takes the unweighted path, bit for bit."""
  x, y = _synthetic_spectra(64, 4)
  x = x[:, :N_PIX_SMALL]
  cfg = et.EmulatorTrainConfig(n_hidden=8, batch_size=16, max_epochs=3, patience=100)
  msk = np.random.default_rng(0).random(x.shape) > 0.1
  msk[5] = False  # one spectrum masked entirely
  fits = [et.fit_emulator(et.SpectraSet(np.where(msk, x, fill)[:48], y[:48], msk[:48]),
                          et.SpectraSet(np.where(msk, x, fill)[48:], y[48:], msk[48:]), cfg,
                          progress=False)
          for fill in (1.0, 50.0)]
  assert fits[0].history["train_mse"] == fits[1].history["train_mse"]
  assert fits[0].history["val_mse"] == fits[1].history["val_mse"]
  chex.assert_trees_all_equal(fits[0].emulator.params, fits[1].emulator.params)
  val = et.SpectraSet(x[48:], y[48:])
  plain = et.fit_emulator(et.SpectraSet(x[:48], y[:48]), val, cfg, progress=False)
  ones = et.fit_emulator(et.SpectraSet(x[:48], y[:48], np.ones((48, N_PIX_SMALL), bool)), val,
                         cfg, progress=False)
  assert plain.history["val_mse"] == ones.history["val_mse"]
  # evaluate_mse: the mean over good pixels only
  params = fits[0].emulator.params
  zero, one = jnp.zeros(N_PIX_SMALL), jnp.ones(N_PIX_SMALL)
  ys = jnp.asarray(scale_labels(y, fits[0].emulator.y_min, fits[0].emulator.y_max), jnp.float32)
  pred = np.asarray(emu.emulator_apply(params, ys))
  want = np.mean(np.square(pred - x)[msk])
  got = et.evaluate_mse(params, np.where(msk, x, 9.0), ys, zero, one, batch_size=24, msk=msk)
  assert got == pytest.approx(want, rel=1e-5)


def test_nan_flux_in_the_file_is_masked_out_of_training(tmp_path):
  """NaN flux (h5io: set to 1.0 and masked) trains like the same pixels flagged in the file's
  mask with any other flux; the held-out metrics skip them."""
  x, y = _synthetic_spectra(80, 5)
  bad = np.zeros(x.shape, bool)
  bad[::4, 100:110] = True
  paths = {}
  for name, flux, extra in (("nan", np.where(bad, np.nan, x), {}),
                            ("flagged", np.where(bad, 7.0, x), {"spectra_msk train": ~bad})):
    paths[name] = tmp_path / f"{name}.h5"
    with h5py.File(paths[name], "w") as f:
      f["spectra train"] = flux.astype(np.float32)
      f["labels train"] = y
      for k, v in extra.items():
        f[k] = v.astype(np.uint8)
  cfg = et.EmulatorTrainConfig(n_hidden=8, batch_size=32, max_epochs=2, val_fraction=0.25)
  out = {}
  for name, path in paths.items():
    with pytest.warns(UserWarning, match="left out of the emulator's loss"):
      out[name] = et.train_emulator(path, tmp_path / f"out_{name}", cfg, progress=False)[0]
  a, b = out["nan"], out["flagged"]
  assert a["training"]["history"]["val_mse"] == b["training"]["history"]["val_mse"]
  assert a["held_out"]["median_abs"] == b["held_out"]["median_abs"]
  assert np.isfinite(a["held_out"]["max_abs"]) and a["held_out"]["max_abs"] < 1.0
  assert a["n_masked_pixels"]["train"] + a["n_masked_pixels"]["val"] == bad.sum()


def test_cli_builds_config():
  from experiments import train_emulator as cli

  args = cli.parse_args(["--data", "d.h5", "--out", "o", "--max-epochs", "7", "--time-limit",
                         "60", "--hidden", "64", "--optimizer", "radam"])
  cfg = cli.build_config(args)
  assert (cfg.max_epochs, cfg.time_limit_s, cfg.n_hidden, cfg.optimizer) == (7, 60.0, 64, "radam")
  assert cfg.batch_size == et.EmulatorTrainConfig().batch_size


def test_case9_all_nan_flux_is_refused_by_name(tmp_path):
  """Case 9: a training file whose flux is all NaN is refused, no emulator.npz written."""
  path = tmp_path / "nan.h5"
  x, y = _synthetic_spectra(40, 5)
  with h5py.File(path, "w") as f:
    f["spectra train"] = np.full_like(x, np.nan)
    f["labels train"] = y
  cfg = et.EmulatorTrainConfig(n_hidden=8, batch_size=32, max_epochs=1)
  with pytest.raises(ValueError, match=r"nan\.h5: split 'train': every flux value is NaN"):
    et.train_emulator(path, tmp_path / "out", cfg, progress=False)
  assert not (tmp_path / "out" / "emulator.npz").exists()


def test_case10_train_emulator_refuses_to_replace_without_overwrite(tmp_path, capsys):
  from cyclestar_jax import cli
  from experiments import train_emulator as command

  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "emulator.npz").write_text("old")
  (tmp_path / "d.h5").write_text("")
  argv = ["--data", str(tmp_path / "d.h5"), "--out", str(tmp_path / "out"), "--no-progress"]
  assert cli.run_main(command.main, argv) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert (tmp_path / "out" / "emulator.npz").read_text() == "old"
