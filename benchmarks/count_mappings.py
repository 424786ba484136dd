"""Count ``Mapping[str, Any]`` annotations (also ``Mapping[str, Any] | None``) in function
signatures, parameters and returns, across ``moofa/`` (the typed-config hand-down measure).

Usage: ``python benchmarks/count_mappings.py [--list] [ROOT]`` (ROOT defaults to ``moofa``).
Prints the total; ``--list`` also prints ``file:line function`` per annotation.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

_TARGETS = {"Mapping[str, Any]", "Mapping[str, Any] | None", "Optional[Mapping[str, Any]]",
            "None | Mapping[str, Any]"}


def _annotations(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    a = fn.args
    params = a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]
    out = [p.annotation for p in params if p.annotation is not None]
    if fn.returns is not None:
        out.append(fn.returns)
    return out


def _text(node: ast.expr) -> str:
    """The annotation as written (string annotations unquoted)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.replace("typing.", "")
    return ast.unparse(node).replace("typing.", "")


def find(root: Path) -> list[tuple[Path, int, str]]:
    """``(file, line, function)`` for each matching annotation under ``root``."""
    hits = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for ann in _annotations(node):
                    if _text(ann) in _TARGETS:
                        hits.append((path, ann.lineno, node.name))
    return hits


def main(argv: list[str]) -> int:
    show = "--list" in argv
    rest = [a for a in argv if a != "--list"]
    root = Path(rest[0]) if rest else Path("moofa")
    hits = find(root)
    if show:
        for path, line, name in hits:
            print(f"{path}:{line} {name}")
    print(len(hits))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
