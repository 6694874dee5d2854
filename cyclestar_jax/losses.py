"""Cycle-StarNet losses (paper Eq. 1, 3, 4, 7; docs/method.md, 'Losses').

Units: every spectrum is standardized flux, `(x − 0.97746492) / 0.05180881`, and every error is
divided by the same std, so the distance is a mean squared normalized residual, dimensionless.

Metric and term names follow the authors' code: `rec_synth`, `rec_obs` (Eq. 3), `cc_synth`,
`cc_obs` (Eq. 7), `gen_synth`, `gen_obs` (the generator's side of Eq. 4), `dis_real_synth`,
`dis_fake_synth`, `dis_real_obs`, `dis_fake_obs` (the critics' side of Eq. 4), and critic
accuracies `acc_real_*`, `acc_fake_*` (fraction of samples classified right).

The critics output logits; `optax.sigmoid_binary_cross_entropy` on a logit is the reference's
sigmoid + `BCELoss`, without its log(0) clamp at −100 and numerically safer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cyclestar_jax.config import Config
from cyclestar_jax.networks import CycleStarNet

BATCH_KEYS = ("x_synth", "x_synth_err", "x_synth_msk", "x_obs", "x_obs_err", "x_obs_msk")
GEN_TERMS = ("rec_synth", "rec_obs", "cc_synth", "cc_obs", "gen_synth", "gen_obs")
GRID_KEYS = ("x_grid", "x_grid_err", "x_grid_msk")  # the grid batch (`Config.lambda_grid` > 0)
GRID_TERMS = ("rec_grid", "cc_grid")
CRITIC_TERMS = ("dis_real_synth", "dis_fake_synth", "dis_real_obs", "dis_fake_obs")
CRITIC_ACCURACIES = ("acc_real_synth", "acc_fake_synth", "acc_real_obs", "acc_fake_obs")


def distance(pred: jax.Array, target: jax.Array, err: jax.Array, msk: jax.Array) -> jax.Array:
  """Masked, error-weighted mean squared distance d of Eq. 3 and 7.

  mean(((pred − target) · msk / err)²) over all samples and pixels, masked pixels included in
  the count (as the reference does).

  Args:
    pred: predicted spectra [B, n_pix], standardized.
    target: target spectra [B, n_pix], standardized.
    err: error spectra [B, n_pix] in standardized units (> 0).
    msk: pixel mask [B, n_pix], 1 = use, 0 = ignore.

  Returns:
    Scalar distance.
  """
  if not pred.shape == target.shape == err.shape == msk.shape:
    raise ValueError(f"distance: shapes differ: pred {pred.shape}, target {target.shape}, "
                     f"err {err.shape}, msk {msk.shape}")
  return jnp.mean(jnp.square((pred - target) * msk / err))


def bce_logits(logits: jax.Array, label: float) -> jax.Array:
  """Mean binary cross-entropy H(label, sigmoid(logits)) of Eq. 4.

  Args:
    logits: critic logits [B].
    label: 1.0 for "true" (within-domain reconstructions), 0.0 for "fake" (transferred).

  Returns:
    Scalar loss in nats.
  """
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))


def accuracy(logits: jax.Array, label: float) -> jax.Array:
  """Fraction [0, 1] of logits [B] on the side of `label` (logit > 0 means "true")."""
  predicted_true = logits > 0
  return jnp.mean(predicted_true if label >= 0.5 else ~predicted_true)


def generator_objective(terms: dict[str, jax.Array], cfg: Config) -> jax.Array:
  """Eq. 1: λ_synth (rec + cc)_synth + λ_obs (rec + cc)_obs + λ_adv (gen_synth + gen_obs),
  plus λ_grid (rec + cc)_grid when `cfg.lambda_grid` > 0 (cc_grid only with `cfg.grid_cycle`)."""
  total = (cfg.lambda_synth * (terms["rec_synth"] + terms["cc_synth"])
           + cfg.lambda_obs * (terms["rec_obs"] + terms["cc_obs"])
           + cfg.lambda_adv * (terms["gen_synth"] + terms["gen_obs"]))
  if cfg.lambda_grid > 0:
    total = total + cfg.lambda_grid * sum(terms[k] for k in GRID_TERMS if k in terms)
  return total


def critic_objective(terms: dict[str, jax.Array], cfg: Config) -> jax.Array:
  """Eq. 4 summed over its four terms, times λ_critic (the authors' loss_weight_dis)."""
  return cfg.lambda_critic * sum(terms[k] for k in CRITIC_TERMS)


def batch_keys(cfg: Config) -> tuple[str, ...]:
  """The keys a train step's batch holds under `cfg`: `BATCH_KEYS`, and `GRID_KEYS` when
  `cfg.lambda_grid` > 0."""
  return BATCH_KEYS + (GRID_KEYS if cfg.lambda_grid > 0 else ())


def _check_batch(batch: dict, cfg: Config) -> None:
  keys, n_pix = batch_keys(cfg), cfg.n_pix
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f"batch is missing {missing}; expected keys {keys}")
  for k in keys:
    if batch[k].ndim != 2 or batch[k].shape[1] != n_pix:
      raise ValueError(f"batch[{k!r}] has shape {batch[k].shape}; expected [B, {n_pix}]")
  sizes = {k: batch[k].shape[0] for k in ("x_synth", "x_obs", "x_grid") if k in keys}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"the batches differ in size: {sizes}")


