"""An APOGEE-like population of stellar labels for the mock world (NumPy, seeded).

Three populations, in proportions like APOGEE's: red-giant branch (a metallicity-dependent
Teff-log g relation: metal-poor giants are hotter), red clump, and dwarfs. Chemistry: [Fe/H]
around -0.2 +- 0.3; [X/Fe] with element-dependent scatter; alpha-enhancement at low [Fe/H] (a
thick-disc-like sequence); giants' mixed C and N (C down, N up after the first dredge-up, more on
the upper giant branch); vturb and vmacro from log g (vmacro < 10 km/s); 12C/13C low in
giants, high in dwarfs. Labels come back in The Payne's order (`cyclestar_jax.labels`).
"""

from __future__ import annotations

import numpy as np

from cyclestar_jax import labels as _labels

POPULATION_FRACTIONS = {"rgb": 0.6, "red_clump": 0.2, "dwarf": 0.2}
ALPHA_ELEMENTS = ("O", "Mg", "Si", "S", "Ca", "Ti")
# Star-to-star scatter of [X/Fe] (dex): well-measured elements tight, hard ones loose.
XFE_SCATTER = dict(
    C=0.08, N=0.1, O=0.06, Na=0.12, Mg=0.04, Al=0.08, Si=0.04, P=0.15, S=0.08, K=0.08,
    Ca=0.04, Ti=0.06, V=0.1, Cr=0.05, Mn=0.05, Fe=0.0, Co=0.08, Ni=0.03, Cu=0.12, Ge=0.15,
)  # fmt: skip
TEFF_RANGE = (3600.0, 6800.0)
LOGG_RANGE = (0.5, 5.0)
FEH_RANGE = (-1.5, 0.5)


def _as_rng(rng) -> np.random.Generator:
  return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _giant_branch_teff(logg, feh):
  """Teff (K) of the giant branch at log g, shifted hotter for metal-poor stars."""
  return 4750.0 + 330.0 * (logg - 2.5) - 260.0 * feh - 45.0 * (logg - 2.5) ** 2


def _dwarf_logg(teff):
  """log g of the main sequence and its turn-off at Teff (K)."""
  return 4.65 - 0.25 * ((teff - 4500.0) / 1000.0) ** 2 - 0.15 * np.clip(teff - 5600, 0, None) / 600


def sample_labels(n: int, rng=0, *, fractions: dict[str, float] | None = None) -> np.ndarray:
  """Draw n APOGEE-like label vectors.

  Args:
    n: number of stars.
    rng: a numpy Generator or an int seed.
    fractions: population shares, default POPULATION_FRACTIONS.
  Returns:
    [n, 25] float64 physical labels (Teff K, log g dex, velocities km/s, [X/H] dex, 12C/13C).
  """
  rng = _as_rng(rng)
  fractions = fractions or POPULATION_FRACTIONS
  names = list(fractions)
  pop = rng.choice(len(names), size=n, p=np.array([fractions[k] for k in names]) / sum(
      fractions.values()))
  kind = np.array(names)[pop]
  y = np.zeros((n, _labels.N_LABELS))

  # Metallicity: a skewed disc distribution, clipped to the grid.
  feh = np.clip(rng.normal(-0.2, 0.3, n) - 0.25 * rng.exponential(0.3, n) + 0.07,
                *FEH_RANGE)
  rgb, rc, dw = kind == "rgb", kind == "red_clump", kind == "dwarf"

  logg = np.empty(n)
  teff = np.empty(n)
  logg[rgb] = rng.uniform(0.7, 3.6, rgb.sum())
  teff[rgb] = _giant_branch_teff(logg[rgb], feh[rgb]) + rng.normal(0, 70, rgb.sum())
  logg[rc] = rng.normal(2.45, 0.08, rc.sum())
  teff[rc] = 4780.0 - 250.0 * feh[rc] + rng.normal(0, 80, rc.sum())
  teff[dw] = rng.uniform(4000.0, 6600.0, dw.sum())
  logg[dw] = _dwarf_logg(teff[dw]) + rng.normal(0, 0.08, dw.sum())
  teff = np.clip(teff, *TEFF_RANGE)
  logg = np.clip(logg, *LOGG_RANGE)

  # [X/Fe]: alpha-enhancement rising below [Fe/H] = 0 (plus a high-alpha sequence), scatter.
  high_alpha = rng.random(n) < np.clip(0.15 - 0.3 * feh, 0.05, 0.7)
  alpha = np.where(high_alpha, 0.3 - 0.1 * np.clip(feh + 0.5, 0, None), 0.0)
  alpha = alpha + np.clip(-0.15 * feh, 0, 0.1)
  xfe = {e: rng.normal(0.0, XFE_SCATTER[e], n) for e in _labels.ELEMENTS}
  for e in ALPHA_ELEMENTS:
    xfe[e] += alpha * (0.6 if e == "Ti" else 1.0)
  # Mixing on the giant branch: C depleted and N enhanced, more for lower log g.
  giant = ~dw
  mixing = np.where(giant, np.clip((3.8 - logg) / 3.0, 0, 1), 0.0)
  xfe["C"] += -0.15 * mixing - 0.05
  xfe["N"] += 0.35 * mixing + 0.05
  xfe["Mn"] += 0.15 * np.clip(feh, -1, 0.3)  # Mn rises with metallicity
  xfe["Fe"][:] = 0.0
  for i, e in enumerate(_labels.ELEMENTS):
    y[:, 3 + i] = feh + xfe[e]

  y[:, 0], y[:, 1] = teff, logg
  y[:, 2] = np.clip(np.where(dw, 1.0 + 0.2 * (teff - 5500) / 1000, 2.3 - 0.33 * logg)
                    + rng.normal(0, 0.12, n), 0.5, 3.0)
  y[:, 24] = np.clip(np.where(dw, 2.5 + 2.0 * (teff - 5000) / 1500, 7.5 - 0.9 * logg)
                     + rng.normal(0, 0.6, n), 1.0, 9.8)
  c12c13 = np.where(dw, rng.normal(60, 15, n), 24.0 - 5.5 * (3.6 - logg) + rng.normal(0, 3, n))
  y[:, 23] = np.clip(c12c13, 4.0, 90.0)
  return y


