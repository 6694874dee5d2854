"""The mock APOGEE world: truth physics, a "Kurucz" synthetic domain, an "APOGEE" observed domain.

- `truth_spectrum(y)`: nature, the truth line list through `physics.synthesize` at R = 22,500.
- `synthetic_spectrum(y, world)`: the synthetic domain. For the APOGEE experiment, the truth
  physics with a modelling gap (fixed per-line strength errors, missing lines, molecular bands
  too weak in cool stars); for the missing-line experiment, the truth with a fraction of the
  strong features set to the continuum (paper §4.2). Noise-free.
- `observe(y, world, rng)`: the observed domain. The truth through an instrument (fibre LSF,
  per-chip continuum error, telluric residuals, noise with a mis-calibrated reported error, bad
  pixels, dead chip-edge pixels) for the APOGEE experiment; truth + noise for the missing-line
  experiment.

Every random choice is drawn from generators seeded by (world.seed, purpose, ...), so the same
world settings give the same spectra whatever the chunking.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cyclestar_jax import labels as _labels
from cyclestar_jax import resources
from cyclestar_jax.mock import linelist as _linelist
from cyclestar_jax.mock import physics

EXPERIMENTS = ("apogee", "new_lines")
SUB_BATCH = 16  # spectra synthesized together: keeps the fine-grid arrays in cache


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Settings of a mock world (stored with every data file it makes)."""

  experiment: str = "apogee"  # "apogee" (Kurucz -> APOGEE gap) or "new_lines" (paper §4.2)
  seed: int = 0  # seeds every random choice of the world
  # Synthetic-domain gap (APOGEE experiment).
  line_strength_error_dex: float = 0.15  # rms of the fixed per-line log strength errors
  missing_line_fraction: float = 0.08  # transitions absent from the synthetic line list
  molecular_deficit: float = 0.45  # fraction of molecular opacity missing at the cool end
  molecular_deficit_teff: tuple[float, float] = (4900.0, 3900.0)  # deficit starts, is full
  # Missing-line experiment: fraction of each element's strong features set to the continuum;
  # None = the paper's own selection (`feature_masked`, 133 of 415 features).
  masked_fraction: float | None = None
  # Observed domain (APOGEE experiment).
  resolution_range: tuple[float, float] = (20_500.0, 24_500.0)  # fibre LSF resolving power
  n_fibers: int = 300
  continuum_error_rms: tuple[float, float, float] = (0.004, 0.004, 0.003)  # Legendre 0,1,2
  continuum_error_offset: float = 0.002  # mean of the constant term (values above 1 occur)
  n_telluric: int = 60
  telluric_depth_range: tuple[float, float] = (0.003, 0.03)
  snr_range: tuple[float, float] = (30.0, 500.0)
  snr_median: float = 120.0
  error_miscalibration: tuple[float, float] = (0.9, 0.05)  # reported / true error: mean, rms
  bad_pixel_fraction: float = 0.004
  chip_edge_pixels: int = 3  # dead pixels on each side of each chip gap
  # Catalogue labels written for observed stars: truth + these errors (Teff, logg, vturb,
  # abundances, C12/C13, vmacro).
  catalogue_errors: tuple[float, ...] = (60.0, 0.1, 0.1, 0.05, 2.0, 0.5)

  def __post_init__(self):
    if self.experiment not in EXPERIMENTS:
      raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {self.experiment!r}")
    if self.masked_fraction is not None and not 0.0 <= self.masked_fraction <= 1.0:
      raise ValueError(f"masked_fraction must be in [0, 1], got {self.masked_fraction}")

  @classmethod
  def from_json_dict(cls, d: dict) -> WorldConfig:
    """Rebuild settings stored in a data file (lists back to tuples; unknown keys refused)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown mock-world settings {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def seeded_rng(world: WorldConfig, *purpose) -> np.random.Generator:
  """A generator seeded by the world's seed and a purpose (strings and ints), so each random
  choice of the world is independent of the order in which the others are made."""
  tag = [hash_str(p) if isinstance(p, str) else int(p) for p in purpose]
  return np.random.default_rng([world.seed, *tag])


def hash_str(s: str) -> int:
  """A stable (not salted) small integer for a string, for seeding."""
  return int.from_bytes(s.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


# ----------------------------------------------------------------------------------------------
# Line lists and synthesis
# ----------------------------------------------------------------------------------------------
@functools.cache
def _truth_combs() -> physics.Combs:
  # Concrete arrays even when first asked for inside a jit trace (they are cached).
  with jax.ensure_compile_time_eval():
    return physics.make_combs(_linelist.load_linelist())


@functools.lru_cache(maxsize=4)
def synthetic_linelist(world: WorldConfig) -> physics.LineList:
  """The synthetic domain's line list: the truth's with fixed strength errors, lines dropped."""
  ll = _linelist.load_linelist()
  if world.experiment != "apogee":
    return ll
  rng = seeded_rng(world, "kurucz-gap")
  # One error and one drop decision per transition (a line and its broad twins together).
  transition = np.unique(np.stack([ll.center, ll.species], 1), axis=0, return_inverse=True)[1]
  transition = transition.reshape(-1)
  n_t = transition.max() + 1
  err = rng.normal(0.0, world.line_strength_error_dex, n_t)[transition]
  keep = (rng.random(n_t) >= world.missing_line_fraction)[transition]
  return ll.replace(strength=ll.strength * 10.0**err).select(keep)


@functools.lru_cache(maxsize=4)
def _synthetic_combs(world: WorldConfig) -> physics.Combs:
  with jax.ensure_compile_time_eval():
    return physics.make_combs(synthetic_linelist(world))


def _batched(fn, y, *args):
  """Apply fn(y[b], *args[b]) over sub-batches of SUB_BATCH rows (cache-friendly), any B."""
  b = y.shape[0]
  if b <= SUB_BATCH:
    return fn(y, *args)
  n = -(-b // SUB_BATCH) * SUB_BATCH
  def pad(a):
    return jnp.concatenate([a, jnp.repeat(a[-1:], n - b, axis=0)]) if n > b else a
  ys = pad(y).reshape(-1, SUB_BATCH, *y.shape[1:])
  rest = [pad(a).reshape(-1, SUB_BATCH, *a.shape[1:]) for a in args]
  out = jax.lax.map(lambda t: fn(*t), (ys, *rest))
  return out.reshape(n, -1)[:b]


def _flatten(y):
  y = jnp.asarray(y, jnp.float32)
  if y.shape[-1] != _labels.N_LABELS:
    raise ValueError(f"labels must have {_labels.N_LABELS} values in the last axis, got {y.shape}")
  return y.reshape(-1, _labels.N_LABELS), y.shape[:-1]


@jax.jit
def truth_spectrum(labels) -> jax.Array:
  """Nature's normalized flux [..., 7214] for physical labels [..., 25] (jit/vmap/grad-able).

  Compiled on first use for each input shape (op-by-op execution would be far slower).
  """
  y, lead = _flatten(labels)
  flux = _batched(lambda t: physics.synthesize(t, _truth_combs()), y)
  return flux.reshape(*lead, resources.N_PIX)


def molecular_deficit_scale(teff, world: WorldConfig):
  """Factor [...] on the synthetic domain's molecular opacity: 1 when hot, 1 - deficit when cool."""
  t_start, t_full = world.molecular_deficit_teff
  ramp = jnp.clip((t_start - teff) / (t_start - t_full), 0.0, 1.0)
  return 1.0 - world.molecular_deficit * ramp


