"""The split latent z_sp for label sets that have no observed spectrum.

T_synth→obs needs a z_sp; a grid of label sets (Fig. 13's 10⁵) has none of its own. Two choices:

- "nearest" (the default): the z_sp of the observed star nearest in (Teff, log g, [Fe/H]),
  scaled by the emulator box (each label's width counts as 1). Every z_sp used is one the
  decoder met in training, from a star of the same kind: z_sp also holds what the shared latent
  misses about that kind of star, and it passes an instance norm, so real z_sp lie on a sphere
  per channel, which their mean does not.
- "mean": the mean z_sp over the observed stars, one for all: no star-to-star jitter of the
  nuisance, but a latent the decoder never saw.

`zsp_choice_sensitivity` runs the attribution with both and reports how much they differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cyclestar_jax import labels as _labels
from cyclestar_jax.chain import ModelChain, encode_split
from cyclestar_jax.lines.derivatives import CHUNK_PER_DEVICE, Reducer, reduce_label_sets

ZSP_CHOICES = ("nearest", "mean")
DEFAULT_ZSP = "nearest"
NEAREST_LABELS = tuple(_labels.label_index(n) for n in ("Teff", "logg", "Fe_H"))


@jax.jit
def _argmin_distance(q: jax.Array, ref: jax.Array) -> jax.Array:
  d = jnp.sum(q * q, -1)[:, None] - 2.0 * q @ ref.T + jnp.sum(ref * ref, -1)[None]
  return jnp.argmin(d, axis=-1)


def nearest_observed(y: np.ndarray, y_obs: np.ndarray, y_min: np.ndarray, y_max: np.ndarray, *,
                     labels: tuple[int, ...] = NEAREST_LABELS, chunk: int = 4096) -> np.ndarray:
  """Index [N] of the observed star nearest to each label set, in box-scaled `labels`.

  Args:
    y: [N, 25] physical labels; y_obs: [M, 25] the observed stars' labels (catalogue or fitted).
    y_min, y_max: [25] the emulator box (each label's width counts as one unit).
    labels: label positions compared (default Teff, log g, [Fe/H]).
    chunk: label sets per device call.
  """
  lab = list(labels)
  lo, width = np.asarray(y_min)[lab], np.asarray(y_max)[lab] - np.asarray(y_min)[lab]
  q_all = ((np.asarray(y, np.float64)[:, lab] - lo) / width).astype(np.float32)
  ref = jnp.asarray((np.asarray(y_obs, np.float64)[:, lab] - lo) / width, jnp.float32)
  out = np.empty(len(q_all), np.int64)
  for a in range(0, len(q_all), chunk):
    q = q_all[a:a + chunk]
    pad = np.concatenate([q, np.repeat(q[-1:], chunk - len(q), 0)]) if len(q) < chunk else q
    out[a:a + len(q)] = np.asarray(_argmin_distance(jnp.asarray(pad), ref))[:len(q)]
  return out


def mean_zsp(z_obs: np.ndarray) -> np.ndarray:
  """The mean split latent [L_z, C_sp] of observed stars' z_sp [M, L_z, C_sp]."""
  return np.asarray(z_obs, np.float64).mean(axis=0).astype(np.float32)


def zsp_for_labels(y: np.ndarray, y_obs: np.ndarray, z_obs: np.ndarray, y_min: np.ndarray,
                   y_max: np.ndarray, choice: str = DEFAULT_ZSP) -> np.ndarray:
  """z_sp for label sets without spectra: [N, L_z, C_sp] ("nearest") or [L_z, C_sp] shared by
  all ("mean"); both are accepted by `reduce_label_sets` and `derivative_spectra`.

  Args:
    y: [N, 25] physical labels; y_obs [M, 25], z_obs [M, L_z, C_sp]: the observed stars'
      labels and split latents (`encode_observed`); y_min, y_max: the emulator box.
    choice: "nearest" (default) or "mean" (module docstring).
  """
  if choice == "nearest":
    return np.asarray(z_obs, np.float32)[nearest_observed(y, y_obs, y_min, y_max)]
  if choice == "mean":
    return mean_zsp(z_obs)
  raise ValueError(f"z_sp choice must be one of {ZSP_CHOICES}, got {choice!r}")


def encode_observed(chain: ModelChain, x_obs: np.ndarray, *, chunk: int = 256) -> np.ndarray:
  """z_sp [M, L_z, C_sp] of raw observed spectra [M, 7214], in jitted chunks."""
  x = np.asarray(x_obs, np.float32)
  fn = jax.jit(lambda g, xb: encode_split(chain.nets, g, xb))
  out = []
  for a in range(0, len(x), chunk):
    xb = x[a:a + chunk]
    pad = np.concatenate([xb, np.repeat(xb[-1:], chunk - len(xb), 0)]) if len(xb) < chunk else xb
    out.append(np.asarray(fn(chain.cycle.gen_params, pad))[:len(xb)])
  return np.concatenate(out)


def zsp_choice_sensitivity(chain: ModelChain, y: np.ndarray, y_obs: np.ndarray,
                           z_obs: np.ndarray, attribution: Reducer, *,
                           chunk_per_device: int = CHUNK_PER_DEVICE, mesh=None) -> dict:
  """How much the attributions change between the "nearest" and the "mean" z_sp.

  Args:
    chain, y, y_obs, z_obs: as `zsp_for_labels`, the box taken from the chain's emulator.
    attribution: the attribution of the features (`attribution_reducer(features, ...)`, true
      owners in the features' `label` for the accuracies).
    chunk_per_device, mesh: as `reduce_label_sets`.

  Returns:
    {"winner_agreement": share of (label set, feature) pairs with the same top label,
    "predicted_agreement": share of features with the same most frequent winner,
    "mean_score_corr": Pearson r of the mean scores [F, C] of the two,
    "mean_score_max_rel_diff": max |ΔS̄| / max |S̄| (S̄ of "nearest"),
    "accuracy": {choice: accuracy}, "results": {choice: the attribution reducer's result}}.
  """
  y_min, y_max = chain.emulator.y_min, chain.emulator.y_max
  red = {"a": attribution}
  res = {}
  for choice in ZSP_CHOICES:  # both as [N, L_z, C_sp]: one compiled program
    z = zsp_for_labels(y, y_obs, z_obs, y_min, y_max, choice)
    z = np.broadcast_to(z, (len(y), *np.shape(z_obs)[1:]))
    res[choice] = reduce_label_sets(chain, y, z, red, chunk_per_device=chunk_per_device,
                                    mesh=mesh)["a"]
  a, b = res["nearest"], res["mean"]
  sa, sb = a["mean_score"].ravel(), b["mean_score"].ravel()
  return {"winner_agreement": float(np.mean(a["winner"] == b["winner"])),
          "predicted_agreement": float(np.mean(a["predicted"] == b["predicted"])),
          "mean_score_corr": float(np.corrcoef(sa, sb)[0, 1]),
          "mean_score_max_rel_diff": float(np.max(np.abs(sa - sb)) / max(np.max(np.abs(sa)),
                                                                         1e-30)),
          "accuracy": {c: r["accuracy"] for c, r in res.items()}, "results": res}
