"""Every figure of the project (paper Figs. 5–14, training curves, Table 1, diagnostics).

One module per group of figures (`spectra`, `fits`, `labels`, `training`, `lines`) over the
shared helpers of `_base`; every public figure function is importable from here.

Conventions (all functions):
  - inputs are NumPy arrays (anything `np.asarray` accepts) and an output path; the return value
    is that path. PNG at 150 dpi, written atomically (`fileio.save_figure`): a figure on disk is
    either the previous one or the new one, never half written.
  - Matplotlib is imported lazily and only through its object-oriented API (`Figure` with the
    Agg canvas, never `pyplot`): no display is needed, no global backend is switched and no
    figure stays alive in a pyplot registry after the call.
  - Wavelengths are vacuum Å. Spectra may have any number of pixels P ≤ 7214 as long as `wave`
    [P] is given: the APOGEE chips are found from the gaps in `wave` (jumps > 5 Å) and drawn
    as side-by-side panels whose widths follow their wavelength spans.
  - Statistics (docs/metrics_and_figures.md): bias = mean, scatter = half the 16–84 percentile
    width, χ²_R = mean squared normalized residual over pixels with |r| ≤ 5 (also with all
    pixels where stated). NaN marks pixels that do not count (masked, not modelled).
  - Relative residuals of the synthetic domain are (pred − x)/x; normalized residuals of
    reconstructions are (pred − x)/σ; fit residuals are (x − model)/σ as in the paper's Fig. 8.
"""

from cyclestar_jax.plots._base import (
    CHIP_GAP_A,
    DPI,
    GROUP_COLOURS,
    LOGG_LABEL,
    TEFF_LABEL,
    WAVE_LABEL,
    ZOOMS,
    chip_slices,
    percentile_band,
)
from cyclestar_jax.plots.fits import fig_fit_example, fig_fit_residuals, fig_kiel_chi2
from cyclestar_jax.plots.labels import (
    fig_catalogue_residuals,
    fig_kiel_methods,
    fig_label_errors,
    fig_label_sensitivity,
    fig_tsne,
)
from cyclestar_jax.plots.lines import (
    LineStar,
    fig_cn_features,
    fig_line_identification,
    fig_recovery_map,
)
from cyclestar_jax.plots.spectra import (
    fig_observed_residuals,
    fig_spectra_panel,
    fig_synthetic_residuals,
    plot_examples,
)
from cyclestar_jax.plots.training import (
    fig_gain_curve,
    fig_recovery_vs_fraction,
    fig_training_curve,
    plot_emulator_residuals,
    plot_emulator_run,
    plot_progress,
)

__all__ = [
    "CHIP_GAP_A", "DPI", "GROUP_COLOURS", "LOGG_LABEL", "LineStar", "TEFF_LABEL", "WAVE_LABEL",
    "ZOOMS", "chip_slices", "fig_catalogue_residuals", "fig_cn_features", "fig_fit_example",
    "fig_fit_residuals", "fig_gain_curve", "fig_kiel_chi2", "fig_kiel_methods", "fig_label_errors",
    "fig_label_sensitivity", "fig_line_identification", "fig_observed_residuals",
    "fig_recovery_map", "fig_recovery_vs_fraction", "fig_spectra_panel",
    "fig_synthetic_residuals", "fig_training_curve", "fig_tsne", "percentile_band",
    "plot_emulator_residuals", "plot_emulator_run", "plot_examples", "plot_progress",
]
