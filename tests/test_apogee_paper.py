"""`prepare_apogee --mode paper` (the paper's two domains, §4.1.1), the main job on them, the fit
results carried back to allStar (`export_fits`), the real DR17 file through a fit and back, the
fill rule by hand, and every bad input as one line with exit code 2.

One module fixture makes the mock survey (apStar files + allStar) and runs `--mode paper` and
`experiments.apogee --preset smoke` on it once; the tests read what it left."""

import csv
import json

import h5py
import numpy as np
import pytest
from apogee_fixtures import REAL, allstar_columns, write_star, write_table
from astropy.table import Table
from jobs import run_job
from test_fitting import Y_MAX, Y_MIN, _emulator, _tame

from cyclestar_jax import mock, resources
from cyclestar_jax.apogee import catalog, fill, paper
from cyclestar_jax.apogee.config import PAPER_CUTS, PaperConfig
from cyclestar_jax.emulator import emulator_apply, save_emulator
from cyclestar_jax.h5io import SpectraFile
from cyclestar_jax.labels import LABEL_NAMES, N_LABELS, label_index, scale_labels
from cyclestar_jax.mock.world import catalogue_labels
from experiments import export_fits, fit_labels, prepare_apogee

N_ID, N_TWIN = 44, 20  # stars; the first N_TWIN are observed from APO and LCO (two files, rows)
SIZES = (12, 3, 6)  # train / val / test per domain
LI = label_index
# Rows of the allStar table (= files) that each cut removes, and how many (module fixture).
CUTS = {"chi2": (30, 31), "broadening": (32, 33), "aspcapflag": (34,), "labels": (35,),
        "emulator_box": (36, 37)}
LOW_SNR = (38, 39)  # header S/N 20: the reader's cut
MG_FLAGGED = (40, 41, 42, 43, 44, 45)  # MG_FE_FLAG set: [Mg/H] missing → filled


def _cli(mod, capsys, *args):
  rc = mod.run_cli([str(a) for a in args])
  return rc, capsys.readouterr()


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
  """Mock apStar files (spectra of a tame random emulator + noise, a known continuum, mask
  bits), a mock allStar (catalogue = truth + ASPCAP-like errors; calibrated Teff 50 K above the
  spectroscopic), the emulator file; then `--mode paper` and the smoke main job on them."""
  root = tmp_path_factory.mktemp("paper")
  em = _tame(_emulator(0))
  emu = save_emulator(root / "emulator.npz", em.params, Y_MIN, Y_MAX)
  rng = np.random.default_rng(11)
  lo, hi = Y_MIN + 0.1 * (Y_MAX - Y_MIN), Y_MAX - 0.1 * (Y_MAX - Y_MIN)
  y_true = np.clip(mock.sample_labels(N_ID, rng), lo, hi)
  keys, truth = [], []
  for i in range(N_ID):
    keys.append((f"2M{i:04d}", "apo25m", f"F{i % 3}"))
    truth.append(y_true[i])
  for i in range(N_TWIN):
    keys.append((f"2M{i:04d}", "lco25m", f"S{i % 2}"))
    truth.append(y_true[i])
  truth = np.array(truth)
  y_cat = np.clip(catalogue_labels(truth, mock.WorldConfig(), rng), lo, hi)
  cols = allstar_columns(keys, y_cat, teff_offset=50.0)
  cols["ASPCAP_CHI2"][list(CUTS["chi2"])] = 80.0
  cols["VSINI"][list(CUTS["broadening"])] = 15.0
  cols["ASPCAPFLAG"][CUTS["aspcapflag"][0]] = 1 << 23  # STAR_BAD
  cols["TEFF_SPEC"][CUTS["labels"][0]] = -9999.0
  for r in CUTS["emulator_box"]:
    cols["FE_H"][r] = -2.3  # below the box's −2 (and so are the [X/H])
  cols["MG_FE_FLAG"][list(MG_FLAGGED)] = 1
  write_table(root / "allStar.fits", cols)
  theta = scale_labels(truth, Y_MIN, Y_MAX).astype(np.float32)
  x = np.asarray(emulator_apply(em.params, theta)) + 0.01 * rng.normal(size=(len(keys),
                                                                             resources.N_PIX))
  for r, (aid, tel, field) in enumerate(keys):
    d = root / "stars" / tel / field
    d.mkdir(parents=True, exist_ok=True)
    prefix = "asStar" if tel == "lco25m" else "apStar"
    write_star(d / f"{prefix}-dr17-{aid}.fits", x[r].astype(np.float32),
               np.full(resources.N_PIX, 0.01, np.float32), np.zeros(resources.N_PIX, int),
               20.0 if r in LOW_SNR else 100.0, aid, 1 + r % 2, rng, field=field)
  out = root / "domains"
  rc = prepare_apogee.run_cli([
      "--apstar", str(root / "stars"), "--allstar", str(root / "allStar.fits"), "--out",
      str(out), "--mode", "paper", "--emulator", str(emu), "--sizes",
      ",".join(map(str, SIZES)), "--fill-value", "C12_C13=20", "--workers", "0",
      "--no-progress"])
  assert rc == 0
  run = root / "run"
  run_job("apogee", "--preset", "smoke", "--synth", str(out / "synth.h5"), "--obs",
          str(out / "obs.h5"), "--emulator", str(emu), "--out", str(run))
  return {"root": root, "out": out, "run": run, "emu": emu, "em": em, "keys": keys,
          "cols": cols}