@functools.lru_cache(maxsize=8)
def masked_features(world: WorldConfig) -> np.ndarray:
  """Boolean [415] of the strong features removed from the missing-line synthetic domain.

  Per element with more than 3 strong features (paper §4.2), a `masked_fraction` share of its
  features, drawn with the world's seed; None means the paper's own `feature_masked`.
  """
  resp = resources.kurucz_response()
  if world.masked_fraction is None:
    return resp["feature_masked"].astype(bool)
  rng = seeded_rng(world, "masked-features")
  el = resp["feature_element"]
  out = np.zeros(len(el), bool)
  for e in np.unique(el):
    idx = np.flatnonzero(el == e)
    if len(idx) > 3:
      k = int(round(world.masked_fraction * len(idx)))
      out[rng.choice(idx, size=k, replace=False)] = True
  return out


def removed_features(world: WorldConfig) -> dict[str, np.ndarray]:
  """The strong features set to the continuum in the missing-line synthetic domain.

  Returns:
    {"index": [F] rows of the 415 features of `resources.kurucz_response()`, "start", "end":
    [F] pixel ranges on the 7214 grid (end exclusive), "label": [F] position of the owning
    element's [X/H] in the 25 labels, "element": [F] element names}.
  """
  resp = resources.kurucz_response()
  idx = np.flatnonzero(masked_features(world))
  el = resp["feature_element"][idx]
  return {"index": idx, "start": resp["feature_start"][idx], "end": resp["feature_end"][idx],
          "label": np.asarray(resp["label_index"])[el],
          "element": np.asarray(resp["element_names"])[el]}


