"""Writing the mock world to reference-format HDF5 files (`synth.h5`, `obs.h5`, and the
emulator's training grid `payne_grid.h5`).

The synthetic and observed files hold different, unpaired stars in `train` and `test`; the
`val` split is paired (the same stars in both files, row for row), as the authors'
validation compares T_synth->obs of a star's synthetic spectrum with its observed one; both
files say so in their attribute `paired_splits` (`["val"]`), which the trainer reads. Both
files keep the true labels (`labels_true <split>`); `labels <split>` holds the labels a user
would have: the exact model inputs for the synthetic domain, survey-catalogue labels (truth +
ASPCAP-like errors) for the observed one. The world's settings are stored as the JSON
attribute `world`. Generation goes in fixed blocks whose random generators are seeded by
(seed, domain, split, block), so the same seed gives identical files on any machine with the
same software.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cyclestar_jax import h5io, resources
from cyclestar_jax.mock import population
from cyclestar_jax.mock import world as _world

BLOCK = 1024  # spectra generated and written together (bounds memory)
PAYNE_GRID_FILE = "payne_grid.h5"  # the emulator's training set, beside synth.h5 and obs.h5


@dataclasses.dataclass(frozen=True)
class DataSizes:
  """Numbers of stars per split, the same for both domains."""

  n_train: int = 20_000
  n_val: int = 2_000
  n_test: int = 2_000

  def as_dict(self) -> dict[str, int]:
    return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


def _block_rng(world: _world.WorldConfig, domain: str, split: str, block: int):
  return _world.seeded_rng(world, domain, split, block)


PAIRED_SPLITS = ("val",)


def _labels_for(world, domain, split, block, n) -> np.ndarray:
  """True labels of a block; paired splits draw the observed domain's stars in both files."""
  if split in PAIRED_SPLITS:
    domain = "obs"
  return population.sample_labels(n, _block_rng(world, domain + "-labels", split, block))


def _write_domain(path, world: _world.WorldConfig, sizes: DataSizes, *, domain: str,
                  fields: tuple[str, ...], extra: dict, progress: bool, rows) -> Path:
  """Write one domain's file in blocks; rows(split, block, n) gives `SpectraWriter.write` kwargs."""
  with h5io.SpectraWriter(path, sizes.as_dict(), fields=fields, extra_fields=extra,
                          attrs={"world": dataclasses.asdict(world), "domain": domain,
                                 "paired_splits": list(PAIRED_SPLITS)}
                          ) as w, _bar(sizes, progress, Path(path).name) as bar:
    for split, n in sizes.as_dict().items():
      for b, start in enumerate(range(0, n, BLOCK)):
        m = min(BLOCK, n - start)
        w.write(split, start, **rows(split, b, m))
        bar.update(m)
  return Path(path)


def write_synthetic(path, world: _world.WorldConfig, sizes: DataSizes, *,
                    progress: bool = True) -> Path:
  """Write the synthetic domain's spectra to `path`, in the authors' synthetic format.

  Noise-free: only `spectra` and `labels` (+ `labels_true`), no err/msk/snr, as the authors'
  `csn_kurucz.h5`; the data pipeline gives such spectra error 0.005 and mask 1 (docs/method.md).
  """
  def rows(split, b, m):
    y = _labels_for(world, "synth", split, b, m)
    return {"x": _world.synthetic_spectra(y, world), "y": y, "labels_true": y}

  return _write_domain(path, world, sizes, domain="synthetic", fields=("spectra", "labels"),
                       extra={"labels_true": ((25,), np.float64)}, progress=progress, rows=rows)


def write_payne_grid(path, world: _world.WorldConfig, sizes: DataSizes, *,
                     progress: bool = True) -> Path:
  """Write the emulator's training set to `path`: the synthetic domain's physics (gap
  included, noise-free) at grid labels like The Payne's (`population.sample_grid_labels`:
  abundances varied independently of [Fe/H]), in the synthetic format, `sizes` rows per split.
  The Cycle-StarNet synthetic domain (`write_synthetic`) keeps the population's labels, as the
  paper's Kurucz spectra kept APOGEE-Payne's; only the emulator, The Payne, is trained here.
  """
  def rows(split, b, m):
    y = population.sample_grid_labels(m, _block_rng(world, "grid-labels", split, b))
    return {"x": _world.synthetic_spectra(y, world), "y": y, "labels_true": y}

  return _write_domain(path, world, sizes, domain="payne_grid", fields=("spectra", "labels"),
                       extra={"labels_true": ((25,), np.float64)}, progress=progress, rows=rows)


