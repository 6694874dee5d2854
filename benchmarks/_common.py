"""Shared bits of the benchmark scripts."""

from __future__ import annotations

import json


def emit_json(result: dict, out: str | None = None) -> dict:
  """Print a benchmark's result as JSON and, if `out` is given, also write it there."""
  text = json.dumps(result, indent=1)
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text + "\n")
  return result
