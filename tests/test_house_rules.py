"""The house rules of the source tree, checked on every run so the layout stays as README describes.

- no import cycles between alambic's modules, counting module-level, function-level and
  type-checking imports alike;
- arrows run one way, down ``LAYERS``: the frame, then the phases in the order a run goes through
  them, then the drivers (pipeline, console, CLI); the one arrow against the flow is named, with why;
- core (``alambic.*``) never imports a plugin (``alambic.plugins.*``), and no plugin imports another;
- a command module is nobody's library: ``alambic.cli`` is imported by no module, and
  ``alambic.report.compare`` (the ``compare`` command) by the CLI alone;
- an import inside a function is one that keeps ``import alambic`` and the CLI light: a library in
  ``LAZY`` (tests/core/test_lean_import.py says why each is there), or an alambic module that imports
  one of them when it loads; every other import stands at the top of its module;
- no module is longer than ``MAX_LINES``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PROJECT
from tests.core.test_lean_import import LAZY

MAX_LINES = 500
ROOTS = {"core": "alambic", "plugins": "alambic.plugins"}  # source folder -> package (pyproject)
#: a module imports only from its own layer or an earlier one (plugins sit outside: they import any of core)
LAYERS = ("frame", "alambic.data", "alambic.run", "alambic.train", "alambic.compress", "alambic.search",
          "alambic.ship", "alambic.report", "drivers")
DRIVERS = {"alambic.pipeline", "alambic.console", "alambic.cli"}
AGAINST_THE_FLOW = {
    ("alambic.train.teacher", "alambic.compress.pruning"):
        "a packaged teacher's 250k-piece vocabulary is cut to its train split by the vocabulary pruner, "
        "which takes the pruners' context",
}
COMMANDS = {"alambic.cli": set(), "alambic.report.compare": {"alambic.cli"}}  # command -> who may import it


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # an alambic module, or a third-party top-level package
    line: int
    where: str  # "top", "typing" (under TYPE_CHECKING) or "function"


def module_files() -> dict[str, Path]:
    files = {}
    for folder, package in ROOTS.items():
        for path in sorted((PROJECT / folder).rglob("*.py")):
            parts = path.relative_to(PROJECT / folder).with_suffix("").parts
            name = ".".join([package, *(p for p in parts if p != "__init__")])
            files[name] = path
    return files


MODULES = module_files()


def _alambic_target(name: str) -> str:
    """The module an ``alambic...`` import names: itself, or the module holding the name."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports_in(body: list[ast.stmt], where: str, module: str, is_package: bool) -> list[Import]:
    found = []
    for node in body:
        inner = where
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner = "function"
        elif _is_type_checking(node):
            inner = "typing" if where == "top" else where
        if isinstance(node, ast.Import):
            found += [_import(module, a.name, node.lineno, where) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node, is_package)
            names = [f"{base}.{a.name}" for a in node.names] if base.startswith("alambic") else [base]
            found += [_import(module, n, node.lineno, where) for n in names]
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                found += _imports_in(children, inner, module, is_package)
    return found


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _import(module: str, name: str, line: int, where: str) -> Import:
    target = _alambic_target(name) if name.startswith("alambic") else name.split(".")[0]
    return Import(module, target, line, where)


def all_imports() -> list[Import]:
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += _imports_in(tree.body, "top", module, path.name == "__init__.py")
    return [i for i in found if i.target != i.source]


IMPORTS = all_imports()


def _edges(kinds: set[str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.where in kinds and i.target in MODULES:
            graph[i.source].add(i.target)
    return graph


def heavy_modules() -> set[str]:
    """alambic modules that load a LAZY library when imported (directly or through another module)."""
    heavy = {i.source for i in IMPORTS if i.where == "top" and i.target in LAZY}
    graph = _edges({"top"})
    while True:
        more = {m for m, targets in graph.items() if m not in heavy and targets & heavy}
        if not more:
            return heavy
        heavy |= more


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph`` as [a, b, ..., a], or [] when there is none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def layer(module: str) -> int | None:
    """The index of ``module``'s layer in LAYERS; None for a plugin."""
    if module.startswith("alambic.plugins"):
        return None
    if module in DRIVERS:
        return LAYERS.index("drivers")
    for index, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            return index
    return LAYERS.index("frame")


def _where(i: Import) -> str:
    return f"{MODULES[i.source].relative_to(PROJECT)}:{i.line}"


def test_no_import_cycles():
    cycle = find_cycle(_edges({"top", "typing", "function"}))
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_arrows_run_down_the_layers():
    upward = {(i.source, i.target): i for i in IMPORTS if i.target in MODULES
              and None not in (layer(i.source), layer(i.target)) and layer(i.target) > layer(i.source)}
    wrong = [f"{_where(i)}: {i.source} ({LAYERS[layer(i.source)]}) imports {i.target} ({LAYERS[layer(i.target)]})"
             for pair, i in upward.items() if pair not in AGAINST_THE_FLOW]
    assert not wrong, "\n".join(wrong)
    stale = set(AGAINST_THE_FLOW) - set(upward)
    assert not stale, f"AGAINST_THE_FLOW names arrows that no longer exist: {sorted(stale)}"


def test_core_never_imports_a_plugin_and_plugins_not_each_other():
    wrong = [f"{_where(i)}: {i.source} imports {i.target}" for i in IMPORTS
             if i.target.startswith("alambic.plugins.") and i.target != i.source]
    assert not wrong, "\n".join(wrong)


def test_command_modules_are_nobodys_library():
    wrong = [f"{_where(i)}: {i.source} imports the command module {i.target}" for i in IMPORTS
             if i.target in COMMANDS and i.source not in COMMANDS[i.target]]
    assert not wrong, "\n".join(wrong)


def test_function_level_imports_only_keep_the_heavy_libraries_lazy():
    heavy = heavy_modules()
    wrong = [f"{_where(i)}: {i.source} imports {i.target} inside a function" for i in IMPORTS
             if i.where == "function" and i.target not in LAZY and i.target not in heavy]
    assert not wrong, ("move these imports to the top of their modules (only a LAZY library, or an "
                       "alambic module that loads one, may be imported inside a function):\n" + "\n".join(wrong))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_longer_than_the_limit(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(PROJECT)}: {lines} lines (limit {MAX_LINES}); split it by concern"


def test_every_phase_package_says_what_it_takes_and_hands_on():
    for module, path in MODULES.items():
        if path.name == "__init__.py" and module.count(".") == 1 and module != "alambic.plugins":
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            assert doc and len(doc.splitlines()) >= 2, f"{path.relative_to(PROJECT)}: say what the phase takes in and hands on"


def test_the_checks_see_a_cycle_and_a_misplaced_import():
    """The rules above can fail: a made-up graph with a cycle is caught, one without is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("import os\ndef f():\n    import json\n    from alambic.store import Store\n")
    found = _imports_in(tree.body, "top", "alambic.x", False)
    assert [(i.target, i.where) for i in found] == [("os", "top"), ("json", "function"), ("alambic.store", "function")]
