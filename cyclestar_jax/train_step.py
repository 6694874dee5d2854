"""Train state and the pure Cycle-StarNet train step (paper §3.2.3, Appendix B).

One iteration = one generator update (Eq. 1, critics fixed) then one critic update (Eq. 4) on
the generator outputs of that same forward pass, held fixed, as the reference does. Two Adam
optimizers (β = (0.5, 0.999), no weight decay); learning rates × 0.7 after 50k, 100k, 150k,
200k updates (PyTorch's MultiStepLR stepped after each update gives the same schedule).

The step has no device or axis names: `parallel.py` jits it over a device mesh. A step whose
loss or gradients are not finite changes nothing but `step` and `n_skipped` (see `TrainState`).
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import optax

from cyclestar_jax import losses
from cyclestar_jax.config import Config
from cyclestar_jax.networks import CycleStarNet, make_networks


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; arrays only, so orbax saves it as it is.

  Attributes:
    step: int32 [] iterations consumed so far, skipped ones included; it is also the position
      in the data stream (batches are a function of (seed, step)).
    gen_params: generator parameters {enc_synth, enc_obs, enc_sh, enc_sp, dec_sh, dec_sp,
      dec_synth, dec_obs} (see `networks`).
    critic_params: critic parameters {critic_synth, critic_obs}.
    gen_opt: generator optimizer state (Adam for encoders and for decoders).
    critic_opt: critic optimizer state (Adam).
    n_skipped: int32 [] iterations skipped because their loss or gradients were not finite.
    gen_ema: the moving average of gen_params (`Config.gen_ema_decay`; equal to gen_params
      when the decay is 0): the generator that evaluation, fitting and derivatives use.
  """

  step: jax.Array
  gen_params: dict
  critic_params: dict
  gen_opt: optax.OptState
  critic_opt: optax.OptState
  n_skipped: jax.Array
  gen_ema: dict


def lr_schedules(cfg: Config) -> dict[str, optax.Schedule]:
  """Learning-rate schedules `encoder`, `decoder`, `critic` as functions of the update count."""

  def piecewise(lr, boundaries, decay):
    return optax.piecewise_constant_schedule(lr, {int(b): decay for b in boundaries})

  return {"encoder": piecewise(cfg.lr_encoder, cfg.lr_boundaries_gen, cfg.lr_decay_gen),
          "decoder": piecewise(cfg.lr_decoder, cfg.lr_boundaries_gen, cfg.lr_decay_gen),
          "critic": piecewise(cfg.lr_critic, cfg.lr_boundaries_critic, cfg.lr_decay_critic)}


def _gen_labels(params: dict) -> dict:
  return {k: jax.tree.map(lambda _, k=k: "encoder" if k.startswith("enc") else "decoder", v)
          for k, v in params.items()}


def make_optimizers(cfg: Config) -> tuple[optax.GradientTransformation,
                                          optax.GradientTransformation]:
  """(generator, critic) optax transformations.

  The generator's is Adam with the encoders' and the decoders' learning rates (the reference's
  parameter groups; Adam is elementwise, so one Adam per group is the same optimizer).
  """
  sched = lr_schedules(cfg)
  adam = functools.partial(optax.adam, b1=cfg.adam_beta1, b2=cfg.adam_beta2, eps=1e-8)
  gen_tx = optax.multi_transform(
      {"encoder": adam(sched["encoder"]), "decoder": adam(sched["decoder"])}, _gen_labels)
  return gen_tx, adam(sched["critic"])


def create_train_state(cfg: Config, key: jax.Array) -> TrainState:
  """Fresh parameters (initialised as the reference) and optimizer states at step 0.

  Use `jax.eval_shape(create_train_state, cfg, key)` (cfg bound by a closure or partial) for a
  restore target without allocating.
  """
  nets = make_networks(cfg)
  gen_params, critic_params = nets.init(key)
  gen_tx, critic_tx = make_optimizers(cfg)
  return TrainState(step=jnp.zeros((), jnp.int32), gen_params=gen_params,
                    critic_params=critic_params, gen_opt=gen_tx.init(gen_params),
                    critic_opt=critic_tx.init(critic_params),
                    n_skipped=jnp.zeros((), jnp.int32),
                    gen_ema=jax.tree.map(jnp.copy, gen_params))  # own buffers (donation)


