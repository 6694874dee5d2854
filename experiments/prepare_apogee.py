"""Read SDSS's own APOGEE files (apStar / asStar, the allStar catalogue) into the reference format:
DIR/obs.h5 (and with --mode paper DIR/synth.h5), DIR/skipped.csv (file, reason, message),
DIR/normalization.png, DIR/prepare.json.

  python -m experiments.prepare_apogee --apstar DIR_OR_GLOB [--files LIST.txt]
      [--allstar allStar.fits | labels.csv] --out DIR [--mode observed|paper]
      [--emulator NN_normalized_spectra.npz] [--snr-min 30 --snr-max 500] [--chi2-max 50]
      [--broadening-max 10] [--teff-logg spectroscopic|calibrated] [--sizes 80000,10000,7000]
      [--fill-value C12_C13=15,...] [--telescopes apo25m,lco25m,apo1m] [--vscatter-max KMS]
      [--bad-pixel-bits NAMES] [--coadd pixel|global] [--aspcap] [--fractions 80,10,7]
      [--seed 0] [--workers 2] [--overwrite]

--mode observed (the default): every star that passes the cuts into DIR/obs.h5. --mode paper:
the paper's two domains (§4.1.1): after the cuts (ASPCAP_CHI2 < 50, broadening < 10 km/s,
30 < S/N < 500 by default) the stars are split in halves by --seed; DIR/obs.h5 holds one half's
spectra, DIR/synth.h5 the emulator's spectra at the other half's catalogue labels (missing
labels filled by a stated rule, stars outside the emulator's box dropped; both counted), train /
val / test 80 : 10 : 7 by default. Then `python -m experiments.apogee --synth DIR/synth.h5 --obs
DIR/obs.h5 --emulator E` runs §4.1 on them.

The files are read by worker processes with a progress bar (files/s, ETA); an interrupted run
resumes when run again with the same input and options; a complete DIR is kept unless
--overwrite. A bad input (not FITS, an apVisit, another wavelength grid, an allStar without a
needed column, a glob matching nothing, an emulator not on the 7,214 pixels, too few stars for
the splits, …) stops with one line naming the file and the field, exit code 2. The logic is in
`cyclestar_jax.apogee.prepare` and `cyclestar_jax.apogee.paper`; docs/apogee.md is the guide.
"""

from __future__ import annotations

import argparse
import os
import sys

from cyclestar_jax import cli
from cyclestar_jax.apogee import bits
from cyclestar_jax.apogee.config import (
    PAPER_CUTS,
    PAPER_FRACTIONS,
    TEFF_LOGG,
    TELESCOPES,
    CutConfig,
    PaperConfig,
    PrepareConfig,
    ReadConfig,
)

_R, _C, _P, _Q = ReadConfig(), CutConfig(), PrepareConfig(), PaperConfig()
MODES = ("observed", "paper")


def _names(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(",") if t.strip())


def _numbers(p, flag: str, text: str, n: int, kind=float) -> tuple:
  try:
    v = tuple(kind(t) for t in text.split(","))
  except ValueError:
    v = ()
  if len(v) != n:
    p.error(f"{flag} must be {n} comma-separated numbers, got {text!r}")
  return v


