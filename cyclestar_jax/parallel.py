"""Data parallelism: the only module that knows about devices, meshes and processes.

The train step (`train_step.make_train_step`) is one pure function. Here it runs over a
one-axis device mesh ("data") with the state replicated and the batch split along its first
axis: under `jax.shard_map` each device computes losses and gradients on its own slice, and
the step (built with `axis_name="data"`) averages gradients, losses and metrics with one
all-reduce (`lax.pmean`) before the updates, so every device holds the same updated state,
equal to the step on the whole batch. On one device this is the same code and the same
numbers. (Handing the unannotated step to XLA's SPMD partitioner instead gave the same numbers
but resharded activations between devices: 35 all-to-alls, 56 collective permutes and 12
all-gathers per step. It is kept only for `zsp_pairing="random"`, whose permutation spans the
global batch.) The staged step (`make_parallel_staged_step`) and the scanned step
(`make_parallel_multi_step`) are mapped the same way.

Several processes (multi-host, or several processes on one machine): every process calls
`initialize_distributed` before anything else uses JAX, then runs the same program. The mesh
of `make_mesh()` spans the devices of all processes; each process reads only its own rows of
every global batch (`data.BatchStream(..., process_index=jax.process_index(),
process_count=jax.process_count())`, `global batch / jax.process_count()` rows) and
`shard_batch` assembles the global array from the processes' rows. Arrays that every process
holds whole (the initial state, the key, the validation batch) become global replicated arrays
with `replicate`; replicated results come back to the host with `fetch`. Checkpoints need a
directory that every process sees (a shared file system): `checkpoint.Checkpointer` is called
by every process and orbax writes each array once. `trainer.train` does all this; only process
0 writes the metrics, the config, the figure and the progress bar.

Checked on the CPU (`tests/test_multiprocess.py`): two processes on one machine with two CPU
devices each train, checkpoint, resume, validate and log like one process over four devices.
Each step gives the one-process result to 1e-5 (measured: ≤ 8e-6), not bit for bit: the four
devices' partial gradients are summed in another order (gloo's against the in-process
all-reduce), and GAN training amplifies such differences over later steps. With one device per
process, two processes reproduce one process with two devices bit for bit (checked by hand
over 10 steps). Two processes on one machine, by hand:

  for i in 0 1; do
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m experiments.train \\
        --config smoke --synth S.h5 --obs O.h5 --out runs/mp --coordinator 127.0.0.1:12355 \\
        --num-processes 2 --process-id $i &
  done; wait

Cross-process collectives on the CPU use gloo (`jax_cpu_collectives_implementation`, set by
`initialize_distributed` if unset). On a cluster whose scheduler JAX detects (Slurm, Open MPI,
Cloud TPU), `initialize_distributed()` with no arguments (`--distributed`) is enough.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax._src import distributed
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cyclestar_jax import data
from cyclestar_jax.config import Config
from cyclestar_jax.networks import CycleStarNet
from cyclestar_jax.train_step import make_multi_step, make_staged_step, make_train_step

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A one-axis mesh named "data" over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("make_mesh: no devices")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays split along their first (batch) axis over the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays copied whole to every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Raise a clear error unless the global batch splits evenly over the mesh and processes."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if batch_size % n_dev or batch_size % n_proc:
    raise ValueError(f"global batch size {batch_size} does not split over {n_dev} devices "
                     f"({n_proc} processes): choose a multiple of {n_dev}")


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Join this process to a multi-process JAX run; call it before anything else uses JAX.

  Args:
    coordinator: "HOST:PORT" of process 0's coordination service; None: let JAX detect the
      cluster (Slurm, Open MPI, Cloud TPU), then `num_processes` and `process_id` must be None.
    num_processes: number of processes in the run.
    process_id: this process's index in [0, num_processes).

  Raises:
    ValueError: an incomplete or inconsistent set of arguments.
  """
  given = [v is not None for v in (coordinator, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError("initialize_distributed: give all of coordinator (HOST:PORT), "
                     "num_processes and process_id, or none of them (cluster auto-detection)")
  if coordinator is not None:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
      raise ValueError(f"coordinator {coordinator!r}: expected HOST:PORT, e.g. 127.0.0.1:12355")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"process_id {process_id} must be in [0, num_processes={num_processes})")
  # Cross-process collectives on the CPU backend need an implementation; gloo ships with
  # jaxlib (the default in recent JAX; older JAX has none). Only the CPU backend reads it.
  if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)



