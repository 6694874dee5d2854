"""Few functions in cyclestar_jax take more than 8 parameters (issue 23).

Options travel as one configuration tree of frozen dataclasses (``Preset``,
``FitConfig``, ``LoopConfig``, ...), not as long parameter lists. At most
``MAX_WIDE`` functions may have more than ``MAX_PARAMS`` parameters, each with a
docstring sentence saying why.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cyclestar_jax"
MAX_PARAMS = 8
MAX_WIDE = 3


def _n_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
  """Positional (incl. positional-only) + keyword-only parameters, not self/cls/*a/**k."""
  a = fn.args
  names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
  return sum(1 for n in names if n not in ("self", "cls"))


def wide_functions(root: Path = PACKAGE, limit: int = MAX_PARAMS) -> list[tuple[str, int]]:
  """``(module:qualname, n_params)`` for every function in ``root`` with > ``limit``."""
  out = []
  for path in sorted(root.rglob("*.py")):
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root.parent).as_posix()

    def visit(node: ast.AST, prefix: str, rel: str = rel) -> None:
      for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
          name = f"{prefix}{child.name}"
          n = _n_params(child)
          if n > limit:
            out.append((f"{rel}:{name}", n))
          visit(child, f"{name}.")
        elif isinstance(child, ast.ClassDef):
          visit(child, f"{prefix}{child.name}.")
        else:
          visit(child, prefix)

    visit(tree, "")
  return out


def test_at_most_three_wide_functions():
  wide = wide_functions()
  listing = "\n".join(f"  {name}: {n} parameters" for name, n in sorted(wide, key=lambda w: -w[1]))
  assert len(wide) <= MAX_WIDE, (
      f"{len(wide)} functions in cyclestar_jax take more than {MAX_PARAMS} parameters "
      f"(at most {MAX_WIDE} allowed; pass a config dataclass instead):\n{listing}")


def test_wide_functions_say_why():
  """Each remaining wide function's docstring says why it keeps its long list."""
  missing = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _n_params(node) > MAX_PARAMS:
        doc = ast.get_docstring(node) or ""
        if "parameters" not in doc.lower():
          missing.append(f"{path.name}:{node.name}")
  assert not missing, f"wide functions whose docstring doesn't explain their parameters: {missing}"
