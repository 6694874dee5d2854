"""Tests of the reference HDF5 reader and writer (cyclestar_jax.h5io)."""

import os
import tracemalloc
import warnings

import h5py
import numpy as np
import pytest

from cyclestar_jax import h5io
from cyclestar_jax.labels import LABEL_NAMES

N_PIX = 7214


def _data(n, seed=0, n_pix=N_PIX):
  rng = np.random.default_rng(seed)
  return dict(
      x=(1 - 0.1 * rng.random((n, n_pix))).astype(np.float32),
      x_err=(0.005 + 0.02 * rng.random((n, n_pix))).astype(np.float32),
      x_msk=rng.random((n, n_pix)) > 0.05,
      y=rng.normal(size=(n, len(LABEL_NAMES))) + 4000.0,
      snr=(30 + 470 * rng.random(n)).astype(np.float32),
  )


def _write(path, data_by_split, block=64, **kw):
  sizes = {s: len(d["x"]) for s, d in data_by_split.items()}
  with h5io.SpectraWriter(path, sizes, **kw) as w:
    for s, d in data_by_split.items():
      for start in range(0, sizes[s], block):
        w.write(s, start, **{k: v[start:start + block] for k, v in d.items()})


def _raw(path, datasets, attrs=None):
  """Writes a file with raw h5py, as the authors' or a broken file would be."""
  with h5py.File(path, "w") as f:
    for k, v in datasets.items():
      f[k] = v
    for k, v in (attrs or {}).items():
      f.attrs[k] = v


def _assert_same(s, d):
  np.testing.assert_array_equal(s.x, d["x"])
  np.testing.assert_array_equal(s.x_err, d["x_err"])
  np.testing.assert_array_equal(s.x_msk, d["x_msk"])
  np.testing.assert_array_equal(s.y, d["y"])
  np.testing.assert_array_equal(s.snr, d["snr"])


@pytest.fixture
def obs_file(tmp_path):
  data = {"train": _data(300, 0), "val": _data(40, 1), "test": _data(25, 2)}
  for d in data.values():
    d["labels_true"] = d["y"] + 0.5
    d["fibre"] = np.arange(len(d["x"]), dtype=np.int16)
  world = {"experiment": "apogee", "seed": 7, "snr_range": [30.0, 500.0],
           "lsf_sigma": np.float64(1.1), "bad_fraction": np.array([0.01, 0.02])}
  path = tmp_path / "obs.h5"
  _write(path, data, extra_fields={"labels_true": ((25,), np.float64), "fibre": ((), np.int16)},
         attrs={"world": world, "domain": "obs", "version": 3})
  return path, data


# ---------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_all_fields_attrs_and_extras(obs_file):
  path, data = obs_file
  with h5io.SpectraFile(path) as f:
    assert f.splits == ("train", "val", "test") and f.n_pix == N_PIX
    assert [f.n(s) for s in f.splits] == [300, 40, 25]
    attrs = f.attrs
    assert attrs["world"] == {"experiment": "apogee", "seed": 7, "snr_range": [30.0, 500.0],
                              "lsf_sigma": 1.1, "bad_fraction": [0.01, 0.02]}
    assert attrs["domain"] == "obs" and attrs["version"] == 3
    assert f.extra_names("train") == ("fibre", "labels_true")
    for split, d in data.items():
      with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean data: no BadPixelWarning
        s = f.read(split)
      _assert_same(s, d)
      assert len(s) == len(d["x"])
      assert (s.x.dtype, s.x_err.dtype, s.x_msk.dtype, s.y.dtype, s.snr.dtype) == (
          np.float32, np.float32, np.bool_, np.float64, np.float32)
      np.testing.assert_array_equal(f.extra("labels_true", split), d["labels_true"])
      np.testing.assert_array_equal(f.extra("fibre", split, 3, 9), d["fibre"][3:9])
      np.testing.assert_array_equal(f.extra("fibre", split, rows=[4, 0, 4]), d["fibre"][[4, 0, 4]])
    # On-disk layout: the reference names and dtypes, chunked along rows at full width.
    ds = {k: f._f[k] for k in f._f}
    assert sorted(ds) == sorted(
        f"{n} {s}" for n in h5io.FIELDS + ("labels_true", "fibre") for s in h5io.SPLITS)
    assert ds["spectra train"].dtype == np.float32 and ds["spectra_msk train"].dtype == np.uint8
    assert ds["labels train"].dtype == np.float64 and ds["snr train"].dtype == np.float32
    assert ds["spectra train"].chunks == (256, N_PIX) and ds["spectra val"].chunks == (40, N_PIX)
    assert ds["spectra train"].compression is None
  assert h5io.dataset_name("spectra_err", "val") == "spectra_err val"
  _assert_same(h5io.read_split(path, "val"), data["val"])


