"""Read SDSS's own APOGEE files (apStar / asStar, the allStar catalogue) into the reference format:
DIR/obs.h5, DIR/skipped.csv (file, reason, message), DIR/normalization.png, DIR/prepare.json.

  python -m experiments.prepare_apogee --apstar DIR_OR_GLOB [--files LIST.txt]
      [--allstar allStar.fits | labels.csv] --out DIR [--snr-min 30 --snr-max 500]
      [--telescopes apo25m,lco25m,apo1m] [--vscatter-max KMS] [--bad-pixel-bits NAMES]
      [--coadd pixel|global] [--aspcap] [--fractions 0.8,0.1,0.1] [--seed 0] [--workers 2]
      [--overwrite]

The files are read by worker processes with a progress bar (files/s, ETA); an interrupted run
resumes when run again with the same input and options; a complete DIR is kept unless
--overwrite. A bad input (not FITS, an apVisit, another wavelength grid, an allStar without a
needed column, a glob matching nothing, …) stops with one line naming the file and the field,
exit code 2. The logic is in `cyclestar_jax.apogee.prepare`; docs/apogee.md is the guide.
"""

from __future__ import annotations

import argparse
import os
import sys

from cyclestar_jax import cli
from cyclestar_jax.apogee import bits
from cyclestar_jax.apogee.config import TELESCOPES, CutConfig, PrepareConfig, ReadConfig

_R, _C, _P = ReadConfig(), CutConfig(), PrepareConfig()


def _names(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(",") if t.strip())


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
  p.add_argument("--fractions", default=",".join(f"{f:g}" for f in _P.fractions),
                 help="train,val,test fractions")
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
  try:
    args.fractions = tuple(float(v) for v in args.fractions.split(","))
  except ValueError:
    p.error(f"--fractions must be three numbers, e.g. 0.8,0.1,0.1; got {args.fractions!r}")
  return args


def build_config(args: argparse.Namespace) -> PrepareConfig:
  read = ReadConfig(bad_pixel_bits=_names(args.bad_pixel_bits), coadd=args.coadd,
                    allow_aspcap=args.aspcap)
  cuts = CutConfig(snr_range=(args.snr_min, args.snr_max), telescopes=_names(args.telescopes),
                   bad_starflag_bits=_names(args.bad_starflag_bits),
                   bad_aspcapflag_bits=_names(args.bad_aspcapflag_bits),
                   bad_extratarg_bits=_names(args.bad_extratarg_bits),
                   vscatter_max=args.vscatter_max)
  return PrepareConfig(read=read, cuts=cuts, fractions=args.fractions, seed=args.seed,
                       workers=args.workers, shard_files=args.shard_files).check()


def main(argv=None) -> dict:
  args = parse_args(argv)
  from cyclestar_jax.apogee import catalog, prepare

  cfg = build_config(args)
  files = prepare.find_files(args.apstar, args.files, allow_aspcap=args.aspcap)
  cat = catalog.read_catalogue(args.allstar, cfg.cuts) if args.allstar else None
  summary = prepare.prepare(files, args.out, cfg, cat, overwrite=args.overwrite,
                            progress=not args.no_progress)
  skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary["skipped"].items())) or "none"
  s = summary["splits"]
  print(f"wrote {args.out}/obs.h5: {summary['stars']} of {summary['files']} files "
        f"(train/val/test {s['train']}/{s['val']}/{s['test']}) in {summary['seconds']:.0f} s; "
        f"skipped: {skipped} ({args.out}/skipped.csv); normalization.png")
  for note in summary["catalogue_notes"]:
    print(f"catalogue: {note}")
  return summary


def run_cli(argv=None) -> int:
  """`main` as a command: a user error is one line on stderr, exit code 2 (`cli.run_main`)."""
  return cli.run_main(main, argv, prog="prepare_apogee")


if __name__ == "__main__":
  sys.exit(run_cli())
