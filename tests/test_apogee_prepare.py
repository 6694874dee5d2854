"""`apogee.prepare` and `experiments.prepare_apogee`: the mock world's round trip through
DR17-layout apStar files, the output files, resume and overwrite, a damaged file skipped, a
wrong input stopping the job, every bad input as one line with exit code 2, and prepare_apogee
then fit_labels --method emulator end to end."""

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
from apogee_fixtures import BADPIX, PERSIST_LOW, REAL, SKY, write_allstar, write_star
from test_apogee_read import BAD_FILES, make_bad_file

from cyclestar_jax import mock, resources
from cyclestar_jax.apogee import prepare
from cyclestar_jax.apogee.config import CutConfig, PrepareConfig, ReadConfig
from cyclestar_jax.apogee.normalize import normalize_star
from cyclestar_jax.h5io import SpectraFile
from cyclestar_jax.labels import LABEL_NAMES
from experiments import prepare_apogee

OPEN_CUTS = CutConfig(snr_range=(0.0, 1e9))


@pytest.fixture(scope="module")
def mock_files(tmp_path_factory):
  """Six mock observed stars as apStar files (one single-visit), and what reading must give."""
  d = tmp_path_factory.mktemp("mock_apstar") / "apo25m" / "mock"
  d.mkdir(parents=True)
  rng = np.random.default_rng(5)
  y = mock.sample_labels(6, rng)
  obs = mock.observe(y, mock.WorldConfig(), rng)
  files, expect = [], {}
  for i in range(6):
    flags = np.where(obs.x_msk[i], 0, BADPIX)
    flags = flags | np.where(rng.random(resources.N_PIX) < 0.01, SKY, 0)
    flags = flags | np.where(rng.random(resources.N_PIX) < 0.01, PERSIST_LOW, 0)  # not bad
    p = write_star(d / f"apStar-dr17-2M{i:04d}.fits", obs.x[i], obs.x_err[i], flags,
                   float(obs.snr[i]), f"2M{i:04d}", 1 if i == 0 else 2 + i % 3, rng)
    bad = (flags & (SKY | BADPIX)) != 0
    expect[str(p)] = (bad, normalize_star(obs.x[i].astype(np.float64),
                                          obs.x_err[i].astype(np.float64), bad, ReadConfig()))
    files.append(str(p))
  return files, expect


def test_mock_round_trip(mock_files, tmp_path):
  """Ingested = the same normalization of the mock's own normalized flux to ≤ 0.1 % rms per
  star, and exactly the flagged pixels masked."""
  files, expect = mock_files
  cfg = PrepareConfig(cuts=OPEN_CUTS, workers=0, fractions=(0.5, 0.5, 0.0), n_plot=2)
  summary = prepare.prepare(files, tmp_path / "out", cfg, progress=False)
  assert summary["stars"] == 6 and summary["skipped"] == {}
  with SpectraFile(tmp_path / "out" / "obs.h5") as f:
    assert f.attrs["paired_splits"] == []
    rms = []
    for split in ("train", "val"):
      s = f.read(split)
      for k, p in enumerate(f.extra("path", split)):
        bad, want = expect[p]
        np.testing.assert_array_equal(~s.x_msk[k], bad)
        good = ~bad
        rms.append(float(np.sqrt(np.mean((s.x[k][good] / want.x[good] - 1) ** 2))))
        assert f.extra("telescope", split)[k] == "apo25m"
        assert f.extra("field", split)[k] == "mock"
  print(f"round-trip rms per star: {[f'{r:.2e}' for r in rms]}")
  assert len(rms) == 6 and max(rms) <= 1e-3, rms
  assert (tmp_path / "out" / "normalization.png").stat().st_size > 10_000