def write_observed(path, world: _world.WorldConfig, sizes: DataSizes, *,
                   progress: bool = True) -> Path:
  """Write the observed domain's spectra (instrument + noise) to `path`."""
  def rows(split, b, m):
    y = _labels_for(world, "obs", split, b, m)
    rng = _block_rng(world, "obs-instrument", split, b)
    obs = _world.observe(y, world, rng)
    return {"x": obs.x, "x_err": obs.x_err, "x_msk": obs.x_msk, "snr": obs.snr,
            "y": _world.catalogue_labels(y, world, rng), "labels_true": y, "fiber": obs.fiber,
            "resolution": obs.resolution}

  extra = {"labels_true": ((25,), np.float64), "fiber": ((), np.int32),
           "resolution": ((), np.float32)}
  return _write_domain(path, world, sizes, domain="observed", fields=h5io.FIELDS, extra=extra,
                       progress=progress, rows=rows)


def _bar(sizes: DataSizes, progress: bool, desc: str):
  return tqdm(total=sum(sizes.as_dict().values()), desc=desc, unit="spec",
              disable=not progress, leave=False)


def make_data(out, world: _world.WorldConfig, sizes: DataSizes, *, progress: bool = True
              ) -> dict[str, float]:
  """Write `out/synth.h5`, `out/obs.h5` and `out/payne_grid.h5` (the emulator's training set,
  `write_payne_grid`); returns a summary (sizes, seconds, file sizes)."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  write_synthetic(out / "synth.h5", world, sizes, progress=progress)
  t1 = time.perf_counter()
  write_observed(out / "obs.h5", world, sizes, progress=progress)
  t2 = time.perf_counter()
  write_payne_grid(out / PAYNE_GRID_FILE, world, sizes, progress=progress)
  t3 = time.perf_counter()
  return {
      "experiment": world.experiment, "seed": world.seed, **sizes.as_dict(),
      "synth_seconds": t1 - t0, "obs_seconds": t2 - t1, "payne_grid_seconds": t3 - t2,
      "synth_mb": (out / "synth.h5").stat().st_size / 1e6,
      "obs_mb": (out / "obs.h5").stat().st_size / 1e6,
      "payne_grid_mb": (out / PAYNE_GRID_FILE).stat().st_size / 1e6, "n_pix": resources.N_PIX,
  }


def _pick_cool_giant(snr: np.ndarray, y_true: np.ndarray) -> int:
  """Index of a cool, high-S/N giant (the gap is largest there), else the first star."""
  score = np.where((y_true[:, 0] < 4400) & (y_true[:, 1] < 2.5), snr, -np.inf)
  return int(np.argmax(score)) if np.isfinite(score).any() else 0


def example_spectra(synth_path, obs_path, *, split: str = "test") -> dict:
  """The arrays of `plots.plot_examples` (the mock world's view of the gap), from the two mock
  data files: a cool, high-S/N observed giant among the first 256 stars of `split`, the
  synthetic-domain model at its true labels, and the synthetic star nearest to it in (Teff,
  log g, [Fe/H]) among the first 2048 of the synthetic file.

  Returns:
    {"wavelength" [n_pix] Å, "obs_flux", "obs_err" [n_pix], "good" [n_pix] bool (unmasked),
    "obs_labels" [25] true labels, "snr" float, "model_flux" [n_pix], "synth_flux" [n_pix],
    "synth_labels" [25], "experiment" str}.
  """
  with h5io.SpectraFile(obs_path) as fo, h5io.SpectraFile(synth_path) as fs:
    n = min(fo.n(split), 256)
    obs = fo.read(split, 0, n)
    y_true = fo.extra("labels_true", split, 0, n)
    world = _world.WorldConfig.from_json_dict(fo.attrs["world"])
    snr = obs.snr if obs.snr is not None else np.zeros(n)
    i = _pick_cool_giant(snr, y_true)
    ns = min(fs.n(split), 2048)
    syn = fs.read(split, 0, ns)
  key = np.array([1 / 150.0, 1 / 0.3, 1 / 0.1])
  d = ((syn.y[:, [0, 1, 18]] - y_true[i, [0, 1, 18]]) * key) ** 2
  j = int(np.argmin(d.sum(1)))
  wl = resources.wavelength()
  return {
      "wavelength": wl, "obs_flux": obs.x[i],
      "obs_err": obs.x_err[i] if obs.x_err is not None else np.zeros_like(wl),
      "good": obs.x_msk[i].astype(bool) if obs.x_msk is not None else np.ones_like(wl, bool),
      "obs_labels": y_true[i], "snr": float(snr[i]),
      "model_flux": np.asarray(_world.synthetic_spectrum(y_true[i][None], world))[0],
      "synth_flux": syn.x[j], "synth_labels": syn.y[j], "experiment": world.experiment,
  }
