"""Fit results (`fit_labels`' HDF5) to a FITS table, joined to allStar, for TOPCAT or astropy.

  python -m experiments.export_fits RESULTS.h5 --out labels.fits [--allstar allStar.fits]
      [--plot labels.png | --no-plot] [--overwrite]

One row per fitted spectrum: APOGEE_ID, TELESCOPE, FIELD (carried from prepare_apogee's obs.h5),
the fitted labels FIT_<LABEL> with their formal errors FIT_<LABEL>_ERR, χ²_R, flags; with
--allstar every allStar column of the star's row, joined on APOGEE_ID + TELESCOPE + FIELD
(ALLSTAR_ROW, ALLSTAR_MATCH say which row and how). When the fits started from catalogue
labels, --plot (default: OUT with suffix .png) shows fitted − catalogue labels against the
catalogue's Teff. A bad input (no such file, an allStar without a join key column, results
without star ids, an existing OUT without --overwrite) is one line, exit code 2. The logic is in
`cyclestar_jax.apogee.export` (astropy is imported only there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cyclestar_jax import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.parser(__doc__.splitlines()[0])
  p.add_argument("results", help="a fit results file (HDF5, from fit_labels or experiments.apogee)")
  p.add_argument("--out", required=True, help="the FITS table to write")
  p.add_argument("--allstar", default=None, help="allStar FITS file to join on (full or Lite)")
  p.add_argument("--plot", default=None,
                 help="fitted − catalogue figure (PNG); None: OUT with suffix .png")
  p.add_argument("--no-plot", action="store_true", help="no figure")
  p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  from cyclestar_jax.apogee import export

  summary = export.export_fits(args.results, args.out, args.allstar, overwrite=args.overwrite)
  print(export.summary_text(summary))
  if not args.no_plot:
    png = export.plot_vs_catalogue(args.results, args.plot or Path(args.out).with_suffix(".png"))
    summary["plot"] = png
    print(f"figure: {png}" if png else "no figure: the fits did not start from catalogue labels")
  return summary


def run_cli(argv=None) -> int:
  """`main` as a command: a user error is one line on stderr, exit code 2 (`cli.run_main`)."""
  return cli.run_main(main, argv, prog="export_fits")


if __name__ == "__main__":
  sys.exit(run_cli())
