"""The batched L-BFGS with its job queue (`fitting.lbfgs`) on its own: Rosenbrock and random
least squares against scipy.optimize, one slot against many, and the queue's refill with jobs
of very different lengths. Small problems on one device: seconds each.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize as scipy_minimize
from scipy.optimize import rosen, rosen_der

from cyclestar_jax.fitting import lbfgs

OPTS = lbfgs.LBFGSOptions(max_iter=500, max_evals=2000)


def rosenbrock(params, row, u):
  """Σ 100 (u_{i+1} − u_i²)² + (1 − u_i)² (minimum 0 at u = 1), the row unused."""
  return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)


def least_squares(params, row, u):
  """|A u − b|² of one row (A [m, n], b [m])."""
  a, b = row
  r = a @ u - b
  return jnp.sum(r * r)


@pytest.fixture(scope="module")
def lsq_problem():
  """8 random, well-posed least-squares rows (30 × 6) and their exact solutions."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(8, 30, 6)) * rng.uniform(0.3, 3.0, (8, 1, 6))
  b = rng.normal(size=(8, 30)) + 5.0
  exact = np.stack([np.linalg.lstsq(a[i], b[i], rcond=None)[0] for i in range(8)])
  u0 = rng.normal(size=(8, 2, 6))  # two starts per row
  return (jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), exact, u0


@pytest.mark.parametrize("n_slots", [1, 5])
def test_rosenbrock_matches_scipy(n_slots):
  starts = np.array([[-1.2, 1.0, -0.5, 0.8], [0.0, 0.0, 0.0, 0.0], [1.5, 2.0, 1.0, 0.5]])
  u0 = starts[:, None, :].astype(np.float32)  # three rows, one start each
  out = lbfgs.minimize(rosenbrock, None, jnp.zeros((3, 1)), u0, opts=OPTS, n_slots=n_slots)
  for i, s in enumerate(starts):
    ref = scipy_minimize(rosen, s.astype(np.float64), jac=rosen_der, method="L-BFGS-B",
                         options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000})
    np.testing.assert_allclose(out["u"][i], ref.x, atol=2e-3)
    np.testing.assert_allclose(out["u"][i], 1.0, atol=2e-3)
    assert out["status"][i] & lbfgs.CONVERGED and out["f"][i] < 1e-5
  assert np.all(out["n_evals"] >= out["n_iter"]) and np.all(out["n_iter"] > 5)


def test_least_squares_one_slot_equals_many(lsq_problem):
  rows, exact, u0 = lsq_problem
  one = lbfgs.minimize(least_squares, None, rows, u0, opts=OPTS, n_slots=1)
  many = lbfgs.minimize(least_squares, None, rows, u0, opts=OPTS, n_slots=16)
  a, b = (np.asarray(r, np.float64) for r in rows)
  for i in range(8):  # scipy's L-BFGS in float64 from the first start
    ref = scipy_minimize(lambda u, i=i: np.sum((a[i] @ u - b[i]) ** 2), u0[i, 0],
                         jac=lambda u, i=i: 2.0 * a[i].T @ (a[i] @ u - b[i]), method="L-BFGS-B",
                         options={"ftol": 1e-15, "gtol": 1e-10})
    np.testing.assert_allclose(one["u"][2 * i], ref.x, atol=2e-4)
    np.testing.assert_allclose(ref.x, exact[i], atol=1e-5)
  for out in (one, many):
    assert np.all(out["status"] & lbfgs.CONVERGED)
    u = out["u"].reshape(8, 2, 6)
    np.testing.assert_allclose(u, np.broadcast_to(exact[:, None], u.shape), atol=2e-4)
  np.testing.assert_allclose(one["u"], many["u"], atol=2e-5)
  np.testing.assert_allclose(one["f"], many["f"], rtol=1e-5)


def test_queue_refills_slots_with_jobs_of_very_different_lengths(lsq_problem):
  """Short (least-squares) and long (Rosenbrock from far away) jobs share two slots: every job
  finishes as it would alone, jobs not queued are not run, and slots are reused (the loop runs
  fewer iterations than the jobs' evaluations summed)."""

  def mixed(params, row, u):
    a, b, is_rosen = row
    return jnp.where(is_rosen > 0, rosenbrock(None, None, u), least_squares(None, (a, b), u))

  (a, b), exact, _ = lsq_problem
  kind = np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32)
  rows = (a, b, jnp.asarray(kind))
  u0 = np.where(kind[:, None, None] > 0, -2.5, 0.3) * np.ones((8, 1, 6), np.float32)
  valid = np.ones((8, 1), bool)
  valid[6] = False  # not queued
  alone = lbfgs.minimize(mixed, None, rows, u0, opts=OPTS, n_slots=1, valid=valid)  # in turn
  out = lbfgs.minimize(mixed, None, rows, u0, opts=OPTS, n_slots=2, valid=valid)
  done = np.flatnonzero(valid[:, 0])
  evals = out["n_evals"][done]
  assert np.all(out["status"][done] & lbfgs.CONVERGED)
  assert out["status"][6] == 0 and np.isnan(out["f"][6]) and out["n_evals"][6] == 0
  assert evals[kind[done] > 0].min() > 3 * evals[kind[done] == 0].max()  # very different
  assert evals.max() <= out["loop_iters"][0] < evals.sum()
  assert alone["loop_iters"][0] == alone["n_evals"].sum()
  for i in done:
    np.testing.assert_allclose(out["u"][i], alone["u"][i], atol=1e-5)
    assert out["n_evals"][i] == alone["n_evals"][i]
    want = np.ones(6) if kind[i] else exact[i]
    np.testing.assert_allclose(out["u"][i], want, atol=2e-3)


def test_fixed_parameters_and_retry_from_fallback():
  """A held parameter keeps its start; a start with a non-finite value is retried from the
  fallback point and flagged."""

  def walled(params, row, u):  # a quadratic, +inf beyond u0 > 2
    return jnp.where(u[0] > 2.0, jnp.inf, jnp.sum((u - jnp.array([1.0, -1.0, 0.5])) ** 2))

  u0 = np.array([[[3.0, 0.0, 0.0]], [[0.0, 0.0, 7.0]]], np.float32)
  fallback = np.zeros((2, 1, 3), np.float32)
  free = np.array([1.0, 1.0, 0.0], np.float32)
  out = lbfgs.minimize(walled, None, jnp.zeros((2, 1)), u0, opts=OPTS, u_fallback=fallback,
                       free=free)
  assert out["status"][0] == lbfgs.CONVERGED | lbfgs.RETRIED
  assert out["status"][1] == lbfgs.CONVERGED
  np.testing.assert_allclose(out["u"][:, :2], [[1.0, -1.0], [1.0, -1.0]], atol=1e-4)
  np.testing.assert_array_equal(out["u"][:, 2], [0.0, 7.0])  # held at the (fallback) start
  bad = lbfgs.minimize(walled, None, jnp.zeros((1, 1)), u0[:1], opts=OPTS,
                       u_fallback=u0[:1])  # the fallback is beyond the wall too
  assert bad["status"][0] == lbfgs.FAILED | lbfgs.RETRIED and np.isnan(bad["f"][0])
