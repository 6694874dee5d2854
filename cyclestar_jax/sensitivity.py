"""Label sensitivity of the calibrated model against the mock world's own derivatives.

A fit recovers a label only as well as its model responds to it. If the model's derivative
spectrum ∂M/∂y_j holds a fraction g_j of the true one ∂x/∂y_j, a fit must move y_j by 1/g_j
times the true change to make the same spectrum change: noise and model error reach the fitted
label amplified by about 1/g_j. So, per label j and star, on the 7167 network pixels:

    gain g_j = <∂M/∂y_j, ∂R/∂y_j> / <∂R/∂y_j, ∂R/∂y_j>     (the least-squares scale of ∂R in ∂M)
    r_j      = the correlation of ∂M/∂y_j with ∂R/∂y_j      (1: same shape)

each reported as the median over stars, for four pairs (model M against reference R):
  - `payne`: Payne against the world's synthetic domain (the emulator's fidelity; ~1);
  - `payne_truth`: Payne against the world's truth (Eq. 9's model, synthetic gap included);
  - `csn`: T_synth→obs(Payne(y), z_sp) with the star's own z_sp against the truth (Eq. 11's);
  - `autoencoder`: T_synth→synth(Payne(y)) against Payne, the synthetic domain's own round trip
    through the shared latent, which every transfer passes: a gain lost there is lost for
    T_synth→obs too;
  - `transfer`: T_synth→obs(Payne(y), z_sp) against Payne.
The last two need no truth: on real data they still say which labels Eq. 11 can constrain
(labels with almost no lines, e.g. Ge, K, P, give unstable gains; read those as "no response").
The world's truth is its noise-free physics without the instrument (`mock.derivative_spectra`):
the observed line-spread function and continuum change the derivatives by a few per cent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cyclestar_jax import lines, mock
from cyclestar_jax.chain import ModelChain, autoencode_synth, payne_scaled
from cyclestar_jax.labels import LABEL_NAMES
from cyclestar_jax.resources import N_DROP

N_STARS = 16  # test stars of the main job's sensitivity table (~15 s on a 2-core CPU)
PAIRS = ("payne", "payne_truth", "csn", "autoencoder", "transfer")
TRUTH_FREE_PAIRS = ("autoencoder", "transfer")


def derivative_gain(d_model: np.ndarray, d_ref: np.ndarray) -> dict[str, np.ndarray]:
  """Gain and correlation of derivative spectra (module docstring), median over stars.

  Args:
    d_model, d_ref: [n, n_pix, K] d flux / d label of n stars.

  Returns:
    {"gain": [K], "r": [K]}; a label whose reference derivative is zero for every star gets NaN.
  """
  a, b = np.asarray(d_model, np.float64), np.asarray(d_ref, np.float64)
  if a.shape != b.shape or a.ndim != 3:
    raise ValueError(f"derivative spectra must both be [n, n_pix, K]; got {a.shape}, {b.shape}")
  ab, bb, aa = (a * b).sum(1), (b * b).sum(1), (a * a).sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    gain = np.where(bb > 0, ab / bb, np.nan)
    r = np.where((aa > 0) & (bb > 0), ab / np.sqrt(aa * bb), np.nan)
  return {"gain": _median_or_nan(gain), "r": _median_or_nan(r)}


def _median_or_nan(v: np.ndarray) -> np.ndarray:
  """Median over axis 0 of the finite entries, NaN where a column has none."""
  out = np.full(v.shape[1], np.nan)
  for j in range(v.shape[1]):
    col = v[:, j][np.isfinite(v[:, j])]
    if col.size:
      out[j] = np.median(col)
  return out


def autoencoder_derivatives(mc: ModelChain, y: np.ndarray) -> np.ndarray:
  """∂T_synth→synth(Payne(y))/∂y [n, 7167, 25] per physical unit, of labels y [n, 25]."""
  nets, params = mc.nets, mc.params
  width = jnp.asarray(np.asarray(mc.emulator.y_max) - np.asarray(mc.emulator.y_min), jnp.float32)

  def one(theta):
    x = payne_scaled(params["emulator"], theta)[N_DROP:]
    return autoencode_synth(nets, params["gen"], x[None])[0]

  theta = jnp.asarray(mc.scale(jnp.asarray(y, jnp.float32)), jnp.float32)
  d = jax.jit(jax.vmap(jax.jacfwd(one)))(theta)
  return np.asarray(d / width)


def label_sensitivity(mc: ModelChain, y: np.ndarray, x_obs: np.ndarray, world=None) -> dict:
  """The gains and correlations of the module docstring at the labels of observed stars.

  Args:
    mc: emulator + trained Cycle-StarNet.
    y: [n, 25] physical labels: the true ones on the mock (clipped into the emulator's box
      here), else e.g. the catalogue's.
    x_obs: [n, 7214] their observed spectra (for their own z_sp).
    world: the mock world (`mock.WorldConfig`) that made them, or None: then only the
      truth-free pairs (`TRUTH_FREE_PAIRS`).

  Returns:
    {"n": n, "pairs": the pairs computed, "labels": {name: {"<pair>_gain": g, "<pair>_r": r}}}.
  """
  y = np.clip(np.asarray(y, np.float32), mc.emulator.y_min, mc.emulator.y_max)
  d = lines.derivative_spectra(mc, y, lines.encode_observed(mc, x_obs))
  res = {"autoencoder": derivative_gain(autoencoder_derivatives(mc, y), d["d_payne"]),
         "transfer": derivative_gain(d["d_synth_to_obs"], d["d_payne"])}
  if world is not None:
    dw = {k: v[:, N_DROP:] for k, v in mock.derivative_spectra(y, world).items()}
    res.update(payne=derivative_gain(d["d_payne"], dw["d_synth"]),
               payne_truth=derivative_gain(d["d_payne"], dw["d_truth"]),
               csn=derivative_gain(d["d_synth_to_obs"], dw["d_truth"]))
  pairs = [p for p in PAIRS if p in res]
  labels = {name: {f"{pair}_{stat}": float(res[pair][stat][j])
                   for pair in pairs for stat in ("gain", "r")}
            for j, name in enumerate(LABEL_NAMES)}
  return {"n": int(len(y)), "pairs": pairs, "labels": labels}