def initialize_from_args(args) -> bool:
  """`initialize_distributed` when a command's flags (`cli.add_distributed_args`: --distributed,
  --coordinator, --num-processes, --process-id) ask for several processes; call it before any
  other JAX call. Returns whether they did."""
  if not (args.distributed or args.coordinator is not None):
    return False
  initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  return True

BARRIER_TIMEOUT_S = 1800  # how long a process waits for the others at a `barrier`
_barrier_count = [0]


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Wait until every process of a multi-process run reaches the same barrier (no-op alone).

  Uses the coordination service of `jax.distributed`, not a collective: gloo, the CPU
  backend's collectives, gives up creating its context when the processes reach their first
  collective more than 30 s apart (jaxlib's fixed deadline), which a slow compile on a loaded
  machine causes. Every process must call the barriers in the same order.
  """
  if jax.process_count() == 1:
    return
  _barrier_count[0] += 1
  distributed.global_state.client.wait_at_barrier(f"cyclestar_{name}_{_barrier_count[0]}",
                                                  int(timeout_s * 1000))


def compile_then_sync(fn, name: str):
  """`fn` (a jitted function) whose first call for each argument signature compiles ahead of
  time, waits at a `barrier`, then runs: the processes enter the program's collectives
  together however long each took to compile. Alone (one process), `fn` itself.

  Later calls with the same shapes, dtypes and shardings run the compiled program directly.
  """
  if jax.process_count() == 1:
    return fn
  compiled: dict = {}

  def signature(args) -> tuple:
    leaves, tree = jax.tree.flatten(args)
    return (tree, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x))),
                         str(getattr(x, "sharding", ""))) for x in leaves))

  def call(*args):
    key = signature(args)
    if key not in compiled:
      compiled[key] = fn.lower(*args).compile()
      barrier(name)
    return compiled[key](*args)

  return call


def replicate(tree, mesh: Mesh):
  """Put a pytree of arrays (e.g. a TrainState, a key or a batch) on every device of the mesh.

  With several processes, every process must pass the same values (the initial state from
  the same seed, the same validation batch); JAX checks that they agree.
  """
  sharding = replicated_sharding(mesh)
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    return jax.device_put(np.asarray(x), sharding)  # host data, the same on every process

  return jax.tree.map(put, tree)


def fetch(tree):
  """Host (NumPy) copies of a pytree of arrays; replicated global arrays are read locally.

  Raises:
    ValueError: a leaf spans other processes' devices and is not replicated.
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        raise ValueError(f"fetch: array of shape {x.shape} is split over other processes' "
                         f"devices ({x.sharding}); only replicated arrays can be read locally")
      x = x.addressable_data(0)
    return jax.device_get(x)

  return jax.tree.map(get, tree)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Turn this process's rows of a batch into global arrays split over the mesh.

  Args:
    batch: dict of host arrays [B_local, ...]; B_local = global batch / process count (the
      whole batch on one host).
    mesh: the data mesh.

  Returns:
    Dict of `jax.Array`s of shape [B_global, ...] sharded along the batch axis.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    check_batch_size(v.shape[0] * jax.process_count(), mesh)
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


def shard_rows(rows: dict, mesh: Mesh) -> dict:
  """This process's row indices of one or several iterations → global arrays for the staged
  step (`train_step.make_staged_step`): [B_local] → [B] split over the mesh, [n, B_local] →
  [n, B] split along the batch axis."""
  out = {}
  for k, v in rows.items():
    v = np.asarray(v)
    spec = PartitionSpec(DATA_AXIS) if v.ndim == 1 else PartitionSpec(None, DATA_AXIS)
    shape = v.shape[:-1] + (v.shape[-1] * jax.process_count(),)
    check_batch_size(shape[-1], mesh)
    out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), v, shape)
  return out


