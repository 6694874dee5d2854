"""The training log `metrics.jsonl`: one JSON object per line, appended whole.

The trainer (`trainer`) writes a `kind: "train"` line per log interval and a `kind: "val"` line
per validation, each with its `step`; the pipeline, the figures and the tests read them back.
A kill can tear only the last line: readers drop it (`read_metrics`), and a resumed run drops
the lines written after its checkpoint (`truncate_after`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cyclestar_jax.fileio import atomic_write_text

FILE_NAME = "metrics.jsonl"  # in a run folder


def _metric_lines(path: str | os.PathLike) -> list[tuple[str, dict]]:
  """(text, parsed) of each line of a metrics.jsonl file.

  A last line that does not parse is a write torn by a kill (lines are appended whole, so only
  the last one can be cut short): it is dropped. Any other bad line is an error naming the
  file and the line number.
  """
  lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
  out = []
  for i, line in enumerate(lines):
    try:
      out.append((line, json.loads(line)))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path}: line {i + 1} is not JSON ({e.msg}); expected one JSON object "
                       f"per line") from e
  return out


def start_new(path: str | os.PathLike) -> None:
  """An empty log (a run that starts at step 0)."""
  atomic_write_text(path, "")


def append_line(path: str | os.PathLike, line: dict) -> None:
  """Append one JSON line (a `kind: "train"` or `"val"` dict with its `step`)."""
  with Path(path).open("a") as f:
    f.write(json.dumps(line) + "\n")


def truncate_after(path: str | os.PathLike, after_step: int) -> None:
  """Drop the lines past `after_step` (written after the checkpoint a run resumes from) and a
  last line torn by a kill; nothing without a file."""
  if not Path(path).exists():
    return
  keep = [text for text, d in _metric_lines(path) if d["step"] <= after_step]
  atomic_write_text(path, "".join(line + "\n" for line in keep))


def read_metrics(path: str | os.PathLike) -> dict[str, list[dict]]:
  """metrics.jsonl → {"train": [lines], "val": [lines]} (a torn last line is skipped)."""
  out: dict[str, list[dict]] = {"train": [], "val": []}
  for _, d in _metric_lines(path):
    out.setdefault(d.get("kind", "train"), []).append(d)
  return out


def last_metrics(path: str | os.PathLike) -> tuple[dict, dict]:
  """(last train line, last val line) of a metrics.jsonl file ({} where there is none)."""
  if not Path(path).exists():
    return {}, {}
  m = read_metrics(path)
  return (m["train"][-1] if m["train"] else {}), (m["val"][-1] if m["val"] else {})


def elapsed_by_step(path: str | os.PathLike) -> dict[int, float]:
  """Wall-clock seconds of the training loop up to each logged train step of a metrics.jsonl
  file, summed from its intervals (iterations / `it_per_s`; validations, checkpoints and
  compilation between them are not counted). Lines of an attempt that was killed and resumed
  from an earlier checkpoint count too: that time was spent. {} for no file."""
  if not Path(path).is_file():
    return {}
  out, last, clock = {}, 0, 0.0
  for d in read_metrics(path)["train"]:
    rate = d.get("it_per_s") or 0.0
    step = int(d["step"])
    if rate > 0 and step > last:
      clock += (step - last) / rate
    last = step
    out[step] = clock
  return out