def gen_update_count(gen_opt) -> jax.Array:
  """Updates applied so far by the generator's optimizer (int32 scalar): the `count` of the
  decoders' Adam. `gen_opt` is `make_optimizers`' `multi_transform` state, {"decoder",
  "encoder"} each a masked (Adam, learning-rate schedule) chain; every count in it is equal."""
  return gen_opt.inner_states["decoder"].inner_state[0].count


def critic_update_count(critic_opt) -> jax.Array:
  """Updates applied so far by the critics' optimizer (int32 scalar): the `count` of its Adam
  (`critic_opt` is the state of the (Adam, learning-rate schedule) chain)."""
  return critic_opt[0].count


def update_ema(ema: dict, params: dict, count: jax.Array, decay: float) -> dict:
  """The moving average after update number `count` (0-based) of the new params.

  Decay min(decay, (1 + count) / (10 + count)), so early averages are not dominated by the
  initial weights; decay 0 returns params itself.
  """
  if decay == 0.0:
    return params
  c = count.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + c) / (10.0 + c))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def make_train_step(cfg: Config, nets: CycleStarNet | None = None, *,
                    axis_name: str | None = None):
  """Build the pure train step of a config.

  With `axis_name`, the step is written for `jax.shard_map` over a data axis of that name:
  each device computes losses and gradients on its own slice of the batch, and the gradients,
  losses and metrics are averaged over the axis (`lax.pmean`, one all-reduce) before the
  updates, which equals the step on the whole batch (every loss is a mean over samples and the
  slices are equal). Without it, the step sees the whole batch (`parallel` may still partition
  it with XLA's SPMD partitioner).

  Returns:
    `train_step(state, batch, key) -> (state, metrics)`:
      state: `TrainState`.
      batch: dict of [B, n_pix] float32 arrays `x_synth`, `x_synth_err`, `x_synth_msk`, `x_obs`,
        `x_obs_err`, `x_obs_msk`: standardized flux, errors divided by the same std, 0/1 masks.
      key: a PRNG key; the step uses `fold_in(key, state.step)`, so one key can serve a whole
        run (only `zsp_pairing="random"` draws from it).
      metrics: float32 scalars: the `losses.GEN_TERMS`, `CRITIC_TERMS`, `CRITIC_ACCURACIES`,
        `loss_gen` (Eq. 1), `loss_critic` (Eq. 4), `grad_norm_gen`, `grad_norm_critic`,
        `lr_encoder`, `lr_decoder`, `lr_critic`, `skipped` (1 if this step was skipped), and
        int32 `n_skipped`, `step` (after the step). Losses are those of the parameters before
        the update, as the reference logs them.
  """
  nets = nets if nets is not None else make_networks(cfg)
  gen_tx, critic_tx = make_optimizers(cfg)
  sched = lr_schedules(cfg)
  gen_loss = functools.partial(losses.generator_loss, nets=nets)
  critic_loss = functools.partial(losses.critic_loss, nets=nets)

  def _mean_over_devices(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def train_step(state: TrainState, batch: dict, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    zsp_perm = None
    if cfg.zsp_pairing == "random" and cfg.use_split:
      zsp_perm = jax.random.permutation(key, batch["x_obs"].shape[0])

    # Generator update (critics fixed).
    (g_loss, (g_terms, outputs)), g_grads = jax.value_and_grad(gen_loss, has_aux=True)(
        state.gen_params, state.critic_params, batch, zsp_perm=zsp_perm)
    g_loss, g_terms, g_grads = _mean_over_devices((g_loss, g_terms, g_grads))
    g_updates, gen_opt = gen_tx.update(g_grads, state.gen_opt, state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, g_updates)

    # Critic update on the outputs of the same forward pass, held fixed.
    (c_loss, c_metrics), c_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic_params, outputs, batch)
    c_loss, c_metrics, c_grads = _mean_over_devices((c_loss, c_metrics, c_grads))
    c_updates, critic_opt = critic_tx.update(c_grads, state.critic_opt, state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, c_updates)

    # A sum of squares is finite only if every element is; checking the two global norms
    # instead of every leaf keeps XLA's compile time down (3× on the CPU).
    g_norm, c_norm = optax.tree.norm(g_grads), optax.tree.norm(c_grads)
    ok = jnp.isfinite(g_loss) & jnp.isfinite(c_loss) & jnp.isfinite(g_norm) & jnp.isfinite(c_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    gen_ema = update_ema(state.gen_ema, gen_params, gen_update_count(state.gen_opt),
                         cfg.gen_ema_decay)
    new_state = TrainState(
        step=state.step + 1,
        gen_params=keep(gen_params, state.gen_params),
        critic_params=keep(critic_params, state.critic_params),
        gen_opt=keep(gen_opt, state.gen_opt),
        critic_opt=keep(critic_opt, state.critic_opt),
        n_skipped=state.n_skipped + jnp.where(ok, 0, 1).astype(jnp.int32),
        gen_ema=keep(gen_ema, state.gen_ema))

    gen_count = gen_update_count(state.gen_opt)
    critic_count = critic_update_count(state.critic_opt)
    metrics = {**g_terms, **c_metrics, "loss_gen": g_loss, "loss_critic": c_loss,
               "grad_norm_gen": g_norm, "grad_norm_critic": c_norm,
               "lr_encoder": sched["encoder"](gen_count), "lr_decoder": sched["decoder"](gen_count),
               "lr_critic": sched["critic"](critic_count)}
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    metrics.update(skipped=jnp.where(ok, 0.0, 1.0).astype(jnp.float32),
                   n_skipped=new_state.n_skipped, step=new_state.step)
    return new_state, metrics

  return train_step


def make_multi_step(cfg: Config, nets: CycleStarNet | None = None, train_step=None):
  """Several train steps in one call: a `lax.scan` of the train step over stacked batches.

  At batch 8 one iteration is a few milliseconds of device work, and launching it from Python
  costs about as much; scanning N iterations inside one compiled call pays that launch once per
  N iterations (docs/devices.md). The result is the same as N calls of the single step.

  Args:
    cfg: config.
    nets: networks (default: built from cfg).
    train_step: the single step to scan (default: `make_train_step(cfg, nets)`).

  Returns:
    `multi_step(state, batches, key) -> (state, metrics)`:
      batches: dict of the train step's batch keys, each [N, B, n_pix] (N iterations stacked
        along a new leading axis).
      key: the run's PRNG key (each iteration folds in its own step, as the single step does).
      metrics: the single step's metrics, each stacked to [N].
  """
  step = train_step if train_step is not None else make_train_step(cfg, nets)

  def multi_step(state: TrainState, batches: dict, key: jax.Array):
    lead = {v.shape[0] for v in jax.tree.leaves(batches)}
    if len(lead) != 1:
      raise ValueError(f"multi_step: stacked batches differ in their leading (iteration) axis: "
                       f"{ {k: v.shape for k, v in batches.items()} }")
    return jax.lax.scan(lambda s, b: step(s, b, key), state, batches)

  return multi_step


def gather_batch(staged: dict, rows: dict) -> dict:
  """One iteration's batch gathered from training data held on the device.

  Args:
    staged: `parallel.stage_on_devices` arrays: `x_synth`, `x_synth_err` float32 [N_synth, n_pix],
      `x_synth_msk` uint8 [N_synth, n_pix], and the same for `obs` (standardized).
    rows: {"synth": [B], "obs": [B]} int32 row indices of the iteration (`BatchStream.rows_at`).

  Returns:
    The train step's batch: every staged key (`losses.batch_keys(cfg)`) → float32 [B, n_pix],
    equal to what `data.BatchStream.batch_at` gives for the same rows.
  """
  return {k: jnp.take(v, rows[k.split("_")[1]], axis=0).astype(jnp.float32)
          for k, v in staged.items()}


def make_staged_step(cfg: Config, nets: CycleStarNet | None = None, train_step=None):
  """The train step fed from device-held data by row indices: one or several iterations a call.

  Returns:
    `staged_step(state, staged, rows, key) -> (state, metrics)`: with rows {"synth", "obs"} of
    shape [B] it is one train step on `gather_batch(staged, rows)`; with [N, B] it runs N
    iterations in one call (a `lax.scan`, as `make_multi_step`) and the metrics are [N]. The
    result equals the train step on the batches `data.BatchStream` reads for the same rows.
  """
  step = train_step if train_step is not None else make_train_step(cfg, nets)

  def staged_step(state: TrainState, staged: dict, rows: dict, key: jax.Array):
    ndim = {r.ndim for r in rows.values()}
    if ndim == {1}:
      return step(state, gather_batch(staged, rows), key)
    if ndim != {2}:
      raise ValueError(f"staged_step: rows must be [B] or [N, B] for both domains, got "
                       f"{ {k: r.shape for k, r in rows.items()} }")
    return jax.lax.scan(lambda s, r: step(s, gather_batch(staged, r), key), state, rows)

  return staged_step
