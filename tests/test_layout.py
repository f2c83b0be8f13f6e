"""The shape of the library: no import circle, imports that follow the rooms' rules, small modules."""
from __future__ import annotations

import ast
from pathlib import Path

from pneumo.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pneumo"
MAX_LINES = 400
# What each room may import from the others (its __init__ docstring says the same in words).
ALLOWED = {
    "data": {"config", "paths", "demo"},
    "models": {"config", "paths"},
    "evaluation": {"config", "paths", "data", "models", "tracking"},
    "tracking": {"config", "paths", "data"},
    "training": {"config", "paths", "data", "models", "evaluation", "tracking", "audit", "deploy", "search"},
    "audit": {"config", "paths", "command_line", "data", "evaluation", "tracking"},
    "demo": {"paths"},
    "bench": {"paths", "data", "models", "training", "demo", "evaluation", "deploy"},
    "deploy": {"config", "paths", "data", "models", "evaluation", "tracking"},
    "app": {"config", "paths", "command_line", "data", "models", "evaluation", "tracking", "deploy"},
    "search": {"config", "paths", "tracking"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or (
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """pneumo modules imported anywhere in the file (inside functions too: a lazy circle is still a circle),
    except under `if TYPE_CHECKING:`, which never runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pneumo"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pneumo"):
            for alias in node.names:  # `from pneumo.evaluation import plots` imports a module
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: {m for m in _imports(path, modules) if m in modules and m != name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_pneumo():
    graph = _graph()
    assert len(graph) > 40 and "pneumo.data.readers" in graph["pneumo.data.cache"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_rooms_import_only_what_their_rules_allow():
    broken = []
    for name, imported in _graph().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in ALLOWED:
            continue
        room = parts[1]
        for target in imported:
            other = target.split(".")[1] if target.count(".") else ""
            if other and other != room and other not in ALLOWED[room]:
                broken.append(f"{name} imports {target}")
            if other == "bench" and room != "bench":
                broken.append(f"{name} imports the benchmarks ({target})")
    assert not broken, "\n".join(broken)


def test_every_room_says_what_lives_there():
    for room in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
        assert doc and len(doc) > 120, room


def test_no_module_over_400_lines_without_a_reason():
    long = []
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "longer than 400 lines" not in doc:
            long.append(f"{path.relative_to(PROJECT_ROOT)}: {lines} lines")
    assert not long, "\n".join(long)
