"""The design documentation lives in the repository (docs/), and everything points there.

No tracked text file may refer to the old design notes outside the repository or to a path
outside it; every `docs/<page>.md` a file mentions must exist, and a section it names
(`docs/method.md, 'Label fits'`) must be a heading of that page.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEXT_SUFFIXES = (".py", ".md", ".cfg", ".toml", ".ini")
# Built from parts, so that this file matches neither the patterns nor a plain grep for them.
FORBIDDEN = {
    "the old design notes": re.compile(re.escape("DES" + "IGN.md")),
    "a relative path into the shared folder": re.compile(r"\.\./" + r"shared\b"),
    "the team's shared folder": re.compile("/work/" + r"shared\b"),
}
_SKIP_DIRS = {".git", ".venv", "venv", "runs", "build", "dist", "node_modules", "__pycache__",
              ".pytest_cache", ".ruff_cache", "shared"}
# A docs page mentioned anywhere, e.g. `docs/method.md` or `../../docs/mock_world.md`.
_DOCS_PATH = re.compile(r"docs/([\w-]+(?:/[\w-]+)*\.md)")
# A page named inside docs/ by its bare name, e.g. `method.md` (not `../benchmarks/README.md`).
_BARE_PAGE = re.compile(r"(?<![\w./-])([\w-]+\.md)")
# A section named right after a page: `, 'Label fits'` or `, "Label fits"`.
_SECTION = re.compile(r""",\s*(["'])([^"'\n]+)\1""")


def _tracked_text_files() -> list[Path]:
  """The repository's tracked text files (git ls-files; a walk of the tree without git)."""
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                         timeout=60).stdout.decode()
    files = [ROOT / p for p in out.split("\0") if p]
  except (OSError, subprocess.SubprocessError):
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
      dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
      files += [Path(dirpath) / f for f in filenames]
  return sorted(p for p in files if p.suffix in TEXT_SUFFIXES and p.is_file())


def _headings(page: Path) -> set[str]:
  return {line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines()
          if re.match(r"#+ ", line)}


def _references(path: Path, text: str):
  """(page, section or None, line number) of every docs page mentioned in a file."""
  found = [(DOCS / m.group(1), m) for m in _DOCS_PATH.finditer(text)]
  if path.parent == DOCS:  # a link `](method.md)` or a mention with a section
    found += [(DOCS / m.group(1), m) for m in _BARE_PAGE.finditer(text)
              if text[max(m.start() - 2, 0):m.start()] == "](" or _SECTION.match(text, m.end())]
  for page, m in found:
    s = _SECTION.match(text, m.end())
    yield page, (s.group(2) if s else None), text.count("\n", 0, m.start()) + 1


FILES = _tracked_text_files()


def test_the_docs_pages_exist():
  pages = {p.name for p in DOCS.glob("*.md")}
  assert {"README.md", "method.md", "data_format.md", "metrics_and_figures.md",
          "mock_world.md", "devices.md", "layers.md"} <= pages
  index = (DOCS / "README.md").read_text(encoding="utf-8")
  unlisted = sorted(p for p in pages - {"README.md"} if f"]({p})" not in index)
  assert not unlisted, f"docs/README.md does not link {unlisted}"
  assert "docs/README.md" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_no_reference_outside_the_repository(what):
  pattern = FORBIDDEN[what]
  hits = [f"{p.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
          for p in FILES for text in [p.read_text(encoding="utf-8", errors="replace")]
          for m in pattern.finditer(text)]
  assert FILES, "no tracked text files found"
  assert not hits, f"{what} mentioned in: {', '.join(hits)}"


def test_docs_references_resolve():
  bad = []
  n = 0
  for p in FILES:
    text = p.read_text(encoding="utf-8", errors="replace")
    for page, section, line in _references(p, text):
      n += 1
      where = f"{p.relative_to(ROOT)}:{line}"
      if not page.is_file():
        bad.append(f"{where}: no page docs/{page.name}")
      elif section is not None and section not in _headings(page):
        bad.append(f"{where}: docs/{page.name} has no section {section!r}")
  assert n > 0, "no file mentions a docs page"
  assert not bad, "\n".join(bad)
