"""``eval_and_search.py``: evaluate a subnet or the teacher (``--mode eval``), search the best
subnet under each peak-memory constraint (``--mode search``), or compare finished searches
(``--mode summary``). docs/design.md#search-space; README.

Run as a plain process, under ``horovodrun -np N`` or under ``torchrun --nproc_per_node N``; only
rank 0 writes files.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.distributed import init_backend
from moofa.efficiency.limits import Limits
from moofa.models.spec import DEFAULT_MODEL_CONFIGS
from moofa.run import Run
from moofa.search.evolution import check_constraints
from moofa.search.results import compare
from moofa.workflows.eval_mode import run_eval
from moofa.workflows.sweep import run_search

EPILOG = """examples:
  eval_and_search.py --config configs/config_MOOFA.yaml --mode search
  eval_and_search.py --config configs/config_MOOFA.yaml --mode eval --model supernet
  eval_and_search.py --mode summary --results searches/MIT_OFA searches/MOOFA --labels OFA MOOFA --output cmp/
"""


def build_parser() -> ArgParser:
    p = ArgParser(prog="eval_and_search.py", epilog=EPILOG,
                  description="Evaluate a subnet or the teacher, search the most accurate subnet under "
                  "each peak-memory constraint, or tabulate finished searches (Table 1 layout).",
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="run config YAML (required for eval and search)")
    p.add_argument("--mode", required=True, choices=["eval", "search", "summary"],
                   help="eval: subnet_config / teacher; search: constraint sweep; summary: compare result folders")
    p.add_argument("--model", choices=["supernet", "teacher"],
                   help="eval mode: the supernet's subnet_config subnet or the teacher (required for eval)")
    p.add_argument("--model_config_path", default=str(DEFAULT_MODEL_CONFIGS), help="model_configs.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="search: redo constraints whose results already exist (default: resume; a result "
                   "computed from other inputs is an error naming what changed)")
    p.add_argument("--results", nargs="+", metavar="DIR", help="summary: search result folders (res_dir)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="summary: column labels (default: model names)")
    p.add_argument("--output", metavar="DIR", help="summary: output folder (default: the first results folder)")
    return p


def _summary(parser: ArgParser, opts) -> int:
    if not opts.results:
        parser.error("--mode summary needs --results DIR [DIR ...]")
    out = opts.output or opts.results[0]
    for path in compare(opts.results, opts.labels, out):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.mode == "summary":
        return _summary(parser, opts)
    if not opts.config:
        parser.error(f"--mode {opts.mode} needs --config")
    if opts.mode == "eval" and not opts.model:
        parser.error("--mode eval needs --model {supernet,teacher}")
    run = Run.load(opts.config, opts.model_config_path)
    if opts.mode == "search":  # infeasible constraints fail before any process group starts
        limits = Limits.from_config(run.cfg, run.n_classes())
        check_constraints(run.spec(), run.cfg.search_config.sweep(), file=opts.config, limits=limits)
    backend = init_backend(run.cfg.args.device)
    try:
        if opts.mode == "search":
            run_search(run, backend, overwrite=opts.overwrite)
        else:
            run_eval(run, backend, opts.model)
    finally:
        backend.shutdown()
    return 0


def run() -> int:
    """Console-script entry point: :func:`main` with the one-line error handling."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
