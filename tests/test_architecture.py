"""The rooms of ``service/`` and their doors (docs/architecture.md), checked
by reading every module's imports with ``ast``: what each room may import,
no import cycle, and modules and functions of a size a reader can hold."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

# The rooms of service/ each room may import (docs/architecture.md).
ALLOWED: dict[str, frozenset[str]] = {
    "api": frozenset({"core", "memory", "telemetry"}),
    "http": frozenset({"core", "telemetry"}),  # the OpenAI-shaped door, beside api
    "core": frozenset({"telemetry"}),
    "store": frozenset({"core"}),
    "llm": frozenset({"core", "telemetry"}),
    "memory": frozenset({"core", "telemetry"}),
    "telemetry": frozenset(),
    "config": frozenset({"core"}),  # the contract's bounds (core/limits.py)
}
WIRING = frozenset(
    {
        "server",
        "run",
        "__main__",
        "jobs_cli",
        "memory_cli",
        "memory_wiring",
        "transport",
        "database",
        "deployment",
    }
)  # may import every room

# Outside packages a room must not import: the domain is no protobuf, no
# driver and no SDK; servicers never reach the database, Chroma or the model.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": (
        "grpc",
        "grpc_health",
        "grpc_reflection",
        "google.protobuf",
        "google.rpc",
        "generated",
        "pymongo",
        "bson",
        "chromadb",
        "openai",
    ),
    "api": ("pymongo", "bson", "chromadb", "openai"),
    "http": ("grpc", "google.protobuf", "generated", "pymongo", "bson", "chromadb", "openai"),
    "store": ("grpc", "google.protobuf", "generated", "chromadb", "openai"),
}

# Known exceptions, each to be removed when the branch named merges (a test
# below fails once an exception is no longer needed).
KNOWN_DOORS: set[tuple[str, str]] = set()
KNOWN_LONG_MODULES: set[str] = set()
KNOWN_LONG_FUNCTIONS: set[str] = set()


@dataclass(frozen=True, slots=True)
class Module:
    """A module of the package as the checks see it."""

    name: str  # service.core.reply.generate
    path: str  # service/core/reply/generate.py
    tree: ast.Module
    lines: int

    @property
    def room(self) -> str:
        return room_of(self.name)


def room_of(module: str) -> str:
    """``service.core.reply.generate`` -> ``core``; ``service.server`` ->
    ``server``; the package itself -> ``service``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def load(root: Path = SERVICE) -> list[Module]:
    modules = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent)
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        text = path.read_text()
        tree = ast.parse(text, str(path))
        modules.append(Module(".".join(parts), relative.as_posix(), tree, len(text.splitlines())))
    return modules


def imports(module: Module) -> Iterator[str]:
    """Every module name ``module`` imports (relative imports resolved;
    ``from a import b`` yields ``a`` and ``a.b``), wherever the import is."""
    package = module.name if module.path.endswith("__init__.py") else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def door_violations(
    modules: Iterable[Module], known: set[tuple[str, str]] = KNOWN_DOORS
) -> list[str]:
    """Rooms a module imports that its room's row of ``ALLOWED`` does not
    list (``known`` doors aside)."""
    found = set()
    for module in modules:
        if module.room in WIRING or module.room == "service":
            continue
        allowed = {module.room, *ALLOWED.get(module.room, ())}
        for name in imports(module):
            target = room_of(name)
            door = (module.room, target)
            if name.startswith("service.") and target not in allowed and door not in known:
                found.add(f"{module.path}: {module.room} may not import {target}")
    return sorted(found)


def forbidden_imports(modules: Iterable[Module]) -> list[str]:
    """Outside packages a module imports that its room must not use."""
    found = set()
    for module in modules:
        for name in imports(module):
            for banned in FORBIDDEN.get(module.room, ()):
                if name == banned or name.startswith(banned + "."):
                    found.add(f"{module.path}: {module.room} must not import {banned}")
    return sorted(found)


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def room_graph(modules: Iterable[Module], skip: set[tuple[str, str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in modules:
        edges = graph.setdefault(module.room, set())
        for name in imports(module):
            target = room_of(name)
            door = (module.room, target)
            if name.startswith("service.") and target != module.room and door not in skip:
                edges.add(target)
    return graph


def module_graph(modules: Iterable[Module]) -> dict[str, set[str]]:
    modules = list(modules)
    known = {m.name for m in modules}
    return {m.name: {n for n in imports(m) if n in known and n != m.name} for m in modules}


def long_modules(modules: Iterable[Module]) -> set[str]:
    return {m.path for m in modules if m.lines > MAX_MODULE_LINES}


def long_functions(modules: Iterable[Module]) -> dict[str, int]:
    found = {}
    for module in modules:
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found[f"{module.path}::{node.name}"] = lines
    return found


@pytest.fixture(scope="module")
def modules() -> list[Module]:
    return load()


def test_each_room_imports_only_the_rooms_it_may(modules: list[Module]) -> None:
    assert door_violations(modules) == []


def test_core_api_and_store_keep_out_of_the_drivers_they_must_not_know(
    modules: list[Module],
) -> None:
    assert forbidden_imports(modules) == []


def test_no_import_cycle_between_rooms_or_modules(modules: list[Module]) -> None:
    assert cycles(room_graph(modules, KNOWN_DOORS)) == []
    assert cycles(module_graph(modules)) == []


def test_modules_and_functions_fit_on_a_reader(modules: list[Module]) -> None:
    assert long_modules(modules) - KNOWN_LONG_MODULES == set()
    too_long = {f: n for f, n in long_functions(modules).items() if f not in KNOWN_LONG_FUNCTIONS}
    assert too_long == {}


def test_every_known_exception_is_still_needed(modules: list[Module]) -> None:
    """Once a branch named above merges, its exception goes."""
    doors = {(a, b) for a, targets in room_graph(modules, set()).items() for b in targets}
    assert KNOWN_DOORS - doors == set()
    assert KNOWN_LONG_MODULES - long_modules(modules) == set()
    assert KNOWN_LONG_FUNCTIONS - set(long_functions(modules)) == set()


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """A package that breaks each rule once: every check reports it."""
    root = tmp_path / "service"
    for room in ("core", "store", "telemetry"):
        (root / room).mkdir(parents=True)
        (root / room / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "core" / "models.py").write_text(
        "import grpc\nfrom pymongo import errors\nfrom service.store import mongo\n"
    )
    (root / "store" / "mongo.py").write_text("from ..core import models\n")
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES))
    (root / "telemetry" / "spans.py").write_text(
        "from service.core.errors import LoomError\n\n\ndef long():\n"
        + body
        + "\n"
        + "\n" * MAX_MODULE_LINES
        + "y = 1\n"
    )
    broken = load(root)
    assert door_violations(broken, known=set()) == [
        "service/core/models.py: core may not import store",
        "service/telemetry/spans.py: telemetry may not import core",
    ]
    assert forbidden_imports(broken) == [
        "service/core/models.py: core must not import grpc",
        "service/core/models.py: core must not import pymongo",
    ]
    assert cycles(room_graph(broken, set())) == [["core", "store"]]
    assert cycles(module_graph(broken)) == [["service.core.models", "service.store.mongo"]]
    assert long_modules(broken) == {"service/telemetry/spans.py"}
    assert long_functions(broken) == {"service/telemetry/spans.py::long": MAX_FUNCTION_LINES + 1}