def test_paper_mode_writes_both_domains(survey):
  """Asked split sizes in both files, disjoint stars (by APOGEE_ID: a star seen from both
  telescopes stays in one half), every cut and rule counted, spectroscopic Teff, the missing
  labels filled by the stated rule, no paired val split."""
  out, cols = survey["out"], survey["cols"]
  s = json.loads((out / "prepare.json").read_text())
  assert s["mode"] == "paper" and s["teff_logg"] == "spectroscopic"
  assert s["splits"]["observed"] == s["splits"]["synthetic"] == dict(
      zip(("train", "val", "test"), SIZES, strict=True))
  want = {k: len(v) for k, v in CUTS.items()}
  assert s["skipped"] == {**want, "snr": len(LOW_SNR)}, s["skipped"]
  n_rows = len(survey["keys"])
  n_left = n_rows - sum(want.values()) - len(LOW_SNR)
  assert s["stars"] == n_left and s["unused"] == n_left - 2 * sum(SIZES)
  assert s["outside_box"]["Fe_H"] == {"below": 2, "above": 0}
  rows = {k: i for i, k in enumerate(survey["keys"])}
  ids = {}
  with SpectraFile(out / "obs.h5") as fo, SpectraFile(out / "synth.h5") as fs:
    assert fo.attrs["paired_splits"] == [] and fs.attrs["paired_splits"] == []
    filled = np.zeros(N_LABELS, int)
    for split, n in zip(("train", "val", "test"), SIZES, strict=True):
      assert fo.n(split) == fs.n(split) == n
      for name, f in (("obs", fo), ("synth", fs)):
        k = zip(*(f.extra(c, split) for c in ("apogee_id", "telescope", "field")), strict=True)
        ids.setdefault(name, []).extend(k)
      sp = fs.read(split)
      keys = list(zip(*(fs.extra(c, split) for c in ("apogee_id", "telescope", "field")),
                      strict=True))
      r = np.array([rows[k] for k in keys])
      np.testing.assert_allclose(sp.y[:, LI("Teff")], cols["TEFF_SPEC"][r])  # not TEFF
      np.testing.assert_allclose(sp.y[:, LI("Ge_H")], sp.y[:, LI("Fe_H")])  # solar [Ge/Fe]
      np.testing.assert_array_equal(sp.y[:, LI("C12_C13")], 20.0)  # the user's value
      mg_missing = np.isin(r, MG_FLAGGED)
      f_mask = fs.extra("labels_filled", split).astype(bool)
      np.testing.assert_array_equal(f_mask[:, LI("Mg_H")], mg_missing)
      assert f_mask[:, LI("C12_C13")].all() and f_mask[:, LI("Ge_H")].all()
      assert not f_mask[:, LI("Teff")].any()
      filled += f_mask.sum(axis=0)
      np.testing.assert_allclose(sp.x, survey["em"].predict(sp.y, check_box=False), atol=1e-5)
      assert np.isfinite(sp.y).all()
  assert {a for a, _, _ in ids["obs"]}.isdisjoint({a for a, _, _ in ids["synth"]})
  with h5py.File(out / "synth.h5") as h:  # noise-free, as the authors' synthetic file
    assert "spectra_err train" not in h and "spectra_msk train" not in h
  counts = {k: sum(v.values()) for k, v in s["filled"].items()}
  assert counts == {LABEL_NAMES[j]: int(v) for j, v in enumerate(filled) if v}
  assert s["filled"]["C12_C13"] == {"value": sum(SIZES)}
  assert s["filled"]["Ge_H"] == {"solar": sum(SIZES)}
  assert set(s["filled"].get("Mg_H", {})) <= {"cell_median", "median"}
  skipped = list(csv.DictReader(open(out / "skipped.csv")))
  box = [r for r in skipped if r["reason"] == "emulator_box"]
  assert len(box) == 2 and "outside the emulator's box" in box[0]["message"]