def generator_loss(gen_params: dict, critic_params: dict, batch: dict, *, nets: CycleStarNet,
                   zsp_perm: jax.Array | None = None):
  """The generator's loss (Eq. 1) for one iteration, with the critics held fixed.

  Args:
    gen_params: generator parameters (differentiated).
    critic_params: critic parameters (used, not updated).
    batch: `batch_keys(cfg)` → [B, n_pix] standardized spectra, standardized errors, 0/1 masks.
    nets: the networks.
    zsp_perm: optional [B] permutation for the z_sp lent to x_synth→obs (see `cycle_forward`).

  Returns:
    (loss, (terms, outputs)): scalar Eq. 1; `GEN_TERMS` (and `GRID_TERMS` with a grid batch)
    scalars; the forward pass's outputs.
  """
  _check_batch(batch, nets.cfg)
  xs, xs_err, xs_msk = batch["x_synth"], batch["x_synth_err"], batch["x_synth_msk"]
  xo, xo_err, xo_msk = batch["x_obs"], batch["x_obs_err"], batch["x_obs_msk"]
  out = nets.cycle_forward(gen_params, xs, xo, zsp_perm)
  # The generator wants its transferred spectra called "true" (target 1), Eq. 4 flipped.
  logit_synth_fake = nets.critic_synth(critic_params, out["x_obssynth"], out["zsh_obs"])
  logit_obs_fake = nets.critic_obs(critic_params, out["x_synthobs"], out["zsh_synth"],
                                   out.get("zsp_synthobs"))
  terms = {
      "rec_synth": distance(out["x_synthsynth"], xs, xs_err, xs_msk),
      "rec_obs": distance(out["x_obsobs"], xo, xo_err, xo_msk),
      "cc_synth": distance(out["x_synthobssynth"], xs, xs_err, xs_msk),
      "cc_obs": distance(out["x_obssynthobs"], xo, xo_err, xo_msk),
      "gen_synth": bce_logits(logit_synth_fake, 1.0),
      "gen_obs": bce_logits(logit_obs_fake, 1.0),
  }
  if nets.cfg.lambda_grid > 0:
    terms.update(grid_terms(gen_params, batch, out.get("zsp_lent"), nets=nets))
  return generator_objective(terms, nets.cfg), (terms, out)


def grid_terms(gen_params: dict, batch: dict, zsp_lent: jax.Array | None, *,
               nets: CycleStarNet) -> dict[str, jax.Array]:
  """The grid batch's distances (`Config.lambda_grid`; not in the paper).

  `rec_grid` = d(x_grid→synth, x_grid) and (with `cfg.grid_cycle`) `cc_grid` =
  d(x_grid→obs→synth, x_grid), the synthetic domain's Eq. 3 and Eq. 7 on spectra whose labels
  vary each element on its own.
  They make the shared latent keep every label's direction, not only the ones along which the
  domains' stars vary together; no critic sees these spectra, so they do not ask the observed
  domain to look like them.

  Args:
    gen_params: generator parameters.
    batch: holds `GRID_KEYS` [B, n_pix] (standardized as synthetic spectra).
    zsp_lent: the z_sp lent to x_grid→obs (`cycle_forward`'s `zsp_lent`), or None.
    nets: the networks.
  """
  xg, xg_err, xg_msk = batch["x_grid"], batch["x_grid_err"], batch["x_grid_msk"]
  out = nets.grid_forward(gen_params, xg, zsp_lent)
  terms = {"rec_grid": distance(out["x_gridgrid"], xg, xg_err, xg_msk)}
  if "x_gridobssynth" in out:
    terms["cc_grid"] = distance(out["x_gridobssynth"], xg, xg_err, xg_msk)
  return terms


def critic_loss(critic_params: dict, outputs: dict, batch: dict, *, nets: CycleStarNet):
  """The critics' loss (Eq. 4) on generator outputs held fixed.

  "True" samples are the within-domain reconstructions paired with their latents (paper
  footnote 4), or the inputs themselves when `cfg.use_real_as_true`; "fake" samples are the
  transferred spectra with the latents the generator's critic terms used.

  Args:
    critic_params: critic parameters (differentiated).
    outputs: `cycle_forward` outputs (gradients stopped here).
    batch: as for `generator_loss` (only used with `use_real_as_true`).
    nets: the networks.

  Returns:
    (loss, metrics): scalar λ_critic · Eq. 4; `CRITIC_TERMS` and `CRITIC_ACCURACIES` scalars.
  """
  out = jax.lax.stop_gradient(outputs)
  zsp_obs, zsp_synthobs = out.get("zsp_obs"), out.get("zsp_synthobs")
  if nets.cfg.use_real_as_true:
    x_real_synth, x_real_obs = batch["x_synth"], batch["x_obs"]
  else:
    x_real_synth, x_real_obs = out["x_synthsynth"], out["x_obsobs"]
  # One critic application per domain on real and fake samples together (half the kernels).
  logits = {}
  logits["real_synth"], logits["fake_synth"] = nets.critic_synth_joint(
      critic_params, (x_real_synth, out["zsh_synth"]), (out["x_obssynth"], out["zsh_obs"]))
  logits["real_obs"], logits["fake_obs"] = nets.critic_obs_joint(
      critic_params, (x_real_obs, out["zsh_obs"], zsp_obs),
      (out["x_synthobs"], out["zsh_synth"], zsp_synthobs))
  metrics = {}
  for name, lg in logits.items():
    label = 1.0 if name.startswith("real") else 0.0
    metrics[f"dis_{name}"] = bce_logits(lg, label)
    metrics[f"acc_{name}"] = accuracy(lg, label)
  return critic_objective(metrics, nets.cfg), metrics