def test_outputs_resume_and_overwrite(mock_files, tmp_path):
  """An interrupted run resumes from its shards and gives the file of an uninterrupted run; a
  complete output is refused without overwrite; other settings on a partial run are refused."""
  files, _ = mock_files
  cfg = PrepareConfig(cuts=OPEN_CUTS, workers=0, shard_files=2, n_plot=0, seed=3)
  prepare.prepare(files, tmp_path / "a", cfg, progress=False)
  parts, _ = prepare._start(tmp_path / "b", files, cfg, overwrite=False)
  prepare.read_shard(0, files[:2], cfg.read, cfg.cuts, str(parts))  # then "killed"
  with pytest.raises(ValueError, match="interrupted run with other settings"):
    prepare.prepare(files, tmp_path / "b", PrepareConfig(cuts=OPEN_CUTS, workers=0, seed=4),
                    progress=False)
  summary = prepare.prepare(files, tmp_path / "b", cfg, progress=False)
  assert summary["resumed_shards"] == 1
  with h5py.File(tmp_path / "a" / "obs.h5") as fa, h5py.File(tmp_path / "b" / "obs.h5") as fb:
    assert sorted(fa) == sorted(fb)
    for k in fa:
      np.testing.assert_array_equal(fa[k][()], fb[k][()])
  assert not (tmp_path / "b" / prepare.PARTS).exists()
  with pytest.raises(FileExistsError, match="obs.h5 exists"):
    prepare.prepare(files, tmp_path / "b", cfg, progress=False)
  prepare.prepare(files, tmp_path / "b", cfg, overwrite=True, progress=False)


def test_splits_by_fraction_and_seed():
  s = prepare.assign_splits(1000, (0.8, 0.1, 0.1), seed=0)
  assert np.bincount(s).tolist() == [800, 100, 100]
  np.testing.assert_array_equal(s, prepare.assign_splits(1000, (0.8, 0.1, 0.1), seed=0))
  assert not np.array_equal(s, prepare.assign_splits(1000, (0.8, 0.1, 0.1), seed=1))


def _cli(capsys, *args):
  rc = prepare_apogee.run_cli(list(args) + ["--no-progress", "--workers", "0"])
  return rc, capsys.readouterr().err.strip().splitlines()


def test_damaged_file_skipped_and_listed(mock_files, tmp_path, capsys):
  files, _ = mock_files
  bad = make_bad_file(tmp_path, "zero_coadd")
  lst = tmp_path / "files.txt"
  lst.write_text("\n".join(files + [bad]) + "\n")
  rc, err = _cli(capsys, "--files", str(lst), "--out", str(tmp_path / "o"), "--snr-min", "0",
                 "--snr-max", "1e9")
  assert rc == 0, err
  rows = list(csv.DictReader(open(tmp_path / "o" / "skipped.csv")))
  assert [(r["file"], r["reason"]) for r in rows] == [(bad, "corrupt")]
  assert "all zero or NaN" in rows[0]["message"]


def test_wrong_input_in_a_batch_stops_the_job(mock_files, tmp_path, capsys):
  files, _ = mock_files
  d = Path(files[0]).parent
  not_fits = tmp_path / "apStar-dr17-zzz.fits"
  not_fits.write_text("not fits\n" * 400)
  lst = tmp_path / "files.txt"
  lst.write_text("\n".join([str(p) for p in sorted(d.glob("*.fits"))] * 2 + [str(not_fits)]))
  rc, err = _cli(capsys, "--files", str(lst), "--out", str(tmp_path / "o"), "--snr-min", "0")
  assert rc == 2 and "apStar-dr17-zzz.fits: not a FITS file" in err[0]


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_cli_bad_file_one_line_exit_2(tmp_path, capsys, kind):
  p = make_bad_file(tmp_path, kind)
  rc, err = _cli(capsys, "--apstar", p, "--out", str(tmp_path / "o"))
  assert rc == 2 and err[0].startswith("prepare_apogee: error:") and Path(p).name in err[0]
  assert not (tmp_path / "o").exists()  # stopped before any work


