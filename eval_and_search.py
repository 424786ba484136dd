#!/usr/bin/env python3
"""Evaluate a subnet or the teacher, or search the best subnet per peak-memory constraint
(SPEC 7, 8). See ``eval_and_search.py --help``."""
from moofa.cli.common import run_cli
from moofa.cli.eval_and_search import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
