"""The house rules of booking/'s layout, read from the imports themselves (no stores needed).

core/ is the foundation and imports no part above it; seats/ (Redis) sits on core; ledger/
(Postgres writes) on seats and core; lifecycle/ (background work) on those; the API domains on
all of them; ops/ (command-line tools) never imports the web app or a handler module. And no
module imports itself back through a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "booking"
DOMAINS = {"booking.venues", "booking.courses", "booking.bookings", "booking.waitlist",
           "booking.payments", "booking.probes", "booking.signin", "booking.live",
           "booking.checkin", "booking.staff", "booking.imports", "booking.attendance",
           "booking.record", "booking.releases.service",
           "booking.releases.entries", "booking.releases.drawing"}
# Which top-level parts of booking/ each part may import (besides itself).
ALLOWED = {
    "core": set(),
    "seats": {"core"},
    "ledger": {"core", "seats"},
    "lifecycle": {"core", "seats", "ledger"},
    "ops": {"core", "seats", "ledger", "lifecycle", "releases"},  # releases.draw only (below)
    "releases": {"core", "seats", "ledger", "lifecycle", "courses", "bookings", "waitlist"},
    # the grab answered in front of Litestar's router: the grab's own domain and core only
    "fast_grab": {"core", "bookings"},
    # the pages: the domains' services and core, never the gate or the ledger themselves
    "web": {"core", *(domain.split(".")[1] for domain in DOMAINS)},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """booking.* modules imported by a file, including imports inside functions."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("booking"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("booking"):
            yield node.module or ""


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): set(_imports(path)) for path in PACKAGE.rglob("*.py")}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_each_part_imports_only_the_parts_below_it():
    wrong = []
    for module, imported in _graph().items():
        part = _part(module)
        if part not in ALLOWED:
            continue
        for target in imported:
            if _part(target) not in ALLOWED[part] | {part}:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_ops_tools_never_import_the_web_app_or_a_handler_module():
    wrong = [f"{module} imports {target}" for module, imported in _graph().items()
             if _part(module) == "ops" for target in imported
             if target == "booking.app" or target in DOMAINS]
    assert wrong == []


def test_no_import_circles():
    """Lazy imports inside functions count too: a circle is a design knot wherever it hides."""
    graph = _graph()
    circles = []

    def visit(module: str, trail: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in trail:
                circles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target in graph:
                visit(target, [*trail, target])

    for start in sorted(graph):
        visit(start, [start])
    assert circles == []
