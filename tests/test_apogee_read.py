"""`cyclestar_jax.apogee` reading one file: the real DR17 apStar file (grid, masked share,
normalization medians), the row choice in both layouts (files written here), aspcapStar by its
header's wavelengths, the fast FITS reader against astropy, catalogue labels, and every bad input
as one message naming the file and the field."""

from pathlib import Path

import numpy as np
import pytest
from apogee_fixtures import REAL, write_allstar
from astropy.io import fits

from cyclestar_jax import resources
from cyclestar_jax.apogee import bits, catalog, fitsio, grid, normalize
from cyclestar_jax.apogee.config import CutConfig, ReadConfig
from cyclestar_jax.apogee.errors import CorruptFileError, StarRejected, WrongInputError
from cyclestar_jax.apogee.spectra import read_star
from cyclestar_jax.apogee.writefits import StarRows, apstar_header, on_apstar_grid, write_apstar
from cyclestar_jax.labels import label_index

CFG = ReadConfig()


def test_real_dr17_file():
  """Grid ≤ 1e-6; masked share = the bit/error rule; continuum medians within 0.5 % of 1."""
  star = read_star(REAL, CFG)
  h = fits.getheader(REAL)
  wave = grid.log_linear_wavelength(h["CRVAL1"], h["CDELT1"], h["NWAVE"], h["CRPIX1"])
  dev = grid.grid_deviation(wave[grid.payne_indices()])
  assert dev <= 1e-6
  with fits.open(REAL) as f:
    idx = grid.payne_indices()
    flux, err, mask = f[1].data[0][idx], f[2].data[0][idx], f[3].data[0][idx]
  bad_value = sum(1 << bits.PIXMASK[n] for n in bits.DEFAULT_BAD_PIXEL_BITS)
  with np.errstate(invalid="ignore"):
    rule = ((mask & bad_value) != 0) | ~np.isfinite(flux) | ~np.isfinite(err) | (err <= 0) \
        | (err >= 1e9) | (flux <= 0)
  np.testing.assert_array_equal(~star.norm.x_msk, rule)
  assert 0.01 < rule.mean() < 0.03  # 1.7 %: SIG_SKYLINE, no ASPCAP bad bit
  cont = resources.continuum_pixels()
  for a, b in resources.CHIP_EDGES:
    sel = cont[a:b] & star.norm.x_msk[a:b]
    assert abs(np.median(star.norm.x[a:b][sel]) - 1) < 0.005
  assert star.header.nvisits == 3 and star.header.layout == "dr17"
  assert (star.header.apogee_id, star.header.field, star.header.telescope) == (
      "2M17335483-2753043", "000+02", "apo25m")


def test_continuum_matches_numpy_chebyshev_fit():
  """The fit equals The Payne's `Chebyshev.fit(x, y, 4, w=1/σ)` on the good continuum pixels."""
  star = read_star(REAL, CFG)
  cont = resources.continuum_pixels()
  for a, b in resources.CHIP_EDGES:
    sel = cont[a:b] & star.norm.x_msk[a:b]
    x = np.arange(b - a)
    fit = np.polynomial.chebyshev.Chebyshev.fit(x[sel], star.flux[a:b][sel], 4,
                                                w=1 / star.err[a:b][sel])
    np.testing.assert_allclose(star.norm.continuum[a:b], fit(x), rtol=1e-10)


def test_fast_reader_equals_astropy():
  with fitsio.FitsImages(REAL) as f, fits.open(REAL) as g:
    for i in range(4):
      h = f.header(i)
      for k in ("NAXIS", "CRVAL1", "CDELT1", "OBJID", "FIELD", "SNR", "NVISITS", "BITPIX"):
        if k in g[i].header:
          assert h[k] == g[i].header[k], (i, k)
    for i in (1, 2, 3):
      np.testing.assert_array_equal(f.rows(i), g[i].data)
      np.testing.assert_array_equal(f.rows(i, [2, 0]), g[i].data[[2, 0]])


def _rows(n_rows, seed=0, level=1000.0):
  rng = np.random.default_rng(seed)
  flux = level * (1 + 0.01 * rng.normal(size=(n_rows, grid.APSTAR_NWAVE)))
  return StarRows(flux=flux, err=np.full_like(flux, level / 100),
                  mask=np.zeros(flux.shape, np.int16))


