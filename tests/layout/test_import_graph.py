"""The import graph of the project's own modules, read with ``ast``: no cycles, and data flows one way.

Rules (docs/design.md, "Layering"):
- the core (``avatar_engine`` but its command line ``avatar_engine.cli``) never imports ``runtime``,
  ``calibration``, ``avatar_engine.eval`` or ``avatar_engine.cli``;
- ``avatar_engine.models`` never imports renderers or the pipeline; ``io``/``face``/``geometry`` never
  import models, renderers or the pipeline;
- nothing imports ``tests``;
- no module-level import cycle (imports inside functions count too: a cycle is a cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("avatar_engine", "runtime", "calibration", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            mods[_module_name(path)] = path
    return mods


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or is inside of."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """``{module: {imported project modules}}`` for every module of :data:`PACKAGES` (and ``tests`` targets)."""
    mods = _modules()
    known = set(mods) | {"tests"}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = name.split(".") if is_pkg else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
            for t in targets:
                if t.split(".")[0] in ("conftest", "media", "webrtc_support"):
                    t = "tests"
                hit = _resolve(t, known)
                if hit is not None and hit != name:
                    deps.add(hit)
        graph[name] = deps
    return graph


def _in(mod: str, *prefixes: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_package_reexport(graph: dict[str, set[str]], a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ re-exporting its own submodules is not a cycle of the design
    pruned = {m: {d for d in deps if not _is_package_reexport(graph, m, d) and not _is_package_reexport(graph, d, m)}
              for m, deps in graph.items()}
    assert _cycles(pruned) == []


CORE = ("avatar_engine.io", "avatar_engine.face", "avatar_engine.geometry", "avatar_engine.models",
        "avatar_engine.renderers", "avatar_engine.pipeline", "avatar_engine.data", "avatar_engine.training",
        "avatar_engine.config", "avatar_engine.errors", "avatar_engine.backends")
FORBIDDEN = [
    # (importer prefixes, imported prefixes, why)
    (CORE, ("runtime", "calibration"), "the core never imports the live engine or enrollment"),
    (CORE + ("avatar_engine.eval",), ("avatar_engine.cli",), "only the command line imports the command line"),
    (CORE, ("avatar_engine.eval",), "the core never imports the evaluation"),
    (("avatar_engine.models",), ("avatar_engine.renderers", "avatar_engine.pipeline", "avatar_engine.data",
                                 "avatar_engine.training", "avatar_engine.eval"), "models are leaves of the core"),
    (("avatar_engine.io", "avatar_engine.face", "avatar_engine.geometry"),
     ("avatar_engine.models", "avatar_engine.renderers", "avatar_engine.pipeline", "avatar_engine.data",
      "avatar_engine.training", "avatar_engine.eval"), "stages before the networks do not import later ones"),
    (("avatar_engine.renderers",), ("avatar_engine.pipeline", "avatar_engine.data", "avatar_engine.training",
                                    "avatar_engine.eval"), "renderers are used by the pipeline, not the reverse"),
    (("avatar_engine.pipeline", "avatar_engine.data"), ("avatar_engine.training", "avatar_engine.eval"),
     "inference and data do not depend on training or evaluation"),
    (("avatar_engine", "runtime", "calibration", "benchmarks"), ("tests",), "nothing imports the tests"),
]


@pytest.mark.parametrize("importers, imported, why", FORBIDDEN, ids=[f[2] for f in FORBIDDEN])
def test_forbidden_directions(importers, imported, why):
    graph = import_graph()
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if _in(m, *importers)
                 for d in deps if _in(d, *imported) and not _in(m, *imported))
    assert bad == [], why


def test_every_core_module_is_classified():
    """A new top-level module of the core must be placed in a layer above (or in cli / eval)."""
    graph = import_graph()
    loose = sorted(m for m in graph if _in(m, "avatar_engine") and m != "avatar_engine"
                   and not _in(m, *CORE, "avatar_engine.cli", "avatar_engine.eval"))
    assert loose == []


def test_the_graph_sees_real_imports():
    """The reader is not blind: known edges of the pipeline are found."""
    graph = import_graph()
    assert "avatar_engine.geometry.mesh_warp" in graph["avatar_engine.renderers.mesh"]
    assert "avatar_engine.renderers.base" in graph["avatar_engine.pipeline.reenact"]
    assert "avatar_engine.models.streaming" in graph["avatar_engine.models.sr_net"]
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
