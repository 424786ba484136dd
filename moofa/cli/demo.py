"""``python -m moofa.demo`` (what ``make demo`` runs): the command line of :mod:`moofa.demo`."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from moofa.cli.common import ArgParser, run_cli
from moofa.demo.pipeline import DEFAULT_OUT, LABELS, QUICK_OUT, run_demo
from moofa.errors import MoofaInputError


def build_parser() -> ArgParser:
    p = ArgParser(prog="python -m moofa.demo",
                  description="Run the whole MOOFA pipeline (teacher, progressive shrinking, predictor "
                  "dataset, predictor, memory-constrained search, OFA-vs-MOOFA comparison) on the embedded "
                  "digits dataset. Rerun to resume; finished stages are reused.")
    p.add_argument("--out", default=None, help=f"run folder (default {DEFAULT_OUT}/, with --quick {QUICK_OUT}/)")
    p.add_argument("--quick", action="store_true", help="toy size (synthetic data, one epoch per phase), for tests")
    p.add_argument("--models", nargs="+", choices=LABELS, default=list(LABELS), metavar="MODEL",
                   help=f"which demo models to run ({', '.join(LABELS)}; default both)")
    p.add_argument("--jobs", type=int, default=None,
                   help="model chains run at once (default: one per model, at most one per CPU core)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.jobs is not None and ns.jobs < 1:
        raise MoofaInputError("must be >= 1", key="--jobs", value=ns.jobs)
    out = Path(ns.out) if ns.out else (QUICK_OUT if ns.quick else DEFAULT_OUT)
    summary = run_demo(out, ns.models, ns.quick, ns.jobs)
    return 0 if summary["ok"] else 1


def run() -> int:
    """Console-script entry point: :func:`main` with the one-line error handling."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