def test_row_choice_dr17_and_pre_dr17(tmp_path):
  """DR17: row 0 + its mask; 'global' row 1 only with > 1 visit; before DR17 a 1-D single row,
  and the AND mask (row 1) of a multi-visit star."""
  r = _rows(4)  # 2 visits: co-add, global, visit, visit
  r.flux[1] *= 1.1
  r.mask[0, 500] = 1  # BADPIX in DR17's co-add mask (row 0)
  p = write_apstar(tmp_path / "apStar-dr17-A.fits", r, apstar_header("A", snr=100, nvisits=2))
  s = read_star(p, CFG)
  idx = grid.payne_indices()
  np.testing.assert_allclose(s.flux, r.flux[0][idx], rtol=1e-6)
  assert not s.norm.x_msk[np.searchsorted(idx, 500)]
  g = read_star(p, ReadConfig(coadd="global"))
  np.testing.assert_allclose(g.flux, r.flux[1][idx], rtol=1e-6)
  assert not g.norm.x_msk[np.searchsorted(idx, 500)]  # row 1's mask is not written in DR17
  # Pre-DR17 multi-visit: mask row 0 = OR (sky line in one visit), row 1 = AND.
  r2 = _rows(4, seed=1)
  r2.mask[0, 600] = 1 << 12
  r2.mask[1, 700] = 1
  p2 = write_apstar(tmp_path / "apStar-r12-B.fits", r2, apstar_header("B", snr=100, nvisits=2))
  s2 = read_star(p2, CFG)
  assert s2.header.layout == "pre-dr17"
  assert s2.norm.x_msk[np.searchsorted(idx, 600)]
  assert not s2.norm.x_msk[np.searchsorted(idx, 700)]
  # Pre-DR17 single visit: one 1-D row.
  r3 = _rows(1, seed=2)
  p3 = write_apstar(tmp_path / "apStar-r12-C.fits", r3, apstar_header("C", snr=100, nvisits=1),
                    one_d=True)
  assert fits.getdata(p3, 1).ndim == 1
  s3 = read_star(p3, ReadConfig(coadd="global"))
  np.testing.assert_allclose(s3.flux, r3.flux[0][idx], rtol=1e-6)
  # A single-visit star written with 3 rows: row 1 (never filled) is not used for "global".
  r4 = _rows(3, seed=3)
  r4.flux[1] = 0
  p4 = write_apstar(tmp_path / "apStar-dr17-D.fits", r4, apstar_header("D", snr=100, nvisits=1))
  np.testing.assert_allclose(read_star(p4, ReadConfig(coadd="global")).flux, r4.flux[0][idx],
                             rtol=1e-6)


def test_rows_inconsistent_with_nvisits(tmp_path):
  p = write_apstar(tmp_path / "apStar-dr17-E.fits", _rows(4), apstar_header("E", snr=100,
                                                                             nvisits=3))
  with pytest.raises(CorruptFileError, match=r"apStar-dr17-E.fits.*NAXIS2 = 4.*NVISITS = 3"):
    read_star(p, CFG)


def test_asstar_telescope_and_header_cuts(tmp_path):
  d = tmp_path / "lco25m" / "fieldX"
  d.mkdir(parents=True)
  p = write_apstar(d / "asStar-dr17-F.fits", _rows(1), apstar_header("F", snr=20, nvisits=1))
  with pytest.raises(StarRejected) as e:
    read_star(p, CFG, CutConfig())
  assert e.value.reason == "snr"
  s = read_star(p, CFG, CutConfig(snr_range=(10, 500)))
  assert s.header.telescope == "lco25m"
  with pytest.raises(StarRejected, match="telescope"):
    read_star(p, CFG, CutConfig(snr_range=(10, 500), telescopes=("apo25m",)))
  p2 = write_apstar(tmp_path / "apStar-dr17-G.fits", _rows(1),
                    apstar_header("G", snr=100, nvisits=1, STARFLAG=1 << 3, VSCATTER=5.0))
  with pytest.raises(StarRejected, match="VERY_BRIGHT_NEIGHBOR"):
    read_star(p2, CFG, CutConfig())
  with pytest.raises(StarRejected, match="VSCATTER"):
    read_star(p2, CFG, CutConfig(bad_starflag_bits=(), vscatter_max=1.0))


