"""What a fit compares: observed flux and weights, and the model of each method (pure functions).

- `emulator` (Eq. 9, The Payne's own fit): χ²(θ) = Σ_p w_p (x_p − Payne(θ)_p)² over all n_pix
  pixels, optionally with a radial-velocity term (`FitConfig.fit_rv`): the model is Doppler
  shifted by linear interpolation on the log-λ grid, chip by chip, as The Payne does.
- `synth` (Eq. 10): the observed spectrum is translated once to the synthetic domain,
  x_obs→synth = D_synth(D_sh(E_sh(E_obs(x_obs)))), and fitted with the emulator on the 7167
  network pixels with the synthetic domain's error 0.005 everywhere (the paper's Eq. 10 is
  unweighted; a constant error makes χ² a scaled version of it, so its formal errors are
  nominal only).
- `obs` (Eq. 11, the default): T_synth→obs(Payne(θ)) (`chain.synth_to_obs_scaled`) with the
  star's own h_sp = D_sp(z_sp) from encoding its observed spectrum once (held fixed), compared
  with the observed spectrum on the 7167 network pixels (the first 47 are not modelled).

Weights (docs/method.md): w_p = m_p / σ_p², σ floored at `error_floor` (0.005, raw flux); a pixel
gets m_p = 0 if the file's mask flags it, if its raw error exceeds `error_mask_threshold` (0.05),
or if its flux or error is not finite or its error is ≤ 0. χ² is in raw flux units (the
networks' standardization divides flux and error by the same number, so it cancels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cyclestar_jax import chain
from cyclestar_jax.data import observed_errors
from cyclestar_jax.fitting.config import METHODS, SPEED_OF_LIGHT_KMS, SYNTH_ERROR, PixelCountError
from cyclestar_jax.resources import (
  CHIP_EDGES,
  ERROR_FLOOR,
  ERROR_MASK_THRESHOLD,
  N_DROP,
  N_PIX,
  wavelength,
)


def prepare_observed(x, x_err=None, x_msk=None, *, error_floor: float = ERROR_FLOOR,
                     error_mask_threshold: float = ERROR_MASK_THRESHOLD
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Flux and χ² weights of observed spectra (docs/method.md), bad pixels given zero weight.

  Args:
    x: [N, n_pix] continuum-normalized flux (NaN allowed: weight 0, flux set to 1).
    x_err: [N, n_pix] raw 1σ errors or None (then `error_floor` everywhere, as synthetic data).
    x_msk: [N, n_pix] mask, True/1 = good, or None (all good).
    error_floor: raw-flux floor of the errors.
    error_mask_threshold: pixels with raw error above this get weight 0.

  Returns:
    (x [N, n_pix] float32 with non-finite flux replaced by 1, w [N, n_pix] float32 = mask/σ²).
  """
  x = np.array(x, dtype=np.float32, copy=True)
  if x.ndim != 2:
    raise ValueError(f"flux must have shape [N, n_pix], got {x.shape}")
  if x_msk is not None and np.shape(x_msk) != x.shape:
    raise ValueError(f"x_msk has shape {np.shape(x_msk)}, expected {x.shape} like the flux")
  if x_err is None:
    err = np.full(x.shape, error_floor, np.float32)
    good = np.ones(x.shape, bool) if x_msk is None else np.asarray(x_msk).astype(bool)
  else:
    if np.shape(x_err) != x.shape:
      raise ValueError(f"x_err has shape {np.shape(x_err)}, expected {x.shape} like the flux")
    err, good = observed_errors(np.asarray(x_err, np.float32), x_msk, error_floor=error_floor,
                                error_mask_threshold=error_mask_threshold)
  good &= np.isfinite(x)
  x[~np.isfinite(x)] = 1.0
  with np.errstate(invalid="ignore", divide="ignore"):
    w = np.where(good, 1.0 / np.where(good, err, 1.0) ** 2, 0.0)
  return x, w.astype(np.float32)


