"""Truth physics of the mock APOGEE world: a differentiable line-list synthesizer in pure JAX.

Convention. Physical labels y [..., 25] in The Payne's order (`cyclestar_jax.labels`); output is
continuum-normalized flux [..., 7214] on the APOGEE grid (continuum = 1). Velocities are in km/s,
line positions in native pixels (fractional), energies in eV.

The model, per spectrum (a simplified LTE picture, enough to give realistic derivative spectra):

  tau(lambda) = sum_lines S_l * A_s(y) * 10**(E_l (theta - theta_ref))
                * 10**(gamma_s (logg - 2.5)) * profile_l(lambda - lambda_l) / kappa(y)
  flux        = [exp(-tau) (*) Gaussian(LSF + vmacro)] * exp(-tau_Brackett)

- S_l: the line's opacity at the reference K giant (Teff 4750, log g 2.5); `linelist.py` fits
  them to the real Kurucz responses.
- A_s(y): abundance factor of the line's species, 1 at solar. Atomic lines scale with
  10**[X/H]. Molecules follow a CO equilibrium C + O <-> CO: CO lines scale with n(CO),
  CN with the free carbon times 10**[N/H], OH with the free oxygen; so raising O locks carbon
  into CO and weakens CN (the positive O response of the real spectra). 12C/13C isotopologue
  lines scale with R/(1+R) and 1/(1+R), R = C12/C13.
- kappa(y): continuum opacity relative to the reference, 1 - sum f_d + sum_d f_d 10**[d/H]:
  electron donors (Mg, Si, Fe, ...) feed H- and weaken every line.
- theta = 5040/Teff. E_l (eV) sets how fast each line strengthens as the star cools; molecular
  lines have larger E than atomic ones (molecular bands much stronger in cool giants).
- profile_l: a Doppler Gaussian, or for broad lines (hyperfine structure, damping wings) a
  Lorentzian of fixed width, see WIDE_HWHM_PIX.
- Broadening: Doppler width sigma^2 = kT/m + vturb^2/2 + sigma0^2 on the opacity (computed on a
  grid oversampled 4x), then a Gaussian of sigma^2 = sigma_LSF^2 + vmacro^2/2 on the flux with
  sigma_LSF = c/(2.3548 R) (R = 22,500 unless an instrument says otherwise).
- Hydrogen Brackett lines 11-20: broad Lorentzians, strong in hot dwarfs, weak in cool giants.

The three chips are synthesized on one fine grid with continuum padding between them, so the
kernels never blur one chip into another (the wavelength grid jumps at the chip gaps).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cyclestar_jax import labels as _labels
from cyclestar_jax import resources

C_KMS = 299_792.458
K_BOLTZ_EV = 8.617333e-5  # eV/K
AMU_KMS2_PER_K = 1.380649e-23 / 1.66053907e-27 / 1e6  # k/amu in (km/s)^2 / K
DV_PIX = C_KMS * np.log(10.0) * 6e-6  # km/s per native pixel (log-linear grid), ~4.142
OVERSAMPLE = 4  # fine points per native pixel
PAD = 160  # fine points of continuum at both ends of every chip (> the widest kernel)
R_NOMINAL = 22_500.0
SIGMA0_KMS = 1.0  # intrinsic (damping + unresolved) width floor of every line
DOPPLER_HALF = 12  # Doppler kernel half width, fine points (>= 4 sigma at 7000 K, vturb 3)
FLUX_HALF = 40  # flux kernel half width, fine points (>= 4 sigma at R 20,000, vmacro 10)
# Lines with hyperfine structure or strong damping wings are broader than Doppler: their
# opacity is spread by a Lorentzian of these half widths (native pixels, at log g 2.5; pressure
# broadening scales them by 10**(0.15 (log g - 2.5))), computed at native resolution.
WIDE_HWHM_PIX = (1.2, 3.5)
WIDE_HALF = 36  # Lorentzian kernel half width, native pixels

REFERENCE_LABELS = dict(Teff=4750.0, logg=2.5, vturb=1.5, C12_C13=7.5, vmacro=6.0)
THETA_REF = 5040.0 / REFERENCE_LABELS["Teff"]

# Species: 0..19 the atomic lines of the 20 label elements, then the molecules.
MOLECULES = ("CO", "CN", "OH")
SPECIES = _labels.ELEMENTS + MOLECULES
SP_CO, SP_CN, SP_OH = (len(_labels.ELEMENTS) + i for i in range(3))
ATOMIC_MASS = dict(
    C=12.0, N=14.0, O=16.0, Na=23.0, Mg=24.3, Al=27.0, Si=28.1, P=31.0, S=32.1, K=39.1,
    Ca=40.1, Ti=47.9, V=50.9, Cr=52.0, Mn=54.9, Fe=55.8, Co=58.9, Ni=58.7, Cu=63.5, Ge=72.6,
    CO=28.0, CN=26.0, OH=17.0,
)  # fmt: skip
# Doppler widths are computed per mass class (one convolution each): representative masses.
MASS_CLASSES = (14.0, 30.0, 58.0)
# log g sensitivity of each species' lines relative to the continuum (dex per dex).
GRAVITY_SLOPE = {"CO": 0.05, "CN": -0.12, "OH": 0.08}
SOLAR_C_TO_O = 0.55
BRACKETT_N = tuple(range(11, 21))


def mass_class(species: int) -> int:
  """Index into MASS_CLASSES of a species' Doppler width class."""
  m = ATOMIC_MASS[SPECIES[species]]
  return int(np.argmin([abs(np.log(m / mc)) for mc in MASS_CLASSES]))