def test_paper_domains_run_the_main_job(survey):
  """`experiments.apogee --synth --obs --emulator` on them: every stage, the val splits not
  taken as paired, the fits carrying the stars' ids, the figure against the catalogue."""
  run = survey["run"]
  m = json.loads((run / "metrics.json").read_text())
  assert "paired_transfer_chi2r" not in m and m["n_test"] == SIZES[2]
  assert set(m["catalogue_differences"]) and "fitted_vs_catalogue.png" in " ".join(m["figures"])
  assert (run / "figures" / "fitted_vs_catalogue.png").stat().st_size > 10_000
  assert "Labels against the catalogue" in (run / "report.md").read_text()
  with h5py.File(run / "fits" / "eq11.h5") as h, SpectraFile(survey["out"] / "obs.h5") as f:
    np.testing.assert_array_equal(h["apogee_id"].asstr()[()], f.extra("apogee_id", "test"))
  header = next(csv.reader(open(run / "fits" / "eq11.csv")))
  assert header[:4] == ["row", "apogee_id", "telescope", "field"]


def test_export_fits_joins_allstar(survey, tmp_path, capsys):
  """One row per fitted spectrum, each joined to its own allStar row where APOGEE_ID repeats
  (a star observed from two telescopes), read back with astropy; the figure is written."""
  fits_h5 = survey["run"] / "fits" / "eq9.h5"
  out = tmp_path / "labels.fits"
  rc, io = _cli(export_fits, capsys, fits_h5, "--out", out, "--allstar",
                survey["root"] / "allStar.fits")
  assert rc == 0, io.err
  t = Table.read(out)
  cols = survey["cols"]
  with h5py.File(fits_h5) as h:
    ids = h["apogee_id"].asstr()[()]
    tel = h["telescope"].asstr()[()]
    np.testing.assert_allclose(t["FIT_TEFF"], h["labels"][:, LI("Teff")])
    np.testing.assert_allclose(t["FIT_FE_H_ERR"], h["labels_err"][:, LI("Fe_H")])
    np.testing.assert_allclose(t["FIT_CHI2_R"], h["chi2_r"][()])
  assert len(t) == SIZES[2] and list(t["APOGEE_ID"]) == list(ids)
  assert list(t["TELESCOPE"]) == list(tel) and (t["ALLSTAR_ROW"] >= 0).all()
  assert set(t["ALLSTAR_MATCH"]) == {"APOGEE_ID+TELESCOPE+FIELD"}
  r = np.asarray(t["ALLSTAR_ROW"])
  assert [cols["TELESCOPE"][i] for i in r] == list(tel)
  np.testing.assert_allclose(t["TEFF"], cols["TEFF"][r])
  np.testing.assert_allclose(t["TEFF_SPEC"], cols["TEFF_SPEC"][r])
  repeated = [a for a in ids if cols["APOGEE_ID"].count(a) > 1]
  assert repeated, "no fitted star with two allStar rows: choose another seed"
  assert "FIT_FLAGS" in t.colnames and "FIT_FLAG_NAMES" in t.colnames
  assert (tmp_path / "labels.png").stat().st_size > 10_000
  print(f"{len(repeated)} of {len(t)} fitted stars have two allStar rows")