def doppler_shift(flux: jax.Array, rv: jax.Array, log_wave: np.ndarray,
                  chips: Sequence[tuple[int, int]] = CHIP_EDGES) -> jax.Array:
  """Model flux Doppler shifted by rv, by linear interpolation on the log-λ grid, chip by chip.

  f_obs(λ) = f_rest(λ / (1 + rv/c)). Each chip is interpolated on its own (a shift never mixes
  chips) and clamped at its edges. The shift is computed in pixel units of each chip's mean
  log-λ step in float64 on the host side (in float32, log10 λ ≈ 4.2 resolves only ~0.3 km/s);
  on a chip that is uniform in log λ (APOGEE's: 6e-6 dex) the interpolation is two gathers,
  otherwise `jnp.interp` on the pixel coordinates.

  Args:
    flux: [n_pix] rest-frame model flux.
    rv: [] radial velocity, km/s (positive: redshift).
    log_wave: [n_pix] log10 wavelength of the pixels (a NumPy array: the grid is static).
    chips: [start, stop) pixel ranges of the chips.

  Returns:
    [n_pix] shifted flux.
  """
  log_wave = np.asarray(log_wave, np.float64)
  z = jnp.log1p(rv / SPEED_OF_LIGHT_KMS) / np.log(10.0)  # shift in log10 λ
  parts = []
  for a, b in chips:
    lw, n = log_wave[a:b], b - a
    step = (lw[-1] - lw[0]) / max(n - 1, 1)
    pos = (lw - lw[0]) / step  # pixel coordinates in the chip
    s = z / step  # shift in pixels
    f = flux[a:b]
    if np.max(np.abs(pos - np.arange(n))) < 1e-3:  # uniform: f(i − s) from two neighbours
      k = jnp.floor(s)
      frac = s - k
      i = jnp.arange(n) - k.astype(jnp.int32)
      lo, hi = f[jnp.clip(i - 1, 0, n - 1)], f[jnp.clip(i, 0, n - 1)]
      parts.append(jnp.where(i - 1 < 0, f[0], jnp.where(i > n - 1, f[-1],
                                                       frac * lo + (1.0 - frac) * hi)))
    else:
      pos32 = jnp.asarray(pos, jnp.float32)
      parts.append(jnp.interp(pos32 - s, pos32, f))
  return jnp.concatenate(parts)


@dataclasses.dataclass(frozen=True)
class Objective:
  """One star's model and the per-spectrum preparation of one method (pure functions).

  Attributes:
    method: "obs", "synth" or "emulator".
    n_par: fitted parameters (25 labels, + 1 with a radial velocity).
    n_pix: pixels compared (n_pix of the emulator for Eq. 9, the networks' 7167 otherwise).
    model: `model(params, aux, theta) -> flux [n_pix]` for scaled parameters theta [n_par].
    prepare: `prepare(params, x, w) -> (x_fit [B, n_pix], w_fit [B, n_pix], aux [B, ...])` from
      the full-grid flux and weights [B, n_pix_data] (B spectra).
    pixel_offset: first data pixel the model covers (47 for the networks, 0 for Eq. 9).
  """

  method: str
  n_par: int
  n_pix: int
  model: Callable
  prepare: Callable
  pixel_offset: int = 0

  def chi2(self, params, x, w, aux, theta):
    """χ² [] of one spectrum x, w [n_pix] at theta [n_par]."""
    r = x - self.model(params, aux, theta)
    return jnp.sum(w * r * r)


def _no_aux(x: jax.Array) -> jax.Array:
  """A placeholder per-spectrum aux [B, 1] for models that need none."""
  return jnp.zeros((x.shape[0], 1), x.dtype)


