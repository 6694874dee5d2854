"""Validation of a Cycle-StarNet training run: the metrics of a fixed val batch and the paired
transfer residuals (docs/metrics_and_figures.md), which val rows are used, whether they are paired.

`make_eval_fn(cfg, paired)` is what `trainer.train` calls at every validation interval;
`decide_paired_val` says from the files (or the user's option) whether row i of both val
splits is the same star, which decides whether the `val_paired_*` numbers mean anything.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp

from cyclestar_jax import data, h5io, losses, resources
from cyclestar_jax.config import Config
from cyclestar_jax.networks import make_networks


def _half_width_16_84(r: jax.Array) -> jax.Array:
  """Half the 16–84 percentile width of the finite values of r (NaN marks excluded ones)."""
  lo, hi = jnp.nanpercentile(r, jnp.array([16.0, 84.0]))
  return 0.5 * (hi - lo)


def paired_metrics(out: dict, batch: dict) -> dict[str, jax.Array]:
  """Transfer residuals on a paired batch (row i of both domains is the same star).

  docs/metrics_and_figures.md. Observed: x_synth→obs = D_obs(D_sh(z_sh of the synthetic spectrum),
  z_sp of its paired observed spectrum) against the observed spectrum, as normalized residuals
  r = (pred − x)/err over unmasked pixels (standardization cancels in the ratio): `obs_bias`
  (mean r), `obs_scatter` (half the 16–84 percentile width), `obs_chi2` (mean r² over pixels
  with |r| ≤ 5) and `obs_chi2_all` (all unmasked pixels). Synthetic domain: x_obs→synth against
  the synthetic spectrum, as relative residuals (pred − x)/x in raw flux: `synth_bias`,
  `synth_scatter`.

  Args:
    out: `cycle_forward` outputs with the z_sp lent at the same batch position (the default),
      so `x_synthobs[i]` uses z_sp of `x_obs[i]`.
    batch: the paired batch (`losses.BATCH_KEYS`, [B, n_pix]).

  Returns:
    Dict of scalars, keys as above.
  """
  r = (out["x_synthobs"] - batch["x_obs"]) / batch["x_obs_err"]
  r = jnp.where(batch["x_obs_msk"] > 0, r, jnp.nan)
  chi2_all = jnp.nanmean(jnp.square(r))
  chi2 = jnp.nanmean(jnp.where(jnp.abs(r) <= 5, jnp.square(r), jnp.nan))
  mean, std = resources.spectra_mean_std()
  raw_pred = out["x_obssynth"] * std + mean
  raw_x = batch["x_synth"] * std + mean
  rel = jnp.where(batch["x_synth_msk"] > 0, (raw_pred - raw_x) / raw_x, jnp.nan)
  return {"obs_bias": jnp.nanmean(r), "obs_scatter": _half_width_16_84(r), "obs_chi2": chi2,
          "obs_chi2_all": chi2_all, "synth_bias": jnp.nanmean(rel),
          "synth_scatter": _half_width_16_84(rel)}


def make_eval_fn(cfg: Config, paired: bool = False):
  """Jitted validation: (gen_params, critic_params, batch) → dict of scalar metrics `val_*`.

  The generator and critic loss terms on a fixed batch (no update), and the authors' latent
  cycle scores: mean |z − z_cycled| of latents scaled to [0, 1] per variable over the batch,
  for z_sh of each domain (`zsh_synth_val`, `zsh_obs_val`) and z_sp (`zsp_val`). With
  `paired` (row i of both domains is the same star), also `val_paired_*` (`paired_metrics`).
  """
  # The validation batch has no grid rows: its losses are Eq. 1's terms alone.
  nets = make_networks(dataclasses.replace(cfg, lambda_grid=0.0))

  @jax.jit
  def evaluate(gen_params, critic_params, batch):
    _, (terms, out) = losses.generator_loss(gen_params, critic_params, batch, nets=nets)
    _, c_metrics = losses.critic_loss(critic_params, out, batch, nets=nets)
    zsh = [out["zsh_synth"], out["zsh_obs"], out["zsh_synthobs"], out["zsh_obssynth"]]
    lo = jnp.min(jnp.concatenate(zsh), axis=0)
    hi = jnp.max(jnp.concatenate(zsh), axis=0)
    scale = lambda z: (z - lo) / jnp.maximum(hi - lo, 1e-12)  # noqa: E731
    metrics = {**terms, **c_metrics,
               "zsh_synth_val": jnp.mean(jnp.abs(scale(out["zsh_synth"])
                                                 - scale(out["zsh_synthobs"]))),
               "zsh_obs_val": jnp.mean(jnp.abs(scale(out["zsh_obs"])
                                               - scale(out["zsh_obssynth"])))}
    if cfg.use_split:
      zsp = jnp.concatenate([out["zsp_obs"], out["zsp_synthobs"]])
      lo_p, hi_p = jnp.min(zsp, axis=0), jnp.max(zsp, axis=0)
      metrics["zsp_val"] = jnp.mean(jnp.abs(out["zsp_obs"] - out["zsp_synthobs"])
                                    / jnp.maximum(hi_p - lo_p, 1e-12))
    if paired:
      metrics.update({f"paired_{k}": v for k, v in paired_metrics(out, batch).items()})
    return {f"val_{k}" if not k.endswith("_val") else k: v for k, v in metrics.items()}

  return evaluate


# ---------------------------------------------------------------------------------------------
# Validation data: which rows, and whether they are paired.

PAIRED_VAL_OPTIONS = ("auto", "yes", "no")


def paired_val_option(paired_val: bool | str | None) -> str:
  """`paired_val` as one of PAIRED_VAL_OPTIONS (True/False/None are yes/no/auto)."""
  if isinstance(paired_val, str):
    opt = paired_val.lower()
  else:
    opt = {True: "yes", False: "no", None: "auto"}.get(paired_val, paired_val)
  if opt not in PAIRED_VAL_OPTIONS:
    raise ValueError(f"paired_val must be one of {PAIRED_VAL_OPTIONS} (or True/False/None), "
                     f"got {paired_val!r}")
  return opt


def _paired_splits(attrs: dict) -> list[str] | None:
  """A file's `paired_splits` attribute as a list (None: the file does not say)."""
  v = attrs.get("paired_splits")
  if v is None:
    return None
  return [v] if isinstance(v, str) else [str(s) for s in v]


