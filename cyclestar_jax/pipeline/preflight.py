"""Every input of a staged job checked before its first long stage: the user's spectra files
split by split (not empty, usable pixels, errors > 0), a given emulator and Cycle-StarNet
loaded, and the checkpoint a model comes from (a fall-back to an older one refused unless
allowed). One clear error naming the file and the fault.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cyclestar_jax import checkpoint, data, h5io
from cyclestar_jax.config import Config
from cyclestar_jax.emulator import load_emulator

ALLOW_OLDER_FLAG = "--allow-older-checkpoint"


def check_splits(path: str | Path, flag: str, domain: str, cfg: Config) -> None:
  """Raise `ValueError` naming `flag`, the file and the split unless every split of the file
  has spectra, positive errors where its mask says good, and training's usable pixels
  (`data.usable_pixels`: for the observed domain the errors count too)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", h5io.BadPixelWarning)
    with h5io.SpectraFile(path, n_pix=None) as f:
      for split in f.splits:
        where = f"{flag} {path}: split {split!r}"
        n = f.n(split)
        if n == 0:
          raise ValueError(f"{where}: no spectra (an empty split)")
        u = data.usable_pixels(f, domain, cfg, split, max_rows=256)
        if u["pixels_usable"] == 0:
          raise ValueError(f"{where}: every pixel is masked (mask 0, error ≤ 0, error > "
                           f"{cfg.error_mask_threshold} or not finite, or NaN/inf flux; "
                           f"{u['rows_checked']} of {n} spectra checked)")
        sp = f.read(split, 0, min(n, 256)) if domain == "obs" else None
        if sp is not None and sp.x_err is not None:
          bad = ~(sp.x_err > 0)
          if sp.x_msk is not None:
            bad &= np.asarray(sp.x_msk).astype(bool)
          if bad.all():
            raise ValueError(f"{where}: every error is ≤ 0 or NaN; the observed domain needs "
                             "1σ errors > 0")


def load_given_models(emulator: str | None, model: str | None, allow_older: bool) -> dict:
  """Load a given emulator and Cycle-StarNet now (not at the fits stage); {"model_checkpoint":
  `model_checkpoint` of the model} (empty without one)."""
  if emulator is not None:
    try:
      load_emulator(emulator)
    except (OSError, KeyError) as e:
      raise ValueError(f"--emulator {emulator}: cannot be loaded ({e})") from None
  if model is None:
    return {}
  try:
    cycle = checkpoint.load_cycle_model(model)
  except (OSError, KeyError) as e:
    raise ValueError(f"--model {model}: cannot be loaded ({e})") from None
  return {"model_checkpoint": model_checkpoint(cycle, f"--model {model}", allow_older)}


def model_checkpoint(cycle, what: str, allow_older: bool) -> dict:
  """{"step", "skipped_newer"} of a loaded `CycleModel`; raise `ValueError` when it fell back
  to an older checkpoint and `allow_older` is off."""
  info = {"step": cycle.step, "skipped_newer": list(cycle.skipped_newer),
          "source": cycle.source}
  if cycle.skipped_newer and not allow_older:
    raise ValueError(f"{what}: the newest checkpoint (step {max(cycle.skipped_newer)}) is "
                     f"unusable (see the warning), only step {cycle.step} loads; pass "
                     f"{ALLOW_OLDER_FLAG} to use it, or resume the training (experiments.train "
                     "--resume moves the unusable one aside)")
  return info
