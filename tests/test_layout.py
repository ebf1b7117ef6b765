"""The agent's layout, as docs/DESIGN.md draws it: what never imports what.

- The core (keys, crypt, work, streams, fds, audit, errors and the modules under them)
  imports no D-Bus library and nothing from ``keyagentd.bus``: it is testable without a bus.
- The age engine imports nothing of the agent but ``keyagentd.secrets`` (test_age_engine).
- No import cycle among the agent's modules, counting imports under TYPE_CHECKING too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import keyagentd

ROOT = Path(keyagentd.__file__).parent
#: Modules that talk to a bus on purpose: the bus package, the desktop lock triggers (they
#: watch the session and system buses) and the entry point that wires everything.
BUS_SIDE = {"__main__", "desktop"}
D_BUS_LIBRARIES = {"dbus_fast", "jeepney"}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), wherever the import statement is."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imports(p) if m in modules} - {name} for name, p in modules.items()}


def test_the_core_imports_no_bus() -> None:
    for path in sorted(ROOT.glob("*.py")):
        if path.stem in BUS_SIDE:
            continue
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in D_BUS_LIBRARIES, f"{path.name} imports {name}"
            assert not name.startswith("keyagentd.bus"), f"{path.name} imports {name}"


def test_no_import_cycles() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError(
                "import cycle: " + " -> ".join([*trail[trail.index(node) :], node])
            )
        if node in done:
            return
        for dep in sorted(graph[node]):
            # A package's __init__ importing its own submodules is not a cycle back.
            if not dep.startswith(node + ".") or node.count(".") == 0:
                visit(dep, [*trail, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
