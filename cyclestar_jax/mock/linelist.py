"""The mock world's line list, located and scaled from the real Kurucz responses.

`build_linelist` makes it once (the package ships the result as `mock/data/linelist.npz`;
`python -m cyclestar_jax.mock.linelist` rebuilds it, deterministically):

1. Lines are found in each element's per-dex response (20 x `gradient` of
   `kurucz_line_response.npz`) as local minima below a threshold, at sub-pixel centres.
   Species: O's own lines are OH; C's lines are CO, plus CN where N responds at the same place;
   N's lines are CN; every other element's lines are atomic.
2. Their strengths at the reference giant, the electron-donor shares of the continuum opacity
   and the CO equilibrium constant are fitted so that the synthesizer's derivative spectra
   (`jax.jacfwd` of `physics.synthesize`) match the real responses, indirect effects included.
3. What the responses cannot say (how each line changes with Teff and log g, which CO/CN lines
   belong to 13C) is drawn from physically sensible distributions with a fixed seed.
"""

from __future__ import annotations

import argparse
import functools
from importlib import resources as _ir

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cyclestar_jax import labels as _labels
from cyclestar_jax import resources
from cyclestar_jax.mock import physics

LINELIST_FILE = "linelist.npz"
PER_DEX = 1.0 / 0.05  # the file's responses are for +0.05 dex
DETECT = -0.012  # per-dex response a line must reach to be listed
# Excitation-like temperature sensitivity (eV) drawn per line: (low, high) by species class.
ENERGY_RANGE = {"atomic": (0.6, 2.6), "CO": (2.6, 3.6), "CN": (3.0, 4.2), "OH": (2.4, 3.4)}
FRACTION_13C = 0.12  # of the CO and CN lines


def target_jacobian() -> np.ndarray:
  """The real per-dex derivative spectra [7214, 20] (d flux / d [X/H]) of the reference giant."""
  return (resources.kurucz_response()["gradient"] * PER_DEX).T


def _local_minima(row: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
  """Sub-pixel centres and depths of the local minima of `row` [n] below `threshold`."""
  inner = (row[1:-1] < row[:-2]) & (row[1:-1] <= row[2:]) & (row[1:-1] < threshold)
  idx = np.flatnonzero(inner) + 1
  a, b, c = row[idx - 1], row[idx], row[idx + 1]
  denom = a - 2 * b + c
  shift = np.where(denom > 0, 0.5 * (a - c) / np.where(denom > 0, denom, 1.0), 0.0)
  return idx + np.clip(shift, -0.5, 0.5), b


def find_lines(jac: np.ndarray, threshold: float = DETECT) -> tuple[np.ndarray, np.ndarray]:
  """Line centres [n] (native pixels) and species [n] found in the per-dex responses [7214, 20]."""
  el = {e: i for i, e in enumerate(_labels.ELEMENTS)}
  centres, species = [], []
  for e, i in el.items():
    pos, _ = _local_minima(jac[:, i], threshold)
    if e == "C":
      near_n = jac[np.clip(np.round(pos).astype(int), 0, len(jac) - 1), el["N"]] < 0.25 * threshold
      centres += [pos, pos[near_n]]
      species += [np.full(len(pos), physics.SP_CO), np.full(near_n.sum(), physics.SP_CN)]
    elif e == "N":
      centres.append(pos)
      species.append(np.full(len(pos), physics.SP_CN))
    elif e == "O":
      centres.append(pos)
      species.append(np.full(len(pos), physics.SP_OH))
    else:
      centres.append(pos)
      species.append(np.full(len(pos), i))
  centres, species = np.concatenate(centres), np.concatenate(species)
  # CN lines found in both C and N: keep one per pixel.
  key = np.round(centres).astype(int) * 100 + species
  _, keep = np.unique(key, return_index=True)
  keep = np.sort(keep)
  return centres[keep], species[keep]


def _draw_line_physics(species: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Temperature sensitivities [n] (eV) and 13C flags [n] for lines of the given species."""
  rng = np.random.default_rng(seed)
  energy = np.empty(len(species))
  for name, (lo, hi) in ENERGY_RANGE.items():
    sel = species < physics.SP_CO if name == "atomic" else species == physics.SPECIES.index(name)
    energy[sel] = rng.uniform(lo, hi, sel.sum())
  carbon_mol = (species == physics.SP_CO) | (species == physics.SP_CN)
  iso13 = carbon_mol & (rng.random(len(species)) < FRACTION_13C)
  return energy, iso13


def model_jacobian(ll: physics.LineList, strength=None, donor_fraction=None, log_k_co=None):
  """The synthesizer's per-dex derivative spectra [7214, 20] at the reference giant."""
  combs = physics.make_combs(ll, strength, donor_fraction, log_k_co)
  y0 = jnp.asarray(physics.reference_labels(), jnp.float32)

  def flux(ab):
    y = y0.at[_labels.ABUNDANCE_SLICE].set(ab)
    return physics.synthesize(y[None], combs)[0]

  return jax.jacfwd(flux)(jnp.zeros(20, jnp.float32))


def fit_strengths(ll: physics.LineList, target: np.ndarray, *, steps: int = 300,
                  learning_rate: float = 0.05, verbose: bool = False) -> physics.LineList:
  """Fit line strengths, donor fractions and the CO constant to the target responses [7214, 20].

  The loss is each element's squared residual divided by the variance of its real response,
  so small elements count as much as C, N and Fe (the goal is the shape of every row).
  """
  target = jnp.asarray(target, jnp.float32)
  row_var = jnp.var(target, axis=0) + 1e-8
  params = {
      "log_s": jnp.log(jnp.asarray(ll.strength, jnp.float32)),
      "donor_logit": jnp.log(jnp.asarray(ll.donor_fraction, jnp.float32) + 1e-4),
      "log_k_co": jnp.asarray(ll.log_k_co, jnp.float32),
  }

  def unpack(p):
    return jnp.exp(p["log_s"]), 0.6 * jax.nn.softmax(
        jnp.concatenate([p["donor_logit"], jnp.zeros(1)]))[:-1], p["log_k_co"]

  def loss_fn(p):
    s, f, k = unpack(p)
    jac = model_jacobian(ll, s, f, k)
    return jnp.mean(jnp.sum((jac - target) ** 2, axis=0) / row_var / target.shape[0])

  opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))
  state = opt.init(params)

  @jax.jit
  def step(p, state):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, state = opt.update(g, state, p)
    return optax.apply_updates(p, updates), state, loss

  for i in range(steps):
    params, state, loss = step(params, state)
    if verbose and (i % 50 == 0 or i == steps - 1):
      print(f"fit step {i:5d}  loss {float(loss):.4f}", flush=True)
  s, f, k = unpack(params)
  return ll.replace(strength=np.asarray(s, np.float64), donor_fraction=np.asarray(f, np.float64),
                    log_k_co=float(k))


