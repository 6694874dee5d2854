"""`--mode paper`: the paper's two domains (§4.1.1) from SDSS's files and the user's emulator.

The paper's data: stars with decent catalogue fits (χ²_R < 50, total broadening < 10 km/s,
30 < S/N < 500) split in halves at random; the observed domain is one half's co-added
spectra, the synthetic domain Kurucz spectra emulated by The Payne at the other half's
catalogue labels; 80,000 / 10,000 / 7,000 train / val / test stars per domain. Here:

  1. every file is read as in `--mode observed` (`prepare.read_files`: shards, workers,
     resume) and the catalogue cuts applied (`prepare.select`, with `CutConfig.chi2_max` and
     `broadening_max` on);
  2. a star without Teff, log g or [Fe/H] is dropped (reason `labels`), the other missing
     labels are filled (`fill`), and a star whose labels fall outside the emulator's box is
     dropped (reason `emulator_box`): both before the halves, so the two domains are drawn from
     the same stars' population;
  3. the stars left are split in halves by the seed (by APOGEE_ID: a star seen from two
     telescopes stays in one half; the synthetic half takes the odd star); each half is split
     train / val / test by `PaperConfig.sizes` (exact, the rest unused) or
     the fractions (default the paper's 80 : 10 : 7);
  4. OUT/obs.h5 is the observed half as `--mode observed` writes it (labels the catalogue's,
     NaN where missing); OUT/synth.h5 holds `spectra` = the emulator at the synthetic half's
     filled labels and `labels`, with `apogee_id`/`telescope`/`field` of the star whose labels
     they are and `labels_filled` ([25] 0/1, the value was filled). Both files say
     `paired_splits` = [] (no star is in both), so neither the trainer nor the evaluation
     takes their val splits as pairs.

Bad input stops before any file is read (one line): an emulator that is not on the 7,214
pixels or has not 25 labels, no catalogue, a catalogue whose stars passing its own cuts
cannot fill the splits asked (the count is said), an existing output without overwrite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from cyclestar_jax import h5io
from cyclestar_jax.apogee import catalog, fill, prepare
from cyclestar_jax.apogee.config import PaperConfig, PrepareConfig
from cyclestar_jax.apogee.prepare import Reading, Selection
from cyclestar_jax.labels import LABEL_NAMES, N_LABELS
from cyclestar_jax.resources import N_PIX

ID_FIELDS = ("apogee_id", "telescope", "field")


def check_emulator(em) -> None:
  """The emulator gives 7,214 pixels from 25 labels.

  Raises:
    ValueError naming the emulator's file.
  """
  if em.n_pix != N_PIX:
    raise ValueError(f"emulator {em.source}: gives {em.n_pix} pixels; the synthetic domain needs "
                     f"The Payne's {N_PIX} APOGEE pixels")
  if em.n_labels != N_LABELS:
    raise ValueError(f"emulator {em.source}: takes {em.n_labels} labels; expected The Payne's "
                     f"{N_LABELS} ({', '.join(LABEL_NAMES[:3])}, …)")


def split_sizes(n: int, fractions: tuple[float, float, float],
                sizes: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
  """Rows (train, val, test) of a domain of n stars, or None when n is too few: `sizes` needs
  n ≥ their sum; fractions need ≥ 1 train row and ≥ 1 row in every split with a fraction > 0
  (val and test get round(f·n), as `prepare.assign_splits`)."""
  if sizes is not None:
    return tuple(int(v) for v in sizes) if n >= sum(sizes) else None
  n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
  out = (n - n_val - n_test, n_val, n_test)
  ok = out[0] >= 1 and all(v >= 1 for v, f in zip(out, fractions, strict=True) if f > 0)
  return out if ok else None


def _asked(fractions, sizes) -> str:
  if sizes is not None:
    return f"train/val/test sizes {'/'.join(map(str, sizes))} per domain"
  return f"train/val/test fractions {'/'.join(f'{f:.3f}' for f in fractions)}"


def _too_few(n: int, where: str, cfg: PrepareConfig, paper: PaperConfig) -> ValueError:
  return ValueError(
      f"{n} stars remain after the cuts {where}: {n // 2} per domain, too few for the splits "
      f"asked ({_asked(cfg.fractions, paper.sizes)}); relax the cuts or ask smaller splits")


def eligible_in_catalogue(cat: catalog.Catalogue, cfg: PrepareConfig) -> int:
  """Catalogue rows that pass the catalogue's cuts, S/N range, telescopes and have Teff, log g,
  [Fe/H]: how many stars can remain at most (known before any file is read)."""
  cuts = cfg.cuts
  ok = fill.has_required(cat.labels)
  if cat.snr is not None:
    lo, hi = cuts.snr_range
    ok &= (cat.snr > lo) & (cat.snr < hi)
  ok &= np.array([t == "" or t in cuts.telescopes for t in cat.telescope], bool)
  rows = np.flatnonzero(ok)
  return int(sum(catalog.catalogue_reason(cat, int(r), cuts) is None for r in rows))


def _drop(reading: Reading, rows: np.ndarray, reason: str, messages: list[str]
          ) -> list[tuple[str, str, str]]:
  paths = reading.meta["path"]
  return [(str(paths[r]), reason, f"{paths[r]}: {m}") for r, m in zip(rows, messages,
                                                                     strict=True)]


def _box_messages(y: np.ndarray, y_min: np.ndarray, y_max: np.ndarray) -> list[str]:
  out = []
  for row in y:
    bad = np.flatnonzero((row < y_min) | (row > y_max))
    j = bad[0]
    more = f" (and {len(bad) - 1} more labels)" if len(bad) > 1 else ""
    out.append(f"{LABEL_NAMES[j]} {row[j]:.4g} outside the emulator's box [{y_min[j]:.4g}, "
               f"{y_max[j]:.4g}]{more}")
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class Candidates:
  """The stars that can go to either domain.

  Attributes:
    rows: [M] rows of the `Reading`. filled: `fill.Filled` of their labels ([M, 25]).
    skipped: the stars dropped here (reasons `labels`, `emulator_box`).
    outside_box: {label: {"below": n, "above": n}} of the stars dropped by the box.
  """

  rows: np.ndarray
  filled: fill.Filled
  skipped: list[tuple[str, str, str]]
  outside_box: dict[str, dict[str, int]]


def candidates(reading: Reading, sel: Selection, cat: catalog.Catalogue, paper: PaperConfig,
               em) -> Candidates:
  """The kept rows with Teff, log g, [Fe/H], their labels filled, inside the emulator's box."""
  rows = np.flatnonzero(sel.keep)
  y = cat.labels[sel.cat_row[rows]]
  req = fill.has_required(y)
  skipped = _drop(reading, rows[~req], "labels",
                  ["no Teff, log g or [Fe/H] in the catalogue"] * int((~req).sum()))
  y_min, y_max = np.asarray(em.y_min, np.float64), np.asarray(em.y_max, np.float64)
  filled = fill.fill_labels(y[req], paper, 0.5 * (y_min + y_max))
  out = np.any((filled.labels < y_min) | (filled.labels > y_max), axis=1)
  skipped += _drop(reading, rows[req][out], "emulator_box",
                   _box_messages(filled.labels[out], y_min, y_max))
  box = {}
  for j, name in enumerate(LABEL_NAMES):
    below = int((filled.labels[out, j] < y_min[j]).sum())
    above = int((filled.labels[out, j] > y_max[j]).sum())
    if below or above:
      box[name] = {"below": below, "above": above}
  return Candidates(rows[req][~out], fill.subset(filled, ~out), skipped, box)