def test_string_list_attribute_and_read_split_stop(tmp_path):
  path = tmp_path / "a.h5"
  d = _data(6, 3, n_pix=20)
  _write(path, {"val": d}, n_pix=20, attrs={"paired_splits": ["val"], "none": []})
  with h5io.SpectraFile(path, n_pix=None) as f:
    assert f.attrs["paired_splits"] == ["val"] and f.attrs["none"] == []
  part = h5io.read_split(path, "val", stop=4, n_pix=None)
  np.testing.assert_array_equal(part.x, d["x"][:4])
  assert len(h5io.read_split(path, "val", stop=100, n_pix=None)) == 6


def test_compressed_round_trip_and_field_subset(tmp_path):
  d = _data(50)
  del d["x_err"], d["snr"]
  path = tmp_path / "c.h5"
  _write(path, {"train": d}, block=16, fields=("spectra", "spectra_msk", "labels"),
         compression="gzip")
  with h5io.SpectraFile(path) as f:
    assert f.fields("train") == ("spectra", "spectra_msk", "labels")
    assert f._f["spectra train"].compression == "gzip"
    # A compressed chunk is decompressed whole, so those datasets get a chunk cache.
    assert f._ds["train"]["spectra"].id.get_access_plist().get_chunk_cache()[1] >= 1 << 20
    s = f.read("train")
    rows = np.array([40, 3, 17, 3])
    s_rows = f.read("train", rows=rows)
  np.testing.assert_array_equal(s.x, d["x"])
  np.testing.assert_array_equal(s.x_msk, d["x_msk"])
  np.testing.assert_array_equal(s_rows.x, d["x"][rows])
  np.testing.assert_array_equal(s_rows.y, d["y"][rows])
  assert s.x_err is None and s.snr is None


def test_authors_synthetic_format_reads_as_is(tmp_path):
  # csn_kurucz.h5 holds only spectra and labels (float64 here), no err/msk/snr, no attributes.
  rng = np.random.default_rng(3)
  x = 1 - 0.2 * rng.random((30, N_PIX))
  y = rng.normal(size=(30, 25))
  path = tmp_path / "csn_kurucz.h5"
  _raw(path, {"spectra train": x, "labels train": y, "spectra val": x[:7], "labels val": y[:7]})
  with h5io.SpectraFile(path) as f:
    assert f.splits == ("train", "val") and f.attrs == {}
    assert f.fields("train") == ("spectra", "labels")
    s = f.read("train", 5, 12)
  assert s.x_err is None and s.x_msk is None and s.snr is None
  assert s.x.dtype == np.float32
  np.testing.assert_allclose(s.x, x[5:12], rtol=1e-7)
  np.testing.assert_array_equal(s.y, y[5:12])


def test_any_pixel_count_with_n_pix_none(tmp_path):
  path = tmp_path / "net.h5"
  _raw(path, {"spectra train": np.ones((4, 7167), np.float32)})
  with pytest.raises(ValueError, match="7214 pixels expected"):
    h5io.SpectraFile(path)
  with h5io.SpectraFile(path, n_pix=None) as f:
    assert f.n_pix == 7167 and f.read("train").x.shape == (4, 7167)


# ---------------------------------------------------------------------------------------------
# Row access


def test_row_ranges_and_index_reads_equal_in_memory_slices(obs_file):
  path, data = obs_file
  d = data["train"]
  rng = np.random.default_rng(0)
  with h5io.SpectraFile(path) as f:
    for start, stop in [(0, 300), (17, 18), (100, 257), (299, 300), (5, 5)]:
      s = f.read("train", start, stop)
      _assert_same(s, {k: v[start:stop] for k, v in d.items()})
    # Unsorted, repeated, clustered and sparse indices (a shuffled batch); order is kept.
    for rows in [rng.permutation(300)[:37], np.array([299, 0, 5, 5, 6, 7, 150]),
                 np.arange(40, 60)[::-1], np.array([3]), np.array([], np.int64)]:
      s = f.read("train", rows=rows)
      _assert_same(s, {k: v[rows] for k, v in d.items()})


