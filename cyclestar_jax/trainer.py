"""The Cycle-StarNet training loop: data, data-parallel step, validation, checkpoints, metrics.

`train(cfg, synth_path, obs_path, out_dir)` runs the paper's schedule (Appendix B) from the two
reference-format HDF5 files and writes into `out_dir`:
  - `config.json`: the config used;
  - `metrics.jsonl`: one JSON line per log interval (`kind: "train"`: means of every loss term
    and critic accuracy over the interval, it/s, skipped steps) and per validation
    (`kind: "val"`: the loss terms on the first `val_rows` spectra of each val split, and the
    authors' latent cycle scores `zsh_synth_val`, `zsh_obs_val`, `zsp_val`; with a paired
    val split, the paired transfer residuals `val_paired_*`, see `paired_metrics`);
  - `checkpoints/`: orbax checkpoints (last `keep`), see `checkpoint.py`;
  - `training_progress.png`: distances and adversarial losses against iterations (Fig. B1).

Every input is checked before the first step: the files (pixel counts, splits), the batch size
against the devices, and, with `resume=True`, the checkpoints (a corrupt or foreign newest one
is skipped with a warning; if none is valid the run stops with an error rather than start over).
A resumed run continues the same data stream (batches are a function of (seed, step)) and
gives the same parameters as an uninterrupted run.

Several processes (`jax.distributed` initialized first, see `parallel` and `experiments/train.py`):
every process calls `train` with the same arguments and an `out_dir` they all see. Each reads
its own rows of every global batch, all take part in every step, validation and checkpoint,
and process 0 alone writes config.json, metrics.jsonl and the figure and shows the progress
bar; every process returns the same summary (but for the timings).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from cyclestar_jax import checkpoint, data, h5io, losses, parallel, resources
from cyclestar_jax.config import Config
from cyclestar_jax.fileio import atomic_write_text, save_figure
from cyclestar_jax.networks import make_networks
from cyclestar_jax.train_step import create_train_state

# Metrics whose interval means go to metrics.jsonl and the progress bar.
_BAR_KEYS = ("rec_synth", "rec_obs", "cc_synth", "cc_obs", "gen_synth", "gen_obs")


def _half_width_16_84(r: jax.Array) -> jax.Array:
  """Half the 16–84 percentile width of the finite values of r (NaN marks excluded ones)."""
  lo, hi = jnp.nanpercentile(r, jnp.array([16.0, 84.0]))
  return 0.5 * (hi - lo)


def paired_metrics(out: dict, batch: dict) -> dict[str, jax.Array]:
  """Transfer residuals on a paired batch (row i of both domains is the same star).

  DESIGN.md §4. Observed domain: x_synth→obs = D_obs(D_sh(z_sh of the synthetic spectrum),
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
  nets = make_networks(cfg)

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


def _validation_batch(synth_path, obs_path, cfg: Config, rows: int) -> tuple[dict | None, bool]:
  """(The first `rows` val spectra of each domain, whether the val split is paired).

  The split counts as paired when both files' val splits have the same number of rows: the
  authors' files (and the mock's) hold the same stars in the same order in both val splits.
  That identity cannot be checked in real files; files whose val rows are different stars
  but equal in number would get meaningless `val_paired_*` metrics (pass `paired_val=False`).
  """
  try:
    s = data.read_split(synth_path, "synth", cfg, "val", rows)
    o = data.read_split(obs_path, "obs", cfg, "val", rows)
    with h5io.SpectraFile(synth_path, n_pix=None) as fs, h5io.SpectraFile(obs_path,
                                                                           n_pix=None) as fo:
      paired = fs.n("val") == fo.n("val")
  except (KeyError, ValueError) as e:
    warnings.warn(f"no validation: {e}", stacklevel=3)
    return None, False
  n = min(len(s["x"]), len(o["x"]))
  if n == 0:
    return None, False
  batch = {f"x_{d}{k[1:]}": v[:n] for d, arrs in (("synth", s), ("obs", o))
           for k, v in arrs.items() if k != "y"}
  return batch, paired


def _metric_lines(path: Path) -> list[tuple[str, dict]]:
  """(text, parsed) of each line of a metrics.jsonl file.

  A last line that does not parse is a write torn by a kill (lines are appended whole, so only
  the last one can be cut short): it is dropped. Any other bad line is an error naming the
  file and the line number.
  """
  lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
  out = []
  for i, line in enumerate(lines):
    try:
      out.append((line, json.loads(line)))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path}: line {i + 1} is not JSON ({e.msg}); expected one JSON object "
                       f"per line") from e
  return out


