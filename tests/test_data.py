import dataclasses
import types

import numpy as np
import pytest

from cyclestar_jax import config, data, h5io, resources

N_PIX = resources.N_PIX
MEAN, STD = resources.spectra_mean_std()


def _write(path, n, *, observed, seed, n_pix=N_PIX):
  rng = np.random.default_rng(seed)
  x = (1 - 0.1 * rng.random((n, n_pix))).astype(np.float32)
  x[:, 0] = np.arange(n)  # row id in the first pixel (dropped by the pipeline), to trace rows
  kw = dict(x=x, y=rng.normal(size=(n, 25)))
  fields = ("spectra", "labels")
  if observed:
    kw.update(x_err=(0.004 + 0.05 * rng.random((n, n_pix))).astype(np.float32),
              x_msk=rng.random((n, n_pix)) > 0.05)
    fields = ("spectra", "spectra_err", "spectra_msk", "labels")
  with h5io.SpectraWriter(path, {"train": n, "val": 4}, n_pix=n_pix, fields=fields) as w:
    w.write("train", 0, **kw)
    w.write("val", 0, **{k: v[:4] for k, v in kw.items()})
  return kw


@pytest.fixture
def files(tmp_path):
  synth, obs = tmp_path / "synth.h5", tmp_path / "obs.h5"
  return synth, obs, _write(synth, 20, observed=False, seed=0), _write(obs, 28, observed=True,
                                                                        seed=1)


def test_standardize_follows_design(files):
  _, _, raw_s, raw_o = files
  cfg = config.get_config("smoke")
  sp = h5io.Spectra(x=raw_o["x"][:3], x_err=raw_o["x_err"][:3], x_msk=raw_o["x_msk"][:3])
  out = data.standardize(sp, "obs", cfg)
  assert out["x"].shape == (3, 7167) and out["x"].dtype == np.float32
  np.testing.assert_allclose(out["x"], (raw_o["x"][:3, 47:] - MEAN) / STD, rtol=1e-5)
  err = raw_o["x_err"][:3, 47:]
  np.testing.assert_allclose(out["x_err"], np.maximum(err, resources.ERROR_FLOOR) / STD, rtol=1e-6)
  want_msk = raw_o["x_msk"][:3, 47:] & (err <= 0.05)
  np.testing.assert_array_equal(out["x_msk"], want_msk.astype(np.float32))
  assert 0 < (err > 0.05).mean() and (out["x_err"] < resources.ERROR_FLOOR / STD * 1.0001).any()
  syn = data.standardize(h5io.Spectra(x=raw_s["x"][:2]), "synth", cfg)
  np.testing.assert_allclose(syn["x_err"], resources.ERROR_FLOOR / STD, rtol=1e-6)
  np.testing.assert_array_equal(syn["x_msk"], 1.0)
  # §4.2: masked features at the continuum in the synthetic domain only.
  nl = dataclasses.replace(cfg, mask_synth_lines=True)
  line = resources.kurucz_response()["total_mask"].astype(bool)
  syn_nl = data.standardize(h5io.Spectra(x=raw_s["x"][:2]), "synth", nl)
  np.testing.assert_allclose(syn_nl["x"][:, line[47:]], (1 - MEAN) / STD, rtol=1e-6)
  np.testing.assert_array_equal(syn_nl["x"][:, ~line[47:]], syn["x"][:, ~line[47:]])
  with pytest.raises(ValueError, match="fewer than the 7167"):
    data.standardize(h5io.Spectra(x=raw_s["x"][:2, :7000]), "synth", cfg)


def test_batches_shuffled_unpaired_and_deterministic(files):
  synth, obs, _, _ = files
  cfg = dataclasses.replace(config.get_config("smoke"), batch_size=4, seed=3)
  with data.BatchStream(synth, obs, cfg) as s:
    assert s.sizes() == {"synth": 20, "obs": 28}
    # One epoch of the synthetic domain (5 steps of 4) visits every row once.
    seen = np.concatenate([s.rows_at(k)["synth"] for k in range(5)])
    assert sorted(seen) == list(range(20)) and list(seen) != list(range(20))
    assert not np.array_equal(s.rows_at(0)["synth"], s.rows_at(0)["obs"][:4])
    assert not np.array_equal(seen, np.concatenate([s.rows_at(k)["synth"] for k in range(5, 10)]))
    b = s.batch_at(6)
    assert set(b) == {"x_synth", "x_synth_err", "x_synth_msk", "x_obs", "x_obs_err", "x_obs_msk"}
    assert all(v.shape == (4, 7167) and v.dtype == np.float32 for v in b.values())
    streamed = list(s.iterate(0, 9, prefetch=2))
  assert [k for k, _ in streamed] == list(range(9))
  with data.BatchStream(synth, obs, cfg) as s2:  # a new stream (a resumed run) agrees
    for k, batch in streamed[4:]:
      ref = s2.batch_at(k)
      for name in batch:
        np.testing.assert_array_equal(batch[name], ref[name])
    resumed = list(s2.iterate(4, 9))
  for (k1, b1), (k2, b2) in zip(streamed[4:], resumed, strict=True):
    assert k1 == k2 and all(np.array_equal(b1[n], b2[n]) for n in b1)
  other = dataclasses.replace(cfg, seed=4)
  with data.BatchStream(synth, obs, other) as s3:
    assert not np.array_equal(s3.rows_at(0)["obs"], streamed[0][1]["x_obs"][:, 0])


