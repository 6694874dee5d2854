"""cyclestar_jax: Cycle-StarNet (O'Briain et al. 2021) in JAX/Flax.

The public names below are re-exported lazily (PEP 562), so `import cyclestar_jax.h5io` or
`cyclestar_jax.labels` does not pull in JAX/Flax.
"""

import importlib

_EXPORTS = {
    "LABEL_NAMES": "labels", "N_LABELS": "labels", "scale_labels": "labels",
    "unscale_labels": "labels", "N_PIX": "resources", "N_PIX_NET": "resources",
    "Config": "config", "from_ini": "config", "get_config": "config",
    "make_networks": "networks", "TrainState": "train_step",
    "create_train_state": "train_step", "make_train_step": "train_step",
    "make_multi_step": "train_step", "load_torch_cycle_model": "torch_import",
    "load_emulator": "emulator", "save_emulator": "emulator", "Emulator": "emulator",
    "emulator_apply": "emulator", "FitConfig": "fitting", "LabelFitter": "fitting",
    "fit_spectra": "fitting",
}  # fmt: skip

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"cyclestar_jax.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'cyclestar_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
