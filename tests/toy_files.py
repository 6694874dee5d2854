"""Toy reference-format files for the training tests (test_trainer, test_multiprocess)."""

import numpy as np

from cyclestar_jax import h5io, resources

N_PIX = resources.N_PIX


def write_toy_domain(path, n: int, observed: bool, seed: int) -> None:
  """Raw-flux toy spectra: shared absorption lines with per-star depths; the observed domain
  adds broader lines, a continuum tilt, noise, errors and a few bad pixels."""
  rng = np.random.default_rng(seed)
  lines = np.random.default_rng(5)
  centers, depth = lines.uniform(0, N_PIX, 80), lines.uniform(0.05, 0.5, 80)
  pix = np.arange(N_PIX)
  width = 3.0 if observed else 2.0
  profile = np.exp(-0.5 * ((pix[None, :] - centers[:, None]) / width) ** 2)
  sizes = {"train": n, "val": 16}
  fields = ("spectra", "spectra_err", "spectra_msk") if observed else ("spectra",)
  with h5io.SpectraWriter(path, sizes, fields=fields) as w:
    for split, m in sizes.items():
      x = np.exp(-(depth * np.exp(0.3 * rng.normal(size=(m, 1)))) @ profile)
      kw = {}
      if observed:
        x = x * (1 + 0.02 * rng.normal(size=(m, 1)) * (pix / N_PIX - 0.5))
        err = np.full_like(x, 0.01)
        kw = dict(x_err=err.astype(np.float32), x_msk=rng.random(x.shape) > 0.02)
        x = x + err * rng.normal(size=x.shape)
      w.write(split, 0, x=x.astype(np.float32), **kw)