def test_iter_chunks_covers_all_rows_in_order(obs_file):
  path, data = obs_file
  with h5io.SpectraFile(path) as f:
    chunks = list(f.iter_chunks("train", chunk_size=128))
  assert [len(c) for c in chunks] == [128, 128, 44]
  np.testing.assert_array_equal(np.concatenate([c.x for c in chunks]), data["train"]["x"])
  np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), data["train"]["y"])


def test_reading_is_by_row_range_not_whole_dataset(tmp_path, monkeypatch):
  # 600 rows x 7214 pixels x (4 + 4 + 1) bytes = 39 MB on disk; iter_chunks(64) must only ever
  # ask HDF5 for <= 64 rows at a time and never hold more than a few chunks in memory.
  n, chunk = 600, 64
  d = _data(n)
  path = tmp_path / "big.h5"
  _write(path, {"train": d}, block=200)
  plans, mem_shapes = [], []
  real_plan, real_create = h5io.reader._read_plan, h5py.h5s.create_simple

  def spy_plan(ds, plan, n_out, dtype):
    plans.extend((lo, hi) for lo, hi, _ in plan)
    return real_plan(ds, plan, n_out, dtype)

  def spy_create(shape, *args):
    mem_shapes.append(shape)
    return real_create(shape, *args)

  monkeypatch.setattr(h5io.reader, "_read_plan", spy_plan)
  monkeypatch.setattr(h5py.h5s, "create_simple", spy_create)
  file_bytes = os.path.getsize(path)
  with h5io.SpectraFile(path) as f:
    tracemalloc.start()
    total = 0
    for i, c in enumerate(f.iter_chunks("train", chunk_size=chunk)):
      np.testing.assert_array_equal(c.x, d["x"][i * chunk:(i + 1) * chunk])
      total += len(c)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  assert total == n
  # Each of the 5 datasets is read once per chunk, by row ranges tiling [0, n), and HDF5 is
  # never asked for more than `chunk` rows at once.
  assert plans == [(s, min(s + chunk, n)) for s in range(0, n, chunk) for _ in range(5)]
  assert len(mem_shapes) == len(plans) and max(shape[0] for shape in mem_shapes) == chunk
  chunk_bytes = chunk * N_PIX * 9
  assert peak < 4 * chunk_bytes < file_bytes / 2, (peak, chunk_bytes, file_bytes)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_missing_non_hdf5_and_empty_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope\.h5.*'spectra <split>'"):
    h5io.SpectraFile(tmp_path / "nope.h5")
  text = tmp_path / "notes.h5"
  text.write_text("not an hdf5 file")
  with pytest.raises(ValueError, match=r"notes\.h5: not a readable HDF5 file.*'spectra <split>'"):
    h5io.SpectraFile(text)
  zero = tmp_path / "zero.h5"
  zero.write_bytes(b"")
  with pytest.raises(ValueError, match=r"zero\.h5: not a readable HDF5"):
    h5io.SpectraFile(zero)
  empty = tmp_path / "empty.h5"
  _raw(empty, {"wavelength": np.arange(10.0)})
  with pytest.raises(ValueError, match=r"empty\.h5: no spectra dataset.*'spectra_err <split>'"
                                       r".*present: \['wavelength'\]"):
    h5io.SpectraFile(empty)


@pytest.mark.parametrize("name, value, pattern", [
    ("spectra_err train", np.ones((9, N_PIX)),
     r"'spectra_err train' has shape \(9, 7214\).*'spectra train' has shape \(10, 7214\)"),
    ("spectra_msk train", np.ones((10, 7000), np.uint8),
     r"'spectra_msk train' has shape \(10, 7000\).*'spectra train' has shape \(10, 7214\)"),
    ("labels train", np.ones((10, 24)), r"'labels train' has shape \(10, 24\).*25 labels"),
    ("snr train", np.ones(11), r"'snr train' has shape \(11,\).*expected \(10,\)"),
    ("labels val", np.ones((10, 25)), r"'labels val' has no 'spectra val'"),
])  # fmt: skip
def test_companion_dataset_of_wrong_shape_is_named(tmp_path, name, value, pattern):
  path = tmp_path / "bad.h5"
  _raw(path, {"spectra train": np.ones((10, N_PIX), np.float32), name: value})
  with pytest.raises(ValueError, match=r"bad\.h5: .*" + pattern):
    h5io.SpectraFile(path)


