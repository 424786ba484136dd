"""``train.py``: one launch of progressive-shrinking training (SPEC 3.1, 9.3).

Run as a plain process, under ``horovodrun -np N`` or under ``torchrun --nproc_per_node N``.
"""
from __future__ import annotations

from typing import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.distributed import init_backend
from moofa.models.spec import DEFAULT_MODEL_CONFIGS
from moofa.run import Run
from moofa.training.checkpoint import PHASE_ORDER
from moofa.training.trainer import train_step


def build_parser() -> ArgParser:
    p = ArgParser(prog="train.py", description="Train the teacher, then the supernet phase by phase "
                  "(kernel 1, depth 1-2, expand 1-2). A killed run resumes when restarted with the same command.")
    p.add_argument("--config", required=True, help="run config YAML (configs/*.yaml)")
    p.add_argument("--step", required=True, choices=["teacher", *PHASE_ORDER], help="what to train")
    p.add_argument("--phase", type=int, default=None, help="phase of the step (1..tasks_phases[step]); not for teacher")
    p.add_argument("--model_config_path", default=str(DEFAULT_MODEL_CONFIGS), help="model_configs.yaml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = Run.load(args.config, args.model_config_path)
    backend = init_backend(run.cfg.args.device)
    try:
        result = train_step(run, args.step, args.phase, backend)
    finally:
        backend.shutdown()
    if backend.is_main and not result.already_done:
        print(f"{result.phase}: {result.epochs} epochs, best validation top-1 {100 * result.best_acc:.2f}%")
    return 0


def run() -> int:
    """Console-script entry point: :func:`main` with the one-line error handling."""
    return run_cli(main)