# ----------------------------------------------------------------------------------------------
# Grid layout
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FineGrid:
  """Where each native pixel sits on the padded, oversampled fine grid.

  Fields:
    n_fine: total fine points, all chips with their padding.
    chip_offset: [3] fine index of the first fine point of each chip.
    native_first_fine: [7214] fine index of the first of the OVERSAMPLE fine points of a pixel.
  """

  n_fine: int
  chip_offset: tuple[int, ...]
  native_first_fine: np.ndarray

  def fine_position(self, center: np.ndarray) -> np.ndarray:
    """Fine-grid coordinate of native pixel positions `center` [n] (fractional pixels)."""
    center = np.asarray(center, dtype=np.float64)
    pix = np.clip(np.round(center).astype(int), 0, resources.N_PIX - 1)
    # Fine point k of pixel j sits at j - 0.5 + (k + 0.5) / OVERSAMPLE.
    return self.native_first_fine[pix] + (center - pix + 0.5) * OVERSAMPLE - 0.5


@functools.cache
def fine_grid() -> FineGrid:
  """The fixed fine-grid layout of the APOGEE chips."""
  offsets, first = [], np.zeros(resources.N_PIX, dtype=np.int64)
  pos = 0
  for lo, hi in resources.CHIP_EDGES:
    pos += PAD
    offsets.append(pos)
    first[lo:hi] = pos + OVERSAMPLE * np.arange(hi - lo)
    pos += OVERSAMPLE * (hi - lo) + PAD
  return FineGrid(n_fine=pos, chip_offset=tuple(offsets), native_first_fine=first)