def _emulator_objective(n_labels: int, n_pix: int, fit_rv: bool, rv_max: float,
                        log_wave: np.ndarray | None) -> Objective:
  """Eq. 9: Payne(θ) on all pixels, optionally Doppler shifted by θ[-1]·2·rv_max km/s."""
  if not fit_rv:

    def model(params, aux, theta):
      return chain.payne_scaled(params["emulator"], theta)
  else:
    if log_wave is None:
      if n_pix != N_PIX:
        raise PixelCountError(
            f"a radial-velocity fit needs the wavelengths of the emulator's {n_pix} pixels; "
            f"only the APOGEE grid ({N_PIX}) is built in")
      log_wave = np.log10(wavelength())
    lw = np.asarray(log_wave, np.float64)
    chips = CHIP_EDGES if n_pix == N_PIX else ((0, n_pix),)

    def model(params, aux, theta):
      flux = chain.payne_scaled(params["emulator"], theta[:n_labels])
      return doppler_shift(flux, theta[n_labels] * 2.0 * rv_max, lw, chips)

  def prepare(params, x, w):
    return x, w, _no_aux(x)

  return Objective("emulator", n_labels + int(fit_rv), n_pix, model, prepare, 0)


def make_objective(method: str, n_labels: int, emulator_n_pix: int, *, nets=None,
                   fit_rv: bool = False, rv_max: float = 300.0,
                   log_wave: np.ndarray | None = None) -> Objective:
  """The model and preparation of one method (module docstring), built on `chain`.

  Params of the functions: {"emulator": emulator params, "gen": generator params (obs/synth)}.

  Args:
    method: one of METHODS.
    n_labels: labels of the emulator.
    emulator_n_pix: pixels of the emulator's spectra.
    nets: `CycleStarNet` for obs/synth.
    fit_rv: add a radial velocity (Eq. 9 only); theta[-1] = rv / (2 rv_max).
    rv_max: bound of the radial velocity, km/s.
    log_wave: [emulator_n_pix] log10 λ for the Doppler shift (default: the APOGEE grid).

  Raises:
    PixelCountError: the emulator and the networks disagree on the pixel count.
  """
  if method not in METHODS:
    raise ValueError(f"method {method!r} is not one of {METHODS}")
  if method == "emulator":
    return _emulator_objective(n_labels, emulator_n_pix, fit_rv, rv_max, log_wave)
  if nets is None:
    raise ValueError(f"method {method!r} needs a Cycle-StarNet model (CycleModel)")
  n_net = int(nets.cfg.n_pix)
  if emulator_n_pix - n_net != N_DROP:
    raise PixelCountError(
        f"the emulator gives {emulator_n_pix} pixels and the Cycle-StarNet networks take "
        f"{n_net}; they must differ by the {N_DROP} dropped leading pixels (7214 vs 7167)")
  use_split = bool(nets.cfg.use_split)

  if method == "obs":

    def model(params, aux, theta):  # Eq. 11: T_synth→obs(Payne(θ)) with the star's h_sp
      return chain.synth_to_obs_scaled(nets, params, theta, aux if use_split else None)

    def prepare(params, x, w):
      # The star's z_sp is fixed during its fit: decode it once here (aux = D_sp(z_sp)).
      gen = params["gen"]
      h_sp = chain.split_features(nets, gen, chain.encode_split(nets, gen, x))
      return x[:, N_DROP:], w[:, N_DROP:], _no_aux(x) if h_sp is None else h_sp
  else:

    def model(params, aux, theta):  # Eq. 10: Payne(θ) against x_obs→synth
      return chain.payne_scaled(params["emulator"], theta)[N_DROP:]

    def prepare(params, x, w):
      gen = params["gen"]
      zsh, _ = nets.encode_obs(gen, chain.standardize(x[:, N_DROP:]))
      x_os = chain.unstandardize(nets.decode_synth(gen, zsh))
      # The synthetic domain's error everywhere; spectra are flagged on the observed mask.
      return x_os, jnp.full_like(x_os, 1.0 / SYNTH_ERROR**2), _no_aux(x)

  return Objective(method, n_labels, n_net, model, prepare, N_DROP)
