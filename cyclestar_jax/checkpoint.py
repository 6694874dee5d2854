"""Checkpoints of the train state with orbax: save, keep the last N, restore only what is valid.

A checkpoint is a step directory `DIR/<step>/` with two items: `state` (the whole `TrainState`:
both parameter sets, both optimizer states, step, skip counter) and `meta` (JSON: format tag,
step, data position, the config and a fingerprint of its architecture, a SHA-256 of every
array's bytes). Orbax writes each step into a temporary directory and renames it when complete,
so a killed write never looks like a checkpoint.

`restore_latest` walks the steps from the newest and skips, with a warning that says why, any
that is incomplete (a leftover temporary directory), unreadable or corrupt (orbax fails, or the
arrays do not match the saved checksum), or foreign (not written by this package, or for a
different architecture); it returns the newest valid one, or None. It never returns a state
that failed a check.

With several processes (`jax.distributed`, see `parallel`), every process calls `save` and
`restore*` with the same arguments, on a directory they all see: the state is the replicated
global state, written once (orbax writes host arrays from process 0) and restored into global
arrays with the target's sharding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import flax.struct
import jax
import numpy as np
import orbax.checkpoint as ocp

from cyclestar_jax.config import Config
from cyclestar_jax.fileio import atomic_write
from cyclestar_jax.networks import make_networks
from cyclestar_jax.train_step import create_train_state

FORMAT = "cyclestar_jax.TrainState/1"
GENERATOR_FORMAT = "cyclestar_jax.generator/1"  # `save_generator_npz`'s file
# Config fields that change the shapes of the state; a checkpoint with other values is foreign.
_ARCH_FIELDS = ("n_pix", "filters_dom", "kernels_dom", "strides_dom", "filters_sh",
                "kernels_sh", "strides_sh", "filters_sp", "kernels_sp", "strides_sp",
                "zsh_filters", "zsp_filters", "critic_filters_x", "critic_kernels_x",
                "critic_strides_x", "critic_filters_z", "critic_kernels_z", "critic_strides_z",
                "activation", "activation_slope", "enc_out_norm")
_TMP_MARK = ".orbax-checkpoint-tmp"


def _drop_closed_loop_callbacks() -> None:
  """Keep orbax's failed restores from flooding stderr.

  Orbax runs a restore's reads in an asyncio event loop and closes the loop when one read
  fails; tensorstore's reads still in flight then complete on their own threads and call
  `loop.call_soon_threadsafe` on the closed loop, and the resulting RuntimeError("Event loop
  is closed") of each (hundreds) goes through `sys.excepthook`. Those callbacks have nothing
  left to do and the failure itself is reported by `Checkpointer.restore`, so exactly that
  error is dropped; any other goes to the previous hook. Installed once.
  """
  previous = sys.excepthook
  if getattr(previous, "_cyclestar_drops_closed_loop", False):
    return

  def hook(kind, value, tb):
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous(kind, value, tb)

  hook._cyclestar_drops_closed_loop = True
  sys.excepthook = hook


def _missing_parts(step_dir: str) -> str | None:
  """What an OCDBT-written item lacks (its `manifest.ocdbt`), checked before orbax reads it
  (a read that fails half-way leaves tensorstore reads in flight), or None."""
  for item in ("state",):
    d = os.path.join(step_dir, item)
    if os.path.isdir(d) and any(n.startswith("ocdbt.process_") for n in os.listdir(d)) \
        and not os.path.exists(os.path.join(d, "manifest.ocdbt")):
      return f"{d}/manifest.ocdbt is missing"
  return None


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: missing, incomplete, corrupt or foreign."""


def architecture_fingerprint(cfg: Config) -> str:
  """SHA-256 (hex, 16 chars) of the config fields that fix the networks' shapes."""
  arch = {k: getattr(cfg, k) for k in _ARCH_FIELDS}
  return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def _host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)  # the state is replicated: any local copy is the whole array
  return np.asarray(jax.device_get(x))