def decide_paired_val(synth_path, obs_path, paired_val: bool | str | None = "auto"
                      ) -> tuple[bool, str]:
  """Whether row i of the two val splits is the same star, and why.

  "yes" / "no" (or True / False): as given. "auto" (or None): the files' `paired_splits`
  attribute when either file has one (paired when both list "val"; the mock world's files
  write `["val"]`); otherwise (the authors' files have no attribute) equal val row counts,
  with a warning, since the row count cannot tell whether the rows are the same stars.

  Returns:
    (paired, reason): the reason is a short sentence for run.json and the summary.
  """
  opt = paired_val_option(paired_val)
  with h5io.SpectraFile(synth_path, n_pix=None) as fs, h5io.SpectraFile(obs_path,
                                                                         n_pix=None) as fo:
    if "val" not in fs.splits or "val" not in fo.splits:
      return False, "no val split in both files (no validation)"
    n_s, n_o = fs.n("val"), fo.n("val")
    attrs = (_paired_splits(fs.attrs), _paired_splits(fo.attrs))
  if opt != "auto":
    if opt == "yes" and n_s != n_o:
      warnings.warn(f"paired_val='yes' but the val splits have {n_s} ({synth_path}) and {n_o} "
                    f"({obs_path}) rows; the first {min(n_s, n_o)} are compared as pairs",
                    stacklevel=2)
    return opt == "yes", f"paired_val={opt!r} given"
  if any(a is not None for a in attrs):
    paired = all(a is not None and "val" in a for a in attrs)
    return paired, f"file attribute paired_splits: synth {attrs[0]}, obs {attrs[1]}"
  if n_s != n_o:
    return False, f"val row counts differ ({n_s}, {n_o}); no paired_splits attribute"
  warnings.warn(f"{synth_path}, {obs_path}: no 'paired_splits' file attribute; the val splits "
                f"both have {n_s} rows, so they are taken as paired (row i = the same star) "
                f"and val_paired_* metrics are computed; pass paired_val='yes' or 'no' "
                f"(--paired-val) to decide", stacklevel=2)
  return True, f"equal val row counts ({n_s}), no paired_splits attribute (assumed paired)"


def validation_rows(synth_path, obs_path, cfg: Config, rows: int) -> dict | None:
  """The first `rows` val spectra of each domain (the same count in both), standardized, as
  the train step's batch keys; None (with a warning) when a file has no val split."""
  try:
    s = data.read_standardized(synth_path, "synth", cfg, "val", rows)
    o = data.read_standardized(obs_path, "obs", cfg, "val", rows)
  except KeyError as e:
    warnings.warn(f"no validation: {e}", stacklevel=3)
    return None
  n = min(len(s["x"]), len(o["x"]))
  if n == 0:
    return None
  return {f"x_{d}{k[1:]}": v[:n] for d, arrs in (("synth", s), ("obs", o))
          for k, v in arrs.items() if k != "y"}


def validation_batch(synth_path, obs_path, cfg: Config, rows: int,
                      paired_val: bool | str | None = "auto") -> tuple[dict | None, bool]:
  """(The first `rows` val spectra of each domain, whether the val split is paired); see
  `decide_paired_val`."""
  batch = validation_rows(synth_path, obs_path, cfg, rows)
  if batch is None:
    return None, False
  return batch, decide_paired_val(synth_path, obs_path, paired_val)[0]