def test_cli_bad_inputs_one_line_exit_2(tmp_path, capsys):
  rc, err = _cli(capsys, "--apstar", str(tmp_path / "none" / "apStar-*.fits"), "--out",
                 str(tmp_path / "o"))
  assert rc == 2 and "matches no file" in err[0]
  write_allstar(tmp_path / "allStar-dr17.fits", drop=("ASPCAPFLAG",))
  rc, err = _cli(capsys, "--apstar", str(REAL), "--allstar", str(tmp_path / "allStar-dr17.fits"),
                 "--out", str(tmp_path / "o"))
  assert rc == 2 and "allStar-dr17.fits: allStar column ASPCAPFLAG missing" in err[0]
  asp = tmp_path / "aspcapStar-dr17-X.fits"
  asp.write_bytes(REAL.read_bytes())
  rc, err = _cli(capsys, "--apstar", str(asp), "--out", str(tmp_path / "o"))
  assert rc == 2 and "aspcapStar-dr17-X.fits: an aspcapStar file" in err[0]
  rc, err = _cli(capsys, "--apstar", str(REAL), "--out", str(tmp_path / "o"),
                 "--bad-pixel-bits", "BADPIX,SKY")
  assert rc == 2 and "unknown APOGEE_PIXMASK bit 'SKY'" in err[0]


def test_catalogue_cuts_counted(mock_files, tmp_path):
  """allStar rows by APOGEE_ID+TELESCOPE+FIELD; STAR_BAD, DUPLICATE and missing stars counted."""
  from cyclestar_jax.apogee import catalog

  files, _ = mock_files
  write_allstar(tmp_path / "allStar.fits", n=5)
  from astropy.io import fits

  with fits.open(tmp_path / "allStar.fits", mode="update") as f:
    f[1].data["ASPCAPFLAG"][1] = 1 << 23  # STAR_BAD
    f[1].data["EXTRATARG"][2] = 1 << 4  # DUPLICATE
  cat = catalog.read_allstar(tmp_path / "allStar.fits")
  cfg = PrepareConfig(cuts=OPEN_CUTS, workers=0, n_plot=0)
  s = prepare.prepare(files, tmp_path / "o", cfg, cat, progress=False)
  assert s["skipped"] == {"aspcapflag": 1, "extratarg": 1, "catalogue": 1} and s["stars"] == 3
  with SpectraFile(tmp_path / "o" / "obs.h5") as f:
    for split in f.splits:
      ids = list(f.extra("apogee_id", split))
      y = f.read(split).y
      for k, i in enumerate(ids):
        np.testing.assert_array_equal(y[k], cat.labels[int(i[2:])])


def test_prepare_then_fit_labels_emulator(tmp_path, capsys):
  """End to end: apStar files (spawned workers) → obs.h5 → fit_labels --method emulator."""
  from test_fitting import Y_MAX, Y_MIN, _emulator, _mock, _tame

  from cyclestar_jax.emulator import save_emulator
  from experiments import fit_labels

  em = _tame(_emulator(0))
  n = 8
  x, err, y_true, y_cat = _mock(em, n, sigma=0.005, seed=4)
  d = tmp_path / "stars"
  d.mkdir()
  rng = np.random.default_rng(0)
  for i in range(n):
    write_star(d / f"apStar-dr17-2M{i:04d}.fits", x[i], err[i], np.zeros(resources.N_PIX, int),
               200.0, f"2M{i:04d}", 1 + i % 2, rng)
  with open(tmp_path / "labels.csv", "w") as fh:
    fh.write("APOGEE_ID," + ",".join(LABEL_NAMES) + "\n")
    for i in range(n):
      fh.write(f"2M{i:04d}," + ",".join(f"{v:.6g}" for v in y_cat[i]) + "\n")
  rc = prepare_apogee.run_cli(["--apstar", str(d), "--allstar", str(tmp_path / "labels.csv"),
                               "--out", str(tmp_path / "prep"), "--fractions", "0,0,1",
                               "--workers", "2", "--no-progress"])
  assert rc == 0, capsys.readouterr().err
  emu = save_emulator(tmp_path / "emulator.npz", em.params, Y_MIN, Y_MAX)
  out = tmp_path / "fit.h5"
  rc = fit_labels.run_cli(["--model", str(emu), "--obs", str(tmp_path / "prep" / "obs.h5"),
                           "--method", "emulator", "--split", "test", "--out", str(out),
                           "--batch-size", "8", "--no-progress"])
  assert rc == 0, capsys.readouterr().err
  with h5py.File(out) as h:
    assert h["labels"].shape == (n, 25) and np.isfinite(h["labels"][()]).all()
