"""Line identification with derivative spectra (paper §4.2): which lines the synthetic models
miss, recovered by T_synth→obs, and which element owns each.

Modules:
  derivatives  ∂Payne(Y)/∂Y, ∂T_synth→obs(Payne(Y))/∂Y by jacfwd of `chain`, reduced on devices
  features     strong features (paper's −0.1 / −0.02 per dex rule), recovered features,
               precision / recall against the removed ones
  attribution  per-feature label ranking (background-normalized), C/N confusion
  recovery     missing-line recovery error (%), Teff–log g bins
  zsp          z_sp for label sets without spectra ("nearest" default, "mean")
  analysis     Fig. 12 for one reference star (`identify_lines`)
"""

from cyclestar_jax.lines.analysis import identify_lines
from cyclestar_jax.lines.attribution import (
    BACKGROUND_FLOOR,
    CN_LABELS,
    attribute_features,
    attribution_accuracy,
    attribution_reducer,
    attribution_scores,
    cn_confusion,
    feature_sums,
    owner_response,
    rank_labels,
)
from cyclestar_jax.lines.derivatives import (
    Reducer,
    box_width,
    chain_jacobians_scaled,
    derivative_spectra,
    reduce_label_sets,
)
from cyclestar_jax.lines.features import (
    ABUNDANCE_LABELS,
    MEMBER_PER_DEX,
    RECOVERY_GROW,
    RECOVERY_THRESHOLD,
    STRONG_PER_DEX,
    Features,
    detection_scores,
    grow_runs,
    kurucz_features,
    overlaps,
    recovered_features,
    removed_features,
    runs,
    strong_features,
)
from cyclestar_jax.lines.recovery import (
    TeffLoggBins,
    binned_mean,
    recovery_errors,
    recovery_reducer,
    relative_error_percent,
)
from cyclestar_jax.lines.zsp import (
    DEFAULT_ZSP,
    ZSP_CHOICES,
    encode_observed,
    mean_zsp,
    nearest_observed,
    zsp_choice_sensitivity,
    zsp_for_labels,
)

__all__ = [
    "ABUNDANCE_LABELS", "BACKGROUND_FLOOR", "CN_LABELS", "DEFAULT_ZSP", "MEMBER_PER_DEX",
    "RECOVERY_GROW", "RECOVERY_THRESHOLD", "STRONG_PER_DEX", "ZSP_CHOICES", "Features", "Reducer",
    "TeffLoggBins", "attribute_features", "attribution_accuracy", "attribution_reducer",
    "attribution_scores", "binned_mean", "box_width", "chain_jacobians_scaled", "cn_confusion",
    "derivative_spectra", "detection_scores", "encode_observed", "feature_sums", "grow_runs",
    "identify_lines", "kurucz_features", "mean_zsp", "nearest_observed", "overlaps",
    "owner_response",
    "rank_labels", "recovered_features", "recovery_errors", "recovery_reducer", "reduce_label_sets",
    "relative_error_percent", "removed_features", "runs", "strong_features",
    "zsp_choice_sensitivity", "zsp_for_labels",
]  # fmt: skip
