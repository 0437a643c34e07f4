"""The import graph of our own modules: no cycles, and engine <- lab -> widgets as the only directions.

Every import statement counts, including those inside functions: a lazy import hides a cycle
from Python at start-up, not from the design.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "lab", "widgets")

# lab may import these engine modules anywhere: torch-free, the console's own contract with the engine
LAB_MAY_IMPORT = {"engine.config", "engine.protocol", "engine.store", "engine.faults"}
# ... and these only inside the functions of commands that need the model or the Dexter records (lab eval,
# export, tasks, config show, dexter)
LAB_MAY_IMPORT_LAZILY = {"engine.evaluate", "engine.model.bitlinear", "engine.tasks.registry", "engine.describe",
                         "engine.dexter.records", "engine.dexter.sample", "engine.dexter.dataset", "engine.dexter.api"}
# widgets draw plain data; the event types are the only plain data types of ours they may name
WIDGETS_MAY_IMPORT = {"engine.protocol"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


class ImportCollector(ast.NodeVisitor):
    """Every imported module as (name, inside_a_function); `from a import b` names a.b when that is a module."""

    def __init__(self, module: str, is_package: bool, known: set[str]):
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.depth = 0
        self.found: list[tuple[str, bool]] = []

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((alias.name, self.depth > 0))

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self.found.append((sub if sub in self.known else base, self.depth > 0))


def imports() -> dict[str, list[tuple[str, bool]]]:
    modules = our_modules()
    known = set(modules)
    out = {}
    for name, path in modules.items():
        collector = ImportCollector(name, path.name == "__init__.py", known)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        out[name] = collector.found
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None; depth-first with an explicit path."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph.get(start, ())))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                finished = path.pop()
                on_path.remove(finished)
                done.add(finished)
                continue
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt in done:
                continue
            path.append(nxt)
            on_path.add(nxt)
            stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def top(name: str) -> str:
    return name.split(".")[0]


def test_find_cycle_reports_the_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"b"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_our_modules_import_each_other_without_a_cycle():
    known = set(our_modules())
    graph = {m: {name for name, _ in found if name in known} for m, found in imports().items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_engine_never_imports_the_console_or_textual():
    bad = [f"{m} imports {name}" for m, found in imports().items() if top(m) == "engine"
           for name, _ in found if top(name) in ("lab", "widgets", "textual")]
    assert not bad, bad


def test_widgets_import_nothing_of_ours_but_plain_data_types_and_never_torch():
    bad = [f"{m} imports {name}" for m, found in imports().items() if top(m) == "widgets"
           for name, _ in found
           if top(name) in ("torch", "lab") or (top(name) == "engine" and name not in WIDGETS_MAY_IMPORT)]
    assert not bad, bad


def test_lab_imports_only_the_torch_free_engine_modules_and_the_rest_inside_functions():
    bad = []
    for m, found in imports().items():
        if top(m) != "lab":
            continue
        for name, lazy in found:
            if top(name) == "torch":
                bad.append(f"{m} imports {name}")
            elif top(name) == "engine" and name not in LAB_MAY_IMPORT:
                if not (lazy and name in LAB_MAY_IMPORT_LAZILY):
                    bad.append(f"{m} imports {name}{' inside a function' if lazy else ''}")
    assert not bad, bad