def stage_on_devices(stream: data.BatchStream, sharding) -> dict[str, jax.Array]:
  """Copy the standardized training split of both domains of a `BatchStream` to the devices.

  Every device gets the whole split (a replicated sharding); a train step then gathers its
  batch on the device from row indices (`train_step.gather_batch`), so no spectrum crosses the
  host–device link during training and the accelerator never waits on the disk. Memory:
  `data.staged_nbytes(N_synth + N_obs, n_pix)` per device (9 bytes per pixel).

  Args:
    stream: the run's `BatchStream` (its files, split and config).
    sharding: a replicated `jax.sharding.Sharding` over the run's mesh (every process passes
      the same values; each process reads the files itself).

  Returns:
    {"x_synth", "x_synth_err", "x_synth_msk", "x_obs", ...}: global `jax.Array`s [N_domain,
    n_pix] (masks uint8).
  """
  staged = {}
  for name in stream.sizes():
    host = stream.standardized_split(name)
    for k, v in host.items():
      staged[k.replace("x", f"x_{name}", 1)] = jax.make_array_from_callback(
          v.shape, sharding, lambda idx, v=v: v[idx])
    del host
  return staged


def device_memory_bytes(device) -> int | None:
  """Memory of one accelerator (`memory_stats()["bytes_limit"]`), or None where unknown (the
  CPU, whose devices share the host's memory)."""
  if device.platform == "cpu":
    return None
  stats = device.memory_stats()
  return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def host_memory_bytes() -> int | None:
  """Physical memory of this host, or None where the OS does not say."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def fits_on_devices(nbytes: int, devices=None, *, fraction: float = 0.4) -> bool:
  """Whether `nbytes` replicated on every local device fit in their memory.

  Accelerators: at most `fraction` of one device's memory (`device_memory_bytes`). CPU devices
  share the host's memory: all their copies together at most half of `fraction` of it.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  limit = device_memory_bytes(devices[0])
  if limit is not None:
    return nbytes <= fraction * limit
  ram = host_memory_bytes()
  return ram is not None and nbytes * len(devices) <= 0.5 * fraction * ram


def _local_steps(cfg: Config) -> bool:
  """Whether the step can run per device with averaged gradients (`shard_map`). A random z_sp
  pairing permutes the global batch, which a device's slice cannot do alone; that config is
  left to XLA's SPMD partitioner."""
  return not (cfg.zsp_pairing == "random" and cfg.use_split)


def _data_parallel(cfg: Config, mesh: Mesh, nets: CycleStarNet | None, wrap,
                   input_specs: tuple[PartitionSpec, ...]):
  """`wrap(train_step)` jitted data parallel over `mesh`, called as fn(state, *inputs, key).

  Args:
    wrap: turns a train step into the function to run (the step itself, a scan of it, ...).
    input_specs: how each input between state and key is split over the mesh.

  The state and key are replicated and the state is donated. Where `_local_steps(cfg)`, each
  device runs `wrap(make_train_step(cfg, axis_name="data"))` on its slice under `shard_map`,
  and the step averages gradients, losses and metrics by one all-reduce (check_vma=False: it
  averages explicitly; with the check on, JAX would also sum the gradients of the replicated
  parameters over the devices by itself). Left to XLA's SPMD partitioner, the same step
  compiled to 35 all-to-alls, 56 collective permutes and 12 all-gathers of activations besides
  the gradient all-reduce; that path is kept only where the step needs the global batch.
  """
  rep = replicated_sharding(mesh)
  in_shardings = (rep, *(NamedSharding(mesh, spec) for spec in input_specs), rep)
  if not _local_steps(cfg):
    fn = wrap(make_train_step(cfg, nets))
  else:
    fn = jax.shard_map(wrap(make_train_step(cfg, nets, axis_name=DATA_AXIS)), mesh=mesh,
                       in_specs=(PartitionSpec(), *input_specs, PartitionSpec()),
                       out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False)
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=(rep, rep), donate_argnums=(0,))


def make_parallel_multi_step(cfg: Config, mesh: Mesh | None = None,
                             nets: CycleStarNet | None = None):
  """`train_step.make_multi_step` (N iterations a call) data parallel over a mesh.

  Returns:
    `step(state, batches, key) -> (state, metrics [N])`: batches [N, B, n_pix] split along B
    (e.g. `jax.device_put` with `NamedSharding(mesh, PartitionSpec(None, "data"))`); state and
    key replicated and the state donated, as `make_parallel_train_step`.
  """
  mesh = make_mesh() if mesh is None else mesh
  check_batch_size(cfg.batch_size, mesh)
  return _data_parallel(cfg, mesh, nets, lambda step: make_multi_step(cfg, train_step=step),
                        (PartitionSpec(None, DATA_AXIS),))