def test_wrong_pixel_count_and_inconsistent_splits(tmp_path):
  path = tmp_path / "pix.h5"
  _raw(path, {"spectra train": np.ones((3, 7000), np.float32)})
  with pytest.raises(ValueError,
                     match=r"pix\.h5: dataset 'spectra train' has shape \(3, 7000\): 7214 pixels"
                           r" expected"):
    h5io.SpectraFile(path)
  path2 = tmp_path / "mixed.h5"
  _raw(path2, {"spectra train": np.ones((3, 50)), "spectra val": np.ones((3, 60))})
  with pytest.raises(ValueError, match=r"mixed\.h5: dataset 'spectra val' has 60 pixels but "
                                       r"'spectra train' has 50"):
    h5io.SpectraFile(path2, n_pix=None)


def test_bitmask_instead_of_0_1_mask_is_an_error(tmp_path):
  path = tmp_path / "bits.h5"
  msk = np.ones((4, N_PIX), np.int32)
  msk[1, 7] = 4096
  _raw(path, {"spectra train": np.ones((4, N_PIX), np.float32), "spectra_msk train": msk})
  with h5io.SpectraFile(path) as f:
    f.read("train", 2, 4)  # rows without the bad value read fine
    with pytest.raises(ValueError, match=r"bits\.h5: dataset 'spectra_msk train' holds values "
                                         r"\[4096\]; expected 0/1"):
      f.read("train")


def test_out_of_range_rows_unknown_split_and_extra(obs_file):
  path, _ = obs_file
  with h5io.SpectraFile(path) as f:
    with pytest.raises(IndexError, match=r"obs\.h5: rows \[290, 301\) of split 'train' out of "
                                         r"range; valid rows are \[0, 300\)"):
      f.read("train", 290, 301)
    with pytest.raises(IndexError, match=r"valid rows are \[0, 300\)"):
      f.read("train", 10, 5)
    with pytest.raises(IndexError, match=r"row index 40 of split 'val'.*\[0, 40\)"):
      f.read("val", rows=[3, 40])
    with pytest.raises(IndexError, match=r"row index -1"):
      f.read("val", rows=[-1])
    with pytest.raises(TypeError, match="integers"):
      f.read("val", rows=[0.5])
    with pytest.raises(KeyError, match=r"no split 'dev'.*\['train', 'val', 'test'\]"):
      f.read("dev")
    with pytest.raises(KeyError, match=r"no dataset 'teff_true train'.*\['fibre', "
                                       r"'labels_true'\]"):
      f.extra("teff_true", "train")
    with pytest.raises(IndexError, match=r"valid rows are \[0, 25\)"):
      f.extra("labels_true", "test", 0, 26)
  with pytest.raises(ValueError, match="closed"):
    f.read("train")


def test_extra_of_wrong_row_count_is_named(tmp_path):
  path = tmp_path / "x.h5"
  _raw(path, {"spectra train": np.ones((5, N_PIX)), "labels_true train": np.ones((4, 25))})
  with h5io.SpectraFile(path) as f:
    with pytest.raises(ValueError, match=r"'labels_true train' has shape \(4, 25\).*5 rows"):
      f.extra("labels_true", "train")


def test_nan_inf_flux_and_bad_errors_are_masked_with_one_warning(tmp_path):
  d = _data(6)
  x, err = d["x"].copy(), d["x_err"].copy()
  x[0, 10], x[1, 20], x[2, 30] = np.nan, np.inf, -np.inf
  err[3, 40], err[3, 41], err[4, 50], err[5, 60] = 0.0, -0.1, np.nan, np.inf
  path = tmp_path / "nan.h5"
  _raw(path, {"spectra train": x, "spectra_err train": err, "spectra_msk train":
              d["x_msk"].astype(np.uint8), "labels train": d["y"]})
  with h5io.SpectraFile(path) as f:
    with pytest.warns(h5io.BadPixelWarning) as rec:
      s = f.read("train")
  assert len(rec) == 1
  w = rec[0].message
  assert w.counts == {"flux_nonfinite": 3, "err_nonfinite": 2, "err_nonpositive": 2}
  msg = str(w)
  assert "nan.h5" in msg and "'spectra train'" in msg and "'spectra_err train'" in msg
  assert "3 NaN/inf flux pixels" in msg and "2 NaN/inf and 2 zero/negative errors" in msg
  bad = [(0, 10), (1, 20), (2, 30), (3, 40), (3, 41), (4, 50), (5, 60)]
  assert np.isfinite(s.x).all() and np.isfinite(s.x_err).all() and (s.x_err > 0).all()
  for i, j in bad:
    assert not s.x_msk[i, j]
  assert s.x[0, 10] == s.x[1, 20] == s.x[2, 30] == 1.0
  assert s.x_err[3, 40] == s.x_err[4, 50] == 1.0
  assert s.x_err[0, 10] == err[0, 10]  # a bad flux keeps its error; the mask drops it
  # Every other pixel is as in the file.
  good = np.ones_like(s.x_msk)
  for i, j in bad:
    good[i, j] = False
  np.testing.assert_array_equal(s.x_msk[good], d["x_msk"][good])
  np.testing.assert_array_equal(s.x[good], x[good])