def build_linelist(*, seed: int = 20210101, steps: int = 300, verbose: bool = False
                   ) -> physics.LineList:
  """Build the mock world's truth line list from the shipped Kurucz responses (deterministic)."""
  target = target_jacobian()
  centres, species = find_lines(target)
  energy, iso13 = _draw_line_physics(species, seed)
  # Initial strengths from the optically thin limit: response = -ln10 * tau * width.
  depth = -target[np.clip(np.round(centres).astype(int), 0, len(target) - 1)].min(axis=1)
  s0 = np.maximum(depth, 1e-3) / np.log(10.0) * np.sqrt(2 * np.pi) * 1.7 * physics.OVERSAMPLE
  # Every line gets broad twins (width classes 1, 2) that the fit may use or leave near zero.
  n_w = 1 + len(physics.WIDE_HWHM_PIX)
  width = np.repeat(np.arange(n_w)[None], len(centres), axis=0).reshape(-1)
  s0 = (s0[:, None] * np.array([1.0] + [0.03] * (n_w - 1))[None]).reshape(-1)
  ll = physics.LineList(
      center=np.repeat(centres, n_w), species=np.repeat(species, n_w), strength=s0,
      energy=np.repeat(energy, n_w), isotope13=np.repeat(iso13, n_w), width_class=width,
      donor_fraction=np.full(20, 0.01), log_k_co=float(np.log(30.0)))
  return fit_strengths(ll, target, steps=steps, verbose=verbose)


def response_agreement(ll: physics.LineList) -> dict[str, dict[str, float]]:
  """Pearson r and least-squares slope of model vs real per-dex responses, per element."""
  model = np.asarray(model_jacobian(ll), np.float64)
  real = target_jacobian()
  out = {}
  for i, e in enumerate(_labels.ELEMENTS):
    r = float(np.corrcoef(model[:, i], real[:, i])[0, 1])
    slope = float(np.dot(model[:, i], real[:, i]) / np.dot(real[:, i], real[:, i]))
    out[e] = {"pearson_r": r, "slope": slope}
  return out


@functools.cache
def load_linelist() -> physics.LineList:
  """The shipped truth line list of the mock world."""
  with _ir.as_file(_ir.files("cyclestar_jax.mock").joinpath("data", LINELIST_FILE)) as p:
    return physics.LineList.from_npz(p)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="npz file to write")
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args(argv)
  ll = build_linelist(steps=args.steps, verbose=True)
  ll.to_npz(args.out)
  for e, v in response_agreement(ll).items():
    print(f"{e:3s} r={v['pearson_r']:.3f} slope={v['slope']:.2f}")


if __name__ == "__main__":
  main()
