"""Derivative spectra ∂Payne(Y)/∂Y and ∂T_synth→obs(Payne(Y))/∂Y (paper Eq. 8), reduced on the
devices.

Both come from one `jax.jacfwd` (25 labels ≪ 7167 pixels, so forward mode) of the chain's own
pure functions (`chain.payne_scaled`, `chain.transfer_synth_to_obs`) on one star's scaled labels
θ, vmapped over label sets. The chain works on θ = (y − y_min)/(y_max − y_min) − 0.5, so a
derivative per physical unit (per dex for abundances, per K for Teff, per km/s for velocities)
is the θ derivative divided by the emulator box's width y_max − y_min. Everything is compared on
the 7167 network pixels (Payne's pixels 47:).

10⁵ label sets of both Jacobians are 2 × 72 GB, so `reduce_label_sets` never keeps them: chunks
of label sets are split over a one-axis device mesh (`parallel.make_mesh` on the local devices)
under `shard_map`; on each device every `Reducer` turns its slice into additive statistics
(sums and counts, summed over the devices by one all-reduce and over the chunks on the device)
and optional small per-label-set rows (e.g. the winning label of each feature), which alone come
back to the host. `derivative_spectra` returns the full Jacobians of a few stars.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from cyclestar_jax import parallel
from cyclestar_jax.chain import ModelChain, payne_scaled, split_features, transfer_synth_to_obs
from cyclestar_jax.resources import N_DROP

CHUNK_PER_DEVICE = 32  # label sets per device and call (Table-2 networks: ~25 MB each)


def box_width(chain: ModelChain) -> np.ndarray:
  """y_max − y_min [25] of the emulator box (physical units): dθ/dy = 1 / box_width."""
  return np.asarray(chain.emulator.y_max, np.float64) - np.asarray(chain.emulator.y_min,
                                                                     np.float64)


def chain_jacobians_scaled(nets: Any, params: dict, theta: jax.Array, h_sp: jax.Array | None):
  """Both models of one star and their θ Jacobians, from one forward-mode pass.

  Args:
    nets: the `networks.CycleStarNet`.
    params: {"emulator": ..., "gen": ...} (`ModelChain.params`).
    theta: [25] scaled labels.
    h_sp: [L_interm, C_sp] decoded split latent (`chain.split_features`) or None.

  Returns:
    ((d_payne, d_synth_to_obs) [7167, 25] per unit θ, (payne, synth_to_obs) [7167] raw flux).
  """
  def models(t):
    x = payne_scaled(params["emulator"], t)[N_DROP:]
    so = transfer_synth_to_obs(nets, params["gen"], x[None], None if h_sp is None else h_sp[None])
    return (x, so[0]), (x, so[0])

  return jax.jacfwd(models, has_aux=True)(theta)


def _models_scaled(nets: Any, params: dict, theta: jax.Array, h_sp: jax.Array | None):
  """(payne, synth_to_obs) [7167] of one star without derivatives."""
  x = payne_scaled(params["emulator"], theta)[N_DROP:]
  so = transfer_synth_to_obs(nets, params["gen"], x[None], None if h_sp is None else h_sp[None])
  return x, so[0]


def _star_batch(nets: Any, params: dict, y: jax.Array, z_sp: jax.Array | None,
                y_min: jax.Array, width: jax.Array, jacobians: bool) -> dict[str, jax.Array]:
  """Models (and per-physical-unit Jacobians) of label sets y [B, 25] with z_sp [B, L, C]."""
  theta = (y - y_min) / width - 0.5
  h_sp = split_features(nets, params["gen"], z_sp)
  if jacobians:
    (dp, dso), (xp, xso) = jax.vmap(lambda t, h: chain_jacobians_scaled(nets, params, t, h))(
        theta, h_sp)
    return {"payne": xp, "synth_to_obs": xso, "d_payne": dp / width,
            "d_synth_to_obs": dso / width}
  xp, xso = jax.vmap(lambda t, h: _models_scaled(nets, params, t, h))(theta, h_sp)
  return {"payne": xp, "synth_to_obs": xso}


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_MAX_PROGRAMS = 8


def _cached(key: tuple, keep: Any, build: Callable[[], Any]):
  """A jitted program by key (ids of the networks and reducers it closes over; `keep` holds
  those objects so that their ids stay theirs), built once: XLA compiles forward-mode
  Jacobians of the networks slowly (seconds even for tiny ones on the CPU)."""
  if key in _PROGRAMS:
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key][1]
  program = build()
  _PROGRAMS[key] = (keep, program)
  if len(_PROGRAMS) > _MAX_PROGRAMS:
    _PROGRAMS.popitem(last=False)
  return program


def _check_chain(chain: ModelChain) -> None:
  if chain.cycle is None:
    raise ValueError("line identification needs a Cycle-StarNet: ModelChain(emulator, cycle)")


def derivative_spectra(chain: ModelChain, y: np.ndarray, z_sp: np.ndarray | None
                       ) -> dict[str, np.ndarray]:
  """Full derivative spectra of a few stars (all in memory: 1.4 MB per star and model).

  Args:
    chain: emulator + Cycle-StarNet.
    y: [n, 25] physical labels.
    z_sp: [n, L_z, C_sp] split latents (e.g. `zsp_for_labels`), [L_z, C_sp] for all, or None.

  Returns:
    {"payne", "synth_to_obs": [n, 7167] raw flux; "d_payne", "d_synth_to_obs": [n, 7167, 25]
    d flux / d label per physical unit (per dex for abundances)}.
  """
  _check_chain(chain)
  y = jnp.asarray(np.atleast_2d(y), jnp.float32)
  if z_sp is not None:
    z_sp = jnp.broadcast_to(jnp.asarray(z_sp, jnp.float32), (len(y), *np.shape(z_sp)[-2:]))
  nets = chain.nets
  fn = _cached(("derivative_spectra", id(nets)), nets, lambda: jax.jit(
      lambda p, yy, zz, lo, w: _star_batch(nets, p, yy, zz, lo, w, True)))
  out = fn(chain.params, y, z_sp, jnp.asarray(chain.emulator.y_min, jnp.float32),
           jnp.asarray(box_width(chain), jnp.float32))
  return {k: np.asarray(v) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class Reducer:
  """What to keep of each chunk of label sets, computed on the devices.

  Attributes:
    fn: batch → (sums, rows). `batch` holds one device's slice of a chunk: "y" [b, 25],
      "valid" [b] (1.0, or 0.0 for padding rows, which sums must ignore), "payne" and
      "synth_to_obs" [b, 7167], with `needs_jacobians` "d_payne" and "d_synth_to_obs"
      [b, 7167, 25] (per physical unit), and the extras given to `reduce_label_sets` [b, ...].
      `sums` is a pytree of additive statistics (summed over devices and chunks); `rows` a
      pytree of [b, ...] arrays per label set (fetched, padding dropped).
    finalize: (sums, rows) as NumPy → the reducer's result dict.
    needs_jacobians: whether `fn` reads the derivatives (otherwise only the models run).
  """

  fn: Callable[[dict], tuple[Any, Any]]
  finalize: Callable[[Any, Any], dict]
  needs_jacobians: bool = True


_tree_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=0)


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
  """a [m, ...] padded to n rows by repeating its last row."""
  return a if len(a) == n else np.concatenate([a, np.repeat(a[-1:], n - len(a), axis=0)])


def _chunk_program(chain: ModelChain, reducers: Mapping[str, Reducer], mesh, jacobians: bool,
                   shared_zsp: bool):
  """The jitted per-chunk program: (params, lo, width, z_shared, batch) → (sums, rows)."""
  nets = chain.nets

  def local(params, y_min, width, z_shared, batch):
    z = batch.get("z_sp")
    if shared_zsp:
      z = jnp.broadcast_to(z_shared, (batch["y"].shape[0], *z_shared.shape))
    full = {**batch, **_star_batch(nets, params, batch["y"], z, y_min, width, jacobians)}
    sums, rows = {}, {}
    for name, r in reducers.items():
      sums[name], rows[name] = r.fn(full)
    return jax.lax.psum(sums, parallel.DATA_AXIS), rows

  return parallel.shard_map_over_data(local, mesh, (False,) * 4 + (True,),
                                      split_out=(False, True))


def reduce_label_sets(chain: ModelChain, y: np.ndarray, z_sp: np.ndarray | None,
                      reducers: Mapping[str, Reducer], *,
                      extras: Mapping[str, np.ndarray] | None = None,
                      chunk_per_device: int = CHUNK_PER_DEVICE, mesh=None,
                      progress: bool = False) -> dict[str, dict]:
  """Run reducers over many label sets, chunk by chunk, split over the local devices.

  Args:
    chain: emulator + Cycle-StarNet.
    y: [N, 25] physical labels.
    z_sp: [N, L_z, C_sp] split latent per label set, [L_z, C_sp] shared by all (the mean
      choice), or None (networks without a split latent).
    reducers: name → `Reducer`; results come back under the same names.
    extras: per-label-set arrays [N, ...] the reducers read (e.g. "x_true" [N, 7214]).
    chunk_per_device: label sets per device and call (bounds device memory).
    mesh: a one-axis "data" mesh (default `parallel.make_mesh(jax.local_devices())`).
    progress: a progress bar over the label sets (each chunk then waits for its result, so the
      bar shows the computation, not the dispatch).

  Returns:
    name → that reducer's `finalize(sums, rows)`.
  """
  _check_chain(chain)
  if not reducers or not len(y):
    raise ValueError("reduce_label_sets: give at least one reducer and one label set")
  mesh = parallel.make_mesh(jax.local_devices()) if mesh is None else mesh
  y = np.asarray(y, np.float32)
  n, chunk = len(y), chunk_per_device * mesh.devices.size
  shared = z_sp is not None and np.ndim(z_sp) == 2
  host = {"y": y, **{k: np.asarray(v) for k, v in (extras or {}).items()}}
  if z_sp is not None and not shared:
    host["z_sp"] = np.asarray(z_sp, np.float32)
  for k, v in host.items():
    if len(v) != n:
      raise ValueError(f"reduce_label_sets: {k} has {len(v)} rows, labels have {n}")
  jac = any(r.needs_jacobians for r in reducers.values())
  key = ("reduce", id(chain.nets), tuple((k, id(r)) for k, r in reducers.items()), mesh, jac,
         shared)
  program = _cached(key, (chain.nets, dict(reducers)),
                    lambda: _chunk_program(chain, reducers, mesh, jac, shared))
  rep, split = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
  fixed = jax.device_put((chain.params, jnp.asarray(chain.emulator.y_min, jnp.float32),
                          jnp.asarray(box_width(chain), jnp.float32),
                          jnp.asarray(z_sp if shared else np.zeros(()), jnp.float32)), rep)
  total, rows = None, []
  bar = tqdm(total=n, desc="derivatives", unit="sets", dynamic_ncols=True, disable=not progress)
  for a in range(0, n, chunk):
    b = min(a + chunk, n)
    batch = {k: _pad_rows(v[a:b], chunk) for k, v in host.items()}
    batch["valid"] = (np.arange(chunk) < b - a).astype(np.float32)
    sums, r = program(*fixed, jax.device_put(batch, split))
    total = sums if total is None else _tree_add(total, sums)
    rows.append((b - a, r))
    if progress:
      jax.block_until_ready(sums)
      bar.update(b - a)
  bar.close()
  total = jax.device_get(total)
  host_rows = [(m, jax.device_get(r)) for m, r in rows]
  out = {}
  for name, red in reducers.items():
    parts = [jax.tree.map(lambda x, m=m: x[:m], r[name]) for m, r in host_rows]
    cat = jax.tree.map(lambda *xs: np.concatenate(xs), *parts) if parts else {}
    out[name] = red.finalize(total[name], cat)
  return out