def test_masked_share_and_continuum_pixels_cuts(tmp_path):
  r = _rows(1)
  r.mask[0, 6412:6412 + 700] = 1  # 700 of the red chip's 1894 pixels: more than a third
  p = write_apstar(tmp_path / "apStar-dr17-H.fits", r, apstar_header("H", snr=100, nvisits=1))
  with pytest.raises(StarRejected, match="red chip.*masked"):
    read_star(p, CFG)
  r = _rows(1)
  cont = on_apstar_grid(resources.continuum_pixels(), False)
  blue = np.zeros(grid.APSTAR_NWAVE, bool)
  blue[:3242] = True
  r.mask[0, cont & blue] = 1  # every blue continuum pixel
  p = write_apstar(tmp_path / "apStar-dr17-I.fits", r, apstar_header("I", snr=100, nvisits=1))
  with pytest.raises(StarRejected, match="blue chip: 0 good continuum pixels"):
    read_star(p, CFG)


def test_bad_pixel_bits_by_name():
  mask = np.array([1 << 12, 1 << 13, 1 << 9, 1 << 14])
  flux, err = np.ones(4), np.ones(4)
  bad = normalize.bad_pixels(flux, err, mask, CFG.bad_pixel_value)
  np.testing.assert_array_equal(bad, [True, False, False, True])
  no_sky = ReadConfig(bad_pixel_bits=("BADPIX", "SIG_TELLURIC"))
  np.testing.assert_array_equal(normalize.bad_pixels(flux, err, mask, no_sky.bad_pixel_value),
                                [False, True, False, False])
  with pytest.raises(ValueError, match="unknown APOGEE_PIXMASK bit 'SKY'"):
    ReadConfig(bad_pixel_bits=("SKY",)).check()
  e = np.array([1.0, 0.0, 1e9, np.nan])
  np.testing.assert_array_equal(normalize.bad_pixels(np.array([1, 1, 1, -1.0]), e,
                                                     np.zeros(4, int), 0), [False] + [True] * 3)


def test_aspcapstar_by_header_wavelengths(tmp_path):
  """Read only with the option, mapped by CRVAL1/CDELT1 (here a grid starting 100 pixels
  earlier than apStar's), not renormalized; another grid is refused."""
  n = grid.APSTAR_NWAVE + 100
  x = np.linspace(0.9, 1.1, n)
  h = fits.Header({"CRVAL1": grid.APSTAR_CRVAL1 - 100 * grid.APSTAR_CDELT1,
                   "CDELT1": grid.APSTAR_CDELT1, "CRPIX1": 1})
  p = tmp_path / "aspcapStar-dr17-J.fits"
  fits.HDUList([fits.PrimaryHDU(header=fits.Header({"SNR": 80.0})),
                fits.ImageHDU(x.astype(np.float32), header=h),
                fits.ImageHDU(np.full(n, 0.01, np.float32), header=h)]).writeto(p)
  with pytest.raises(WrongInputError, match="aspcapStar-dr17-J.fits.*aspcapStar option"):
    read_star(p, CFG)
  s = read_star(p, ReadConfig(allow_aspcap=True))
  np.testing.assert_allclose(s.norm.x, x[grid.payne_indices() + 100], rtol=1e-6)
  h["CDELT1"] = 7e-6
  fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(x, header=h),
                fits.ImageHDU(x, header=h)]).writeto(p, overwrite=True)
  with pytest.raises(WrongInputError, match="not on the header's wavelength axis"):
    read_star(p, ReadConfig(allow_aspcap=True))


# --- bad inputs, one message naming the file and the field -------------------------------------


def _bad(tmp_path, name, **kw):
  r = _rows(1)
  header = apstar_header("K", snr=100, nvisits=1)
  header.update(kw.pop("header", {}))
  if "mask" in kw:
    r = StarRows(r.flux, r.err, kw.pop("mask"))
  if "flux" in kw:
    r = StarRows(kw.pop("flux"), r.err, r.mask)
  return write_apstar(tmp_path / name, r, header, **kw)


BAD_FILES = {
    "not_fits": (WrongInputError, "not a FITS file"),
    "hdu_missing": (CorruptFileError, r"HDU 3 \(APOGEE_PIXMASK\) missing"),
    "hdu_shape": (CorruptFileError, r"HDU 2 \(error\) has shape \(1, 8000\)"),
    "wavelength": (WrongInputError, "keyword CDELT1"),
    "nwave": (WrongInputError, "keyword NWAVE"),
    "apvisit": (WrongInputError, "apVisit.*apStar"),
    "zero_coadd": (CorruptFileError, r"HDU 1 row 0 \(the co-add\) is all zero or NaN"),
    "float_mask": (CorruptFileError, r"HDU 3 \(APOGEE_PIXMASK\) has BITPIX -32"),
    "nvisits": (CorruptFileError, "keyword NVISITS"),
}