def test_real_dr17_file_fit_and_export(tmp_path, capsys):
  """The real DR17 file through --mode observed, a fit with the mock emulator, and export_fits
  joined to a one-row allStar written for it: the row and its ID come back."""
  key = ("2M17335483-2753043", "apo25m", "000+02")
  y = np.array(0.5 * (Y_MIN + Y_MAX))[None]
  y[0, LI("Teff")], y[0, LI("logg")], y[0, LI("Fe_H")] = 3700.0, 0.9, -0.1
  write_table(tmp_path / "allStar.fits", allstar_columns([key], y))
  em = _tame(_emulator(0))
  emu = save_emulator(tmp_path / "emulator.npz", em.params, Y_MIN, Y_MAX)
  rc, io = _cli(prepare_apogee, capsys, "--apstar", REAL, "--allstar", tmp_path / "allStar.fits",
                "--out", tmp_path / "prep", "--fractions", "0,0,1", "--workers", "0",
                "--no-progress")
  assert rc == 0, io.err
  rc, io = _cli(fit_labels, capsys, "--model", emu, "--obs", tmp_path / "prep" / "obs.h5",
                "--method", "emulator", "--split", "test", "--out", tmp_path / "fit.h5",
                "--batch-size", "8", "--max-iter", "30", "--no-progress")
  assert rc == 0, io.err
  rc, io = _cli(export_fits, capsys, tmp_path / "fit.h5", "--out", tmp_path / "labels.fits",
                "--allstar", tmp_path / "allStar.fits")
  assert rc == 0, io.err
  t = Table.read(tmp_path / "labels.fits")
  assert len(t) == 1 and tuple(t[0][c] for c in ("APOGEE_ID", "TELESCOPE", "FIELD")) == key
  assert t[0]["ALLSTAR_ROW"] == 0 and t[0]["ALLSTAR_MATCH"] == "APOGEE_ID+TELESCOPE+FIELD"
  assert t[0]["TEFF_SPEC"] == pytest.approx(3700.0) and np.isfinite(t[0]["FIT_TEFF"])
  row = next(csv.DictReader(open(tmp_path / "fit.csv")))
  assert row["apogee_id"] == key[0] and row["field"] == key[2]


# --- the fill rule and the splits, by hand ------------------------------------------------------


