"""Figures of the mock world: moved to `cyclestar_jax.plots`, re-exported here."""

from __future__ import annotations

from cyclestar_jax.plots import ZOOMS, plot_examples

__all__ = ["ZOOMS", "plot_examples"]
