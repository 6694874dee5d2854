"""A batched L-BFGS with a job queue on the device: many small minimizations side by side.

Each minimization (one row of data from one start) is a *job*; a fixed number of *slots* run
jobs side by side under `vmap`, and a slot whose job has converged, hit `max_iter` /
`max_evals`, or failed takes the next job from a queue held on the device, inside the same
`lax.while_loop`, which exits when the queue is empty and every slot is idle. The cost is then
set by the mean number of iterations, not by the slowest job of a batch.

One iteration costs exactly one batched value-and-gradient: every slot evaluates its *trial
point*; the line search (backtracking, folded into the outer loop) tests it, and a slot whose
trial fails shortens its step and tries again at the next iteration while the others move on.
So no branch of a line search is evaluated in vain under `vmap` (docs/devices.md).

- Direction: `optax.scale_by_lbfgs` (memory `memory_size`), reset on a fresh start, when the
  curvature condition fails (sᵀy ≤ 0, possible with a backtracking search) or when the
  direction is not one of descent (then steepest descent, scaled).
- Line search (per slot): a trial point is accepted by the Armijo condition f(α) ≤ f(0) +
  c1·α·φ'(0), where the change of f is resolved, i.e. |f(α) − f(0)| > noise_tol·max(|f|, 1).
  Below that, f differences are float32 rounding (a χ² over ~7000 pixels is known to ~1e-7
  relative: the model's own rounding), and the step is judged by the directional derivative
  instead, which float32 resolves: Hager & Zhang's approximate Armijo test φ'(α) ≤ (2c1 − 1)
  φ'(0) (the Armijo condition of the quadratic through φ'(0), φ'(α)). A rejected step shrinks by
  safeguarded interpolation (quadratic in f, or secant in φ' when f is unresolved) to [0.1,
  0.5]× itself. A search that shrinks the step below `min_step` restarts once from steepest
  descent, then gives up.
- Convergence: for `patience` accepted steps in a row, the decrease the L-BFGS quadratic model
  expects to its minimum, −½ gᵀd = ½ gᵀH⁻¹g, is below tol·max(|f|, 1); or the gradient is
  zero. The test uses gradients only, so where a smooth job stops does not depend on the
  rounding of f, which differs with the number of slots (the batched matmuls change shape):
  the same job gives the same answer in any batch, to ~0.2% of its formal errors (measured).
  Two more ends count as converged, for the kinks of piecewise-linear (LeakyReLU) models, where
  the gradient does not vanish at the minimum: the last `stall_window` accepted steps gained
  less than f's rounding (noise_tol) in all; or the line search gave up where the last
  accepted step gained less than `precision_tol`. Where a job ends at a kink depends on its
  path, hence on rounding: there the answer is reproducible to a few % of σ (measured on
  random networks, whose local minima can also swap the winning start).
- A non-finite value or gradient at a start retries the job from its next fallback point.

Status bits of a finished job: 1 converged, 2 retried, 4 failed (no finite start), 8 the line
search gave up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

CONVERGED, RETRIED, FAILED, LS_STOP = 1, 2, 4, 8


@dataclasses.dataclass(frozen=True)
class LBFGSOptions:
  """Settings of `make_queue_minimizer` (meanings in the module docstring), with the reasons for
  the defaults of the label fits (`FitConfig.lbfgs`; f is their χ²). Checked on creation."""

  # Accepted L-BFGS steps per job (one start of a fit): the reference allows 10 rounds of 100
  # (docs/method.md), and Eq. 11 fits with trained networks take 200–500 to converge (measured;
  # a cap of 200 left half of them short of the optimum). The job queue makes the cost follow
  # the mean count.
  max_iter: int = 1000
  max_evals: int = 2000  # value-and-gradient evaluations per start (line search included)
  # Converged: for `patience` accepted steps in a row, the χ² decrease the L-BFGS quadratic
  # model expects to its minimum, ½ gᵀH⁻¹g (from the gradient, which float32 resolves), is
  # below tol·max(χ², 1). The measured decrease of χ² does not enter: a float32 χ² over ~7000
  # pixels is only known to ~1e-7 relative (rounding of the model alone), so a test on it
  # stopped fits of the same spectrum at points up to 0.2σ apart depending on the batch they
  # ran in. At tol 1e-9 (Δχ² ≈ 7e-6 for χ² ≈ 7000) a fit stops ≲ 0.003σ from its optimum.
  tol: float = 1e-9
  patience: int = 3
  memory_size: int = 10  # L-BFGS history
  armijo_c1: float = 1e-4  # sufficient-decrease constant of the line search
  # Below this relative change χ² differences are rounding: the line search then accepts a
  # step by the gradient (Hager–Zhang's approximate Wolfe test) instead of by χ².
  noise_tol: float = 1e-6
  min_step: float = 1e-6  # a line search that shrinks the step below this gives up
  # A line search that gives up (after one restart from steepest descent) at a point reached by
  # a relative decrease below this has met float32's resolution of χ² (or a kink of the
  # piecewise-linear networks that no descent direction passes): converged.
  precision_tol: float = 1e-5
  # A fit whose last `stall_window` accepted steps decreased χ² by less than its rounding
  # (noise_tol) in all has stalled: at a kink of the piecewise-linear networks (LeakyReLU),
  # where the gradient does not vanish, or at float32's floor. Converged. A window of 10 also
  # stopped Eq. 11 fits that crawl along valleys (Δχ² up to 2.6 above an unhurried fit on the
  # smoke networks); 20 and 30 end within 0.6 of it, 20 for 1.6× the old rule's iterations.
  stall_window: int = 20
  # Fit in v = d·u with d the square root of the Gauss–Newton Hessian's diagonal at the first
  # start (`chunk.gauss_newton_scale`, one Jacobian per spectrum), so that every label starts
  # with the same curvature (label fits only; `make_queue_minimizer` itself does not use it).
  # Off by default. Measured on the pretrained mock-world models (benchmarks/README.md,
  # "Preconditioned fits"): Eq. 11 at its 100-step cap reaches a lower χ² (and tighter Teff
  # and [Fe/H]), but that optimum puts weakly constrained labels (12C/13C, vturb) on the box
  # edge for 30 % of the stars against 3 %; Eq. 9 converges more often (98 % against 89 %)
  # but takes 60 % longer on the CPU.
  precondition: bool = False

  def __post_init__(self):
    for name in ("max_iter", "max_evals", "patience", "memory_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"LBFGSOptions.{name} must be ≥ 1, got {getattr(self, name)}")
    for name in ("tol", "armijo_c1", "noise_tol", "min_step", "precision_tol"):
      v = getattr(self, name)
      if not (math.isfinite(v) and v > 0):
        raise ValueError(f"LBFGSOptions.{name} must be finite and > 0, got {v}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotState:
  """The optimizer state of S slots (slot axis first; n parameters).

  Attributes:
    job: [S] int32 job of each slot (−1: idle).
    u: [S, n] last accepted point (the start before the first evaluation).
    f: [S] value at u (+inf before the first evaluation).
    g: [S, n] gradient at u (zero for fixed parameters).
    d: [S, n] search direction from u.
    alpha: [S] step length of the trial point u + alpha·d.
    gd: [S] gᵀd, the directional derivative at u (< 0).
    lb: L-BFGS memory (`optax.scale_by_lbfgs` state, leaves [S, ...]).
    fresh: [S] bool, the start point u has not been evaluated yet.
    n_iter: [S] int32 accepted steps.
    n_evals: [S] int32 value-and-gradient evaluations.
    n_retry: [S] int32 fallback starts used.
    restarted: [S] bool, the current line search already restarted from steepest descent.
    last_dec: [S] relative decrease of f at the last accepted step (+inf before one).
    n_small: [S] int32 accepted steps in a row where the expected decrease was below tol.
    f_ref: [S] f at the start of the current stall window.
    n_window: [S] int32 accepted steps since f_ref.
  """

  job: jax.Array
  u: jax.Array
  f: jax.Array
  g: jax.Array
  d: jax.Array
  alpha: jax.Array
  gd: jax.Array
  lb: optax.OptState
  fresh: jax.Array
  n_iter: jax.Array
  n_evals: jax.Array
  n_retry: jax.Array
  restarted: jax.Array
  last_dec: jax.Array
  n_small: jax.Array
  f_ref: jax.Array
  n_window: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Trial:
  """One evaluation of every slot's trial point (S slots, n parameters).

  Attributes:
    u: [S, n] the trial points.
    f: [S] values (+inf where not finite).
    g: [S, n] gradients (zero where not finite).
    finite: [S] bool, value and gradient finite.
  """

  u: jax.Array
  f: jax.Array
  g: jax.Array
  finite: jax.Array


def tree_where(mask: jax.Array, a, b):
  """Per-slot select between pytrees a and b of arrays with the slot axis first."""

  def sel(x, y):
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y)

  return jax.tree.map(sel, a, b)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise dot products [S] of [S, n] arrays."""
  return jnp.sum(a * b, axis=1)


