"""One device's share of a chunk of spectra: prepare, fit every start, pick the best, and take
χ², residual statistics and the Gauss–Newton Hessian at the optimum (all on the device).

Bounds: θ = ½·sin(u) with u unconstrained, a smooth reparametrization that keeps every label in
the emulator's box [−0.5, 0.5] and lets a fit reach a bound exactly (tanh could not).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cyclestar_jax.fitting.lbfgs import RETRIED, LBFGSOptions, make_queue_minimizer
from cyclestar_jax.fitting.objectives import Objective

_FINALIZE_BYTES = 1 << 30  # memory bound of one block of final Jacobians (bytes)
_JACOBIAN_OVERHEAD = 8  # forward-mode intermediates per Jacobian byte (allowance)


def theta_of_u(u: jax.Array) -> jax.Array:
  """Scaled labels θ = ½ sin(u) ∈ [−0.5, 0.5] of unconstrained parameters u (any shape)."""
  return 0.5 * jnp.sin(u)


def blockwise(fn, n_valid, block: int, args, out_like):
  """vmap(fn) over the first `n_valid` rows of `args` in blocks of `block` rows (a loop with a
  dynamic trip count, so padding rows past n_valid cost nothing); other rows keep `out_like`.

  The rows must be a multiple of `block` (pad them) or the last block is shifted back."""
  n_rows = jax.tree.leaves(args)[0].shape[0]
  n_blocks = (n_valid + block - 1) // block
  vfn = jax.vmap(fn)

  def body(i, out):
    start = jnp.minimum(i * block, n_rows - block)
    part = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, block), args)
    res = vfn(*part)
    return jax.tree.map(lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, start, 0),
                        out, res)

  return jax.lax.fori_loop(0, n_blocks, body, out_like)


def finalize_block(obj: Objective, n_rows: int) -> int:
  """Spectra whose final Jacobians [block, n_par, n_pix] (with forward-mode intermediates) fit
  in _FINALIZE_BYTES, at most n_rows: set by the rows, not by the slots of the fit."""
  per_spectrum = _JACOBIAN_OVERHEAD * 4 * obj.n_par * obj.n_pix
  return int(max(1, min(n_rows, _FINALIZE_BYTES // per_spectrum)))


def householder_r(a: jax.Array) -> jax.Array:
  """R [n, n] of a QR decomposition of a [m, n] (m ≥ n) by Householder reflections, in plain
  array operations (no LAPACK call: on the CPU, LAPACK inside the fit's loops on several
  devices hung). Zero columns give zero rows of R. RᵀR = aᵀa, and RᵀR formed from R is
  positive semi-definite whatever the rounding."""
  m, n = a.shape
  rows = jnp.arange(m)

  def step(k, a):
    x = jnp.where(rows >= k, a[:, k], 0.0)
    norm = jnp.sqrt(jnp.sum(x * x))
    alpha = -jnp.where(x[k] < 0, -1.0, 1.0) * norm
    v = x - alpha * (rows == k)
    vv = jnp.sum(v * v)
    beta = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0)
    return a - beta * v[:, None] * (v @ a)[None, :]

  return jnp.triu(jax.lax.fori_loop(0, n, step, a)[:n])


def _finalize_one(obj: Objective, params, x, w, aux, theta, free):
  """χ² [], mean normalized residual [], usable pixels [] and the triangular factor R [n, n] of
  the Gauss–Newton JᵀWJ = RᵀR of one spectrum x, w [n_pix] at theta [n] (J = ∂model/∂θ, fixed
  parameters zeroed). R comes from a QR of W^½J: forming JᵀWJ in float32 squares J's condition
  number, and near-degenerate labels then gave a matrix with negative eigenvalues (no errors);
  the host forms RᵀR in float64 (`fitter.formal_errors`)."""

  def model(th):
    return obj.model(params, aux, th)

  # n_par JVPs (jacfwd) rather than n_pix VJPs; the model value comes out of the same pass.
  jac, m = jax.jacfwd(lambda t: (model(t), model(t)), has_aux=True)(theta)
  jac = jac * free
  r = x - m
  good = w > 0
  n_good = jnp.sum(good)
  norm_r = jnp.where(good, r * jnp.sqrt(w), 0.0)
  gn_r = householder_r(jac * jnp.sqrt(w)[:, None])
  return jnp.sum(w * r * r), jnp.sum(norm_r) / jnp.maximum(n_good, 1), n_good, gn_r


def gauss_newton_scale(obj: Objective, params, x, w, aux, u, free) -> jax.Array:
  """The diagonal preconditioner d [n] of one spectrum x, w [n_pix] at u [n]: the square root
  of the Gauss–Newton Hessian's diagonal of χ² in u, 2·Σ_p w_p (∂model_p/∂u_i)², floored at
  1e-2 of its largest entry (1 everywhere where it is all zero or not finite). A fit in v = d·u
  has a unit Hessian diagonal near u: the labels' very different leverage on the spectrum
  (Teff against a weak-lined element) no longer sets the pace of L-BFGS. The floor keeps the
  steps of a label the spectrum barely constrains from sweeping u over whole periods of
  θ = ½ sin(u) (a floor of 1e-8 reached a higher χ² than 1e-2 on Eq. 11)."""
  jac = jax.jacfwd(lambda v: obj.model(params, aux, theta_of_u(v)))(u) * free  # [n_pix, n]
  h = 2.0 * jnp.sum(w[:, None] * jac * jac, axis=0)
  top = jnp.max(h)
  ok = jnp.isfinite(top) & (top > 0)
  return jnp.where(ok, jnp.sqrt(jnp.maximum(h, 1e-2 * jnp.where(ok, top, 1.0))), 1.0)


def best_start(f: jax.Array, tie_tol: float) -> tuple[jax.Array, jax.Array]:
  """The winning start of each row of χ² f [C, K]: the first start (in `start_names` order)
  whose χ² is within tie_tol·max(|min|, 1) of the lowest finite one, so starts that reached
  the same minimum (equal χ² but for rounding) do not swap winners with the batch layout.

  Returns:
    (best [C] int32, has_fit [C] bool: some start gave a finite χ²).
  """
  f = jnp.where(jnp.isfinite(f), f, jnp.inf)
  f_min = jnp.min(f, axis=1, keepdims=True)
  has_fit = jnp.isfinite(f_min[:, 0])
  near = f <= f_min + tie_tol * jnp.maximum(jnp.abs(jnp.where(has_fit[:, None], f_min, 1.0)),
                                            1.0)
  return jnp.argmax(near, axis=1).astype(jnp.int32), has_fit


def make_chunk_fit(obj: Objective, opts: LBFGSOptions, n_slots: int, n_starts: int,
                   tie_tol: float = 1e-5):
  """The per-device program of one chunk (tie_tol: `best_start`).

  Args of the returned function (local shapes; C rows, the first n_rows[0] real): params;
  x, w [C, n_pix_data]; u0 [C, K, n]; job_ids [C·K]; n_jobs [1]; u_fallback [C, R, n];
  n_rows [1]; free [n].

  Returns dict of per-spectrum arrays [C, ...]: theta (scaled best fit), f, n_iter, n_evals,
  status (best start), retried, start, chi2, mnr (mean normalized residual), n_fit, gn_r
  [C, n, n] (JᵀWJ = gn_rᵀ gn_r); and loop_iters [1].
  """
  K = n_starts

  def fun(params, row, v):
    """χ² of one job at v (= d·u with the scaling, d the row's last element; else = u)."""
    x, w, aux = row[:3]
    return obj.chi2(params, x, w, aux, theta_of_u(v / row[3] if opts.precondition else v))

  queue = make_queue_minimizer(fun, opts, n_slots, n_starts)

  def run(params, x, w, u0, job_ids, n_jobs, u_fallback, n_rows, free):
    """The chunk's fit (the outer docstring). Nine array parameters, one each: this is the
    program `shard_map` splits over the devices, and each argument has its own sharding
    (`parallel.shard_map_over_data`'s flags), so they cannot be grouped into one object."""
    C, n = u0.shape[0], u0.shape[-1]
    n_valid = n_rows[0]
    block = finalize_block(obj, C)
    # Per-spectrum preparation (encodings of the observed spectra for Eq. 10 and 11).
    x1, w1, aux1 = jax.eval_shape(lambda a, b: obj.prepare(params, a[None], b[None]), x[0], w[0])
    like = tuple(jnp.zeros((C,) + t.shape[1:], t.dtype) for t in (x1, w1, aux1))
    x_f, w_f, aux = blockwise(
        lambda a, b: jax.tree.map(lambda t: t[0], obj.prepare(params, a[None], b[None])),
        n_valid, block, (x, w), like)
    if opts.precondition:  # the minimizer works in v = d·u, d from the first start
      d = blockwise(lambda a, b, c, u: gauss_newton_scale(obj, params, a, b, c, u, free),
                    n_valid, block, (x_f, w_f, aux, u0[:, 0]), jnp.ones((C, n), x.dtype))
      res = queue(params, (x_f, w_f, aux, d), u0 * d[:, None], job_ids, n_jobs,
                  u_fallback * d[:, None], free)
      res["u"] = (res["u"].reshape(C, K, n) / d[:, None]).reshape(C * K, n)
    else:  # the program of the unscaled fit, unchanged (its results to the bit)
      res = queue(params, (x_f, w_f, aux), u0, job_ids, n_jobs, u_fallback, free)
    f = res["f"].reshape(C, K)
    best, has_fit = best_start(f, tie_tol)
    rows = jnp.arange(C)

    def pick(a):
      return a.reshape((C, K) + a.shape[1:])[rows, best]

    theta = jnp.where(has_fit[:, None], theta_of_u(pick(res["u"])), 0.0)
    like = (jnp.zeros((C,), x.dtype), jnp.zeros((C,), x.dtype), jnp.zeros((C,), jnp.int32),
            jnp.zeros((C, n, n), x.dtype))
    chi2, mnr, n_fit, gn_r = blockwise(
        lambda a, b, c, d: _finalize_one(obj, params, a, b, c, d, free), n_valid, block,
        (x_f, w_f, aux, theta), like)
    status = res["status"].reshape(C, K)
    return {"theta": theta, "f": jnp.where(has_fit, pick(res["f"]), jnp.nan),
            "n_iter": pick(res["n_iter"]), "n_evals": pick(res["n_evals"]),
            "status": pick(res["status"]), "retried": jnp.any((status & RETRIED) > 0, axis=1),
            "start": jnp.where(has_fit, best, -1), "chi2": chi2, "mnr": mnr, "n_fit": n_fit,
            "gn_r": gn_r, "loop_iters": res["loop_iters"]}

  return run