@dataclasses.dataclass(frozen=True, eq=False)
class Domain:
  """One domain's stars: `order` [n] indices into the `Candidates`, in row order, and `split`
  [n] (0 train, 1 val, 2 test)."""

  order: np.ndarray
  split: np.ndarray

  def sizes(self) -> dict[str, int]:
    return {s: int(np.sum(self.split == i)) for i, s in enumerate(h5io.SPLITS)}


def halves(apogee_id: np.ndarray, cfg: PrepareConfig, paper: PaperConfig
           ) -> tuple[Domain, Domain, int] | None:
  """(observed, synthetic, unused rows) of the candidates split in halves by `cfg.seed`.

  The halves are of stars (APOGEE_IDs, the synthetic half takes the odd one): a star observed
  from two telescopes or in two fields has its rows in one half, so no star is in both domains.
  Each half is then split by `paper.sizes` (a random subset of that many rows) or
  `cfg.fractions`.

  Args:
    apogee_id: [n] the candidates' APOGEE_IDs. cfg, paper: the settings.

  Returns:
    None when a half is too few for the splits (`split_sizes`).
  """
  uniq, star = np.unique(np.asarray(apogee_id, str), return_inverse=True)
  perm = np.random.default_rng([cfg.seed, 1]).permutation(len(uniq))
  first = np.zeros(len(uniq), bool)
  first[perm[:len(uniq) // 2]] = True
  row_perm = np.random.default_rng([cfg.seed, 2]).permutation(len(star))
  domains, unused = [], 0
  for k, half in enumerate((row_perm[first[star[row_perm]]], row_perm[~first[star[row_perm]]])):
    sizes = split_sizes(len(half), cfg.fractions, paper.sizes)
    if sizes is None:
      return None
    used = np.sort(half[:sum(sizes)])
    unused += len(half) - len(used)
    frac = tuple(v / sum(sizes) for v in sizes)
    domains.append(Domain(used, prepare.assign_splits(len(used), frac, cfg.seed + 1 + k)))
  return domains[0], domains[1], unused


def write_synth(path: Path, em, reading: Reading, cand: Candidates, dom: Domain, *,
                chunk: int, attrs: dict) -> fill.Filled:
  """OUT/synth.h5: the emulator at the domain's filled labels, `chunk` stars at a time
  (`SpectraWriter`, atomic).

  Returns:
    The `Filled` labels of the stars written (their counts are the summary's).
  """
  sub = fill.subset(cand.filled, dom.order)
  rows = cand.rows[dom.order]
  extra = {**{k: ((), str) for k in ID_FIELDS}, "labels_filled": ((N_LABELS,), np.uint8)}
  with h5io.SpectraWriter(path, dom.sizes(), fields=("spectra", "labels"), extra_fields=extra,
                          attrs=attrs) as w:
    for si, s in enumerate(h5io.SPLITS):
      idx = np.flatnonzero(dom.split == si)
      for a in range(0, len(idx), chunk):
        k = idx[a:a + chunk]
        y = sub.labels[k]
        x = np.asarray(em.predict(y, chunk_size=chunk, check_box=False), np.float32)
        w.write(s, a, x=x, y=y, labels_filled=sub.filled[k].astype(np.uint8),
                **{f: reading.meta[f][rows[k]].astype(object) for f in ID_FIELDS})
  return sub


def _fewest_per_domain(cfg: PrepareConfig, paper: PaperConfig) -> int:
  """The fewest stars a domain needs for the splits asked."""
  if paper.sizes is not None:
    return sum(paper.sizes)
  return next(m for m in range(1, 10 ** 6) if split_sizes(m, cfg.fractions, None))


def _checks(cfg: PrepareConfig, paper: PaperConfig, cat, em, out: Path, overwrite: bool) -> int:
  """Every check made before any file is read; returns the catalogue's eligible stars."""
  cfg.check()
  paper.check()
  if cat is None:
    raise ValueError("--mode paper needs the catalogue (--allstar allStar.fits): the synthetic "
                     "domain is made at its labels")
  check_emulator(em)
  prepare.check_outputs(out, overwrite)
  n = eligible_in_catalogue(cat, cfg)
  if n < 2 * _fewest_per_domain(cfg, paper):
    raise _too_few(n, f"in the catalogue {os.path.basename(cat.source)} (its own cuts, S/N, "
                   "telescopes, Teff/log g/[Fe/H]; before any file is read)", cfg, paper)
  return n


def prepare_paper(files: list[str], out_dir: str | os.PathLike, cfg: PrepareConfig,
                  paper: PaperConfig, cat: catalog.Catalogue | None, em, *,
                  overwrite: bool = False, progress: bool = True) -> dict:
  """The paper's two domains (module docstring): OUT/obs.h5, OUT/synth.h5, skipped.csv,
  normalization.png, prepare.json.

  Args:
    files: star files (`prepare.find_files`). out_dir: the output folder. cfg: reading, cuts
      (`config.PAPER_CUTS` for the paper's), fractions, seed, teff_logg. paper: `PaperConfig`.
    cat: the catalogue (`catalog.read_catalogue`). em: an `emulator.Emulator`.
    overwrite: replace a complete run. progress: progress bars.

  Returns:
    The summary (also OUT/prepare.json): counts of every cut and rule, both domains' splits.

  Raises:
    ValueError / FileExistsError / WrongInputError …: one-line messages (module docstring).
  """
  t0 = time.perf_counter()
  out = Path(out_dir)
  n_cat = _checks(cfg, paper, cat, em, out, overwrite)
  reading = prepare.read_files(files, out, cfg, overwrite=overwrite, progress=progress)
  sel = prepare.select(reading, cat, cfg.cuts)
  cand = candidates(reading, sel, cat, paper, em)
  skipped = sel.skipped + cand.skipped
  doms = halves(reading.meta["apogee_id"][cand.rows], cfg, paper)
  if doms is None:
    prepare._write_skipped(out / prepare.SKIPPED_FILE, skipped)
    raise _too_few(len(cand.rows), f"of {len(files)} files (see {out / prepare.SKIPPED_FILE})",
                   cfg, paper)
  obs, syn, unused = doms
  keep_obs = np.zeros(len(sel.keep), bool)
  keep_obs[cand.rows[obs.order]] = True
  common = {"mode": "paper", "seed": cfg.seed, "teff_logg": cat.teff_logg,
            "emulator": str(em.source), "catalogue": cat.source}
  prepare.plot_kept(reading, keep_obs, cfg)
  obs_sizes = prepare.write_obs(out / prepare.OBS_FILE, reading,
                                dataclasses.replace(sel, keep=keep_obs), obs.split, cat, cfg,
                                {**common, "domain": "observed"})
  sub = write_synth(out / prepare.SYNTH_FILE, em, reading, cand, syn, chunk=paper.chunk,
                    attrs={**common, "domain": "synthetic", "paired_splits": [],
                           "source": "cyclestar_jax.apogee.paper",
                           "paper_config": json.dumps(dataclasses.asdict(paper))})
  return prepare.finish(reading, skipped, {
      "mode": "paper", "catalogue_eligible": n_cat, "stars": len(cand.rows),
      "domains": {"observed": len(obs.order), "synthetic": len(syn.order)}, "unused": unused,
      "splits": {"observed": obs_sizes, "synthetic": syn.sizes()},
      "filled": sub.counts, "outside_box": cand.outside_box, "teff_logg": cat.teff_logg,
      "emulator": str(em.source), "seconds": round(time.perf_counter() - t0, 2),
      "catalogue": cat.source, "catalogue_notes": list(cat.notes)})