def test_fill_rule_by_hand():
  """cell_median (≥ fill_min_stars values in the Teff–log g cell), median (too few), solar
  ([X/Fe] = 0 when no star has the element), box_centre (C12/C13), the user's value."""
  y = np.full((7, N_LABELS), 0.0)
  y[:, LI("Teff")] = [4010, 4020, 4030, 4040, 5600, 4050, 4060]
  y[:, LI("logg")] = [2.1, 2.2, 2.3, 2.4, 4.4, 2.1, 2.2]
  y[:, LI("Fe_H")] = [-0.1, 0.0, 0.1, 0.2, -0.5, 0.3, 0.05]
  y[:, LI("Mg_H")] = [0.1, 0.3, 0.2, np.nan, np.nan, 0.4, 0.5]  # cell: 0.1 0.2 0.3 0.4 0.5
  y[:, LI("Ge_H")] = np.nan
  y[:, LI("C12_C13")] = np.nan
  y[:, LI("vmacro")] = np.nan
  cfg = PaperConfig(fill_values=(("vmacro", 6.0),), fill_min_stars=5)
  f = fill.fill_labels(y, cfg, box_centre=np.full(N_LABELS, 7.0))
  assert f.labels[3, LI("Mg_H")] == pytest.approx(0.3)  # its cell's median of 5 values
  assert f.labels[4, LI("Mg_H")] == pytest.approx(0.3)  # its cell is empty: everyone's median
  np.testing.assert_allclose(f.labels[:, LI("Ge_H")], y[:, LI("Fe_H")])
  np.testing.assert_array_equal(f.labels[:, LI("C12_C13")], 7.0)
  np.testing.assert_array_equal(f.labels[:, LI("vmacro")], 6.0)
  assert f.counts == {"Mg_H": {"cell_median": 1, "median": 1}, "Ge_H": {"solar": 7},
                      "C12_C13": {"box_centre": 7}, "vmacro": {"value": 7}}
  assert f.filled.sum() == 2 + 21
  med, n = fill.group_medians(np.array([0, 0, 1, 1, 1]), np.array([1.0, 3, 5, np.nan, 9]), 3)
  np.testing.assert_allclose(med, [2.0, 7.0, np.nan])
  np.testing.assert_array_equal(n, [2, 2, 0])


def test_allstar_columns_of_the_paper_cuts(tmp_path):
  """ASPCAP_CHI2 and √(VSINI² + VMACRO²) read when their cuts are on (a missing one counts as
  0, both missing: unknown), TEFF_SPEC/LOGG_SPEC as labels on request, named when absent."""
  y = np.tile(0.5 * (Y_MIN + Y_MAX), (3, 1))
  cols = allstar_columns([(f"2M{i}", "apo25m", "F") for i in range(3)], y, teff_offset=50.0)
  cols["VSINI"][:] = [3.0, np.nan, np.nan]
  cols["VMACRO"][:] = [4.0, 12.0, np.nan]
  write_table(tmp_path / "allStar.fits", cols)
  cat = catalog.read_allstar(tmp_path / "allStar.fits", PAPER_CUTS, "spectroscopic")
  np.testing.assert_allclose(cat.broadening, [5.0, 12.0, np.nan])
  np.testing.assert_allclose(cat.chi2, 5.0)
  np.testing.assert_allclose(cat.labels[:, LI("Teff")], cols["TEFF_SPEC"])
  calibrated = catalog.read_allstar(tmp_path / "allStar.fits", PAPER_CUTS, "calibrated")
  np.testing.assert_allclose(calibrated.labels[:, LI("Teff")], cols["TEFF"])
  assert [catalog.catalogue_reason(cat, r, PAPER_CUTS) for r in range(3)][0] is None
  assert [catalog.catalogue_reason(cat, r, PAPER_CUTS)[0] for r in (1, 2)] == ["broadening"] * 2
  cols.pop("TEFF_SPEC")
  write_table(tmp_path / "allStar-dr14.fits", cols)
  with pytest.raises(ValueError, match="allStar-dr14.fits: allStar column TEFF_SPEC missing"):
    catalog.read_allstar(tmp_path / "allStar-dr14.fits", PAPER_CUTS, "spectroscopic")


def test_split_sizes():
  f = (80 / 97, 10 / 97, 7 / 97)
  assert paper.split_sizes(97_000, f, None) == (80_000, 10_000, 7_000)
  assert paper.split_sizes(10, f, None) == (8, 1, 1)
  assert paper.split_sizes(3, f, None) is None  # round(0.07·3) = 0 test rows
  assert paper.split_sizes(20, f, (12, 3, 6)) is None
  assert paper.split_sizes(21, f, (12, 3, 6)) == (12, 3, 6)


# --- bad inputs -----------------------------------------------------------------------------------