def _rel(x: jax.Array, f: jax.Array) -> jax.Array:
  """x relative to the scale of f: x / max(|f|, 1) (finite for f = ±inf: 0)."""
  return x / jnp.maximum(jnp.where(jnp.isfinite(f), jnp.abs(f), 1.0), 1.0)


class _Steps:
  """The named steps of one iteration, with the L-BFGS transform and the options bound."""

  def __init__(self, opts: LBFGSOptions):
    self.opts = opts
    lbfgs = optax.scale_by_lbfgs(memory_size=opts.memory_size)
    self.init = jax.vmap(lbfgs.init)
    self.update = jax.vmap(lambda g, st, u: lbfgs.update(g, st, u))

  def fresh_slots(self, job: jax.Array, u: jax.Array) -> SlotState:
    """Slots that start jobs `job` [S] at points u [S, n]."""
    s, dtype = job.shape[0], u.dtype
    zeros_i = jnp.zeros((s,), jnp.int32)
    return SlotState(
        job=job, u=u, f=jnp.full((s,), jnp.inf, dtype), g=jnp.zeros_like(u),
        d=jnp.zeros_like(u), alpha=jnp.ones((s,), dtype), gd=jnp.zeros((s,), dtype),
        lb=self.init(u), fresh=jnp.ones((s,), bool), n_iter=zeros_i, n_evals=zeros_i,
        n_retry=zeros_i, restarted=jnp.zeros((s,), bool), last_dec=jnp.full((s,), jnp.inf, dtype),
        n_small=zeros_i, f_ref=jnp.full((s,), jnp.inf, dtype), n_window=zeros_i)

  @staticmethod
  def trial_point(s: SlotState) -> jax.Array:
    """[S, n]: the start itself for fresh slots, else u + alpha·d."""
    return jnp.where(s.fresh[:, None], s.u, s.u + s.alpha[:, None] * s.d)

  def line_search_test(self, s: SlotState, t: Trial) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Whether each trial point is accepted: (accept [S], resolved [S]: the change of f is
    above rounding, gd_t [S]: the directional derivative at the trial point)."""
    c1 = self.opts.armijo_c1
    df = t.f - s.f
    resolved = jnp.abs(df) > self.opts.noise_tol * jnp.maximum(jnp.abs(s.f), 1.0)
    gd_t = _dot(t.g, s.d)
    armijo = df <= c1 * s.alpha * s.gd
    approx_armijo = gd_t <= (2.0 * c1 - 1.0) * s.gd  # Hager & Zhang's approximate Wolfe
    ok = jnp.where(resolved, armijo, approx_armijo)
    active = s.job >= 0
    return active & t.finite & jnp.where(s.fresh, True, ok), resolved, gd_t

  def direction(self, s: SlotState, t: Trial):
    """L-BFGS direction at accepted trial points: (d [S, n], gd [S], lb), the memory reset on a
    fresh start, a failed curvature condition or a direction that is not one of descent."""
    sy = _dot(t.g - s.g, t.u - s.u)
    lb_base = tree_where(s.fresh | (sy <= 0), self.init(t.u), s.lb)
    pg, lb = self.update(t.g, lb_base, t.u)
    pg_r, lb_r = self.update(t.g, self.init(t.u), t.u)
    bad = ~(_dot(pg, t.g) > 0)
    pg = jnp.where(bad[:, None], pg_r, pg)
    return -pg, -_dot(pg, t.g), tree_where(bad, lb_r, lb)

  def backtrack(self, s: SlotState, t: Trial, resolved: jax.Array, gd_t: jax.Array):
    """Shorter steps [S] for rejected trials: the minimizer of the quadratic through f(0),
    φ'(0), f(α) where f is resolved, else of the secant in φ'; kept in [0.1, 0.5]·α."""
    alpha, gd = s.alpha, s.gd
    curv = t.f - s.f - gd * alpha
    a_f = jnp.where(curv > 0, -gd * alpha**2 / (2.0 * curv), 0.1 * alpha)
    a_g = jnp.where(gd_t > gd, alpha * gd / (gd - gd_t), 0.1 * alpha)
    a_q = jnp.where(t.finite, jnp.where(resolved, a_f, a_g), 0.1 * alpha)
    return jnp.clip(a_q, 0.1 * alpha, 0.5 * alpha)

  def convergence(self, s: SlotState, t: Trial, accept: jax.Array, gd_new: jax.Array):
    """Whether accepted trials end their jobs as converged [S], and the updated counters
    {n_small, f_ref, n_window}: the L-BFGS model expects < tol relative decrease `patience`
    steps in a row, the gradient is zero, or the last `stall_window` steps gained less than
    f's rounding in all (a kink of a piecewise-linear model, or float32's floor)."""
    o = self.opts
    step = accept & ~s.fresh
    pred = _rel(-0.5 * gd_new, t.f)  # the decrease the quadratic model expects, from t.u
    n_small = jnp.where(step, jnp.where(pred < o.tol, s.n_small + 1, 0), s.n_small)
    n_window = jnp.where(accept, jnp.where(step, s.n_window + 1, 0), s.n_window)
    window_end = step & (n_window >= o.stall_window)
    stalled = window_end & (_rel(s.f_ref - t.f, t.f) < o.noise_tol)
    f_ref = jnp.where(accept & (s.fresh | window_end), t.f, s.f_ref)
    converged = accept & (~(gd_new < 0) | (n_small >= o.patience) | stalled)
    return converged, {"n_small": n_small, "f_ref": f_ref,
                       "n_window": jnp.where(window_end, 0, n_window)}

  def give_up(self, s: SlotState, reject: jax.Array, a_new: jax.Array):
    """Line searches whose step fell below `min_step`: (stop [S]: already restarted once, so
    the job ends; restart [S]: restart from steepest descent; converged [S]: a stop where the
    last accepted step gained less than precision_tol, i.e. float32's resolution of f)."""
    fail = reject & (a_new * jnp.sqrt(_dot(s.d, s.d)) < self.opts.min_step)
    stop = fail & s.restarted
    return stop, fail & ~s.restarted, stop & (s.last_dec < self.opts.precision_tol)

  def steepest(self, s: SlotState):
    """Steepest descent from u (scaled as L-BFGS's first step): (d, gd, fresh memory)."""
    pg, lb = self.update(s.g, self.init(s.u), s.u)
    return -pg, -_dot(pg, s.g), lb


def _gather(rows, c: jax.Array):
  """The rows c [S] of every leaf of a pytree of [C, ...] arrays."""
  return jax.tree.map(lambda a: a[c], rows)


def make_queue_minimizer(fun: Callable, opts: LBFGSOptions, n_slots: int, n_starts: int):
  """The batched L-BFGS with a job queue (module docstring), for one device.

  Args:
    fun: `fun(params, row, u) -> []`, the objective of one job: params shared by all jobs,
      row a pytree of one data row's arrays, u [n] the parameters.
    opts: `LBFGSOptions`.
    n_slots: S, jobs run side by side.
    n_starts: K, jobs per data row (job j works on row j // K from start j % K).

  Returns:
    `run(params, rows, u0, job_ids, n_jobs, u_fallback, free) -> dict` (jit-able), with rows a
    pytree of [C, ...] arrays; u0 [C, K, n] starts; job_ids [C·K] int32, the jobs to run first
    then −1; n_jobs [1] int32, how many; u_fallback [C, R, n] retry points; free [n] 1/0 (0:
    the parameter is held at its start). The dict holds per-job arrays [C·K, ...]: u (the
    result), f, n_iter, n_evals, status (bits in the module docstring); and loop_iters [1],
    the iterations of the loop. Jobs that did not run keep u = 0, f = NaN, status 0.
  """
  steps = _Steps(opts)
  v_vg = jax.vmap(jax.value_and_grad(fun, argnums=2), in_axes=(None, 0, 0))
  S, K = n_slots, n_starts

  def run(params, rows, u0, job_ids, n_jobs, u_fallback, free):
    C, n = u0.shape[0], u0.shape[-1]
    J = C * K
    u0_flat = u0.reshape(J, n)
    n_jobs = n_jobs[0]
    n_fallback = u_fallback.shape[1]
    dtype = u0.dtype

    def refill(s: SlotState, done: jax.Array, ptr: jax.Array):
      """Done slots take the next jobs of the queue (job −1: the slot goes idle)."""
      pos = ptr + jnp.cumsum(done.astype(jnp.int32)) - 1
      job = jnp.where(done & (pos < n_jobs), job_ids[jnp.clip(pos, 0, J - 1)], -1)
      s = tree_where(done, steps.fresh_slots(job, u0_flat[jnp.clip(job, 0, J - 1)]), s)
      return s, jnp.minimum(ptr + jnp.sum(done.astype(jnp.int32)), n_jobs)

    def evaluate(s: SlotState) -> Trial:
      """Value and gradient at every slot's trial point."""
      u = steps.trial_point(s)
      f, g = v_vg(params, _gather(rows, jnp.clip(s.job, 0, J - 1) // K), u)
      g = g * free
      finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g), axis=1)
      return Trial(u=u, f=jnp.where(finite, f, jnp.inf), g=jnp.where(finite[:, None], g, 0.0),
                   finite=finite)

    def iterate(s: SlotState, t: Trial):
      """The next state of every slot after its trial, and which slots are done (with their
      status)."""
      active = s.job >= 0
      accept, resolved, gd_t = steps.line_search_test(s, t)
      d_new, gd_new, lb_new = steps.direction(s, t)
      step = accept & ~s.fresh
      converged, counters = steps.convergence(s, t, accept, gd_new)
      # Rejected trials: a shorter step, or (once) steepest descent, or give up.
      reject = active & ~s.fresh & ~accept
      a_new = steps.backtrack(s, t, resolved, gd_t)
      ls_stop, restart, ls_converged = steps.give_up(s, reject, a_new)
      converged |= ls_converged
      d_sd, gd_sd, lb_sd = steps.steepest(s)
      # A non-finite value at a start: retry from the next fallback.
      bad_start = active & s.fresh & ~t.finite
      retry = bad_start & (s.n_retry < n_fallback)
      failed = bad_start & ~retry
      u_retry = u_fallback[jnp.clip(s.job, 0, J - 1) // K, jnp.clip(s.n_retry, 0, n_fallback - 1)]

      def pick(a, b, c):  # accepted → a, restarted line search → b, else c
        return tree_where(accept, a, tree_where(restart, b, c))

      new = SlotState(
          job=s.job, u=pick(t.u, s.u, jnp.where(retry[:, None], u_retry, s.u)),
          f=jnp.where(accept, t.f, s.f), g=jnp.where(accept[:, None], t.g, s.g),
          d=pick(d_new, d_sd, s.d), gd=pick(gd_new, gd_sd, s.gd),
          alpha=pick(jnp.ones_like(s.alpha), jnp.ones_like(s.alpha),
                     jnp.where(reject, a_new, s.alpha)),
          lb=pick(lb_new, lb_sd, s.lb), fresh=s.fresh & ~accept,
          n_iter=s.n_iter + step, n_evals=s.n_evals + active, n_retry=s.n_retry + retry,
          restarted=jnp.where(accept, False, s.restarted | restart),
          last_dec=jnp.where(step, _rel(s.f - t.f, s.f), s.last_dec), **counters)
      done = active & (converged | failed | ls_stop | (new.n_iter >= opts.max_iter) |
                       (new.n_evals >= opts.max_evals))
      status = (converged * CONVERGED + (new.n_retry > 0) * RETRIED + failed * FAILED +
                ls_stop * LS_STOP).astype(jnp.int32)
      return new, done, jnp.where(failed, jnp.nan, new.f), status

    def record(res: dict, s: SlotState, done, f, status) -> dict:
      """Write the finished slots' jobs into the per-job results."""
      idx = jnp.where(done, s.job, J)  # J: out of range, dropped
      vals = {"u": s.u, "f": f, "n_iter": s.n_iter, "n_evals": s.n_evals, "status": status}
      return {k: res[k].at[idx].set(v, mode="drop") for k, v in vals.items()}

    def cond(carry):
      s, _, _, it = carry
      return jnp.any(s.job >= 0) & (it < cap)

    def body(carry):
      s, res, ptr, it = carry
      new, done, f, status = iterate(s, evaluate(s))
      res = record(res, new, done, f, status)
      new, ptr = refill(new, done | (new.job < 0), ptr)
      return new, res, ptr, it + 1

    res = {"u": jnp.zeros((J, n), dtype), "f": jnp.full((J,), jnp.nan, dtype),
           "n_iter": jnp.zeros((J,), jnp.int32), "n_evals": jnp.zeros((J,), jnp.int32),
           "status": jnp.zeros((J,), jnp.int32)}
    s0 = steps.fresh_slots(jnp.full((S,), -1, jnp.int32), jnp.zeros((S, n), dtype))
    s0, ptr0 = refill(s0, jnp.ones((S,), bool), jnp.int32(0))
    cap = (J // S + 2) * opts.max_evals  # every job holds a slot for ≤ max_evals iterations
    _, res, _, it = jax.lax.while_loop(cond, body, (s0, res, ptr0, jnp.int32(0)))
    res["loop_iters"] = jnp.reshape(it, (1,))
    return res

  return run


def queue_jobs(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The job queue of rows × starts: valid [C, K] bool → (job_ids [C·K] int32, the valid jobs
  j = c·K + k first then −1; n_jobs [1] int32)."""
  flat = np.asarray(valid, bool).reshape(-1)
  ids = np.full(flat.shape, -1, np.int32)
  n = int(flat.sum())
  ids[:n] = np.flatnonzero(flat)
  return ids, np.array([n], np.int32)


def minimize(fun: Callable, params, rows, u0, *, opts: LBFGSOptions = LBFGSOptions(),
             n_slots: int | None = None, valid=None, u_fallback=None, free=None) -> dict:
  """Run `make_queue_minimizer` once, jitted, on one device (a convenience for tests).

  Its nine parameters are the minimizer's own (`fun`, `opts`, slots) and the arrays of its
  program `run(params, rows, u0, ..., u_fallback, free)`, each optional here with a default
  that the function builds.

  Args:
    fun: `fun(params, row, u) -> []`.
    params: shared parameters.
    rows: pytree of [C, ...] per-row data.
    u0: [C, K, n] starts.
    opts: options.
    n_slots: slots (default: all jobs at once).
    valid: [C, K] bool, jobs to run (default all).
    u_fallback: [C, R, n] retry points (default: none usable, R = 1 copy of the start).
    free: [n] 1/0 (default all free).

  Returns:
    The dict of `make_queue_minimizer`, as NumPy arrays, per job [C·K, ...].
  """
  u0 = jnp.asarray(u0)
  C, K, n = u0.shape
  valid = np.ones((C, K), bool) if valid is None else valid
  job_ids, n_jobs = queue_jobs(valid)
  u_fallback = u0[:, :1] if u_fallback is None else jnp.asarray(u_fallback)
  free = jnp.ones((n,), u0.dtype) if free is None else jnp.asarray(free, u0.dtype)
  run = make_queue_minimizer(fun, opts, n_slots or C * K, K)
  out = jax.jit(run)(params, rows, u0, job_ids, n_jobs, u_fallback, free)
  return jax.tree.map(np.asarray, out)
