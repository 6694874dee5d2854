"""The import graph of `cyclestar_jax`, read from the source with `ast` (nothing is imported).

Every `import` statement counts, at module level and inside functions: `import a.b`, `from a
import b` (an edge to `a`, and to `a.b` when `b` is a submodule) and relative imports. Importing
`a.b.c` loads the packages `a` and `a.b` first, so edges go to those `__init__` modules too,
except to the importer's own enclosing packages (they are loading already: `from
cyclestar_jax.mock import population` inside `cyclestar_jax.mock.world` is not a cycle).

Run `python tests/import_graph.py` to list the cycles, the imports into `experiments` /
`benchmarks` and the imports inside functions.
"""

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cyclestar_jax"


@dataclass(frozen=True)
class Import:
  """One import statement: who imports what, where, and whether inside a function."""
  importer: str  # dotted module name
  target: str  # dotted name as written, relative imports resolved
  names: tuple[str, ...]  # the names of `from target import names` (empty for `import`)
  lineno: int
  in_function: bool


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
  """Dotted module name → file, for every .py file of the package (`__init__` = the package)."""
  out = {}
  for path in sorted((root / package).rglob("*.py")):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _is_package(path: Path) -> bool:
  return path.name == "__init__.py"


def _resolve(importer: str, is_pkg: bool, module: str | None, level: int) -> str:
  """The absolute dotted name of `from <level dots><module> import ...` inside `importer`."""
  if level == 0:
    return module or ""
  base = importer.split(".") if is_pkg else importer.split(".")[:-1]
  base = base[:len(base) - (level - 1)]
  return ".".join(base + ([module] if module else []))


def _walk(tree: ast.AST, in_function: bool = False):
  """(node, in_function) for every node, marking nodes under a def/lambda."""
  for child in ast.iter_child_nodes(tree):
    inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    yield child, inside
    yield from _walk(child, inside)


def imports(modules: dict[str, Path] | None = None) -> list[Import]:
  """Every import statement of the package's modules."""
  modules = module_names() if modules is None else modules
  out = []
  for name, path in modules.items():
    tree = ast.parse(path.read_text(), str(path))
    for node, inside in _walk(tree):
      if isinstance(node, ast.Import):
        for alias in node.names:
          out.append(Import(name, alias.name, (), node.lineno, inside))
      elif isinstance(node, ast.ImportFrom):
        target = _resolve(name, _is_package(path), node.module, node.level)
        out.append(Import(name, target, tuple(a.name for a in node.names), node.lineno, inside))
  return out


def _ancestors(name: str) -> list[str]:
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def edges(imps: list[Import], modules: dict[str, Path]) -> dict[str, set[str]]:
  """importer → the package modules its imports load (see the module docstring)."""
  graph: dict[str, set[str]] = {m: set() for m in modules}
  for imp in imps:
    loaded = [imp.target] + [f"{imp.target}.{n}" for n in imp.names]
    own = set(_ancestors(imp.importer)) | {imp.importer}
    for mod in loaded:
      for m in _ancestors(mod) + [mod]:
        if m in modules and m not in own and m != PACKAGE:
          graph[imp.importer].add(m)
  return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in graph.get(todo.pop(), ()):
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def cycles(graph: dict[str, set[str]], limit: int = 200) -> list[list[str]]:
  """The elementary cycles of `graph` (each once, starting at its smallest module), at most
  `limit` of them. Only modules on a cycle through the start are searched (its strongly
  connected component), so an acyclic graph costs one reachability pass per module."""
  found: list[list[str]] = []
  reach = {m: _reachable(graph, m) for m in graph}
  for start in sorted(graph):
    if start not in reach[start]:
      continue
    scc = {m for m in reach[start] if start in reach.get(m, ())}
    stack = [(start, [start])]
    while stack and len(found) < limit:
      node, path = stack.pop()
      for nxt in sorted(graph.get(node, ()), reverse=True):
        if nxt == start:
          found.append(path + [start])
        elif nxt > start and nxt in scc and nxt not in path:
          stack.append((nxt, path + [nxt]))
  return found


def main() -> int:
  modules = module_names()
  imps = imports(modules)
  found = cycles(edges(imps, modules))
  print(f"{len(modules)} modules, {len(imps)} import statements, {len(found)} cycles")
  for cyc in found:
    print("cycle:", " -> ".join(cyc))
  for imp in imps:
    if imp.target.split(".")[0] in ("experiments", "benchmarks"):
      print(f"outward: {imp.importer}:{imp.lineno} imports {imp.target}")
  for imp in imps:
    if imp.in_function:
      print(f"in function: {imp.importer}:{imp.lineno} {imp.target} {list(imp.names)}")
  return 1 if found else 0


if __name__ == "__main__":
  sys.exit(main())