# ----------------------------------------------------------------------------------------------
# Line list
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LineList:
  """A mock line list and the global constants of the truth physics (NumPy arrays).

  Fields:
    center: [n_lines] line centres in native pixels (fractional).
    species: [n_lines] int index into SPECIES.
    strength: [n_lines] opacity area S_l of each line at the reference giant, in fine points
      (peak tau = S_l / (sqrt(2 pi) sigma_fine) for a Doppler line).
    energy: [n_lines] temperature sensitivity E_l in eV (see module docstring).
    isotope13: [n_lines] bool, True for 13C isotopologue lines (CO, CN).
    width_class: [n_lines] int, 0 = Doppler line, k >= 1 = Lorentzian of WIDE_HWHM_PIX[k-1]
      (hyperfine structure, damping wings).
    donor_fraction: [20] share f_d of the continuum opacity from each element's electrons.
    log_k_co: ln of the CO equilibrium constant at the reference (solar O = 1 units).
  """

  center: np.ndarray
  species: np.ndarray
  strength: np.ndarray
  energy: np.ndarray
  isotope13: np.ndarray
  width_class: np.ndarray
  donor_fraction: np.ndarray
  log_k_co: float

  @property
  def n_lines(self) -> int:
    return int(self.center.shape[0])

  def replace(self, **kw) -> LineList:
    return dataclasses.replace(self, **kw)

  def select(self, keep: np.ndarray) -> LineList:
    """The line list restricted to the lines where `keep` [n_lines] is True."""
    per_line = ("center", "species", "strength", "energy", "isotope13", "width_class")
    return self.replace(**{k: getattr(self, k)[keep] for k in per_line})

  def to_npz(self, path) -> None:
    """Save as an npz file (no pickles)."""
    np.savez(path, **{f.name: np.asarray(getattr(self, f.name))
                      for f in dataclasses.fields(self)})

  @classmethod
  def from_npz(cls, path) -> LineList:
    with np.load(path, allow_pickle=False) as d:
      missing = [f.name for f in dataclasses.fields(cls) if f.name not in d.files]
      if missing:
        raise ValueError(f"{path}: not a mock line list, missing arrays {missing}")
      kw = {f.name: d[f.name] for f in dataclasses.fields(cls)}
    kw["log_k_co"] = float(kw["log_k_co"])
    return cls(**kw)


# Energy bins: lines are grouped by (species, energy bin, isotope) so that a spectrum's opacity
# is one small matrix product of per-group weights with fixed per-group "combs".
ENERGY_BINS = np.array([0.5, 1.5, 2.5, 3.5, 4.5])


@dataclasses.dataclass(frozen=True)
class CombBlock:
  """Lines sharing one broadening kernel, spread on a grid at unit weight.

  Fields:
    comb: [G, n] line strengths of G groups; n = fine points (Doppler blocks) or native
      padded pixels (Lorentzian blocks, n_fine / OVERSAMPLE).
    species, energy, iso13: [G] the species index, energy (eV) and 13C flag of each group.
    kind: static; ("doppler", mass in amu) or ("lorentz", HWHM in native pixels).
  """

  comb: jax.Array
  species: jax.Array
  energy: jax.Array
  iso13: jax.Array
  kind: tuple


jax.tree_util.register_dataclass(
    CombBlock, data_fields=["comb", "species", "energy", "iso13"], meta_fields=["kind"])


@dataclasses.dataclass(frozen=True)
class Combs:
  """A line list ready for synthesis: comb blocks and the global chemistry constants."""

  blocks: tuple
  donor_fraction: jax.Array
  log_k_co: jax.Array


jax.tree_util.register_dataclass(
    Combs, data_fields=["blocks", "donor_fraction", "log_k_co"], meta_fields=[])


def _line_kinds(ll: LineList) -> list[tuple]:
  """The broadening kind of every line: ("doppler", mass class) or ("lorentz", hwhm)."""
  return [("doppler", MASS_CLASSES[mass_class(s)]) if w == 0
          else ("lorentz", WIDE_HWHM_PIX[w - 1])
          for s, w in zip(ll.species, ll.width_class, strict=True)]


