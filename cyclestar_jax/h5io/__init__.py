"""Reader and writer of the reference HDF5 data format (docs/data_format.md). NumPy + h5py only.

Format (one file per domain, as the authors' `csn_kurucz.h5` / `csn_apogee.h5`): datasets at the
root named `"<field> <split>"` with a space, for split in `train`, `val`, `test`:

  `spectra <split>`      [N, 7214] continuum-normalized flux (float32 written; any float read)
  `spectra_err <split>`  [N, 7214] 1-sigma flux errors in raw flux units (float32)
  `spectra_msk <split>`  [N, 7214] 1 = good pixel, 0 = bad (uint8 written; any 0/1 numbers read)
  `labels <split>`       [N, 25] physical labels in The Payne's order (`labels.LABEL_NAMES`),
                         float64 written, float32 accepted
  `snr <split>`          [N] signal-to-noise ratio (float32)

Only `spectra <split>` is required; the authors' synthetic files hold `spectra` and `labels` only
and are read as they are (`x_err`, `x_msk`, `snr` are then None). Any other per-row dataset
`"<name> <split>"` (e.g. `labels_true train`, the mock world's true labels) is an *extra*, read
with `SpectraFile.extra`. File attributes are returned by `SpectraFile.attrs`; dict-valued
attributes (the mock world's settings under `"world"`) are stored as JSON strings and parsed
back to dicts; lists of strings (`"paired_splits"`: the splits whose row i is the same star in
both domains' files, `["val"]` in the mock world's files) come back as lists of str.

Reading is lazy: `SpectraFile` opens the file, checks every dataset's shape once (metadata only)
and reads rows on demand, by row range (`read(split, start, stop)`, `iter_chunks`) or by an
index array (`read(split, rows=idx)`, e.g. a shuffled batch), so files larger than memory work.

Bad pixels (documented masking, applied by every `SpectraFile.read`; the file is not changed):
  * NaN or ±inf flux: flux set to 1.0 (the continuum) and mask set False.
  * NaN, ±inf, zero or negative error: error set to 1.0 (a very large error in normalized flux)
    and mask set False.
  * A file without `spectra_msk` gets a mask (all True but the bad pixels) as soon as a bad
    pixel is found in the block read; otherwise `x_msk` stays None.
  * Non-finite labels or S/N are left as they are, but counted.
All of it is counted and reported in ONE `BadPixelWarning` per `read` call, naming the file and
the datasets; the counts are also in the warning's `counts` attribute. So no NaN reaches the
networks through `x` or `x_err`. Mask values other than 0/1 (e.g. an APOGEE bitmask stored by
mistake) are an error, not a guess.

Writing is atomic: `SpectraWriter` writes to a hidden temporary file next to the target and
renames it onto the target only when every row of every split has been written and the `with`
block exits without an exception; otherwise the temporary file is deleted and an existing file
at the target is left untouched. (A process killed with SIGKILL leaves its `.<name>.tmp-*`
file behind, never a half-written target. No fsync is done: the guarantee is against failed or
interrupted runs, not power loss.) Datasets are chunked along rows, full width, so row ranges
read fast; no compression by default, for speed.
"""

from cyclestar_jax.h5io.format import FIELDS, SPLITS, BadPixelWarning, Spectra, dataset_name
from cyclestar_jax.h5io.reader import SpectraFile, read_split
from cyclestar_jax.h5io.writer import SpectraWriter

__all__ = ["FIELDS", "SPLITS", "BadPixelWarning", "Spectra", "SpectraFile", "SpectraWriter",
           "dataset_name", "read_split"]
