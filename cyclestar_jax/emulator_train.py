"""Training of The Payne emulator (paper §3.1; Ting et al. 2019) on synthetic spectra.

The recipe (`EmulatorTrainConfig`): mini-batch Adam (or RAdam, as The Payne's MLP used) on the
mean squared flux error, one jitted call per epoch (`lax.scan` over shuffled mini-batches), a
learning rate that warms up then decays exponentially over the budget, early stopping on the
validation loss, and an orbax checkpoint of the best weights.

Two details that make it converge fast without changing the network:
- During training the network's raw output is mapped to flux by `net * x_std + x_mean`, with
  `x_mean` and `x_std` [n_pix] the per-pixel mean and standard deviation of the training
  spectra (std floored at 1% of its rms): every output weight then has order one, whatever
  the depth of the line at that pixel, and no pixel's continuum has to be learned. The loss is
  still the plain mean squared *flux* error (divided by a constant, `loss_scale`², so it
  starts near 1). The affine map is folded into the last layer afterwards
  (`fold_output_scaling`), so the saved emulator is the plain Dense-LeakyReLU MLP of
  docs/method.md, 'The emulator (The Payne)', and reads with The Payne's own code.
- The budget is `max_epochs` or `time_limit_s`, whichever ends first; the learning-rate
  schedule is a function of the fraction of the budget used, so a time-limited run still ends
  at the low final learning rate instead of being cut off at a high one.

Data: the synthetic-domain spectra of a reference-format HDF5 file (`h5io`); its `train` split
trains, `val` early-stops (carved from `train` if absent) and `test` gives the held-out metrics
(`val` if there is no `test`). Masked pixels (the file's mask, and the NaN/inf flux that h5io
sets to 1.0 and masks) are no training target: the squared error is weighted by the mask (the
loss is the mean over unmasked pixels), the per-pixel output scaling uses unmasked values
only, and the validation and held-out metrics skip them. A file with no masked pixel trains
exactly as before (the unweighted loss).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from cyclestar_jax import resources
from cyclestar_jax.chunks import map_chunks
from cyclestar_jax.emulator import (
    LAYER_NAMES,
    Emulator,
    Params,
    checkpoint_tree,
    create_emulator_params,
    emulator_apply,
    save_emulator,
)
from cyclestar_jax.fileio import atomic_write
from cyclestar_jax.h5io import SpectraFile, read_split
from cyclestar_jax.labels import (
    LABEL_NAMES,
    abundance_fe_correlation,
    label_index,
    outside_box,
    scale_labels,
)

# Accuracy asked of the default recipe on held-out mock spectra (issue 3).
TARGET_MEDIAN_ABS = 1e-3
TARGET_P99_ABS = 1e-2


@dataclasses.dataclass(frozen=True)
class EmulatorTrainConfig:
  """Hyper-parameters of emulator training. Variants by `dataclasses.replace`."""

  n_hidden: int = 300  # neurons per hidden layer (reference emulator: 300)
  optimizer: str = "adam"  # "adam" or "radam" (The Payne's MLP version used RAdam)
  batch_size: int = 512  # spectra per optimizer step (The Payne: 512)
  learning_rate: float = 2e-3  # peak learning rate, reached after the warm-up
  final_lr_ratio: float = 3e-3  # learning rate at the end of the budget / peak (exponential decay)
  warmup_fraction: float = 0.02  # fraction of the budget with a linear learning-rate ramp
  b1: float = 0.9  # Adam β1
  b2: float = 0.999  # Adam β2
  max_epochs: int = 300  # passes over the training set (budget, with time_limit_s)
  time_limit_s: float | None = None  # wall-clock budget of the training loop; None = no limit
  patience: int = 30  # epochs without a new best validation loss before stopping early
  val_fraction: float = 0.1  # share of `train` held out for validation if the file has no `val`
  n_train: int | None = None  # use only the first n_train training spectra (None = all)
  n_val: int | None = None  # use only the first n_val validation spectra (None = all)
  n_test: int | None = None  # use only the first n_test test spectra (None = all)
  eval_batch_size: int = 2048  # spectra per device call when evaluating
  checkpoint_every_s: float = 120.0  # least seconds between orbax saves of a new best
  teff_bin_width: float = 500.0  # K, width of the Teff bins of the held-out metrics
  seed: int = 0  # initialisation and mini-batch order

  def __post_init__(self):
    if self.optimizer not in ("adam", "radam"):
      raise ValueError(f"optimizer must be 'adam' or 'radam', got {self.optimizer!r}")
    for name in ("n_hidden", "batch_size", "max_epochs", "eval_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not 0 < self.final_lr_ratio <= 1:
      raise ValueError(f"final_lr_ratio must be in (0, 1], got {self.final_lr_ratio}")
    if not 0 <= self.warmup_fraction < 1:
      raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
    if not 0 < self.val_fraction < 1:
      raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
    if self.time_limit_s is not None and self.time_limit_s <= 0:
      raise ValueError(f"time_limit_s must be > 0 or None, got {self.time_limit_s}")


@flax.struct.dataclass
class TrainState:
  """Arrays only, so the whole state is a pytree.

  Attributes:
    step: number of optimizer steps taken, int32 [].
    params: emulator weights in normalized-output space (see the module docstring).
    opt_state: Adam/RAdam moments.
  """

  step: jax.Array
  params: Params
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True, eq=False)
class TrainResult:
  """Outcome of `fit_emulator`.

  Attributes:
    emulator: the best emulator (lowest validation loss), output scaling folded in.
    history: per-epoch lists: epoch, train_mse, val_mse (flux², un-normalized), lr (at the
      epoch's end), time_s (since the start of training).
    best_epoch: epoch (1-based) of the best validation loss.
    stop_reason: "max_epochs", "time_limit", "early_stopping".
    train_time_s: wall-clock seconds of the training loop, compilation included.
  """

  emulator: Emulator
  history: dict[str, list[float]]
  best_epoch: int
  stop_reason: str
  train_time_s: float


def make_optimizer(cfg: EmulatorTrainConfig) -> optax.GradientTransformation:
  """Adam or RAdam *without* the learning rate; the step multiplies by -lr itself."""
  if cfg.optimizer == "radam":
    return optax.scale_by_radam(b1=cfg.b1, b2=cfg.b2)
  return optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2)


def learning_rate(progress, cfg: EmulatorTrainConfig):
  """Learning rate at a fraction `progress` ∈ [0, 1] of the budget (array in, array out).

  Linear warm-up over `warmup_fraction` (from 1% of the peak), then exponential decay from
  `learning_rate` to `learning_rate * final_lr_ratio` at progress 1.
  """
  p = np.clip(np.asarray(progress, np.float64), 0.0, 1.0)
  w = cfg.warmup_fraction
  ramp = np.minimum(1.0, np.maximum(p / w, 0.01)) if w > 0 else np.ones_like(p)
  decay = cfg.final_lr_ratio ** np.clip((p - w) / (1.0 - w), 0.0, 1.0)
  return cfg.learning_rate * ramp * decay


def fold_output_scaling(params: Params, x_mean, x_std) -> Params:
  """Folds `flux = net(y) * x_std + x_mean` into the last layer (exact, same architecture).

  Args:
    params: weights of a network trained in normalized-output space.
    x_mean: [n_pix] mean training spectrum.
    x_std: [n_pix] or scalar output scale.

  Returns:
    Weights whose plain `emulator_apply` gives flux.
  """
  last = LAYER_NAMES[-1]
  out = dict(params)
  out[last] = {"kernel": params[last]["kernel"] * x_std,
               "bias": params[last]["bias"] * x_std + x_mean}
  return out


def _loss(params, y_scaled, dx, x_std, loss_scale, msk=None):
  """Mean squared flux error / loss_scale²; dx = x - x_mean [B, n_pix]. With `msk` [B, n_pix]
  (True/1 = good), the mean over the good pixels only (masked pixels are no target)."""
  sq = jnp.square((emulator_apply(params, y_scaled) * x_std - dx) / loss_scale)
  if msk is None:
    return jnp.mean(sq)
  m = msk.astype(sq.dtype)
  return jnp.sum(sq * m) / jnp.maximum(jnp.sum(m), 1.0)


def make_train_epoch(tx: optax.GradientTransformation) -> Callable:
  """A jitted pure function running one epoch of optimizer steps.

  Returns:
    `train_epoch(state, x, y_scaled, norm, batch_idx, lrs, msk=None) -> (state, mean_loss)`
    with x [N, n_pix] flux, y_scaled [N, n_labels], norm = (x_mean [n_pix], x_std [n_pix],
    loss_scale []), batch_idx [n_steps, B] int32 row indices, lrs [n_steps] learning rates,
    msk [N, n_pix] bool good pixels or None (all good); mean_loss is the epoch's mean training
    loss (flux mse / loss_scale²). `state` is donated.
  """

  def train_epoch(state: TrainState, x, y_scaled, norm, batch_idx, lrs, msk=None):
    x_mean, x_std, loss_scale = norm

    def one_step(state, inputs):
      idx, lr = inputs
      loss, grads = jax.value_and_grad(_loss)(state.params, y_scaled[idx], x[idx] - x_mean,
                                              x_std, loss_scale,
                                              None if msk is None else msk[idx])
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
      return TrainState(step=state.step + 1, params=params, opt_state=opt_state), loss

    state, losses = jax.lax.scan(one_step, state, (batch_idx, lrs))
    return state, jnp.mean(losses)

  return jax.jit(train_epoch, donate_argnums=0)


@jax.jit
def _row_sq_err(params, y_scaled, x, x_mean, x_std):
  """Per-row sum of squared flux errors [B]."""
  return jnp.sum(jnp.square(emulator_apply(params, y_scaled) * x_std - (x - x_mean)), axis=-1)


@jax.jit
def _row_sq_err_masked(params, y_scaled, x, msk, x_mean, x_std):
  """Per-row (sum of squared flux errors over good pixels, good pixels) [B, 2]."""
  m = msk.astype(jnp.float32)
  sq = jnp.square(emulator_apply(params, y_scaled) * x_std - (x - x_mean)) * m
  return jnp.stack([jnp.sum(sq, axis=-1), jnp.sum(m, axis=-1)], axis=-1)


def evaluate_mse(params: Params, x, y_scaled, x_mean, x_std, *, batch_size: int = 2048,
                 msk=None) -> float:
  """Mean squared flux error (flux², not normalized) of normalized-space weights on a set.

  Args:
    params: weights in normalized-output space.
    x: [N, n_pix] flux. y_scaled: [N, n_labels] scaled labels. x_mean, x_std: [n_pix].
    batch_size: spectra per device call (`chunks.map_chunks`: one padded shape compiled).
    msk: [N, n_pix] bool good pixels, or None (all good): the mean is over good pixels.
  """
  if msk is None:
    rows = map_chunks(functools.partial(_row_sq_err, params, x_mean=x_mean, x_std=x_std),
                      [y_scaled, x], batch_size)
    return float(np.sum(rows, dtype=np.float64)) / (len(x) * x.shape[1])
  rows = map_chunks(functools.partial(_row_sq_err_masked, params, x_mean=x_mean, x_std=x_std),
                    [y_scaled, x, msk], batch_size).astype(np.float64)
  return float(rows[:, 0].sum() / max(rows[:, 1].sum(), 1.0))


def _pixel_mean_std(x: np.ndarray, msk: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  """Per-pixel mean and standard deviation [n_pix] (float64) of spectra x [N, n_pix], over the
  good pixels when `msk` is given (a pixel masked in every spectrum: mean 1, std 0)."""
  if msk is None:
    return x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64)
  count = msk.sum(axis=0, dtype=np.float64)
  mean = np.where(msk, x, 0).sum(axis=0, dtype=np.float64) / np.maximum(count, 1)
  mean = np.where(count > 0, mean, 1.0)
  var = np.where(msk, np.square(x - mean), 0).sum(axis=0, dtype=np.float64) / np.maximum(count, 1)
  return mean, np.sqrt(var)


def _good_mask(msk, x: np.ndarray, name: str) -> np.ndarray | None:
  """A mask [N, n_pix] as bool, or None when it is None or all True (the unweighted path)."""
  if msk is None:
    return None
  msk = np.asarray(msk).astype(bool)
  if msk.shape != x.shape:
    raise ValueError(f"{name} set: mask has shape {msk.shape}, expected {x.shape}")
  return None if msk.all() else msk


def _box_with_margin(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Training box [y_min, y_max] of label sets [N, n_labels]; a constant label gets ±0.5·max(1, |v|)
  so that its scaled value is 0 (with a warning naming it)."""
  y_min, y_max = y.min(axis=0).astype(np.float64), y.max(axis=0).astype(np.float64)
  flat = y_max <= y_min
  if flat.any():
    names = [LABEL_NAMES[i] if y.shape[1] == len(LABEL_NAMES) else str(i)
             for i in np.flatnonzero(flat)]
    warnings.warn(f"labels {names} are constant in the training set; the emulator cannot "
                  "learn their effect", stacklevel=3)
    half = 0.5 * np.maximum(1.0, np.abs(y_min[flat]))
    y_min[flat] -= half
    y_max[flat] += half
  return y_min, y_max


class SpectraSet(NamedTuple):
  """Spectra with their labels, as `fit_emulator` learns them.

  Attributes:
    x: [N, n_pix] normalized flux.
    y: [N, n_labels] physical labels.
    msk: [N, n_pix] bool good pixels (None: all good).
  """

  x: np.ndarray
  y: np.ndarray
  msk: np.ndarray | None = None


def fit_emulator(train: SpectraSet, val: SpectraSet,
                 cfg: EmulatorTrainConfig = EmulatorTrainConfig(), *,
                 checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
                 y_min: np.ndarray | None = None, y_max: np.ndarray | None = None
                 ) -> TrainResult:
  """Trains an emulator on (labels → flux) pairs, keeping the weights of the best validation loss.

  Args:
    train: the training set (`SpectraSet`: x [N, n_pix], y [N, n_labels], msk).
    val: the validation set for early stopping (x [M, n_pix], y [M, n_labels], msk). Masked
      pixels (msk False) are left out of the loss, the output scaling and the validation loss.
    cfg: the recipe.
    checkpoint_dir: if given, an orbax CheckpointManager directory that receives the best
      weights (emulator format, output scaling folded in) during and at the end of training;
      checkpoints already there (a previous run's) are deleted first.
    progress: show a tqdm progress bar.
    y_min, y_max: training box [n_labels]; default: the range of the training labels.

  Returns:
    `TrainResult`.
  """
  (x_train, y_train, msk_train), (x_val, y_val, msk_val) = train, val
  x_train = np.asarray(x_train, np.float32)
  x_val = np.asarray(x_val, np.float32)
  y_train, y_val = np.asarray(y_train, np.float64), np.asarray(y_val, np.float64)
  for name, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
      raise ValueError(f"{name} set: expected x [N, n_pix] and y [N, n_labels] with the same "
                       f"N >= 1, got {x.shape} and {y.shape}")
    for what, a in (("x", x), ("y", y)):
      if not np.isfinite(a).all():
        raise ValueError(f"{name} set: {what} has non-finite values")
  if x_val.shape[1] != x_train.shape[1] or y_val.shape[1] != y_train.shape[1]:
    raise ValueError(f"train and val sets differ in width: x {x_train.shape} vs {x_val.shape},"
                     f" y {y_train.shape} vs {y_val.shape}")
  n, n_pix = x_train.shape
  n_labels = y_train.shape[1]
  batch_size = min(cfg.batch_size, n)
  n_steps = n // batch_size
  if y_min is None or y_max is None:
    y_min, y_max = _box_with_margin(y_train)
  y_min, y_max = np.asarray(y_min, np.float64), np.asarray(y_max, np.float64)

  # Normalized-output space (module docstring): flux = net * x_std + x_mean.
  msk_train, msk_val = _good_mask(msk_train, x_train, "train"), _good_mask(msk_val, x_val, "val")
  x_mean_np, x_std_np = _pixel_mean_std(x_train, msk_train)
  loss_scale = max(float(np.sqrt(np.mean(np.square(x_std_np)))), 1e-6)
  x_mean = jnp.asarray(x_mean_np, jnp.float32)
  x_std = jnp.asarray(np.maximum(x_std_np, 0.01 * loss_scale), jnp.float32)
  norm = (x_mean, x_std, jnp.asarray(loss_scale, jnp.float32))
  x_dev, x_val_dev = jnp.asarray(x_train), jnp.asarray(x_val)
  msk_dev = None if msk_train is None else jnp.asarray(msk_train)
  msk_val_dev = None if msk_val is None else jnp.asarray(msk_val)
  ys_dev = jnp.asarray(scale_labels(y_train, y_min, y_max), jnp.float32)
  ys_val_dev = jnp.asarray(scale_labels(y_val, y_min, y_max), jnp.float32)

  key = jax.random.PRNGKey(cfg.seed)
  params = create_emulator_params(jax.random.fold_in(key, 0), n_labels=n_labels,
                                  n_hidden=cfg.n_hidden, n_pix=n_pix)
  tx = make_optimizer(cfg)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  train_epoch = make_train_epoch(tx)
  rng = np.random.default_rng(cfg.seed)

  def export(p) -> Params:
    return jax.device_get(fold_output_scaling(p, x_mean, x_std))

  manager = None
  if checkpoint_dir is not None:
    # Deferred import (orbax: heavy, only for checkpoint folders).
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        Path(checkpoint_dir).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=False))
    for old_step in manager.all_steps():  # a previous run's best must not outrank this run's
      manager.delete(old_step)

  history: dict[str, list[float]] = {"epoch": [], "train_mse": [], "val_mse": [], "lr": [],
                                     "time_s": []}
  best_val, best_epoch, best_params, saved_epoch = math.inf, 0, None, 0
  last_save = -math.inf
  stop_reason = "max_epochs"
  bar = None
  if progress:
    bar = tqdm(total=cfg.max_epochs, desc="emulator", unit="epoch", dynamic_ncols=True)
  t0 = time.perf_counter()
  p_now, epoch_time = 0.0, None
  try:
    for epoch in range(1, cfg.max_epochs + 1):
      # Fraction of the budget this epoch will use: by epochs, or by time once it is known.
      dp = 1.0 / cfg.max_epochs
      if cfg.time_limit_s is not None and epoch_time is not None:
        dp = max(dp, epoch_time / cfg.time_limit_s)
      lrs = learning_rate(p_now + dp * (np.arange(n_steps) + 0.5) / n_steps, cfg)
      perm = rng.permutation(n)[:n_steps * batch_size].reshape(n_steps, batch_size)
      t_epoch = time.perf_counter()
      state, train_mse = train_epoch(state, x_dev, ys_dev, norm,
                                     jnp.asarray(perm, jnp.int32), jnp.asarray(lrs, jnp.float32),
                                     msk_dev)
      val_mse = evaluate_mse(state.params, x_val_dev, ys_val_dev, x_mean, x_std,
                             batch_size=cfg.eval_batch_size, msk=msk_val_dev)
      train_mse = float(train_mse) * loss_scale**2
      now = time.perf_counter()
      epoch_time = now - t_epoch if epoch > 1 else None  # the first one includes compilation
      elapsed = now - t0
      p_now = max(epoch / cfg.max_epochs,
                  elapsed / cfg.time_limit_s if cfg.time_limit_s is not None else 0.0)
      if not (math.isfinite(train_mse) and math.isfinite(val_mse)):
        raise FloatingPointError(
            f"emulator training diverged at epoch {epoch} (step {int(state.step)}): train mse "
            f"{train_mse}, val mse {val_mse}; lower learning_rate (now {cfg.learning_rate})")
      for k, v in (("epoch", epoch), ("train_mse", train_mse), ("val_mse", val_mse),
                   ("lr", float(lrs[-1])), ("time_s", elapsed)):
        history[k].append(v)
      if val_mse < best_val:
        best_val, best_epoch = val_mse, epoch
        best_params = jax.device_get(state.params)
        if manager is not None and now - last_save >= cfg.checkpoint_every_s:
          _save_checkpoint(manager, epoch, export(best_params), y_min, y_max)
          last_save, saved_epoch = time.perf_counter(), epoch
      if bar is not None:
        bar.update(1)
        bar.set_postfix(train_rms=f"{math.sqrt(train_mse):.2e}",
                        val_rms=f"{math.sqrt(val_mse):.2e}", best=best_epoch,
                        lr=f"{lrs[-1]:.1e}")
      if epoch - best_epoch >= cfg.patience:
        stop_reason = "early_stopping"
        break
      if cfg.time_limit_s is not None and elapsed >= cfg.time_limit_s:
        stop_reason = "time_limit"
        break
  except BaseException:
    if manager is not None:
      manager.close()
    raise
  finally:
    if bar is not None:
      bar.close()
  best = export(best_params)
  if manager is not None:
    if saved_epoch != best_epoch:
      _save_checkpoint(manager, best_epoch, best, y_min, y_max)
    manager.close()
  emulator = Emulator(params=jax.tree.map(jnp.asarray, best), y_min=y_min, y_max=y_max,
                      source=str(checkpoint_dir) if checkpoint_dir is not None else "")
  return TrainResult(emulator=emulator, history=history, best_epoch=best_epoch,
                     stop_reason=stop_reason, train_time_s=time.perf_counter() - t0)