def _fill_values(p, text: str | None) -> tuple[tuple[str, float], ...]:
  out = []
  for item in _names(text or ""):
    name, _, value = item.partition("=")
    try:
      out.append((name.strip(), float(value)))
    except ValueError:
      p.error(f"--fill-value wants LABEL=NUMBER items, e.g. C12_C13=15; got {item!r}")
  return tuple(out)


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.parser(__doc__.splitlines()[0])
  p.add_argument("--apstar", default=None,
                 help="a folder (SDSS's stars/ tree, walked for apStar-*/asStar-*), a glob "
                      "(quote it) or one file")
  p.add_argument("--files", default=None, help="a text file of paths, one a line")
  p.add_argument("--allstar", default=None,
                 help="allStar FITS (DR16/DR17, full or Lite) or a CSV of APOGEE_ID and the 25 "
                      "label names; None: labels are NaN")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--mode", choices=MODES, default="observed",
                 help="observed: every star into obs.h5; paper: the paper's two domains "
                      "(obs.h5 from one half, synth.h5 from the other half's labels)")
  p.add_argument("--emulator", default=None,
                 help="--mode paper: the emulator of the synthetic domain (The Payne's "
                      "NN_normalized_spectra.npz or any file load_emulator reads)")
  p.add_argument("--teff-logg", choices=TEFF_LOGG, default=None,
                 help="allStar's Teff/log g as labels: spectroscopic (TEFF_SPEC, LOGG_SPEC) or "
                      "calibrated (TEFF, LOGG); None: spectroscopic with --mode paper, else "
                      "calibrated")
  p.add_argument("--chi2-max", type=float, default=None,
                 help="drop stars with ASPCAP_CHI2 at or above this (0: off); None: "
                      f"{PAPER_CUTS.chi2_max:g} with --mode paper, else off")
  p.add_argument("--broadening-max", type=float, default=None,
                 help="drop stars with √(VSINI² + VMACRO²) at or above this, km/s (0: off); "
                      f"None: {PAPER_CUTS.broadening_max:g} with --mode paper, else off")
  p.add_argument("--sizes", default=None,
                 help="--mode paper: train,val,test stars per domain (the paper: "
                      "80000,10000,7000); None: every star, by --fractions")
  p.add_argument("--fill-value", default=None,
                 help="--mode paper: LABEL=VALUE,... for labels the catalogue lacks (default "
                      "rule: the median at the star's Teff-log g; docs/apogee.md)")
  p.add_argument("--snr-min", type=float, default=_C.snr_range[0], help="S/N cut, low")
  p.add_argument("--snr-max", type=float, default=_C.snr_range[1], help="S/N cut, high")
  p.add_argument("--telescopes", default=",".join(_C.telescopes),
                 help=f"comma-separated, among {', '.join(TELESCOPES)}")
  p.add_argument("--vscatter-max", type=float, default=None,
                 help="drop stars whose visit RV scatter VSCATTER exceeds this (km/s; binaries)")
  p.add_argument("--bad-pixel-bits", default=",".join(_R.bad_pixel_bits),
                 help=f"APOGEE_PIXMASK bits that mask a pixel, among {', '.join(bits.PIXMASK)}")
  p.add_argument("--bad-starflag-bits", default=",".join(_C.bad_starflag_bits),
                 help="APOGEE_STARFLAG bits that drop a star")
  p.add_argument("--bad-aspcapflag-bits", default=",".join(_C.bad_aspcapflag_bits),
                 help="APOGEE_ASPCAPFLAG bits that drop a star (allStar only)")
  p.add_argument("--bad-extratarg-bits", default=",".join(_C.bad_extratarg_bits),
                 help="EXTRATARG bits that drop a star (allStar only)")
  p.add_argument("--coadd", choices=("pixel", "global"), default=_R.coadd,
                 help="pixel-weighted co-add (what ASPCAP fits) or globally weighted")
  p.add_argument("--aspcap", action="store_true",
                 help="also read aspcapStar files (ASPCAP's own normalization, kept as it is)")
  p.add_argument("--fractions", default=None,
                 help="train,val,test weights (normalized); None: 0.8,0.1,0.1, with --mode "
                      "paper the paper's 80,10,7")
  p.add_argument("--seed", type=int, default=_P.seed, help="seed of the split")
  p.add_argument("--workers", type=int, default=min(_P.workers, os.cpu_count() or 1),
                 help="reader processes (0: read in this process)")
  p.add_argument("--shard-files", type=int, default=_P.shard_files,
                 help="files per shard (memory and the unit of resume)")
  p.add_argument("--overwrite", action="store_true", help="replace a complete DIR")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  if args.apstar is None and args.files is None:
    p.error("give --apstar DIR_OR_GLOB and/or --files LIST.txt")
  paper = args.mode == "paper"
  if paper and args.emulator is None:
    p.error("--mode paper needs --emulator (the synthetic domain's spectra)")
  if args.fractions is None:
    args.fractions = PAPER_FRACTIONS if paper else _P.fractions
  else:
    f = _numbers(p, "--fractions", args.fractions, 3)
    if any(v < 0 for v in f) or not sum(f) > 0:
      p.error(f"--fractions must be >= 0 with a positive sum, got {args.fractions!r}")
    args.fractions = tuple(v / sum(f) for v in f)
  args.sizes = None if args.sizes is None else _numbers(p, "--sizes", args.sizes, 3, int)
  args.fill_values = _fill_values(p, args.fill_value)
  if args.teff_logg is None:
    args.teff_logg = "spectroscopic" if paper else "calibrated"
  for k in ("chi2_max", "broadening_max"):
    v = getattr(args, k)
    if v is None:
      v = getattr(PAPER_CUTS, k) if paper else None
    setattr(args, k, v or None)  # 0: off
  return args