def make_combs(ll: LineList, strength=None, donor_fraction=None, log_k_co=None) -> Combs:
  """Spread the lines of `ll` onto their grids, one block per broadening kernel.

  `strength`, `donor_fraction` and `log_k_co` may be JAX arrays that override the line list's
  (so the line list can be fitted by gradient descent); the rest is static structure.
  """
  grid = fine_grid()
  strength = jnp.asarray(ll.strength if strength is None else strength, jnp.float32)
  fine_pos = grid.fine_position(ll.center)
  ebin = np.argmin(np.abs(ll.energy[:, None] - ENERGY_BINS[None]), axis=1)
  kinds = _line_kinds(ll)
  blocks = []
  for kind in sorted(set(kinds)):
    lsel = np.flatnonzero([k == kind for k in kinds])
    key = np.stack([ll.species[lsel], ebin[lsel], ll.isotope13[lsel].astype(int)], axis=1)
    uniq, group = np.unique(key, axis=0, return_inverse=True)
    if kind[0] == "doppler":
      pos, n = fine_pos[lsel], grid.n_fine
    else:  # native padded grid: cell i holds fine points 4i..4i+3, centred at 4i + 1.5
      pos, n = (fine_pos[lsel] - (OVERSAMPLE - 1) / 2) / OVERSAMPLE, grid.n_fine // OVERSAMPLE
    i0 = np.floor(pos).astype(np.int64)
    frac = jnp.asarray(pos - i0, jnp.float32)
    s = strength[lsel]
    if kind[0] == "lorentz":
      s = s / OVERSAMPLE  # opacity area in native cells
    g = group.reshape(-1)
    comb = jnp.zeros((len(uniq), n), jnp.float32)
    comb = comb.at[g, i0].add(s * (1 - frac)).at[g, i0 + 1].add(s * frac)
    blocks.append(CombBlock(
        comb=comb, species=jnp.asarray(uniq[:, 0], jnp.int32),
        energy=jnp.asarray(ENERGY_BINS[uniq[:, 1]], jnp.float32),
        iso13=jnp.asarray(uniq[:, 2], jnp.float32), kind=kind))
  return Combs(
      blocks=tuple(blocks),
      donor_fraction=jnp.asarray(
          ll.donor_fraction if donor_fraction is None else donor_fraction, jnp.float32),
      log_k_co=jnp.asarray(ll.log_k_co if log_k_co is None else log_k_co, jnp.float32))


# ----------------------------------------------------------------------------------------------
# Chemistry and line weights
# ----------------------------------------------------------------------------------------------
def _co_equilibrium(c, o, k):
  """n(CO) from C + O <-> CO with n_CO = k (c - n_CO)(o - n_CO) (stable root)."""
  b = k * (c + o) + 1.0
  disc = jnp.maximum(b * b - 4.0 * k * k * c * o, 0.0)
  return 2.0 * k * c * o / (b + jnp.sqrt(disc))


def _molecule_factors(y, log_k_co):
  """Abundance factors [..., 3] of CO, CN and OH lines relative to the reference star."""
  def raw(c_h, n_h, o_h, theta):
    k = jnp.exp(log_k_co) * 10.0 ** (2.0 * (theta - THETA_REF))  # more CO locking when cool
    c = SOLAR_C_TO_O * 10.0**c_h
    o = 10.0**o_h
    co = _co_equilibrium(c, o, k)
    return jnp.stack([co, (c - co) * 10.0**n_h, o - co], axis=-1)

  theta = 5040.0 / y[..., 0]
  cur = raw(y[..., 3], y[..., 4], y[..., 5], theta)
  ref = raw(0.0, 0.0, 0.0, THETA_REF)
  return cur / ref


def _species_factors(y, log_k_co):
  """Abundance factor [..., n_species] of every species' lines (1 at the reference)."""
  atomic = 10.0 ** y[..., _labels.ABUNDANCE_SLICE]
  return jnp.concatenate([atomic, _molecule_factors(y, log_k_co)], axis=-1)


def continuum_opacity(y, donor_fraction):
  """Continuum opacity [...] relative to the reference, from electron donors (H- opacity)."""
  ab = 10.0 ** y[..., _labels.ABUNDANCE_SLICE]
  return 1.0 - jnp.sum(donor_fraction) + jnp.sum(donor_fraction * ab, axis=-1)


def _gravity_slopes(species) -> jax.Array:
  slopes = np.zeros(len(SPECIES), np.float32)
  for name, v in GRAVITY_SLOPE.items():
    slopes[SPECIES.index(name)] = v
  return jnp.asarray(slopes)[species]