def _truncate_metrics(path: Path, after_step: int) -> None:
  """Drop metric lines past the resumed step (written after the last checkpoint), and a last
  line torn by the kill."""
  if not path.exists():
    return
  keep = [text for text, d in _metric_lines(path) if d["step"] <= after_step]
  atomic_write_text(path, "".join(line + "\n" for line in keep))


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  """Means over an interval of step metrics (scalars, or [n] from a call of n iterations)."""
  fetched = parallel.fetch(history)
  keys = [k for k in fetched[0] if k not in ("step", "n_skipped")]
  out = {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in fetched]))) for k in keys}
  out["n_skipped"] = int(np.ravel(fetched[-1]["n_skipped"])[-1])
  return out


def _iterations(history: list[dict]) -> int:
  return int(sum(np.size(m["step"]) for m in history))


def data_on_device_fits(n_spectra: int, cfg: Config, devices=None, *,
                        fraction: float = 0.4) -> bool:
  """Whether `n_spectra` standardized spectra fit on every local device (`data.staged_nbytes`).

  Accelerators: at most `fraction` of a device's memory (`memory_stats()["bytes_limit"]`).
  CPU devices share the host's memory: all their copies together at most half of `fraction`
  of the physical memory.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  need = data.staged_nbytes(n_spectra, cfg.n_pix)
  stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return need <= fraction * stats["bytes_limit"]
  try:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return False
  return need * len(devices) <= 0.5 * fraction * ram


def _next_call(done: int, n_iter: int, steps_per_call: int, intervals: tuple[int, ...]) -> int:
  """Iterations of the next call: up to the next multiple of `steps_per_call`, never past an
  event (log, validation, checkpoint) or the end, so events land where a one-step loop puts
  them and a resumed run groups its iterations as the straight run did."""
  ends = [n_iter, (done // steps_per_call + 1) * steps_per_call]
  ends += [(done // k + 1) * k for k in intervals if k > 0]
  return min(ends) - done


def train(cfg: Config, synth_path, obs_path, out_dir, *, resume: bool = False,
          n_iter: int | None = None, log_every: int = 100, val_every: int = 1000,
          val_rows: int = 64, ckpt_every: int = 1000, keep: int = 3, progress: bool = True,
          mesh=None, paired_val: bool | None = None, data_on_device: str = "auto",
          steps_per_call: int | None = None) -> dict:
  """Train Cycle-StarNet; see the module docstring for what is written.

  Args:
    cfg: config (architecture, schedule, batch size, seed).
    synth_path, obs_path: reference-format HDF5 files of the synthetic and observed domains.
    out_dir: output directory.
    resume: continue from the newest valid checkpoint in `out_dir/checkpoints`.
    n_iter: total iterations (default cfg.n_iter); a resumed run stops at the same total.
    log_every, val_every, ckpt_every: intervals in iterations.
    val_rows: spectra per domain in the validation batch.
    keep: checkpoints kept.
    progress: show a progress bar.
    mesh: device mesh (default: all devices).
    paired_val: whether row i of the two val splits is the same star (adds `val_paired_*`);
      default: when the two val splits have the same number of rows (see `_validation_batch`).
    data_on_device: "yes": hold both training splits, standardized, on every device
      (`data.stage_on_devices`; each step gathers its batch there from row indices, so no
      spectrum crosses the host–device link during training); "no": stream the batches from
      the HDF5 files (a reading thread, memory bounded, for files larger than memory); "auto"
      (default): "yes" when `data_on_device_fits`. Both give the same batches.
    steps_per_call: iterations per compiled call with data on the devices (a `lax.scan`:
      one launch per call, the lever at batch 8 on a GPU, DESIGN.md §7); default 10 on
      accelerators, 1 on the CPU (where launches cost nothing). Streamed data: always 1.

  Returns:
    {"step", "train": last interval's means, "val": last validation, "out_dir"}.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  n_iter = cfg.n_iter if n_iter is None else int(n_iter)
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(cfg.batch_size, mesh)
  stream = data.BatchStream(synth_path, obs_path, cfg, process_index=jax.process_index(),
                            process_count=jax.process_count())
  val_batch, paired = _validation_batch(synth_path, obs_path, cfg, val_rows)
  paired = paired if paired_val is None else bool(paired_val)
  # With several processes every one runs this loop; process 0 alone writes files and prints.
  lead = jax.process_index() == 0
  if data_on_device not in ("auto", "yes", "no"):
    raise ValueError(f"data_on_device must be 'auto', 'yes' or 'no', got {data_on_device!r}")
  staged_mode = data_on_device == "yes" or (
      data_on_device == "auto" and data_on_device_fits(sum(stream.sizes().values()), cfg))
  if steps_per_call is None:
    steps_per_call = 1 if mesh.devices.flat[0].platform == "cpu" else 10
  if steps_per_call < 1:
    raise ValueError(f"steps_per_call must be ≥ 1, got {steps_per_call}")
  steps_per_call = steps_per_call if staged_mode else 1

  ckpt = checkpoint.Checkpointer(out / "checkpoints", cfg, max_to_keep=keep)
  key = jax.random.key(cfg.seed)
  target = jax.eval_shape(functools.partial(create_train_state, cfg), key)
  rep = parallel.replicated_sharding(mesh)
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), target)
  metrics_path = out / "metrics.jsonl"
  start = 0
  if ckpt.steps() and not resume:
    raise checkpoint.CheckpointError(
        f"{out / 'checkpoints'} already holds checkpoints (steps {ckpt.steps()}); pass "
        f"resume=True (--resume) to continue, or choose another output directory")
  if resume:
    found = ckpt.restore_latest(target)
    if found is None and ckpt.steps():
      raise checkpoint.CheckpointError(
          f"{out / 'checkpoints'}: no valid checkpoint among steps {ckpt.steps()} (see the "
          f"warnings); refusing to start over in this directory")
    if found is None:
      warnings.warn(f"{out / 'checkpoints'}: no checkpoint yet; starting at step 0",
                    stacklevel=2)
  else:
    found = None
  if found is not None:
    state, meta = found
    start = int(meta["data_position"])
    if lead:
      _truncate_metrics(metrics_path, start)
  else:
    state = parallel.replicate(create_train_state(cfg, key), mesh)
    if lead:
      atomic_write_text(metrics_path, "")
  if lead:
    atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
  if val_batch is not None and jax.process_count() > 1:
    val_batch = parallel.replicate(val_batch, mesh)  # every process holds the whole batch
  log_path = metrics_path if lead else None

  evaluate = make_eval_fn(cfg, paired=paired) if val_batch is not None else None
  rkey = parallel.replicate(key, mesh)
  history: list[dict] = []
  last_train, last_val = {}, {}
  batches = None
  if staged_mode:
    staged = data.stage_on_devices(stream, parallel.replicated_sharding(mesh))
    staged_fn = parallel.make_parallel_staged_step(cfg, mesh)

    def calls():  # (iterations, function of the state) per compiled call
      done = start
      while done < n_iter:
        n = _next_call(done, n_iter, steps_per_call, (log_every, val_every, ckpt_every))
        rows = stream.rows_of_steps(done, n)
        yield n, lambda s, rows=rows: staged_fn(s, staged, parallel.shard_rows(rows, mesh), rkey)
        done += n
  else:
    step_fn = parallel.make_parallel_train_step(cfg, mesh)
    batches = stream.iterate(start, n_iter)

    def calls():
      for _, batch in batches:
        yield 1, lambda s, batch=batch: step_fn(s, parallel.shard_batch(batch, mesh), rkey)

  t_interval = time.perf_counter()
  bar = tqdm(total=n_iter, initial=start, disable=not (progress and lead), desc=cfg.name,
             dynamic_ncols=True)
  done = start
  try:
    for n, run in calls():
      # Dispatch is asynchronous: while the device runs this call, the loop already prepares
      # the next one (the reader thread's batch and its transfer, or the next row indices).
      state, m = run(state)
      history.append(m)
      done += n
      bar.update(n)
      if done % log_every == 0:
        last_train = _log_train(history, done, t_interval, log_path, bar)
        history, t_interval = [], time.perf_counter()
      if evaluate is not None and done % val_every == 0:
        last_val = _log_val(evaluate, state, val_batch, done, log_path)
      if done % ckpt_every == 0:
        ckpt.save(state, data_position=done)
    if history:
      last_train = _log_train(history, done, t_interval, log_path, bar)
    if done > start:
      if evaluate is not None and done % val_every:
        last_val = _log_val(evaluate, state, val_batch, done, log_path)
      if done % ckpt_every:
        ckpt.save(state, data_position=done)
  finally:
    bar.close()
    if batches is not None:
      batches.close()
    stream.close()
    ckpt.close()
  if lead:
    plot_progress(metrics_path, out / "training_progress.png")
  return {"step": done, "train": last_train, "val": last_val, "out_dir": str(out)}


