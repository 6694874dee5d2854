"""Missing catalogue labels filled for the synthetic domain (`--mode paper`), by a stated rule.

The emulator needs all 25 labels; a catalogue lacks some (C12/C13 is never in allStar, DR17 has
no [Ge/H], a flagged abundance is missing for that star). Each missing label of a star is
filled by the first rule that applies:

  value        the user's value for that label (`PaperConfig.fill_values`), for every star;
  cell_median  the median of the label over the stars that have it in the star's Teff–log g
               cell (`fill_teff_step` K × `fill_logg_step` dex, cells aligned on 0), when the
               cell holds at least `fill_min_stars` values;
  median       the median of the label over all the stars that have it;
  solar        no star has it, an abundance: [X/H] = [Fe/H] of the star ([X/Fe] = 0);
  box_centre   no star has it, another label (C12/C13): the middle of the emulator's box.

Teff, log g and [Fe/H] are never filled: a star without one is dropped (`paper`, reason
`labels`). The medians are taken over the stars given (all the stars left after the cuts,
both halves), so the rule does not depend on the split. Everything is counted per label and
rule (`Filled.counts`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cyclestar_jax.apogee.config import FILL_RULES, PaperConfig
from cyclestar_jax.labels import ABUNDANCE_SLICE, LABEL_NAMES, N_LABELS, label_index

REQUIRED_LABELS = ("Teff", "logg", "Fe_H")  # never filled
NOT_FILLED = -1  # rule code of a label the catalogue has


@dataclasses.dataclass(frozen=True, eq=False)
class Filled:
  """Labels with every missing value filled.

  Attributes:
    labels: [N, 25] physical labels, all finite.
    rule: [N, 25] int8: index into `FILL_RULES` of the rule that filled a value, −1 where the
      catalogue had it.
    counts: {label: {rule: stars}} of the labels filled (labels with none left out).
  """

  labels: np.ndarray
  rule: np.ndarray
  counts: dict[str, dict[str, int]]

  @property
  def filled(self) -> np.ndarray:
    """[N, 25] bool: the value was filled."""
    return self.rule != NOT_FILLED


def has_required(labels: np.ndarray) -> np.ndarray:
  """[N] bool: Teff, log g and [Fe/H] are all finite (`REQUIRED_LABELS`)."""
  idx = [label_index(k) for k in REQUIRED_LABELS]
  return np.all(np.isfinite(np.asarray(labels)[:, idx]), axis=1)


def group_medians(group: np.ndarray, values: np.ndarray, n_groups: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Median and count of the finite values per group, by one sort (no loop over groups).

  Args:
    group: [N] int in [0, n_groups). values: [N] float, NaN = none. n_groups: G.

  Returns:
    (median [G] (NaN for an empty group), count [G]).
  """
  ok = np.isfinite(values)
  g, v = group[ok], values[ok]
  order = np.lexsort((v, g))
  g, v = g[order], v[order]
  count = np.bincount(g, minlength=n_groups)
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  med = np.full(n_groups, np.nan)
  has = count > 0
  lo = start[has] + (count[has] - 1) // 2
  hi = start[has] + count[has] // 2
  med[has] = 0.5 * (v[lo] + v[hi])
  return med, count


def _cells(labels: np.ndarray, cfg: PaperConfig) -> tuple[np.ndarray, int]:
  """Each star's Teff–log g cell [N] (0 … G−1) and G."""
  t = np.floor(labels[:, label_index("Teff")] / cfg.fill_teff_step).astype(np.int64)
  g = np.floor(labels[:, label_index("logg")] / cfg.fill_logg_step).astype(np.int64)
  _, cell = np.unique(np.stack([t, g], axis=1), axis=0, return_inverse=True)
  cell = cell.reshape(-1)
  return cell, int(cell.max()) + 1 if len(cell) else 0


def fill_labels(labels: np.ndarray, cfg: PaperConfig, box_centre: np.ndarray) -> Filled:
  """Fills every missing (NaN) label by the module's rules.

  Args:
    labels: [N, 25] catalogue labels, NaN = missing; Teff, log g, [Fe/H] finite in every row
      (`has_required`).
    cfg: the rule's settings. box_centre: [25] middle of the emulator's box.

  Returns:
    `Filled`.

  Raises:
    ValueError when a row lacks Teff, log g or [Fe/H].
  """
  y = np.array(labels, np.float64, copy=True)
  if y.ndim != 2 or y.shape[1] != N_LABELS:
    raise ValueError(f"labels must be [N, {N_LABELS}], got {y.shape}")
  if not has_required(y).all():
    raise ValueError("fill_labels: every star needs Teff, log g and [Fe/H]")
  rule = np.full(y.shape, NOT_FILLED, np.int8)
  user = {label_index(k): float(v) for k, v in cfg.fill_values}
  cell, n_cells = _cells(y, cfg)
  abundances = range(N_LABELS)[ABUNDANCE_SLICE]
  fe = y[:, label_index("Fe_H")]
  for j in range(N_LABELS):
    miss = ~np.isfinite(y[:, j])
    if not miss.any():
      continue
    if j in user:
      value, code = np.full(len(y), user[j]), np.full(len(y), FILL_RULES.index("value"))
    elif np.isfinite(y[:, j]).any():
      med, count = group_medians(cell, y[:, j], n_cells)
      in_cell = count[cell] >= cfg.fill_min_stars
      value = np.where(in_cell, med[cell], np.nanmedian(y[:, j]))
      code = np.where(in_cell, FILL_RULES.index("cell_median"), FILL_RULES.index("median"))
    elif j in abundances:
      value, code = fe, np.full(len(y), FILL_RULES.index("solar"))
    else:
      value = np.full(len(y), float(box_centre[j]))
      code = np.full(len(y), FILL_RULES.index("box_centre"))
    y[miss, j] = value[miss]
    rule[miss, j] = code[miss]
  return Filled(labels=y, rule=rule, counts=rule_counts(rule))


def rule_counts(rule: np.ndarray) -> dict[str, dict[str, int]]:
  """{label: {rule: stars}} of a `Filled.rule` array [N, 25] (labels never filled left out)."""
  out = {}
  for j, name in enumerate(LABEL_NAMES):
    codes, n = np.unique(rule[:, j][rule[:, j] != NOT_FILLED], return_counts=True)
    if len(codes):
      out[name] = {FILL_RULES[c]: int(k) for c, k in zip(codes, n, strict=True)}
  return out


def subset(f: Filled, rows: np.ndarray) -> Filled:
  """The `Filled` of some rows (an index or bool array), counts recomputed."""
  return Filled(f.labels[rows], f.rule[rows], rule_counts(f.rule[rows]))