def masked_pixels(world: WorldConfig) -> np.ndarray:
  """Boolean [7214] of the pixels set to the continuum in the missing-line synthetic domain."""
  resp = resources.kurucz_response()
  pix = np.zeros(resources.N_PIX, bool)
  for f in np.flatnonzero(masked_features(world)):
    # feature_end is exclusive (the data README says inclusive; `total_mask` and the responses
    # agree only with exclusive ends).
    pix[resp["feature_start"][f] : resp["feature_end"][f]] = True
  return pix


@functools.partial(jax.jit, static_argnums=1)
def synthetic_spectrum(labels, world: WorldConfig) -> jax.Array:
  """The synthetic ("Kurucz") domain's flux [..., 7214] for labels [..., 25]; noise-free."""
  y, lead = _flatten(labels)
  if world.experiment == "apogee":
    combs = _synthetic_combs(world)
    flux = _batched(lambda t: physics.synthesize(
        t, combs, molecule_scale=molecular_deficit_scale(t[:, 0], world)), y)
  else:
    flux = _batched(lambda t: physics.synthesize(t, _truth_combs()), y)
    flux = jnp.where(jnp.asarray(masked_pixels(world)), 1.0, flux)
  return flux.reshape(*lead, resources.N_PIX)


def derivative_spectra(labels: np.ndarray, world: WorldConfig) -> dict[str, np.ndarray]:
  """The world's own derivative spectra (the answer line identification looks for).

  Central differences of `truth_spectrum` and `synthetic_spectrum`, steps 0.01 in every label
  but Teff (1 K) and 12C/13C (0.1): on the host in the fixed blocks of the data generation (no
  new compilation after it; `jax.jacfwd` of the same functions agrees to 3e-5 per dex and
  compiles for ~20 s on a CPU).

  Args:
    labels: [n, 25] physical labels.
    world: the world (its synthetic domain: missing lines or the gap).

  Returns:
    {"d_truth": ∂truth/∂y, "d_synth": ∂synthetic/∂y}, each [n, 7214, 25] d flux / d label per
    physical unit (per dex for abundances).
  """
  y = np.atleast_2d(np.asarray(labels, np.float32))
  n, k = y.shape
  h = np.full(k, 0.01, np.float32)
  h[_labels.label_index("Teff")], h[_labels.label_index("C12_C13")] = 1.0, 0.1
  steps = np.concatenate([np.diag(h), -np.diag(h)])  # [2k, k]: +h_j rows, then −h_j rows
  y_pm = (y[:, None, :] + steps[None]).reshape(-1, k)
  out = {}
  for name, flux in (("d_truth", _on_host(truth_spectrum, y_pm)),
                     ("d_synth", synthetic_spectra(y_pm, world))):
    f = flux.reshape(n, 2, k, -1)
    out[name] = np.moveaxis((f[:, 0] - f[:, 1]) / (2.0 * h[None, :, None]), 1, 2)
  return out


# ----------------------------------------------------------------------------------------------
# The instrument
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def fiber_resolution(world: WorldConfig) -> np.ndarray:
  """Resolving power [n_fibers] of each fibre's LSF: a smooth trend across the slit + scatter."""
  lo, hi = world.resolution_range
  f = np.arange(world.n_fibers) / max(world.n_fibers - 1, 1)
  trend = 0.5 * (lo + hi) + 0.35 * (hi - lo) * np.cos(np.pi * 1.3 * f)
  return np.clip(trend + seeded_rng(world, "fibres").normal(0, 0.05 * (hi - lo), world.n_fibers),
                 lo, hi)


