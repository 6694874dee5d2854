"""cyclestar_jax: Cycle-StarNet (O'Briain et al. 2021) in JAX/Flax."""

from cyclestar_jax.labels import LABEL_NAMES, N_LABELS, scale_labels, unscale_labels
from cyclestar_jax.resources import N_PIX, N_PIX_NET

__all__ = ["LABEL_NAMES", "N_LABELS", "N_PIX", "N_PIX_NET", "scale_labels", "unscale_labels"]
__version__ = "0.1.0"