def build_config(args: argparse.Namespace) -> PrepareConfig:
  read = ReadConfig(bad_pixel_bits=_names(args.bad_pixel_bits), coadd=args.coadd,
                    allow_aspcap=args.aspcap)
  cuts = CutConfig(snr_range=(args.snr_min, args.snr_max), telescopes=_names(args.telescopes),
                   bad_starflag_bits=_names(args.bad_starflag_bits),
                   bad_aspcapflag_bits=_names(args.bad_aspcapflag_bits),
                   bad_extratarg_bits=_names(args.bad_extratarg_bits),
                   vscatter_max=args.vscatter_max, chi2_max=args.chi2_max,
                   broadening_max=args.broadening_max)
  return PrepareConfig(read=read, cuts=cuts, fractions=args.fractions, seed=args.seed,
                       workers=args.workers, shard_files=args.shard_files,
                       teff_logg=args.teff_logg).check()


def _splits(s: dict) -> str:
  return f"train/val/test {s['train']}/{s['val']}/{s['test']}"


def report(args: argparse.Namespace, summary: dict) -> None:
  """The summary's lines on stdout."""
  skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary["skipped"].items())) or "none"
  s = summary["splits"]
  if summary["mode"] == "paper":
    print(f"wrote {args.out}/obs.h5 ({_splits(s['observed'])}) and {args.out}/synth.h5 "
          f"({_splits(s['synthetic'])}): {summary['stars']} stars of {summary['files']} files "
          f"in halves, {summary['unused']} unused, in {summary['seconds']:.0f} s")
    filled = "; ".join(f"{k}: " + ", ".join(f"{r} {n}" for r, n in v.items())
                       for k, v in summary["filled"].items()) or "none"
    print(f"labels filled in synth.h5: {filled}")
  else:
    print(f"wrote {args.out}/obs.h5: {summary['stars']} of {summary['files']} files "
          f"({_splits(s)}) in {summary['seconds']:.0f} s")
  print(f"skipped: {skipped} ({args.out}/skipped.csv); normalization.png; prepare.json")
  for note in summary["catalogue_notes"]:
    print(f"catalogue: {note}")


def main(argv=None) -> dict:
  args = parse_args(argv)
  from cyclestar_jax.apogee import catalog, prepare

  cfg = build_config(args)
  paper = PaperConfig(sizes=args.sizes, fill_values=args.fill_values).check()
  files = prepare.find_files(args.apstar, args.files, allow_aspcap=args.aspcap)
  em = None
  if args.mode == "paper":  # the emulator is checked before the catalogue is read
    from cyclestar_jax.apogee.paper import check_emulator, prepare_paper
    from cyclestar_jax.emulator import load_emulator

    em = load_emulator(args.emulator)
    check_emulator(em)
  cat = (catalog.read_catalogue(args.allstar, cfg.cuts, cfg.teff_logg) if args.allstar
         else None)
  if em is not None:
    summary = prepare_paper(files, args.out, cfg, paper, cat, em, overwrite=args.overwrite,
                            progress=not args.no_progress)
  else:
    summary = prepare.prepare(files, args.out, cfg, cat, overwrite=args.overwrite,
                              progress=not args.no_progress)
  report(args, summary)
  return summary


def run_cli(argv=None) -> int:
  """`main` as a command: a user error is one line on stderr, exit code 2 (`cli.run_main`)."""
  return cli.run_main(main, argv, prog="prepare_apogee")


if __name__ == "__main__":
  sys.exit(run_cli())
