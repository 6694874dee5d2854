"""Every figure function runs on tiny arrays (with NaNs), writes a PNG and leaves no temp file."""

import warnings

import numpy as np
import pytest

from cyclestar_jax import plots, resources
from cyclestar_jax.labels import N_LABELS

PNG = b"\x89PNG\r\n\x1a\n"
N = 5


def _wave(p: int) -> np.ndarray:
  """A p-pixel grid with the APOGEE chip gaps: p // 3 contiguous pixels from each chip."""
  w = resources.wavelength()
  if p == w.size:
    return w
  return np.concatenate([w[lo:lo + p // 3] for lo, _ in resources.CHIP_EDGES])


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch):
  """Render at 40 dpi: the layout code is the same, the PNG encoding much cheaper."""
  monkeypatch.setattr(plots, "DPI", 40)


def _spectra(rng, p: int) -> np.ndarray:
  x = (1.0 - 0.3 * rng.random((N, p)) ** 8).astype(np.float32)
  x[1, :7] = np.nan
  return x


def _check(out, tmp_path) -> None:
  out = tmp_path / out
  assert out.read_bytes()[:8] == PNG and out.stat().st_size > 500
  assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_chip_slices_match_chip_edges():
  w = resources.wavelength()
  assert [(s.start, s.stop) for s in plots.chip_slices(w)] == list(resources.CHIP_EDGES)
  net = plots.chip_slices(w[resources.N_DROP:])
  assert len(net) == 3 and net[-1].stop == resources.N_PIX_NET
  assert plots.chip_slices(np.linspace(15000, 15100, 50)) == [slice(0, 50)]
  coarse = np.concatenate([np.arange(15000, 15300, 6.0), np.arange(15400, 15700, 6.0)])
  assert len(plots.chip_slices(coarse)) == 2
  assert len(plots.chip_slices(_wave(300))) == 3


def test_spectral_figures(tmp_path):
  rng = np.random.default_rng(0)
  wave = _wave(300)
  p = wave.size
  x = _spectra(rng, p)
  err = np.full_like(x, 0.01)
  msk = rng.random((N, p)) > 0.1
  noisy = x + rng.normal(0, 0.01, x.shape).astype(np.float32)
  plots.fig_spectra_panel(wave, {"a": x[0], "b": x[1]}, tmp_path / "s.png", title="t")
  plots.fig_synthetic_residuals(wave, x, noisy, noisy * 1.001, tmp_path / "f5.png")
  assert plots.fig_observed_residuals(wave, x, err, msk, noisy, noisy, tmp_path / "f6.png",
                                      title="obs") == str(tmp_path / "f6.png")
  model_b = noisy[0].copy()
  model_b[:40] = np.nan
  plots.fig_fit_example(wave, x[0], err[0], msk[0], {"Eq. 9": noisy[2], "Eq. 11": model_b},
                        tmp_path / "f7.png", text="Teff 4500 K")
  resid = rng.normal(0, 1.5, (N, p))
  resid[~msk] = np.nan
  all_nan = np.full_like(resid, np.nan)  # a method that fitted nothing
  plots.fig_fit_residuals(wave, resid, all_nan, tmp_path / "f8.png", name_a="A", name_b="B")
  for name in ("s", "f5", "f6", "f7", "f8"):
    _check(f"{name}.png", tmp_path)


def test_label_figures(tmp_path):
  rng = np.random.default_rng(1)
  teff, logg = rng.uniform(3800, 5500, N), rng.uniform(0.5, 4.5, N)
  chi2 = rng.uniform(0.8, 10, N)
  chi2[0], teff[1] = np.nan, np.nan
  plots.fig_kiel_chi2(teff, logg, chi2, np.full(N, np.nan), tmp_path / "f9.png", name_a="A",
                      name_b="B")
  emb = rng.normal(size=(2 * N, 2))
  emb[0] = np.nan
  grp = np.array(["synthetic"] * N + ["observed"] * N)
  plots.fig_tsne({"spectra": (emb, grp), "latent": (emb[::-1], grp)}, tmp_path / "f10.png")
  plots.fig_kiel_methods({"Payne": (teff, logg), "CSN": (teff + 50, logg)},
                         tmp_path / "f11.png", truth=(teff, logg))
  truth = rng.normal(size=(N, N_LABELS)) + 1
  fits = {"A": truth + 0.1, "B": truth + rng.normal(0, 0.1, truth.shape)}
  fits["B"][2, 0] = np.nan
  plots.fig_label_errors(truth, fits, tmp_path / "err.png", names=("Teff", "[Fe/H]"))
  truth[:, 0] = rng.uniform(3800, 5500, N)
  truth[3, 7] = np.nan  # a star without [Mg/H] in the catalogue
  plots.fig_catalogue_residuals(truth, fits, tmp_path / "cat.png")
  for name in ("f9", "f10", "f11", "err", "cat"):
    _check(f"{name}.png", tmp_path)


def test_curves(tmp_path):
  t = np.arange(6.0)
  plots.fig_training_curve({"run": (t, 3 - 0.2 * t), "nan": (t, np.full(6, np.nan))},
                           tmp_path / "c.png", floor=1.24, baseline=2.79)
  plots.fig_recovery_vs_fraction([0.1, 0.5, 0.9], [0.35, 0.4, np.nan], tmp_path / "r.png",
                                 baseline=[1.0, 3.0, 6.0])
  _check("c.png", tmp_path)
  _check("r.png", tmp_path)


def test_emulator_residuals(tmp_path):
  res = np.random.default_rng(2).normal(0, 1e-3, (N, 300))
  out = plots.plot_emulator_residuals(res, tmp_path / "e.png", wavelength=_wave(300),
                                      targets=(1e-3, 1e-2))
  assert out == tmp_path / "e.png"
  _check("e.png", tmp_path)



def test_emulator_residuals_skip_masked_pixels(tmp_path):
  res = np.random.default_rng(3).normal(0, 1e-3, (N, 300))
  res[:, 40:60] = np.nan  # masked in every spectrum
  res[::2, 100:120] = np.nan  # masked in half of them
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    plots.plot_emulator_residuals(res, tmp_path / "m.png", wavelength=_wave(300))
  _check("m.png", tmp_path)


def test_percentile_band_is_nanpercentile():
  """The one-sort band equals NumPy's nanpercentile (linear interpolation) per pixel, with
  non-finite values left out, a pixel with none finite NaN, and one value per pixel its own."""
  rng = np.random.default_rng(3)
  for shape in [(40, 300), (1, 20), (2, 15)]:
    r = rng.normal(size=shape).astype(np.float32)
    r[rng.random(shape) < 0.2] = np.nan
    r[:, 0] = np.nan
    r[:, -1] = np.inf
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      want = np.nanpercentile(np.where(np.isfinite(r), r, np.nan), [16, 50, 84], axis=0)
    got = plots.percentile_band(r)
    assert got.shape == (3, shape[1])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(got[:, 0]).all() and np.isnan(got[:, -1]).all()
  np.testing.assert_allclose(plots.percentile_band(np.array([[1.0, np.nan], [3.0, 2.0]])),
                             [[1.32, 2.0], [2.0, 2.0], [2.68, 2.0]])