def _group_weights(y, combs: Combs, block: CombBlock):
  """Weights [..., G] of a block's line groups for labels y [..., 25]."""
  sp = block.species
  theta = 5040.0 / y[..., 0:1]
  ab = _species_factors(y, combs.log_k_co)[..., sp]
  temp = 10.0 ** (block.energy * (theta - THETA_REF))
  grav = 10.0 ** (_gravity_slopes(sp) * (y[..., 1:2] - REFERENCE_LABELS["logg"]))
  r = y[..., 23:24]
  r0 = REFERENCE_LABELS["C12_C13"]
  frac12 = (r / (1 + r)) / (r0 / (1 + r0))
  frac13 = (1 / (1 + r)) / (1 / (1 + r0))
  is_carbon_mol = ((sp == SP_CO) | (sp == SP_CN)).astype(jnp.float32)
  iso_factor = 1.0 + is_carbon_mol * (block.iso13 * frac13 + (1 - block.iso13) * frac12 - 1.0)
  kappa = continuum_opacity(y, combs.donor_fraction)[..., None]
  return ab * temp * grav * iso_factor / kappa


# ----------------------------------------------------------------------------------------------
# Convolutions
# ----------------------------------------------------------------------------------------------
def _gaussian_taps(sigma_fine, offsets):
  """Normalized Gaussian taps [..., n_taps] at `offsets` (fine points) for sigma [...]."""
  z = offsets / sigma_fine[..., None]
  w = jnp.exp(-0.5 * z * z)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def _convolve_same(x, taps, half):
  """x [B, n] convolved with per-row symmetric taps [B, 2*half+1]; zero outside."""
  n = x.shape[-1]
  xp = jnp.pad(x, ((0, 0), (half, half)))
  out = jnp.zeros_like(x)
  for t in range(2 * half + 1):
    out = out + taps[:, t : t + 1] * xp[:, t : t + n]
  return out


def _sample_native(f_fine, taps):
  """Flux [B, n_fine] convolved with even taps [B, 2*FLUX_HALF] at native pixel centres."""
  grid = fine_grid()
  chips = []
  for (lo, hi), off in zip(resources.CHIP_EDGES, grid.chip_offset, strict=True):
    n = hi - lo
    # Fine point just right of pixel j's centre is off + OVERSAMPLE*j + OVERSAMPLE//2.
    first = off + OVERSAMPLE // 2 - FLUX_HALF
    out = jnp.zeros((f_fine.shape[0], n), f_fine.dtype)
    for t in range(2 * FLUX_HALF):
      start = first + t
      out = out + taps[:, t : t + 1] * f_fine[:, start : start + OVERSAMPLE * n : OVERSAMPLE]
    chips.append(out)
  return jnp.concatenate(chips, axis=1)


def doppler_sigma_kms(teff, vturb, mass):
  """Gaussian sigma (km/s) of a line's opacity profile: thermal + microturbulence + floor."""
  return jnp.sqrt(AMU_KMS2_PER_K * teff / mass + 0.5 * vturb**2 + SIGMA0_KMS**2)


def flux_sigma_kms(vmacro, resolution):
  """Gaussian sigma (km/s) of the flux kernel: instrument LSF at resolving power R + vmacro."""
  sigma_lsf = C_KMS / (resolution * 2.0 * np.sqrt(2.0 * np.log(2.0)))
  return jnp.sqrt(sigma_lsf**2 + 0.5 * vmacro**2)


# ----------------------------------------------------------------------------------------------
# Hydrogen
# ----------------------------------------------------------------------------------------------
def brackett_wavelengths() -> np.ndarray:
  """Vacuum wavelengths (Å) of Brackett 11..20 (n -> 4), from the Rydberg formula."""
  r_h = 109_677.583  # cm^-1
  n = np.array(BRACKETT_N, dtype=np.float64)
  return 1e8 / (r_h * (1 / 16 - 1 / n**2))