def make_parallel_staged_step(cfg: Config, mesh: Mesh | None = None,
                              nets: CycleStarNet | None = None):
  """`train_step.make_staged_step` data parallel over a mesh (state argument donated).

  Returns:
    `step(state, staged, rows, key) -> (state, metrics)`: state and key replicated
    (`replicate`), `staged` from `stage_on_devices` (replicated), rows from `shard_rows`
    ([B] for one iteration, [n, B] for n in one call; one compiled program per rank). Each
    device gathers its slice of the global batch from its own copy of the data.
  """
  mesh = make_mesh() if mesh is None else mesh
  check_batch_size(cfg.batch_size, mesh)
  compiled = {}

  def program(rows):
    rank = {r.ndim for r in rows.values()}
    if len(rank) != 1 or not rank <= {1, 2}:
      raise ValueError(f"rows must be [B] or [n, B] for both domains, got "
                       f"{ {k: r.shape for k, r in rows.items()} }")
    (nd,) = rank
    if nd not in compiled:
      rows_spec = PartitionSpec(DATA_AXIS) if nd == 1 else PartitionSpec(None, DATA_AXIS)
      compiled[nd] = _data_parallel(cfg, mesh, nets,
                                    lambda step: make_staged_step(cfg, train_step=step),
                                    (PartitionSpec(), rows_spec))
    return compiled[nd]

  def staged_step(state, staged, rows, key):
    return program(rows)(state, staged, rows, key)

  # Ahead-of-time lowering like a jitted function's (`compile_then_sync` uses it).
  staged_step.lower = lambda state, staged, rows, key: program(rows).lower(state, staged, rows,
                                                                             key)
  return staged_step


def make_parallel_train_step(cfg: Config, mesh: Mesh | None = None,
                             nets: CycleStarNet | None = None):
  """The train step jitted over a data mesh; the state argument is donated.

  Args:
    cfg: config.
    mesh: a one-axis "data" mesh (default: `make_mesh()`, all devices).
    nets: networks (default: built from cfg).

  Returns:
    `step(state, batch, key) -> (state, metrics)` with the state and key replicated (see
    `replicate`) and the batch split over the mesh (see `shard_batch`); metrics come back
    replicated. The input state's buffers are donated: do not use it after the call.
  """
  mesh = make_mesh() if mesh is None else mesh
  check_batch_size(cfg.batch_size, mesh)
  return _data_parallel(cfg, mesh, nets, lambda step: step, (PartitionSpec(DATA_AXIS),))


def data_mesh(devices=None) -> Mesh:
  """A one-axis "data" mesh over this process's devices (default: `jax.local_devices()`), for
  work each process does on its own rows with no cross-process collective (label fits)."""
  return make_mesh(jax.local_devices() if devices is None else devices)


def shard_map_over_data(fn, mesh: Mesh, split: tuple[bool, ...], *,
                        split_out: bool | tuple[bool, ...] = True):
  """`fn` jitted under `jax.shard_map` over the mesh's "data" axis: each device calls fn on its
  own slice and leaves when it is done (no collective unless fn has one; check_vma=False).

  Args:
    fn: the per-device function.
    mesh: a one-axis "data" mesh (`make_mesh`, `data_mesh`).
    split: per positional argument, True: split along its first axis over the devices (a
      multiple of the device count), False: replicated.
    split_out: outputs split along their first axis (True) or replicated (False, e.g. sums
      that fn reduces with `jax.lax.psum` over DATA_AXIS); a tuple gives it per output of a
      function that returns a tuple.
  """
  spec = {True: PartitionSpec(DATA_AXIS), False: PartitionSpec()}
  out = (tuple(spec[bool(s)] for s in split_out) if isinstance(split_out, tuple)
         else spec[bool(split_out)])
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec[bool(s)] for s in split),
                               out_specs=out, check_vma=False))
