"""House rules of the package layout, read from the source with ``ast`` (nothing is imported or run).

* no import cycle between hubcompare's modules (module-level and function-level imports alike);
* the sub-packages are layered, leaf first; a module imports only from its own sub-package or from a
  LOWER level (same-level siblings don't import each other);
* only ``hubcompare/cli/`` prints (``print``) or makes a rich ``Console``, and only it imports typer or rich;
* no module is over ``MAX_LINES`` lines.

Every failure names the offending module and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hubcompare"
MAX_LINES = 500

# Leaf first. The package's own __init__ (``hubcompare``) is its front door: it may import anything below it,
# and nothing inside the package imports it.
LEVELS = {
    "errors": 0, "provenance": 0, "bundled": 0,
    "install": 1,  # whether torch and torchvision were installed as a pair (read from package metadata)
    "data": 1,  # datasets and augmentation
    "models": 2,  # a model, its checkpoint folder and its predictions on a dataset
    "training": 3, "hub": 3,
    "similarity": 4,  # CKA, blocks: how two models' layers relate
    "results": 4,  # the result store: content keys, SQLite index + files, sharing a result on the Hub
    "populations": 5,  # many models: per-example statistics and CKA across seeds (uses similarity)
    "probes": 5,  # what a block does: linear probes, block deletion (uses similarity's blocks)
    "report": 6,  # one model's figures on one page
    "grounding": 6,  # which measure to trust: sanity tests scored on a population of seeds (uses populations' sides)
    "comparisons": 7,  # a comparison request run (or found in the store): what the CLI and the service both call
    "service": 8,  # `hubcompare serve`: web pages, JSON API, job queue
    "cli": 9,
    "hubcompare": 10,
}
UI_PACKAGES = ("typer", "rich")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported hubcompare module, dotted (a package means its __init__)
    where: str  # "hubcompare/x/y.py:LINE"
    type_checking: bool  # under ``if TYPE_CHECKING:``: never runs


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module
    lines: int

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@lru_cache(maxsize=None)
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = path.read_text(encoding="utf-8")
        found[name] = Module(name, path, ast.parse(text, filename=str(path)), len(text.splitlines()))
    return found


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) bodies."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def _resolve(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _existing(name: str) -> str | None:
    """The deepest hubcompare module that ``name`` (or a prefix of it) names."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules():
            return ".".join(parts[:n])
    return None


@lru_cache(maxsize=None)
def imports() -> tuple[Import, ...]:
    """Every import of a hubcompare module, wherever it is written (module level, in functions, in classes).

    ``from P import n``: the submodule ``P.n`` when there is one, else ``P`` itself (its __init__ for a package).
    """
    found = []
    for mod in modules().values():
        guarded = _type_checking_nodes(mod.tree)
        for node in ast.walk(mod.tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]
            for target in targets:
                if target.split(".")[0] != "hubcompare" or (resolved := _existing(target)) is None:
                    continue
                found.append(Import(mod.name, resolved, f"{mod.rel}:{node.lineno}", id(node) in guarded))
    return tuple(dict.fromkeys(found))


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself), by Tarjan."""
    index, low, stack, on_stack, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, {}):
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return comps


def _one_cycle(edges: dict[str, dict[str, str]], comp: list[str]) -> str:
    """A shortest cycle through the component's first module, each step with the line that makes it."""
    start, members = comp[0], set(comp)
    paths, queue = {start: [start]}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, {})):
            if w == start:
                path = paths[v] + [start]
                return start + "".join(f" -> {b} ({edges[a][b]})" for a, b in zip(path, path[1:]))
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def test_the_scan_sees_the_package():
    names = set(modules())
    assert {"hubcompare", "hubcompare.errors", "hubcompare.provenance", "hubcompare.cli", "hubcompare.hub"} <= names
    assert any(i.source == "hubcompare" and i.target == "hubcompare.errors" for i in imports())  # from .errors import
    assert any(i.source.startswith("hubcompare.cli.") and i.target == "hubcompare.errors" for i in imports())  # from ..errors


def test_the_cycle_finder_on_a_made_up_graph():
    edges = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:2"}, "c": {"a": "c.py:3", "d": "c.py:4"}, "d": {}, "e": {"e": "e.py:5"}}
    assert _cycles(edges) == [["a", "b", "c"], ["e"]]
    assert _one_cycle(edges, ["a", "b", "c"]) == "a -> b (a.py:1) -> c (b.py:2) -> a (c.py:3)"
    assert _cycles({"a": {"b": "x"}, "b": {"c": "y"}, "c": {}}) == []


def test_no_import_cycles():
    edges: dict[str, dict[str, str]] = {}
    for i in imports():
        if not i.type_checking:
            edges.setdefault(i.source, {}).setdefault(i.target, i.where)
    found = [_one_cycle(edges, comp) for comp in _cycles(edges)]
    if found:
        pytest.fail("import cycles (module-level or function-level imports):\n" + "\n".join(found), pytrace=False)


def test_sub_packages_import_only_lower_levels():
    problems = sorted({f"{m.rel}: not in any layer; add {_layer(m.name)!r} to LEVELS in tests/test_layout.py"
                       for m in modules().values() if _layer(m.name) not in LEVELS})
    for i in imports():
        src, dst = _layer(i.source), _layer(i.target)
        if src == dst or src not in LEVELS or dst not in LEVELS:
            continue
        if LEVELS[dst] > LEVELS[src]:
            problems.append(f"{i.where}: {i.source} (level {LEVELS[src]}, {src}) imports {i.target} from the higher "
                            f"level {LEVELS[dst]} ({dst})")
        elif LEVELS[dst] == LEVELS[src]:
            problems.append(f"{i.where}: {i.source} imports {i.target}: {src} and {dst} are siblings on level {LEVELS[src]}")
    if problems:
        pytest.fail("layering (leaf first: " + ", ".join(f"{k}={v}" for k, v in LEVELS.items()) + "):\n" + "\n".join(problems),
                    pytrace=False)


def test_only_the_cli_prints_or_makes_a_console():
    problems = []
    for mod in modules().values():
        if _layer(mod.name) == "cli":
            continue
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Name) and node.id == "print" and isinstance(node.ctx, ast.Load):
                problems.append(f"{mod.rel}:{node.lineno}: print (only hubcompare/cli/ writes to the terminal)")
            elif isinstance(node, ast.Call):
                f = node.func
                if (isinstance(f, ast.Name) and f.id == "Console") or (isinstance(f, ast.Attribute) and f.attr == "Console"):
                    problems.append(f"{mod.rel}:{node.lineno}: creates a rich Console (only hubcompare/cli/ does)")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_only_the_cli_imports_typer_or_rich():
    problems = []
    for mod in modules().values():
        if _layer(mod.name) == "cli":
            continue
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] in UI_PACKAGES:
                    problems.append(f"{mod.rel}:{node.lineno}: imports {name} (only hubcompare/cli/ may)")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_no_module_is_too_long():
    long = [f"{m.rel}:{MAX_LINES + 1}: {m.lines} lines, over {MAX_LINES}; split it" for m in modules().values() if m.lines > MAX_LINES]
    if long:
        pytest.fail("\n".join(long), pytrace=False)


def test_the_command_starts_without_torch():
    """`hubcompare --version` (the console script, its own process) imports no torch: commands that run no model start
    in a fraction of a second, and a command module imports its model code inside the command."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).with_name("hubcompare")
    if not script.is_file():
        pytest.skip("the console script is not installed beside this python")
    p = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in loaded and "hubcompare.models.resnet" not in loaded, sorted(m for m in loaded if "hubcompare" in m)