def brackett_opacity(y, wavelength):
  """Optical depth [..., 7214] of the Brackett lines (Lorentzian, Stark-broadened)."""
  lam = jnp.asarray(wavelength, jnp.float32)
  centres = jnp.asarray(brackett_wavelengths(), jnp.float32)
  n = jnp.asarray(BRACKETT_N, jnp.float32)
  teff, logg = y[..., 0:1], y[..., 1:2]
  theta = 5040.0 / teff
  # Central depth ~0.12 for Br 11 in a 6000 K dwarf; the n=4 level population falls steeply
  # with temperature (E = 6 dex/theta), so the lines fade in K giants.
  amp = 0.12 * 10.0 ** (-6.0 * (theta - 0.84)) * 10.0 ** (0.1 * (logg - 4.5))
  width = 2.5 * 10.0 ** (0.25 * (logg - 4.5))  # Å, Stark HWHM of Br 11
  tau = jnp.zeros(y.shape[:-1] + (lam.shape[0],), jnp.float32)
  for i in range(len(BRACKETT_N)):
    g = width * (n[i] / 11.0) ** 2
    a = amp * (11.0 / n[i]) ** 2
    tau = tau + a * g**2 / ((lam - centres[i]) ** 2 + g**2)
  return tau


# ----------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------
def synthesize(y, combs: Combs, resolution=R_NOMINAL, *, molecule_scale=None):
  """Normalized flux [B, 7214] of labels y [B, 25] for a line list spread as `combs`.

  Args:
    y: [B, 25] physical labels.
    combs: the line list on the fine grid (`make_combs`).
    resolution: resolving power of the Gaussian LSF, scalar or [B].
    molecule_scale: optional [B] factor on every molecular line (the synthetic domain's
      cool-star molecular deficit); None = 1.
  Returns:
    [B, 7214] flux, continuum 1.
  """
  y = jnp.asarray(y, jnp.float32)
  teff, logg, vturb, vmacro = y[:, 0], y[:, 1], y[:, 2], y[:, 24]
  n_fine = fine_grid().n_fine
  tau = jnp.zeros((y.shape[0], n_fine), jnp.float32)
  tau_wide = jnp.zeros((y.shape[0], n_fine // OVERSAMPLE), jnp.float32)
  doppler_off = jnp.arange(-DOPPLER_HALF, DOPPLER_HALF + 1, dtype=jnp.float32)
  wide_off = jnp.arange(-WIDE_HALF, WIDE_HALF + 1, dtype=jnp.float32)
  for block in combs.blocks:
    w = _group_weights(y, combs, block)
    if molecule_scale is not None:
      is_mol = (block.species >= SP_CO).astype(jnp.float32)
      w = w * (1.0 + is_mol * (molecule_scale[:, None] - 1.0))
    comb = w @ block.comb
    if block.kind[0] == "doppler":
      sigma = doppler_sigma_kms(teff, vturb, block.kind[1]) / DV_PIX * OVERSAMPLE
      tau = tau + _convolve_same(comb, _gaussian_taps(sigma, doppler_off), DOPPLER_HALF)
    else:
      hwhm = block.kind[1] * 10.0 ** (0.15 * (logg - REFERENCE_LABELS["logg"]))
      taps = 1.0 / (1.0 + (wide_off / hwhm[:, None]) ** 2)
      taps = taps / jnp.sum(taps, axis=-1, keepdims=True)
      tau_wide = tau_wide + _convolve_same(comb, taps, WIDE_HALF)
  tau = tau + jnp.repeat(tau_wide, OVERSAMPLE, axis=1)
  flux_fine = jnp.exp(-tau)
  res = jnp.broadcast_to(jnp.asarray(resolution, jnp.float32), teff.shape)
  sigma_f = flux_sigma_kms(vmacro, res) / DV_PIX * OVERSAMPLE
  flux_off = jnp.arange(-FLUX_HALF, FLUX_HALF, dtype=jnp.float32) + 0.5
  flux = _sample_native(flux_fine, _gaussian_taps(sigma_f, flux_off))
  kappa = continuum_opacity(y, combs.donor_fraction)[:, None]
  return flux * jnp.exp(-brackett_opacity(y, resources.wavelength()) / kappa)


def reference_labels(**overrides) -> np.ndarray:
  """The reference K giant of the Kurucz responses as a [25] label vector (solar abundances)."""
  y = np.zeros(_labels.N_LABELS)
  for name, value in {**REFERENCE_LABELS, **overrides}.items():
    y[_labels.label_index(name)] = value
  return y