def test_process_slices_make_the_global_batch(files):
  synth, obs, _, _ = files
  cfg = dataclasses.replace(config.get_config("smoke"), batch_size=4)
  with data.BatchStream(synth, obs, cfg) as whole:
    want = whole.rows_at(3)
  parts = []
  for p in range(2):
    with data.BatchStream(synth, obs, cfg, process_index=p, process_count=2) as s:
      parts.append(s.rows_at(3))
  for d in ("synth", "obs"):
    np.testing.assert_array_equal(np.concatenate([q[d] for q in parts]), want[d])


def test_bad_files_are_named(files, tmp_path):
  synth, obs, _, _ = files
  cfg = config.get_config("smoke")
  short = tmp_path / "short.h5"
  _write(short, 8, observed=True, seed=2, n_pix=7200)
  with pytest.raises(ValueError, match=r"pixel counts differ: .*synth.h5 has 7214.*short.h5 has "
                                       r"7200"):
    data.BatchStream(synth, short, cfg)
  with pytest.raises(ValueError, match="no split 'test'"):
    data.BatchStream(synth, obs, cfg, split="test")
  # An error in the background thread reaches the consumer, after the good batches.
  with data.BatchStream(synth, obs, cfg) as s:
    good = s.batch_at

    def failing(step):
      if step == 2:
        raise OSError("disk gone")
      return good(step)

    s.batch_at = failing
    got = []
    with pytest.raises(OSError, match="disk gone"):
      for k, _ in s.iterate(0, 5):
        got.append(k)
    assert got == [0, 1]


def test_one_pixel_count_rule(files, tmp_path):
  """Training takes exactly n_pix + 47 pixels (7214 for the default networks), one error."""
  cfg = config.get_config("smoke")
  a, b = tmp_path / "a.h5", tmp_path / "b.h5"
  _write(a, 8, observed=False, seed=0, n_pix=7300)
  _write(b, 8, observed=True, seed=1, n_pix=7300)
  with pytest.raises(ValueError, match=r"7300 pixels per spectrum; config 'smoke' needs exactly "
                                       r"7214 \(n_pix 7167 \+ the 47"):
    data.BatchStream(a, b, cfg)
  with pytest.raises(ValueError, match="needs exactly 7214"):
    data.read_standardized(b, "obs", cfg, "val")
  # Another network width moves the rule with it.
  data.check_pixel_count(7300, types.SimpleNamespace(n_pix=7253, name="wide"), "x")


def test_unusable_training_split_is_refused(files, tmp_path):
  """An observed split entirely masked, or with < 1% usable pixels, or with fewer usable
  spectra than a batch, is an error naming the file and the split."""
  synth, obs, _, raw_o = files
  cfg = config.get_config("smoke")
  with data.BatchStream(synth, obs, cfg) as s:
    got = s.check_usable()
  assert got["obs"]["rows_checked"] == 28 and 0.8 < got["obs"]["fraction"] < 0.95
  assert got["synth"]["fraction"] == 1.0 and got["synth"]["spectra_usable"] == 20

  def observed(name, msk):
    path = tmp_path / name
    with h5io.SpectraWriter(path, {"train": 28}, fields=("spectra", "spectra_err",
                                                          "spectra_msk")) as w:
      w.write("train", 0, x=raw_o["x"], x_err=raw_o["x_err"], x_msk=msk)
    return path

  masked = np.zeros((28, N_PIX), bool)
  few = masked.copy()
  few[:, 100:150] = True  # 50 of 7167 pixels: 0.7%
  sparse = masked.copy()
  sparse[:4] = True  # 4 usable spectra, batch 8
  for name, msk, pattern in (
      ("masked.h5", masked, "every pixel is masked"),
      ("few.h5", few, r"only 0\.\d+% of the pixels are usable, fewer than the 1%"),
      ("sparse.h5", sparse, "only 4 spectra have at least 100 usable pixels")):
    path = observed(name, msk)
    with data.BatchStream(synth, path, cfg) as s:
      with pytest.raises(ValueError, match=rf"{name}: split 'train' \(observed domain"
                                           rf".*{pattern}"):
        s.check_usable()


