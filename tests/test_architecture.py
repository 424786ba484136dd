"""Structure rules of the package, checked statically (docs/design.md#architecture)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moofa"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


# The layers of the package, lowest first (docs/design.md#architecture). A module may import
# (anywhere: module level or inside a function) only from its own layer or a lower one. Each name
# is a subpackage or a top-level module of moofa; "__main__" stands for every ``python -m`` shim
# (``moofa/*/__main__.py``), which belongs to the command line; "moofa" is the package's own
# ``__init__`` (the public facade, which loads the rest lazily).
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"errors", "io", "resources", "stats", "preempt", "lock", "fingerprint", "distributed"}),
    ("models", {"models"}),  # ModelSpec / SubnetConfig are data the config validates against
    ("config", {"config"}),
    ("efficiency", {"efficiency", "run"}),
    ("data", {"data"}),
    ("measurement", {"measurement"}),
    ("deploy", {"deploy"}),
    ("latency", {"latency"}),
    ("training", {"training"}),
    ("predictor", {"predictor"}),
    ("search", {"search"}),
    ("workflows", {"workflows"}),
    ("demo", {"demo"}),
    ("cli", {"cli", "docs", "profile", "__main__", "moofa"}),
]


def _unit(module: str) -> str:
    """The layer unit of a dotted moofa module name (see LAYERS)."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else "moofa"


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(source: str, name: str, is_package: bool, known: set[str],
             module_level_only: bool = False) -> set[str]:
    """moofa modules that the module ``name`` (text ``source``) imports: every import statement,
    inside functions too, except those under ``if TYPE_CHECKING:``; with ``module_level_only``
    only the statements run when the module is imported (those can form an import-time cycle).
    ``from moofa.a import b`` names ``moofa.a.b`` when that is a module, else ``moofa.a``."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if _is_type_checking(node):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name == "moofa" or a.name.startswith("moofa."))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base == "moofa" or base.startswith("moofa."):
                    out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                               for a in node.names)
            if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, None) or [])
            if isinstance(node, ast.Match):
                visit([s for case in node.cases for s in case.body])

    visit(ast.parse(source).body)
    out.discard(name)
    return out


def _graph(module_level_only: bool = False) -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(p.read_text(), n, p.name == "__init__.py", set(mods), module_level_only)
            for n, p in mods.items()}


def _layer_problems(graph: dict[str, set[str]], layers: list[tuple[str, set[str]]]) -> list[str]:
    """Modules in no layer, and imports that point to a higher layer."""
    rank = {unit: i for i, (_, units) in enumerate(layers) for unit in units}
    names = [layer for layer, _ in layers]
    unassigned = sorted({_unit(m) for m in graph} - set(rank))
    problems = [f"{u}: in no layer (add it to LAYERS)" for u in unassigned]
    for m in sorted(graph):
        for t in sorted(graph[m]):
            a, b = rank.get(_unit(m)), rank.get(_unit(t))
            if a is not None and b is not None and b > a:
                problems.append(f"{m} ({names[a]}) imports {t} ({names[b]})")
    return problems


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_imports_follow_the_layer_order():
    graph = _graph()
    # the analysis sees imports: module level, inside a function, and ``from moofa import x``
    assert "moofa.config" in graph["moofa.run"]
    assert "moofa.deploy" in graph["moofa.workflows.sweep"]
    assert "moofa.preempt" in graph["moofa.workflows.sweep"]
    problems = _layer_problems(graph, LAYERS)
    assert not problems, f"{len(problems)} layer violations:\n" + "\n".join(problems)


def test_the_layer_check_can_fail():
    known = {"moofa.models.spec", "moofa.cli.common", "moofa.config"}
    source = ("from typing import TYPE_CHECKING\n"
              "from moofa.models.spec import ModelSpec\n"
              "if TYPE_CHECKING:\n    from moofa.config import RunConfig\n"
              "def f():\n    from moofa.cli.common import run_cli\n")
    graph = {"moofa.models.x": _imports(source, "moofa.models.x", False, known)}
    assert graph["moofa.models.x"] == {"moofa.models.spec", "moofa.cli.common"}  # TYPE_CHECKING skipped
    assert _layer_problems(graph, LAYERS) == ["moofa.models.x (models) imports moofa.cli.common (cli)"]
    assert _imports(source, "moofa.models.x", False, known, module_level_only=True) == {"moofa.models.spec"}
    # a subpackage or module no layer names is a failure
    assert _layer_problems({"moofa.newpkg.a": set()}, LAYERS) == ["newpkg: in no layer (add it to LAYERS)"]
    # every python -m shim counts as the command line
    assert _unit("moofa.deploy.__main__") == "__main__" and _unit("moofa") == "moofa"


def test_no_import_cycle_at_import_time():
    graph = _graph(module_level_only=True)
    assert "moofa.config" in graph["moofa.run"]  # the analysis sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    # a planted cycle is found
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_citation_of_documents_outside_the_repository():
    pattern = re.compile(r"\b(SPEC|CONTRACT)\b")
    hits = [f"{p.relative_to(ROOT)}:{i}" for folder in ("moofa", "tests", "benchmarks")
            for p in sorted((ROOT / folder).rglob("*.py")) if p != Path(__file__).resolve()
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, f"{len(hits)} citations (point to docs/design.md instead), first: {hits[:5]}"


def test_search_space_operations_live_in_the_space():
    """The predictor encodes; sampling, mutation, crossover and coupling belong to
    moofa.models.space."""
    banned_defs = {"sample", "random_sample", "mutate", "crossover", "couple"}
    found = []
    for p in sorted((PACKAGE / "predictor").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in banned_defs:
                found.append(f"{p.name}: def {node.name}")
            if isinstance(node, ast.Attribute) and node.attr in ("compound_expand", "mutate", "crossover"):
                found.append(f"{p.name}: .{node.attr}")
    assert not found, found
    space = (PACKAGE / "models" / "space.py").read_text()
    assert all(f"def {name}(" in space for name in ("sample", "mutate", "crossover", "couple"))