@functools.lru_cache(maxsize=4)
def telluric_lines(world: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
  """Fixed telluric residual lines: centres [n] (native pixels) and typical depths [n]."""
  rng = seeded_rng(world, "tellurics")
  # Denser at the blue and red ends of the band (water), a CO2 cluster near 16,000-16,100 Å.
  wl = resources.wavelength()
  edges = rng.choice([0, 1, 2], size=world.n_telluric, p=[0.35, 0.35, 0.3])
  target = np.where(edges == 0, rng.uniform(15170, 15350, world.n_telluric),
                    np.where(edges == 1, rng.uniform(16700, 16930, world.n_telluric),
                             rng.uniform(15990, 16110, world.n_telluric)))
  centre = np.interp(target, wl, np.arange(len(wl)))
  depth = np.exp(rng.uniform(*np.log(world.telluric_depth_range), world.n_telluric))
  return centre, depth


def _legendre_continuum(rng, n, world) -> np.ndarray:
  """Per-chip multiplicative continuum error [n, 7214] (Legendre degree 2 per chip)."""
  out = np.empty((n, resources.N_PIX), np.float32)
  rms = np.asarray(world.continuum_error_rms)
  for lo, hi in resources.CHIP_EDGES:
    x = np.linspace(-1.0, 1.0, hi - lo)
    basis = np.stack([np.ones_like(x), x, 0.5 * (3 * x**2 - 1)])  # [3, n_chip]
    c = rng.normal(0.0, 1.0, (n, 3)) * rms
    c[:, 0] += world.continuum_error_offset
    out[:, lo:hi] = 1.0 + c @ basis
  return out


def _telluric_transmission(rng, n, world, sigma_pix) -> np.ndarray:
  """Residual telluric absorption/emission after correction [n, 7214] (multiplicative)."""
  centre, depth = telluric_lines(world)
  pix = np.arange(resources.N_PIX)
  near = np.abs(pix[None, :] - centre[:, None]) < 8  # [n_tel, 7214]
  cols = np.flatnonzero(near.any(0))
  airmass = rng.uniform(0.2, 1.5, (n, 1))
  amp = depth[None, :] * airmass * rng.normal(0.5, 0.5, (n, len(centre)))  # signs both ways
  prof = np.exp(-0.5 * ((pix[cols][None, :] - centre[:, None]) / sigma_pix) ** 2)
  out = np.ones((n, resources.N_PIX), np.float32)
  out[:, cols] = 1.0 - amp @ prof
  return out


def _noise(rng, flux_clean, world, err_scale=None):
  """Noisy flux, reported error and S/N for clean flux [n, 7214]."""
  n = flux_clean.shape[0]
  lo, hi = world.snr_range
  snr = np.clip(np.exp(rng.normal(np.log(world.snr_median), 0.6, n)), lo, hi).astype(np.float32)
  throughput = np.ones(resources.N_PIX, np.float32)  # the blue chip is noisier
  throughput[: resources.CHIP_EDGES[0][1]] = 0.85
  throughput[resources.CHIP_EDGES[2][0] :] = 1.1
  sigma = np.sqrt(np.clip(flux_clean, 0.05, None)) / (snr[:, None] * np.sqrt(throughput))
  flux = flux_clean + sigma * rng.standard_normal(flux_clean.shape, dtype=np.float32)
  if err_scale is None:
    err_scale = np.ones(n, np.float32)
  err = (sigma * err_scale[:, None]).astype(np.float32)
  snr_measured = np.median(np.clip(flux_clean, 0, None) / err, axis=1).astype(np.float32)
  return flux.astype(np.float32), err, snr_measured


@dataclasses.dataclass(frozen=True)
class Observation:
  """Observed-domain spectra as written to file.

  Fields: x [n, 7214] flux; x_err [n, 7214] reported error; x_msk [n, 7214] bool (True = good);
  snr [n]; fiber [n] int; resolution [n] LSF resolving power; x_clean [n, 7214] the
  noise-free instrument output (kept for checks, not written).
  """

  x: np.ndarray
  x_err: np.ndarray
  x_msk: np.ndarray
  snr: np.ndarray
  fiber: np.ndarray
  resolution: np.ndarray
  x_clean: np.ndarray


HOST_CHUNK = 64  # spectra per call of the jitted synthesizer when generating data on the host


@jax.jit
def _truth_at_resolution(y, resolution):
  return _batched(lambda t, r: physics.synthesize(t, _truth_combs(), r), y, resolution)


def _on_host(fn, y: np.ndarray, *args: np.ndarray) -> np.ndarray:
  """fn over [n, ...] inputs in fixed HOST_CHUNK blocks (one compilation for any n) -> NumPy."""
  n = y.shape[0]
  out = np.empty((n, resources.N_PIX), np.float32)
  for lo in range(0, n, HOST_CHUNK):
    hi = min(lo + HOST_CHUNK, n)
    idx = np.minimum(np.arange(lo, lo + HOST_CHUNK), n - 1)  # pad the tail by repetition
    res = fn(*(jnp.asarray(a[idx], jnp.float32) for a in (y, *args)))
    out[lo:hi] = np.asarray(res)[: hi - lo]
  return out


def synthetic_spectra(labels: np.ndarray, world: WorldConfig) -> np.ndarray:
  """`synthetic_spectrum` for many stars [n, 25] on the host, in fixed blocks -> [n, 7214]."""
  return _on_host(functools.partial(synthetic_spectrum, world=world), np.asarray(labels))


def observe(labels: np.ndarray, world: WorldConfig, rng: np.random.Generator) -> Observation:
  """Observe stars of physical labels [n, 25] through the world's instrument."""
  y = np.asarray(labels, np.float32)
  n = y.shape[0]
  if world.experiment == "new_lines":
    clean = _on_host(_truth_at_resolution, y, np.full(n, physics.R_NOMINAL, np.float32))
    x, err, snr = _noise(rng, clean, world)
    return Observation(x=x, x_err=err, x_msk=np.ones_like(x, bool), snr=snr,
                       fiber=np.zeros(n, np.int32),
                       resolution=np.full(n, physics.R_NOMINAL, np.float32), x_clean=clean)
  fiber = rng.integers(0, world.n_fibers, n).astype(np.int32)
  res = fiber_resolution(world)[fiber].astype(np.float32)
  flux = _on_host(_truth_at_resolution, y, res)
  sigma_lsf = physics.C_KMS / (res * 2.3548) / physics.DV_PIX
  tell = _telluric_transmission(rng, n, world, sigma_pix=float(np.median(sigma_lsf)))
  clean = flux * _legendre_continuum(rng, n, world) * tell
  miscal = rng.normal(*world.error_miscalibration, n).clip(0.6, 1.4).astype(np.float32)
  x, err, snr = _noise(rng, clean, world, err_scale=miscal)
  msk = np.ones_like(x, bool)
  # Bad pixels: cosmic rays / persistence, flagged in the mask, flux spoiled.
  bad = rng.random(x.shape) < world.bad_pixel_fraction
  x = np.where(bad, x + rng.uniform(-0.3, 0.6, x.shape).astype(np.float32), x)
  msk &= ~bad
  # Dead pixels at the chip gaps: no data (flux 0, error 1, mask 0), as in APOGEE spectra.
  k = world.chip_edge_pixels
  if k:
    for lo, hi in resources.CHIP_EDGES:
      for sl in (slice(lo, lo + k) if lo > 0 else None, slice(hi - k, hi)
                 if hi < resources.N_PIX else None):
        if sl is not None:
          x[:, sl], err[:, sl], msk[:, sl] = 0.0, 1.0, False
  return Observation(x=x, x_err=err, x_msk=msk, snr=snr, fiber=fiber, resolution=res,
                     x_clean=clean)


def catalogue_labels(y_true: np.ndarray, world: WorldConfig, rng: np.random.Generator
                     ) -> np.ndarray:
  """Survey-catalogue labels [n, 25]: the truth plus ASPCAP-like random errors."""
  e = world.catalogue_errors
  sig = np.array([e[0], e[1], e[2]] + [e[3]] * 20 + [e[4], e[5]])
  return y_true + rng.normal(size=y_true.shape) * sig