def test_paper_bad_inputs_one_line_exit_2(survey, tmp_path, capsys):
  """A wrong emulator, too few stars for the splits, an existing output, no emulator, a CSV
  catalogue with the paper's cuts: one line, exit code 2, before any file is read."""
  root = survey["root"]
  base = ["--apstar", root / "stars", "--allstar", root / "allStar.fits", "--mode", "paper",
          "--workers", "0", "--no-progress"]
  bad = _emulator(0, hidden=8, n_pix=100)
  bad_npz = save_emulator(tmp_path / "bad.npz", bad.params, Y_MIN, Y_MAX)
  cases = [
      (["--emulator", bad_npz, "--out", tmp_path / "a"], "gives 100 pixels"),
      (["--emulator", survey["emu"], "--out", tmp_path / "b", "--sizes", "40,5,5"],
       "stars remain after the cuts in the catalogue allStar.fits"),
      (["--emulator", survey["emu"], "--out", survey["out"]], "obs.h5 exists"),
  ]
  for args, msg in cases:
    rc, io = _cli(prepare_apogee, capsys, *base, *args)
    err = [line for line in io.err.strip().splitlines() if "error:" in line]
    assert rc == 2 and len(err) == 1 and msg in err[0], (msg, io.err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
  with pytest.raises(SystemExit) as e:  # argparse's own error: usage, one error line, exit 2
    prepare_apogee.run_cli([str(a) for a in base + ["--out", tmp_path / "c"]])
  err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
  assert e.value.code == 2 and len(err) == 1 and "--mode paper needs --emulator" in err[0]
  s = json.loads((survey["out"] / "prepare.json").read_text())
  n = s["catalogue_eligible"]
  rc, io = _cli(prepare_apogee, capsys, *base, "--emulator", survey["emu"], "--out",
                tmp_path / "b", "--sizes", "40,5,5")
  assert f"{n} stars remain" in io.err and f"{n // 2} per domain" in io.err
  # Enough in the catalogue, too few once the files' own cuts and the box have removed more.
  per_domain = n // 2
  assert per_domain > s["stars"] // 2
  rc, io = _cli(prepare_apogee, capsys, *base, "--emulator", survey["emu"], "--out",
                tmp_path / "d", "--sizes", f"{per_domain - 2},1,1")
  err = [line for line in io.err.splitlines() if "error:" in line]
  assert rc == 2 and len(err) == 1, io.err
  assert f"{s['stars']} stars remain after the cuts of {len(survey['keys'])} files" in err[0]
  assert (tmp_path / "d" / "skipped.csv").is_file() and not (tmp_path / "d" / "obs.h5").exists()


def test_export_bad_inputs_one_line_exit_2(survey, tmp_path, capsys):
  """An allStar without a join key column, results without star ids given --allstar, an
  existing output without --overwrite."""
  fits_h5 = survey["run"] / "fits" / "eq9.h5"
  cols = dict(survey["cols"])
  cols.pop("TELESCOPE")
  write_table(tmp_path / "allStar-nokey.fits", cols)
  rc, io = _cli(export_fits, capsys, fits_h5, "--out", tmp_path / "x.fits", "--allstar",
                tmp_path / "allStar-nokey.fits")
  assert rc == 2 and "join key column TELESCOPE missing" in io.err.splitlines()[0]
  assert not (tmp_path / "x.fits").exists()
  no_ids = tmp_path / "noids.h5"
  with h5py.File(fits_h5) as src, h5py.File(no_ids, "w") as dst:
    for k in src:
      if k not in ("apogee_id", "telescope", "field"):
        src.copy(k, dst)
    dst.attrs.update(src.attrs)
  rc, io = _cli(export_fits, capsys, no_ids, "--out", tmp_path / "y.fits", "--allstar",
                survey["root"] / "allStar.fits")
  assert rc == 2 and "no apogee_id/telescope/field" in io.err.splitlines()[0]
  (tmp_path / "z.fits").write_text("old")
  rc, io = _cli(export_fits, capsys, fits_h5, "--out", tmp_path / "z.fits")
  assert rc == 2 and "z.fits exists" in io.err.splitlines()[0]
  assert (tmp_path / "z.fits").read_text() == "old"