def test_bad_pixels_without_mask_create_one(tmp_path):
  x = np.ones((3, N_PIX), np.float32)
  x[1, 5] = np.nan
  y = np.zeros((3, 25))
  y[2, 0] = np.nan
  path = tmp_path / "nomask.h5"
  _raw(path, {"spectra train": x, "labels train": y})
  with h5io.SpectraFile(path) as f:
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      clean = f.read("train", 0, 1)  # no bad pixel in row 0: no mask, no warning
    assert clean.x_msk is None
    with pytest.warns(h5io.BadPixelWarning, match=r"nomask\.h5.*1 NaN/inf flux pixels in "
                                                   r"'spectra train'.*1 NaN/inf values in "
                                                   r"'labels train'") as rec:
      s = f.read("train", rows=[1, 2])
  assert len(rec) == 1 and rec[0].message.counts == {"flux_nonfinite": 1, "labels_nonfinite": 1}
  assert s.x_msk is not None and s.x_msk.sum() == 2 * N_PIX - 1 and not s.x_msk[0, 5]
  assert s.x[0, 5] == 1.0 and s.x_err is None


# ---------------------------------------------------------------------------------------------
# Writer


def _leftovers(folder):
  return sorted(p.name for p in folder.iterdir())


def test_exception_inside_with_leaves_existing_file_untouched(tmp_path, obs_file):
  path, _ = obs_file
  before = path.read_bytes()
  listing = _leftovers(path.parent)
  d = _data(10)
  with pytest.raises(RuntimeError, match="simulated crash"):
    with h5io.SpectraWriter(path, {"train": 10}) as w:
      w.write("train", 0, **d)  # all rows written, then the run fails
      raise RuntimeError("simulated crash")
  assert path.read_bytes() == before and _leftovers(path.parent) == listing


def test_missing_rows_on_close_is_an_error_and_nothing_is_written(tmp_path, obs_file):
  path, _ = obs_file
  before = path.read_bytes()
  listing = _leftovers(path.parent)
  d = _data(100)
  with pytest.raises(ValueError, match=r"obs\.h5: not written, rows missing: split 'train': "
                                       r"rows \[20, 50\), \[90, 100\) of 100; split 'val': rows "
                                       r"\[0, 5\) of 5"):
    with h5io.SpectraWriter(path, {"train": 100, "val": 5}) as w:
      w.write("train", 0, **{k: v[:20] for k, v in d.items()})
      w.write("train", 50, **{k: v[50:90] for k, v in d.items()})
      assert w.missing_rows()["train"] == [(20, 50), (90, 100)]
  assert path.read_bytes() == before and _leftovers(path.parent) == listing
  new = tmp_path / "new.h5"
  with pytest.raises(ValueError, match="rows missing"):
    with h5io.SpectraWriter(new, {"train": 3}):
      pass
  assert not new.exists() and _leftovers(tmp_path) == listing


def test_successful_write_replaces_existing_file(tmp_path, obs_file):
  path, _ = obs_file
  d = _data(8, seed=9)
  _write(path, {"test": d}, block=3)
  with h5io.SpectraFile(path) as f:
    assert f.splits == ("test",)
    _assert_same(f.read("test"), d)
  assert [p for p in _leftovers(tmp_path) if ".tmp-" in p] == []