# The Payne's training grid (Ting et al. 2019) varies every abundance independently of [Fe/H]
# over a wide range, so that its emulator learns each label's own effect; a population like
# APOGEE's ties them together ([X/Fe] scatter 0.03–0.15 dex against 0.3 dex in [Fe/H]: r ≈ 0.9–1),
# and an emulator trained on it cannot separate them (measured on the cpu preset: its ∂/∂[Fe/H]
# held 0.56 of the synthetic world's, and Eq. 9's [Fe/H] scatter fell from 0.18 to 0.06 dex with
# a grid emulator). The grid keeps the population's Teff, log g and [Fe/H] (where the stars are),
# jittered, and draws the rest uniformly.
GRID_XFE_HALF_WIDTH = 0.5  # dex: [X/Fe] = the population's + U(−w, w), each element on its own
GRID_TEFF_JITTER = 250.0  # K, uniform ±
GRID_LOGG_JITTER = 0.4  # dex, uniform ±
GRID_UNIFORM = {2: (0.5, 3.0), 23: (4.0, 90.0), 24: (1.0, 9.8)}  # vturb, 12C/13C, vmacro ranges


def sample_grid_labels(n: int, rng=0) -> np.ndarray:
  """Draw n label vectors of an emulator training grid like The Payne's (comment above).

  Args:
    n: number of label sets.
    rng: a numpy Generator or an int seed.
  Returns:
    [n, 25] float64 physical labels, within the population's ranges for Teff, log g, [Fe/H],
    vturb, vmacro and 12C/13C; abundances [X/H] = [Fe/H] + [X/Fe] ± `GRID_XFE_HALF_WIDTH`.
  """
  rng = _as_rng(rng)
  y = sample_labels(n, rng)
  fe = _labels.label_index("Fe_H")
  for j in range(_labels.ABUNDANCE_SLICE.start, _labels.ABUNDANCE_SLICE.stop):
    if j != fe:
      y[:, j] += rng.uniform(-GRID_XFE_HALF_WIDTH, GRID_XFE_HALF_WIDTH, n)
  y[:, 0] = np.clip(y[:, 0] + rng.uniform(-GRID_TEFF_JITTER, GRID_TEFF_JITTER, n), *TEFF_RANGE)
  y[:, 1] = np.clip(y[:, 1] + rng.uniform(-GRID_LOGG_JITTER, GRID_LOGG_JITTER, n), *LOGG_RANGE)
  for j, (lo, hi) in GRID_UNIFORM.items():
    y[:, j] = rng.uniform(lo, hi, n)
  return y