def _log_train(history, step, t0, path: Path | None, bar) -> dict:
  """Means over the interval; appended to `path` (None: another process writes them)."""
  means = _mean_metrics(history)
  dt = time.perf_counter() - t0
  means["it_per_s"] = _iterations(history) / dt if dt > 0 else math.nan
  bad = [k for k, v in means.items() if isinstance(v, float) and not math.isfinite(v)
         and k != "it_per_s"]
  line = {"kind": "train", "step": step, **means}
  if path is None:
    return line
  with path.open("a") as f:
    f.write(json.dumps(line) + "\n")
  bar.set_postfix({k: f"{means[k]:.3g}" for k in _BAR_KEYS} | {"it/s": f"{means['it_per_s']:.1f}"},
                  refresh=False)
  if bad:
    warnings.warn(f"step {step}: non-finite metrics {bad} (steps skipped so far: "
                  f"{means['n_skipped']})", stacklevel=3)
  return line


def _log_val(evaluate, state, batch, step, path: Path | None) -> dict:
  """Validation metrics (every process evaluates); appended to `path` unless None."""
  vals = {k: float(v) for k, v in parallel.fetch(
      evaluate(state.gen_ema, state.critic_params, batch)).items()}
  line = {"kind": "val", "step": step, **vals}
  if path is None:
    return line
  with path.open("a") as f:
    f.write(json.dumps(line) + "\n")
  return line