def test_staged_batches_equal_streamed_batches(files):
  """Data held on the devices give the train step exactly the batches the HDF5 stream reads,
  on one device and split over 8, one iteration a call or several."""
  import jax

  from cyclestar_jax import parallel
  from cyclestar_jax import train_step as ts

  synth, obs, _, _ = files
  cfg = dataclasses.replace(config.get_config("smoke"), batch_size=8)
  mesh = parallel.make_mesh()
  with data.BatchStream(synth, obs, cfg) as stream:
    staged = parallel.stage_on_devices(stream, parallel.replicated_sharding(mesh))
    assert staged["x_obs"].shape == (28, cfg.n_pix) and staged["x_obs_msk"].dtype == np.uint8
    gather = jax.jit(ts.gather_batch)
    for step in (0, 3, 7):  # 7·8 > 20 rows: crosses the synthetic domain's epoch boundary
      want = stream.batch_at(step)
      rows = stream.rows_at(step)
      got = gather(staged, {k: np.asarray(v, np.int32) for k, v in rows.items()})
      assert set(got) == set(want)
      for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)
    # The staged step runs the train step on the gathered batch of each iteration, one per
    # call (rows [B]) or N per call (rows [N, B], a scan); a recording step checks the plumbing
    # (the real step on staged data is compared with the streamed run in test_trainer).
    def record(state, batch, key):
      return state + 1, {k: v for k, v in batch.items()}

    staged_step = jax.jit(ts.make_staged_step(cfg, train_step=record))
    rows = stream.rows_of_steps(0, 3)
    assert rows["obs"].shape == (3, 8) and rows["obs"].dtype == np.int32
    n_done, seen = staged_step(0, staged, rows, None)
    assert int(n_done) == 3
    for step in range(3):
      for k, v in stream.batch_at(step).items():
        np.testing.assert_array_equal(np.asarray(seen[k][step]), v, err_msg=k)
    np.testing.assert_array_equal(stream.rows_of_steps(1, 1)["synth"], rows["synth"][1])
    one_done, one = staged_step(0, staged, stream.rows_of_steps(1, 1), None)
    assert int(one_done) == 1 and one["x_obs"].shape == (8, cfg.n_pix)
    with pytest.raises(ValueError, match="rows must be"):
      staged_step(0, staged, {d: r[None] for d, r in rows.items()}, None)


def test_grid_stream_is_a_third_synthetic_stream(files, tmp_path):
  """A grid file (`Config.lambda_grid` > 0) is read as a third shuffled stream, standardized as
  synthetic spectra, staged like the others; it is needed exactly when lambda_grid > 0."""
  import jax

  from cyclestar_jax import parallel
  from cyclestar_jax import train_step as ts

  synth, obs, _, _ = files
  grid = tmp_path / "grid.h5"
  kw = _write(grid, 12, observed=False, seed=5)
  cfg = dataclasses.replace(config.get_config("smoke"), batch_size=8, lambda_grid=1.0)
  with data.BatchStream(synth, obs, cfg, grid_path=grid) as stream:
    assert stream.sizes() == {"synth": 20, "obs": 28, "grid": 12}
    b = stream.batch_at(1)  # rows 8..15 of an epoch of 12: crosses the boundary
    assert set(b) == {f"x_{d}{s}" for d in ("synth", "obs", "grid") for s in ("", "_err", "_msk")}
    rows = stream.rows_at(1)["grid"]
    assert rows.shape == (8,)
    want = (kw["x"][rows, 47:] - MEAN) / STD
    np.testing.assert_allclose(b["x_grid"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b["x_grid_err"], cfg.error_floor / STD, rtol=1e-6)  # synthetic
    assert b["x_grid_msk"].min() == 1.0
    # The grid has its own order: epoch permutations drawn with domain index 2.
    np.testing.assert_array_equal(stream.rows_at(0)["grid"],
                                  data._epoch_permutation(cfg.seed, 2, 0, 12)[:8])
    staged = parallel.stage_on_devices(stream, parallel.replicated_sharding(parallel.make_mesh()))
    got = jax.jit(ts.gather_batch)(staged, {k: np.asarray(v, np.int32)
                                            for k, v in stream.rows_at(1).items()})
    for k, v in b.items():
      np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=k)
  with pytest.raises(ValueError, match="lambda_grid = 1.0 needs a grid file"):
    data.BatchStream(synth, obs, cfg)
  with pytest.raises(ValueError, match="lambda_grid = 0.0 needs a grid file"):
    data.BatchStream(synth, obs, dataclasses.replace(cfg, lambda_grid=0.0), grid_path=grid)
  short = tmp_path / "short.h5"
  _write(short, 12, observed=False, seed=6, n_pix=N_PIX - 1)
  with pytest.raises(ValueError, match="short.h5 has 7213"):
    data.BatchStream(synth, obs, cfg, grid_path=short)
