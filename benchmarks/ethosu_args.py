"""Command-line options shared by the Ethos-U benchmarks (bench_ethosu_sram.py and
bench_latency_tables.py): which models and targets, how many compiled samples, and the cache."""
from __future__ import annotations

import argparse


def sample_parser(description: str, n: int) -> argparse.ArgumentParser:
    """A parser with ``--models``, ``--targets``, ``--n`` (default ``n`` samples per model),
    ``--workers``, ``--cache`` and ``--no-compile``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", nargs="+", default=["OFA", "MOOFA_V3"])
    p.add_argument("--targets", nargs="+", default=["ethos-u55-128", "ethos-u65-256"])
    p.add_argument("--n", type=int, default=n)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cache", default=".cache/ethosu")
    p.add_argument("--no-compile", action="store_true", help="use the samples already compiled")
    return p
