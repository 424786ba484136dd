"""``train.py``: one launch of progressive-shrinking training (docs/design.md#protocols), or the fine-tuning
of a found subnet (``--step finetune --subnet``, :mod:`moofa.workflows.finetune`).

Run as a plain process, under ``horovodrun -np N`` or under ``torchrun --nproc_per_node N``.
"""
from __future__ import annotations

from typing import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.config import FINETUNE
from moofa.distributed import init_backend
from moofa.errors import MoofaInputError
from moofa.models.spec import DEFAULT_MODEL_CONFIGS
from moofa.run import Run
from moofa.training.checkpoint import PHASE_ORDER
from moofa.training.trainer import train_step
from moofa.workflows.finetune import finetune


def build_parser() -> ArgParser:
    p = ArgParser(prog="train.py", description="Train the teacher, then the supernet phase by phase "
                  "(kernel 1, depth 1-2, expand 1-2); after the search, fine-tune a found subnet "
                  "(--step finetune --subnet). A killed run resumes when restarted with the same command.")
    p.add_argument("--config", required=True, help="run config YAML (configs/*.yaml)")
    p.add_argument("--step", required=True, choices=["teacher", *PHASE_ORDER, FINETUNE], help="what to train")
    p.add_argument("--phase", type=int, default=None,
                   help="phase of the step (1..tasks_phases[step]); not for teacher and finetune")
    p.add_argument("--subnet", default=None,
                   help="finetune only: a search result folder (constraint_<int>/, the arch of its info.json "
                   "cut from args.checkpoint) or an exported subnet.pth.tar; output in finetuned/ next to it")
    p.add_argument("--model_config_path", default=str(DEFAULT_MODEL_CONFIGS), help="model_configs.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="delete this phase's checkpoints and train it again from its start (default: "
                   "resume; a phase trained with other settings or inputs is an error)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.step == FINETUNE and ns.subnet is None:
        raise MoofaInputError("--step finetune needs --subnet <constraint folder | subnet.pth.tar>", key="--subnet")
    if ns.step != FINETUNE and ns.subnet is not None:
        raise MoofaInputError(f"--subnet is only for --step finetune, not {ns.step}", key="--subnet",
                              value=ns.subnet)
    if ns.step == FINETUNE and ns.phase is not None:
        raise MoofaInputError("--step finetune has no phases", key="--phase", value=ns.phase)
    run = Run.load(ns.config, ns.model_config_path)
    backend = init_backend(run.cfg.args.device)
    try:
        if ns.step == FINETUNE:
            result = finetune(run, ns.subnet, backend, overwrite=ns.overwrite)
        else:
            result = train_step(run, ns.step, ns.phase, backend, overwrite=ns.overwrite)
    finally:
        backend.shutdown()
    if backend.is_main and not result.already_done:
        print(f"{result.phase}: {result.epochs} epochs, best validation top-1 {100 * result.best_acc:.2f}%")
        if result.info is not None:
            i = result.info
            print(f"test top-1 on {i.n_test_images:,} images: {100 * (i.test_top1_before or 0.0):.2f}% before, "
                  f"{100 * i.test_top1_after:.2f}% after fine-tuning; peak memory {i.peak_memory or 0:,} "
                  f"elements, {i.flops or 0.0:.1f} MMACs")
    return 0


def run() -> int:
    """Console-script entry point: :func:`main` with the one-line error handling."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