def tree_checksum(tree) -> str:
  """SHA-256 over the dtype, shape and bytes of every leaf, in tree-flatten order."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    a = np.ascontiguousarray(_host(leaf))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _config_json(cfg: Config) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


class Checkpointer:
  """Save and restore `TrainState`s under one directory, keeping the last `max_to_keep`.

  Args:
    directory: where step directories go (created if missing).
    cfg: the run's config; restored checkpoints must match its architecture.
    max_to_keep: number of newest checkpoints kept; older ones are deleted after a save.
  """

  def __init__(self, directory: str | os.PathLike, cfg: Config, *, max_to_keep: int = 3):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be ≥ 1, got {max_to_keep}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.cfg = cfg
    self.skipped: dict[int, str] = {}  # steps `restore_latest` could not use, and why
    _drop_closed_loop_callbacks()
    os.makedirs(self.directory, exist_ok=True)
    self._warn_incomplete()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def _warn_incomplete(self) -> None:
    for name in sorted(os.listdir(self.directory)):
      if _TMP_MARK in name:
        warnings.warn(f"{os.path.join(self.directory, name)}: incomplete checkpoint (the write "
                      f"was interrupted); ignored", stacklevel=3)

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def save(self, state, *, data_position: int | None = None, extra: dict | None = None) -> str:
    """Save a state under its own step; returns the step directory.

    Args:
      state: a `TrainState` (host or device arrays, replicated if sharded).
      data_position: where the data stream resumes (default: the state's step).
      extra: more JSON-serialisable entries for the metadata (e.g. the data file names).
    """
    # Host copies (the state is replicated): orbax writes NumPy arrays 4× faster than arrays
    # replicated over several devices, and the checksum needs them anyway.
    state = jax.tree.map(_host, state)
    step = int(state.step)
    meta = {"format": FORMAT, "step": step,
            "data_position": step if data_position is None else int(data_position),
            "arch_fingerprint": architecture_fingerprint(self.cfg),
            "config": _config_json(self.cfg), "checksum": tree_checksum(state),
            "extra": extra or {}}
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()
    return os.path.join(self.directory, str(step))

  def restore(self, step: int, target):
    """Restore one step, checked; raises `CheckpointError` saying why it cannot be used.

    Args:
      step: the step to restore.
      target: a `TrainState` of arrays or of `jax.ShapeDtypeStruct`s (e.g. from
        `jax.eval_shape`), giving the expected structure, shapes, dtypes (and shardings).

    Returns:
      (state, meta): the restored state and its metadata dict.
    """
    where = os.path.join(self.directory, str(step))
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = dict(meta["meta"])
    except Exception as e:  # noqa: BLE001 - any failure to read means unusable
      raise CheckpointError(f"{where}: not a checkpoint of this package, or incomplete (metadata "
                            f"unreadable: {_short(e)})") from None
    if meta.get("format") != FORMAT:
      raise CheckpointError(f"{where}: not a cyclestar_jax train-state checkpoint (format "
                            f"{meta.get('format')!r}, expected {FORMAT!r})")
    want = architecture_fingerprint(self.cfg)
    if meta.get("arch_fingerprint") != want:
      theirs = meta.get("config", {})
      diff = {k: (theirs.get(k), getattr(self.cfg, k)) for k in _ARCH_FIELDS
              if json.dumps(theirs.get(k)) != json.dumps(getattr(self.cfg, k))}
      raise CheckpointError(f"{where}: written for another architecture (config "
                            f"{theirs.get('name')!r}); differing fields (saved, ours): {diff}")
    if meta.get("step") != step:
      raise CheckpointError(f"{where}: metadata says step {meta.get('step')}, directory {step}")
    missing = _missing_parts(where)
    if missing:
      raise CheckpointError(f"{where}: incomplete ({missing})")
    abstract = jax.tree.map(_abstract, target)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{where}: state unreadable (corrupt files) or of the wrong shape "
                            f"({_short(e)})") from None
    if tree_checksum(restored) != meta.get("checksum"):
      raise CheckpointError(f"{where}: arrays do not match the checksum saved with them "
                            f"(corrupt files)")
    if int(_host(restored.step)) != step:
      raise CheckpointError(f"{where}: state holds step {int(_host(restored.step))}")
    return restored, meta

  def restore_latest(self, target):
    """The newest valid checkpoint as (state, meta), or None if there is none.

    Invalid checkpoints (incomplete, corrupt, foreign) are skipped; a fall-back to an older
    step is one warning naming the steps skipped and why. The meta dict gets "skipped_newer"
    ({step: reason} of the newer steps that failed) and `self.skipped` keeps them.
    """
    self.skipped = {}
    for step in reversed(self.steps()):
      try:
        state, meta = self.restore(step, target)
      except CheckpointError as e:
        self.skipped[step] = str(e)
        continue
      if self.skipped:
        warnings.warn(fallback_message(self.skipped, step), stacklevel=2)
      return state, {**meta, "skipped_newer": dict(self.skipped)}
    return None

  def close(self) -> None:
    """Wait for pending writes and release the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def restore_state(ckpt_dir, cfg: Config, step: int | None = None):
  """A training state from a checkpoint folder: the given step, or the newest valid one.

  Builds the restore target with `jax.eval_shape` (nothing is allocated before reading).

  Returns:
    (state, meta).
  Raises:
    CheckpointError: the step is invalid, or (step None) no checkpoint is valid.
  """
  target = jax.eval_shape(lambda k: create_train_state(cfg, k), jax.random.key(0))
  ckpt = Checkpointer(ckpt_dir, cfg)
  try:
    restored = ckpt.restore(step, target) if step is not None else ckpt.restore_latest(target)
  finally:
    ckpt.close()
  if restored is None:
    why = "; ".join(f"step {k}: {v}" for k, v in sorted(ckpt.skipped.items()))
    raise CheckpointError(f"{ckpt_dir}: no valid checkpoint ({why or 'none written'})")
  return restored


def fallback_message(skipped: dict[int, str], used: int) -> str:
  """One line: the newer checkpoints that could not be used, and the step used instead."""
  newest = max(skipped)
  return (f"checkpoint step {newest} unusable ({skipped[newest]}); using the older step {used}"
          + (f" (also skipped: {sorted(set(skipped) - {newest})})" if len(skipped) > 1 else ""))


def _short(e: Exception, n: int = 300) -> str:
  text = f"{type(e).__name__}: {e}"
  return text if len(text) <= n else text[:n] + " …"


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    if x.sharding is None:
      return jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return x
  x = jax.numpy.asarray(x) if not isinstance(x, jax.Array) else x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


@flax.struct.dataclass
class CycleModel:
  """A trained Cycle-StarNet generator, for Eq. 10 and 11 (`load_cycle_model`).

  Attributes:
    nets: the networks (`networks.make_networks(cfg)`).
    gen_params: generator parameters {enc_synth, enc_obs, enc_sh, enc_sp, dec_*} (a trained
      run's moving average, `TrainState.gen_ema`).
    source: where it was loaded from ("" if built in memory).
    step: the checkpoint step it was loaded from (None: a generator file or built in memory).
    skipped_newer: newer checkpoint steps that were unusable (a fall-back when not empty).

  A pytree whose leaves are `gen_params` (`nets` and `source` are static), so it can be an
  argument of a jitted function.
  """

  nets: Any = flax.struct.field(pytree_node=False)
  gen_params: dict
  source: str = flax.struct.field(pytree_node=False, default="")
  step: int | None = flax.struct.field(pytree_node=False, default=None)
  skipped_newer: tuple = flax.struct.field(pytree_node=False, default=())

  @property
  def n_pix(self) -> int:
    """Pixels the networks see (7167 for Table 2)."""
    return int(self.nets.cfg.n_pix)


def load_cycle_model(run_dir: str | os.PathLike, *, step: int | None = None) -> CycleModel:
  """The generator of a trained Cycle-StarNet, as a `CycleModel`: from a run directory
  (the moving average `TrainState.gen_ema` of its newest valid checkpoint, or of checkpoint
  `step`) or from a generator file written by `save_generator_npz` (`.npz`, e.g. shipped
  pretrained weights; `step` must then be None).

  A run directory (`experiments.train`) holds `config.json` and `checkpoints/` (orbax steps
  written by `Checkpointer`). The config is read from `config.json`, or from the checkpoint's
  metadata when that file is absent; checkpoints that are incomplete, corrupt or for another
  architecture are skipped (with a warning) by `Checkpointer.restore_latest`.

  Raises:
    FileNotFoundError: no run directory or file, or no checkpoint in the directory.
    ValueError: the config, the file or every checkpoint is unusable (the message says why).
  """
  run_dir = Path(run_dir)
  if run_dir.is_file():
    if step is not None:
      raise ValueError(f"{run_dir}: a generator file holds one step; step={step} needs a run "
                       "directory")
    return load_generator_npz(run_dir)
  if not run_dir.is_dir():
    raise FileNotFoundError(f"{run_dir}: not a directory; expected a Cycle-StarNet run directory "
                            "(written by experiments.train: config.json, checkpoints/) or a "
                            "generator .npz file")
  where = next((c for c in (run_dir / "checkpoints", run_dir) if c.is_dir() and any(
      p.name.isdigit() and p.is_dir() for p in c.iterdir())), None)
  if where is None:
    raise FileNotFoundError(
        f"{run_dir}: no checkpoint found in {run_dir / 'checkpoints'}; expected a run directory "
        "written by experiments.train")
  cfg_file = run_dir / "config.json"
  if cfg_file.is_file():
    try:
      conf, what = json.loads(cfg_file.read_text()), str(cfg_file)
    except json.JSONDecodeError as e:
      raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
  else:
    conf, what = None, f"{where} (checkpoint metadata)"
    steps = sorted((int(p.name) for p in where.iterdir() if p.name.isdigit()), reverse=True)
    with ocp.CheckpointManager(where, item_names=("state", "meta")) as manager:
      for s in steps:
        with contextlib.suppress(Exception):
          meta = manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
          conf = dict(meta["meta"]).get("config")
          if conf:
            break
    if not conf:
      raise ValueError(f"{run_dir}: no config.json and no checkpoint metadata with a config")
  cfg = _config_from_dict(conf, what)
  try:
    state, meta = restore_state(where, cfg, step)
  except CheckpointError as e:
    raise ValueError(str(e)) from None
  skipped = tuple(sorted(meta.get("skipped_newer", {})))
  return CycleModel(nets=make_networks(cfg), gen_params=state.gen_ema, source=str(where),
                    step=int(meta["step"]), skipped_newer=skipped)


def _flatten(tree: dict, prefix: str = "") -> dict:
  """Nested dict → {"a/b/c": leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _config_from_dict(conf: dict, what: str) -> Config:
  """A `Config` from its JSON dict (lists → tuples); ValueError naming `what` if unusable."""
  fields = {f.name for f in dataclasses.fields(Config)}
  unknown = sorted(set(conf) - fields)
  if unknown:
    raise ValueError(f"{what}: unknown config fields {unknown}")
  try:
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in conf.items()})
  except Exception as e:  # noqa: BLE001 - ConfigError, TypeError: say which file
    raise ValueError(f"{what}: the config cannot be used ({e})") from None


def save_generator_npz(path: str | os.PathLike, cycle_model: CycleModel,
                       metadata: dict | None = None) -> Path:
  """Write a `CycleModel`'s generator (no critics, no optimizer state) atomically.

  Arrays `gen/<network>/<layer>/<param>` in float32, `config_json` (its `Config`), `format`
  (`GENERATOR_FORMAT`) and `metadata_json` (e.g. the command and metrics that made it).
  `load_cycle_model` and `load_generator_npz` read it back.
  """
  arrays = {f"gen/{k}": np.asarray(v, np.float32)
            for k, v in _flatten(cycle_model.gen_params).items()}
  arrays.update(config_json=np.asarray(json.dumps(dataclasses.asdict(cycle_model.nets.cfg))),
                format=np.asarray(GENERATOR_FORMAT),
                metadata_json=np.asarray(json.dumps(metadata or {}, default=str)))
  return atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def generator_metadata(path: str | os.PathLike) -> dict:
  """The `metadata_json` dict of a `save_generator_npz` file."""
  with np.load(path, allow_pickle=False) as z:
    return json.loads(str(z["metadata_json"])) if "metadata_json" in z.files else {}


def load_generator_npz(path: str | os.PathLike) -> CycleModel:
  """A `CycleModel` from `save_generator_npz`'s file, every array's shape checked
  against the stored config's networks.

  Raises:
    ValueError: not such a file, or arrays that do not fit its config (named).
  """
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # noqa: BLE001 - not a zip/npz at all
    raise ValueError(f"{path}: not a generator .npz file ({e})") from None
  with z:
    if "format" not in z.files or str(z["format"]) != GENERATOR_FORMAT:
      raise ValueError(f"{path}: not a {GENERATOR_FORMAT} file (field 'format'); expected a "
                       "file written by checkpoint.save_generator_npz")
    conf = json.loads(str(z["config_json"]))
    flat = {k[4:]: z[k] for k in z.files if k.startswith("gen/")}
  cfg = _config_from_dict(conf, f"{path} (config_json)")
  nets = make_networks(cfg)
  want = _flatten(jax.eval_shape(nets.init, jax.random.key(0))[0])
  bad = sorted(k for k in set(want) | set(flat)
               if k not in flat or k not in want or tuple(flat[k].shape) != want[k].shape)
  if bad:
    raise ValueError(f"{path}: arrays that do not fit config {cfg.name!r}: {bad[:6]}")
  gen: dict = {}
  for key, arr in flat.items():
    node = gen
    *dirs, leaf = key.split("/")
    for d in dirs:
      node = node.setdefault(d, {})
    node[leaf] = jax.numpy.asarray(arr)
  return CycleModel(nets=nets, gen_params=gen, source=str(path))
