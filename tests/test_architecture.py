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


def _top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """moofa modules imported when ``path`` is imported (module-level statements only; imports
    inside functions run later and cannot form an import-time cycle)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


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


def test_no_import_cycle_inside_the_package():
    mods = _modules()
    graph = {n: _top_level_imports(p, n, set(mods)) for n, p in mods.items()}
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
