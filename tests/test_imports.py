"""The package's imports (read with `ast`, top level and inside functions; `import_graph.py`):
no cycle, nothing from `experiments` / `benchmarks`, the layer order of docs/layers.md, and
imports inside functions only to defer a heavy optional dependency, each with a comment."""

import re

import import_graph as g
import pytest

# Imports inside functions may defer these (heavy, and optional for most uses), nothing else.
DEFERRED_OK = ("matplotlib", "sklearn", "torch", "astropy", "orbax",
               "cyclestar_jax.apogee.fits_astropy")  # the astropy reader of compressed FITS

# docs/layers.md, bottom to top: a module imports only from its own layer or the layers below.
LAYERS = {
    1: ("resources", "labels", "fileio", "chunks", "metrics", "metrics_log", "rundir"),
    2: ("config", "h5io", "data"),
    3: ("mock",),
    4: ("networks", "losses", "train_step", "emulator", "chain", "torch_import"),
    5: ("parallel",),
    6: ("plots",),
    7: ("checkpoint", "validation"),
    8: ("trainer", "emulator_train", "fitting", "lines", "sensitivity", "apogee", "pretrained"),
    9: ("pipeline", "cli"),
}
LAYER_OF = {unit: n for n, units in LAYERS.items() for unit in units}


@pytest.fixture(scope="module")
def graph():
  modules = g.module_names()
  imps = g.imports(modules)
  return modules, imps, g.edges(imps, modules)


def _unit(module: str) -> str:
  """cyclestar_jax.fitting.job → fitting."""
  return module.split(".")[1]


def test_no_import_cycle(graph):
  _, _, edges = graph
  cycles = g.cycles(edges)
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_a_cycle_is_found_and_named():
  edges = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
  assert g.cycles(edges) == [["p.a", "p.b", "p.c", "p.a"]]


def test_imports_inside_functions_count(tmp_path):
  pkg = tmp_path / "cyclestar_jax"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from cyclestar_jax.sub import b\n")
  (pkg / "a.py").write_text("def f():\n  from .sub import b\n")
  (pkg / "sub" / "b.py").write_text("from cyclestar_jax import a\nfrom . import c\n")
  (pkg / "sub" / "c.py").write_text("")
  modules = g.module_names(tmp_path)
  edges = g.edges(g.imports(modules), modules)
  assert edges["cyclestar_jax.a"] == {"cyclestar_jax.sub", "cyclestar_jax.sub.b"}
  assert edges["cyclestar_jax.sub.b"] == {"cyclestar_jax.a", "cyclestar_jax.sub.c"}
  assert ["cyclestar_jax.a", "cyclestar_jax.sub", "cyclestar_jax.sub.b",
          "cyclestar_jax.a"] in g.cycles(edges)


def test_nothing_imports_experiments_or_benchmarks(graph):
  _, imps, _ = graph
  bad = [f"{i.importer}:{i.lineno} imports {i.target}" for i in imps
         if i.target.split(".")[0] in ("experiments", "benchmarks")]
  assert not bad, bad


def test_layer_order(graph):
  modules, _, edges = graph
  units = {_unit(m) for m in modules if m != g.PACKAGE}
  assert units <= set(LAYER_OF), f"place {sorted(units - set(LAYER_OF))} in LAYERS and layers.md"
  bad = [f"{a} (layer {LAYER_OF[_unit(a)]}) -> {b} (layer {LAYER_OF[_unit(b)]})"
         for a, targets in edges.items() if a != g.PACKAGE for b in targets
         if LAYER_OF[_unit(b)] > LAYER_OF[_unit(a)]]
  assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_layers_doc_names_every_unit():
  text = (g.ROOT / "docs" / "layers.md").read_text()
  missing = [u for u in LAYER_OF if not re.search(rf"`{u}`", text)]
  assert not missing, missing


def _deferred(target: str) -> bool:
  return any(target == d or target.startswith(d + ".") for d in DEFERRED_OK)


def test_imports_inside_functions_only_defer_heavy_dependencies(graph):
  modules, imps, _ = graph
  bad, silent = [], []
  for i in imps:
    if not i.in_function:
      continue
    if not _deferred(i.target):
      bad.append(f"{i.importer}:{i.lineno} {i.target}")
      continue
    lines = modules[i.importer].read_text().splitlines()
    k = i.lineno - 1
    while k > 0 and re.match(r"\s*(from \S+ )?import ", lines[k - 1]):  # a group of imports
      k -= 1
    if "#" not in lines[i.lineno - 1] and not lines[k - 1].strip().startswith("#"):
      silent.append(f"{i.importer}:{i.lineno} {i.target}")
  assert not bad, "imports inside functions that belong at module level:\n" + "\n".join(bad)
  assert not silent, "deferred imports without a comment saying why:\n" + "\n".join(silent)