def read_metrics(path) -> dict[str, list[dict]]:
  """metrics.jsonl → {"train": [lines], "val": [lines]} (a torn last line is skipped)."""
  out: dict[str, list[dict]] = {"train": [], "val": []}
  for _, d in _metric_lines(path):
    out.setdefault(d.get("kind", "train"), []).append(d)
  return out


def plot_progress(metrics_path, png_path) -> str | None:
  """Training progress like the paper's Fig. B1: distances (top), adversarial losses (bottom).

  Returns the figure path, or None if there is nothing to plot yet.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  metrics = read_metrics(metrics_path)
  m = metrics["train"]
  if not m:
    return None
  steps = [d["step"] for d in m]
  paired = [d for d in metrics["val"] if "val_paired_obs_bias" in d]
  fig = Figure(figsize=(8, 9 if paired else 6.5))
  FigureCanvasAgg(fig)
  axes = fig.subplots(3 if paired else 2, 1, sharex=True)
  top, bottom = axes[0], axes[1]
  for k, label in (("rec_synth", r"$X_{synth\to synth}$"),
                   ("cc_synth", r"$X_{synth\to obs\to synth}$"),
                   ("rec_obs", r"$X_{obs\to obs}$"), ("cc_obs", r"$X_{obs\to synth\to obs}$")):
    top.plot(steps, [d[k] for d in m], label=label)
  top.set_yscale("log")
  top.set_ylabel("distance (Eq. 3, 7)")
  top.legend(fontsize=8, ncol=2)
  for k, label in (("gen_synth", r"gen $X_{obs\to synth}$"), ("gen_obs", r"gen $X_{synth\to obs}$"),
                   ("dis_real_synth", r"$C_{synth}(X_{true})$"),
                   ("dis_fake_synth", r"$C_{synth}(X_{fake})$"),
                   ("dis_real_obs", r"$C_{obs}(X_{true})$"),
                   ("dis_fake_obs", r"$C_{obs}(X_{fake})$")):
    bottom.plot(steps, [d[k] for d in m], label=label)
  bottom.set_ylabel("BCE (Eq. 4)")
  bottom.legend(fontsize=8, ncol=3)
  if paired:  # paired validation: x_synth→obs vs x_obs (normalized), x_obs→synth vs x_synth (%)
    ax, vs = axes[2], [d["step"] for d in paired]
    ax.plot(vs, [d["val_paired_obs_bias"] for d in paired], "o-", label="obs: bias (σ)")
    ax.plot(vs, [d["val_paired_obs_scatter"] for d in paired], "s-", label="obs: scatter (σ)")
    ax.plot(vs, [100 * d["val_paired_synth_bias"] for d in paired], "o--",
            label="synth: bias (%)")
    ax.plot(vs, [100 * d["val_paired_synth_scatter"] for d in paired], "s--",
            label="synth: scatter (%)")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylabel("paired val residuals")
    ax.legend(fontsize=8, ncol=2)
  axes[-1].set_xlabel("batch iterations")
  fig.tight_layout()
  png_path = os.fspath(png_path)
  save_figure(fig, png_path, dpi=110)
  return png_path
