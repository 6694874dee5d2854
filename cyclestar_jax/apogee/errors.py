"""The three ways a file can fail (all ValueError, so `cli.run_main` prints one line, exit 2).

  WrongInputError   the input is not what this reader reads (not FITS, an apVisit, an
                    aspcapStar without the option, another wavelength grid): a batch stops.
  CorruptFileError  an apStar/asStar file that is damaged (missing HDU, wrong shape, empty
                    co-add, non-integer mask): skipped and listed in a batch.
  StarRejected      a good file whose star a cut removes (S/N, flags, masked pixels, too few
                    continuum pixels): skipped with its reason; not an error of the input.
"""

from __future__ import annotations


class WrongInputError(ValueError):
  """Not an input of the kind read here; the message names the file and the field."""


class CorruptFileError(ValueError):
  """A damaged file of the right kind; the message names the file and the field."""


class StarRejected(ValueError):
  """A star removed by a cut. Attributes: `reason` (a short key, e.g. "snr"), the message."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason
