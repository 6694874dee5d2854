"""Data parallelism: the only module that knows about devices and meshes.

The train step (`train_step.make_train_step`) is one pure function with no axis names. Here it
is jitted over a one-axis device mesh ("data") with the state replicated and the batch split
along its first axis; XLA's SPMD partitioner turns the batch means inside the losses into
cross-device reductions, so gradients are averaged over the global batch and every device
holds the same updated state. On one device this is the same code and the same numbers.

Multi-host: call `jax.distributed.initialize()` (before any other JAX call) on every process;
`make_mesh()` then spans the devices of all processes, and each process passes its own slice
of the global batch to `shard_batch` (`global batch / jax.process_count()` rows, e.g. read
from its own shard of the HDF5 files: `data.BatchStream(..., process_index=jax.process_index(),
process_count=jax.process_count())`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cyclestar_jax.config import Config
from cyclestar_jax.networks import CycleStarNet
from cyclestar_jax.train_step import make_train_step

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


def replicate(tree, mesh: Mesh):
  """Put a pytree of arrays (e.g. a TrainState or a key) on every device of the mesh."""
  return jax.device_put(tree, replicated_sharding(mesh))


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
  rep, data = replicated_sharding(mesh), batch_sharding(mesh)
  return jax.jit(make_train_step(cfg, nets), in_shardings=(rep, data, rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))