def _save_checkpoint(manager, epoch: int, params: Params, y_min, y_max) -> None:
  # Deferred import (orbax: heavy, only for checkpoint folders).
  import orbax.checkpoint as ocp

  manager.save(epoch, args=ocp.args.StandardSave(checkpoint_tree(params, y_min, y_max)),
               force=True)
  manager.wait_until_finished()


# ---------------------------------------------------------------------------------------------
# Held-out metrics and figure.


def _stats(abs_res: np.ndarray) -> dict[str, float]:
  """median, 99th percentile, mean and max of |residual|; NaN (masked) values left out."""
  nan = np.isnan(abs_res)
  if nan.any():
    abs_res = abs_res[~nan]
  if abs_res.size == 0:
    return {k: math.nan for k in ("median_abs", "p99_abs", "mean_abs", "max_abs")}
  q = np.percentile(abs_res, [50, 99])
  return {"median_abs": float(q[0]), "p99_abs": float(q[1]), "mean_abs": float(abs_res.mean()),
          "max_abs": float(abs_res.max())}


def emulator_metrics(emulator: Emulator, x: np.ndarray, y: np.ndarray, *,
                     teff_bin_width: float = 500.0, batch_size: int = 2048,
                     x_msk: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
  """Held-out accuracy of an emulator against the true spectra.

  Args:
    emulator: the emulator.
    x: [N, n_pix] true normalized flux. y: [N, n_labels] physical labels.
    teff_bin_width: K, width of the Teff bins (bins start at a multiple of the width).
    batch_size: spectra per device call.
    x_msk: [N, n_pix] bool good pixels, or None (all good): masked pixels are left out.

  Returns:
    (metrics, residual): metrics holds `n`, overall `median_abs`, `p99_abs`, `mean_abs`,
    `max_abs` of |emulator − truth| over all spectra and (good) pixels, the relative residual
    (x_pred − x)/x `rel_bias` and `rel_scatter` (half the 16–84 width, docs/metrics_and_figures.md),
    `per_chip` and `per_teff_bin` statistics, `n_outside_box`, and `n_masked_pixels` when
    pixels were masked; residual is x_pred − x [N, n_pix] float32 (NaN at masked pixels).
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.float64)
  good = _good_mask(x_msk, x, "held-out")
  pred = emulator.predict(y, chunk_size=batch_size, check_box=False)
  residual = pred - x
  if good is not None:
    residual[~good] = np.nan
  abs_res = np.abs(residual)
  rel = residual / np.where(np.abs(x) > 1e-6, x, np.nan)
  q16, q84 = np.nanpercentile(rel, [16, 84])
  metrics: dict[str, Any] = {"n": int(len(x)), **_stats(abs_res),
                             "rel_bias": float(np.nanmean(rel)),
                             "rel_scatter": float(0.5 * (q84 - q16)),
                             "n_outside_box": int(outside_box(y, emulator.y_min,
                                                              emulator.y_max).sum())}
  if good is not None:
    metrics["n_masked_pixels"] = int(good.size - np.count_nonzero(good))
  if x.shape[1] == resources.N_PIX:
    metrics["per_chip"] = {
        name: _stats(abs_res[:, lo:hi])
        for name, (lo, hi) in zip(("blue", "green", "red"), resources.CHIP_EDGES, strict=True)}
  if y.shape[1] == len(LABEL_NAMES):
    teff = y[:, label_index("Teff")]
    w = teff_bin_width
    edges = np.arange(np.floor(teff.min() / w) * w, teff.max() + w, w)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
      sel = (teff >= lo) & (teff < hi)
      if sel.any():
        bins.append({"teff_lo": float(lo), "teff_hi": float(hi), "n": int(sel.sum()),
                     **_stats(abs_res[sel])})
    metrics["per_teff_bin"] = bins
  return metrics, residual


# ---------------------------------------------------------------------------------------------
# End to end, from a data file.


def _read(path: Path, split: str, limit: int | None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
  """(x [N, 7214], y [N, 25], good-pixel mask [N, 7214] or None when none is masked) of the
  first `limit` rows of a split, or None if the file has no such split."""
  with SpectraFile(path) as f:
    if split not in f.splits:
      return None
  data = read_split(path, split, stop=limit)
  if data.y is None:
    raise ValueError(f"{path}: split {split!r} has no 'labels {split}' dataset; training the "
                     "emulator needs labels")
  return data.x, data.y, _good_mask(data.x_msk, data.x, split)


def max_abundance_fe_correlation(y: np.ndarray) -> float:
  """The largest |r| of an abundance with [Fe/H] over training labels y [N, 25]
  (`labels.abundance_fe_correlation`; NaN when none is defined): near 1, the emulator cannot
  learn each element's own effect, and its fits trade the abundances against each other."""
  r = np.abs([v for v in abundance_fe_correlation(y).values() if np.isfinite(v)])
  return float(r.max()) if r.size else float("nan")


def _check_learnable(data_path: Path, x: np.ndarray, msk: np.ndarray | None) -> None:
  """Raise `ValueError` naming the file when the train split has no finite, unmasked flux (an
  emulator trained on it would be written and loaded as if it had learnt something)."""
  good = np.isfinite(x) if msk is None else (np.asarray(msk).astype(bool) & np.isfinite(x))
  if not good.any():
    raise ValueError(f"{data_path}: split 'train': every flux value is NaN/inf or masked; "
                     "nothing to train the emulator on")
  empty = int(np.count_nonzero(~good.any(axis=1)))
  if empty == len(x):
    raise ValueError(f"{data_path}: split 'train': no spectrum has a usable pixel")


def train_emulator(data_path: str | os.PathLike, out_dir: str | os.PathLike,
                   cfg: EmulatorTrainConfig = EmulatorTrainConfig(), *,
                   progress: bool = True) -> tuple[dict[str, Any], np.ndarray]:
  """Trains an emulator on a reference-format file and writes its outputs to `out_dir`.

  Writes `emulator.npz` (`save_emulator`), `checkpoint/` (orbax, best weights) and
  `metrics.json`; both files load with `load_emulator`. It draws no figure: the callers draw
  `residuals.png` from the returned residuals (`plots.plot_emulator_run`).

  Args:
    data_path: HDF5 file in the reference format with `spectra`/`labels` for `train`
      (and optionally `val`, `test`).
    out_dir: output directory (created).
    cfg: the recipe.
    progress: show a progress bar.

  Returns:
    (the metrics dict written to `metrics.json`, the held-out residuals emulator − truth
    [N, n_pix] in normalized flux, NaN where masked).
  """
  data_path, out_dir = Path(data_path), Path(out_dir)
  train = _read(data_path, "train", cfg.n_train)
  if train is None:
    raise ValueError(f"{data_path}: no 'spectra train' dataset; expected the reference format")
  val = _read(data_path, "val", cfg.n_val)
  test = _read(data_path, "test", cfg.n_test)
  x_train, y_train, m_train = train
  _check_learnable(data_path, x_train, m_train)
  val_source = "val"
  if val is None:
    n_val = max(1, int(round(cfg.val_fraction * len(x_train))))
    if n_val >= len(x_train):
      raise ValueError(f"{data_path}: {len(x_train)} training spectra are too few to carve out a "
                       "validation set")
    perm = np.random.default_rng(cfg.seed + 1).permutation(len(x_train))
    pick = lambda a, rows: None if a is None else a[rows]  # noqa: E731
    val = tuple(pick(a, perm[:n_val]) for a in (x_train, y_train, m_train))
    x_train, y_train, m_train = (pick(a, perm[n_val:]) for a in (x_train, y_train, m_train))
    val_source = f"{n_val} spectra carved from train"
  test_split = "test"
  if test is None:
    test, test_split = val, f"val ({val_source}; the file has no test split)"
  n_masked = {k: 0 if v[2] is None else int(v[2].size - np.count_nonzero(v[2]))
              for k, v in (("train", (x_train, y_train, m_train)), ("val", val), ("test", test))}
  if any(n_masked.values()):
    warnings.warn(f"{data_path}: masked pixels (the file's mask, or NaN/inf flux) are left out "
                  f"of the emulator's loss and metrics: {n_masked}", stacklevel=2)
  out_dir.mkdir(parents=True, exist_ok=True)
  result = fit_emulator(SpectraSet(x_train, y_train, m_train), SpectraSet(*val), cfg,
                        checkpoint_dir=out_dir / "checkpoint", progress=progress)
  metrics, residual = emulator_metrics(result.emulator, test[0], test[1],
                                       teff_bin_width=cfg.teff_bin_width,
                                       batch_size=cfg.eval_batch_size, x_msk=test[2])
  summary = {
      "data": str(data_path), "held_out_split": test_split, "val_split": val_source,
      "n_train": int(len(x_train)), "n_val": int(len(val[0])), "n_masked_pixels": n_masked,
      "abundance_fe_correlation": max_abundance_fe_correlation(y_train),
      "targets": {"median_abs": TARGET_MEDIAN_ABS, "p99_abs": TARGET_P99_ABS},
      "meets_targets": bool(metrics["median_abs"] <= TARGET_MEDIAN_ABS
                            and metrics["p99_abs"] <= TARGET_P99_ABS),
      "held_out": metrics,
      "training": {"best_epoch": result.best_epoch, "epochs": len(result.history["epoch"]),
                   "stop_reason": result.stop_reason, "train_time_s": result.train_time_s,
                   "best_val_rmse": math.sqrt(min(result.history["val_mse"])),
                   "device": str(jax.devices()[0]), "history": result.history},
      "config": dataclasses.asdict(cfg),
  }
  save_emulator(out_dir / "emulator.npz", result.emulator.params, result.emulator.y_min,
                result.emulator.y_max,
                metadata={k: summary[k] for k in ("data", "n_train", "config")}
                | {"median_abs": metrics["median_abs"], "p99_abs": metrics["p99_abs"]})
  atomic_write(out_dir / "metrics.json",
               lambda f: f.write(json.dumps(summary, indent=1).encode()))
  return summary, residual