def make_bad_file(tmp_path, kind: str) -> str:
  """A file with one defect of `BAD_FILES`."""
  name = f"apStar-dr17-{kind}.fits"
  if kind == "not_fits":
    p = tmp_path / name
    p.write_text("APOGEE_ID,TEFF\n2M0,4500\n" * 200)
    return str(p)
  if kind == "hdu_missing":
    return _bad(tmp_path, name, n_hdus=2)
  if kind == "hdu_shape":
    p = _bad(tmp_path, name)
    with fits.open(p, mode="update") as f:
      f[2].data = np.ones((1, 8000), np.float32)
    return p
  if kind == "wavelength":
    return _bad(tmp_path, name, header={"CDELT1": 6.1e-6})
  if kind == "nwave":
    return _bad(tmp_path, name, header={"NWAVE": 7514})
  if kind == "apvisit":
    return _bad(tmp_path, "apVisit-dr17-5815-56396-212.fits")
  if kind == "zero_coadd":
    return _bad(tmp_path, name, flux=np.zeros((1, grid.APSTAR_NWAVE)))
  if kind == "float_mask":
    return _bad(tmp_path, name, mask=np.zeros((1, grid.APSTAR_NWAVE), np.float32))
  if kind == "nvisits":
    return _bad(tmp_path, name, header={"NVISITS": "three"})
  raise KeyError(kind)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file(tmp_path, kind):
  err, pattern = BAD_FILES[kind]
  p = make_bad_file(tmp_path, kind)
  with pytest.raises(err, match=pattern) as e:
    read_star(p, CFG)
  assert Path(p).name in str(e.value) and "\n" not in str(e.value)


# --- catalogue ----------------------------------------------------------------------------------


def test_allstar_labels(tmp_path):
  cols = write_allstar(tmp_path / "allStar.fits")
  with fits.open(tmp_path / "allStar.fits", mode="update") as f:
    f[1].data["MG_FE_FLAG"][1] = 1  # flagged → missing
    f[1].data["ASPCAPFLAG"][2] = 1 << bits.ASPCAPFLAG["TEFF_BAD"]
  cat = catalog.read_allstar(tmp_path / "allStar.fits")
  y = cat.labels
  np.testing.assert_allclose(y[0, label_index("Teff")], cols["TEFF"][0])
  np.testing.assert_allclose(y[:, label_index("Fe_H")], cols["FE_H"])
  np.testing.assert_allclose(y[0, label_index("Mg_H")], cols["MG_FE"][0] + cols["FE_H"][0])
  assert np.isnan(y[1, label_index("Mg_H")]) and np.isnan(y[2, label_index("Teff")])
  assert np.isnan(y[:, label_index("Ge_H")]).all() and np.isnan(y[:, label_index("C12_C13")]).all()
  assert any("GE_FE" in n for n in cat.notes)
  assert list(cat.apogee_id) == cols["APOGEE_ID"]


def test_allstar_missing_column_named(tmp_path):
  write_allstar(tmp_path / "allStar.fits", drop=("EXTRATARG",))
  with pytest.raises(ValueError, match=r"allStar.fits: allStar column EXTRATARG missing"):
    catalog.read_allstar(tmp_path / "allStar.fits")
  catalog.read_allstar(tmp_path / "allStar.fits", CutConfig(bad_extratarg_bits=()))


def test_label_csv(tmp_path):
  from cyclestar_jax.labels import LABEL_NAMES

  p = tmp_path / "labels.csv"
  p.write_text("APOGEE_ID," + ",".join(LABEL_NAMES) + "\n2M1," + ",".join(["1"] * 24) + ",\n")
  cat = catalog.read_label_csv(p)
  assert cat.labels.shape == (1, 25) and np.isnan(cat.labels[0, -1])
  p.write_text("APOGEE_ID,Teff\n2M1,4000\n")
  with pytest.raises(ValueError, match="labels.csv: CSV label columns missing: logg"):
    catalog.read_label_csv(p)


def test_import_does_not_need_astropy():
  """The GPU machines have no astropy: importing the package and the reader must not load it."""
  import subprocess
  import sys

  code = ("import sys, cyclestar_jax, cyclestar_jax.apogee, cyclestar_jax.apogee.prepare; "
          "from cyclestar_jax.apogee import read_star, ReadConfig; "
          f"read_star({str(REAL)!r}, ReadConfig()); assert 'astropy' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)
