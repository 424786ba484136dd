#!/usr/bin/env python3
"""Count what the test suite checks, so a faster suite can be shown to check no less.

Prints the number of collected tests (``pytest --collect-only -q``) and the number of assertions in
tests/: ``assert`` statements (``ast.Assert`` nodes) plus ``pytest.raises`` uses. Run from the
repository root: ``python benchmarks/count_asserts.py`` (``--no-collect`` skips the collection).
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def count_assertions(tests: Path) -> tuple[int, int]:
    """(``assert`` statements, ``pytest.raises`` uses) over every ``*.py`` under ``tests``."""
    asserts = raises = 0
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assert):
                asserts += 1
            elif (isinstance(node, ast.Attribute) and node.attr == "raises"
                  and isinstance(node.value, ast.Name) and node.value.id == "pytest"):
                raises += 1
    return asserts, raises


def count_tests(tests: Path) -> int:
    """The number of tests pytest collects under ``tests``."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(tests)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    m = re.search(r"(\d+) tests? collected", proc.stdout)
    if not m:
        raise SystemExit(f"error: pytest --collect-only printed no count\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return int(m.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=Path, default=ROOT / "tests")
    parser.add_argument("--no-collect", action="store_true", help="only count the assertions")
    args = parser.parse_args()
    asserts, raises = count_assertions(args.tests)
    if not args.no_collect:
        print(f"tests collected: {count_tests(args.tests)}")
    print(f"assert statements: {asserts}")
    print(f"pytest.raises uses: {raises}")
    print(f"assertions in all: {asserts + raises}")


if __name__ == "__main__":
    main()
