"""The mock APOGEE world: the embedded default data (docs/mock_world.md).

Public:
  sample_labels(n, rng)            APOGEE-like labels [n, 25]
  truth_spectrum(labels)           nature: labels [..., 25] -> flux [..., 7214] (pure JAX)
  synthetic_spectrum(labels, w)    the "Kurucz" domain (with the gap), noise-free
  observe(labels, w, rng)          the "APOGEE" domain: instrument + noise
  derivative_spectra(labels, w)    ∂flux/∂label of both domains (the line-identification truth)
  WorldConfig, DataSizes, make_data(out, world, sizes)
  example_spectra(synth, obs)      the arrays of `plots.plot_examples` (the view of the gap)
"""

from cyclestar_jax.mock.files import DataSizes, example_spectra, make_data
from cyclestar_jax.mock.population import sample_labels
from cyclestar_jax.mock.world import (
    WorldConfig,
    derivative_spectra,
    masked_features,
    masked_pixels,
    observe,
    removed_features,
    synthetic_spectrum,
    truth_spectrum,
)

__all__ = [
    "DataSizes", "WorldConfig", "derivative_spectra", "example_spectra", "make_data",
    "masked_features", "masked_pixels", "observe", "removed_features", "sample_labels",
    "synthetic_spectrum", "truth_spectrum",
]  # fmt: skip