def test_writer_rejects_bad_input_naming_the_field(tmp_path):
  d = _data(4)
  path = tmp_path / "w.h5"
  with h5io.SpectraWriter(path, {"train": 4}, extra_fields={"labels_true": ((25,), "f8")}) as w:
    ok = dict(d, labels_true=d["y"])
    for bad, pattern in [
        (dict(ok, x=d["x"][:, :7000]), r"'x' \(dataset 'spectra train'\) has shape \(4, 7000\);"
                                       r" expected \[B, 7214\]"),
        (dict(ok, x_err=d["x_err"][:, 1:]), r"'x_err' \(dataset 'spectra_err train'\) has shape "
                                            r"\(4, 7213\); expected \(4, 7214\)"),
        (dict(ok, x_msk=d["x_msk"][:3]), r"'x_msk' \(dataset 'spectra_msk train'\) has shape"),
        (dict(ok, x_msk=d["x_msk"] * 3), r"'x_msk'.*values other than 0/1"),
        (dict(ok, y=d["y"][:, :24]), r"'y' \(dataset 'labels train'\).*25 labels"),
        (dict(ok, snr=d["snr"][:2]), r"'snr' \(dataset 'snr train'\) has shape \(2,\)"),
        (dict(ok, x_err=None), r"'x_err' \(dataset 'spectra_err train'\) missing"),
        (dict(ok, labels_true=d["y"][:, :3]), r"'labels_true' \(dataset 'labels_true train'\)"),
        ({k: v for k, v in ok.items() if k != "labels_true"},
         r"extra fields missing \['labels_true'\]"),
        (dict(ok, teff_true=d["y"][:, 0]), r"unknown arguments \['teff_true'\]"),
    ]:
      with pytest.raises(ValueError, match=r"w\.h5: write to split 'train': " + pattern):
        w.write("train", 0, **bad)
    with pytest.raises(IndexError, match=r"rows \[2, 6\) out of range; the split has rows "
                                         r"\[0, 4\)"):
      w.write("train", 2, **ok)
    with pytest.raises(KeyError, match="split 'val' not declared"):
      w.write("val", 0, **ok)
    w.write("train", 0, **ok)
  with pytest.raises(ValueError, match="including 'spectra'"):
    h5io.SpectraWriter(path, {"train": 1}, fields=("labels",))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    h5io.SpectraWriter(tmp_path / "no" / "dir.h5", {"train": 1})
  with pytest.raises(TypeError, match=r"attribute 'bad'"):
    h5io.SpectraWriter(tmp_path / "a.h5", {"train": 1}, attrs={"bad": {"f": object()}})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["w.h5"]
  with h5io.SpectraFile(path) as f:
    _assert_same(f.read("train"), d)


@pytest.mark.parametrize("msk_dtype", [np.bool_, np.float64, np.int8, np.uint8])
def test_masks_and_labels_of_other_dtypes_are_read(tmp_path, msk_dtype):
  d = _data(9)
  path = tmp_path / "dtypes.h5"
  _raw(path, {"spectra test": d["x"].astype(np.float64), "spectra_msk test":
              d["x_msk"].astype(msk_dtype), "labels test": d["y"].astype(np.float32),
              "snr test": d["snr"][:, None]})
  rows = np.array([8, 0, 1, 2, 7])
  with h5io.SpectraFile(path) as f:
    s = f.read("test", rows=rows)
  np.testing.assert_array_equal(s.x_msk, d["x_msk"][rows])
  np.testing.assert_array_equal(s.x, d["x"][rows])
  np.testing.assert_array_equal(s.y, d["y"][rows].astype(np.float32))
  np.testing.assert_array_equal(s.snr, d["snr"][rows])
  assert s.x_msk.dtype == np.bool_ and s.y.dtype == np.float64 and s.snr.shape == (5,)


def test_a_file_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch,
                                                                          capsys):
  """A full disk is one line naming the file (HDF5 itself crashes there), nothing left behind,
  also through a command (make_data, exit code 2)."""
  import collections

  from cyclestar_jax import cli
  from cyclestar_jax.h5io import writer
  from experiments import make_data

  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
  # 400 rows × (7214 × (4 + 4 + 1) + 25 × 8 + 4) bytes = 26.1 MB
  with pytest.raises(OSError, match=r"x\.h5: needs 26\.1 MB but .* has 1\.0 MB free"):
    h5io.SpectraWriter(tmp_path / "x.h5", {"train": 100, "test": 300})
  assert list(tmp_path.iterdir()) == []
  with h5io.SpectraWriter(tmp_path / "small.h5", {"train": 10}, fields=("spectra",)) as w:
    w.write("train", 0, x=np.ones((10, N_PIX), np.float32))  # 0.3 MB: fits
  out = tmp_path / "mock"
  assert cli.run_main(make_data.main, ["--out", str(out), "--n-train", "256", "--n-val", "32",
                                       "--n-test", "32", "--no-progress"]) == 2
  err = capsys.readouterr().err.strip().splitlines()  # the error and the usual hint
  assert ": error: OSError: " in err[0] and "[Errno" not in err[0]
  assert "synth.h5: needs" in err[0] and "MB free" in err[0] and len(err) == 2, err
  assert not any(p.suffix == ".h5" for p in out.rglob("*"))
