"""``create_moofa_predictor_dataset.py``: the balanced predictor dataset (SPEC 6, 9.3).

Run as a plain process, under ``horovodrun -np N`` or under ``torchrun --nproc_per_node N``. The
supernet, the model and the data come from the config (``args`` updated with the last
``args_per_task`` entry, SPEC 6.1); bins, counts and the output come from ``dataset_config``. See
:mod:`moofa.predictor.create` for the algorithm, the evaluation subset, how ranks share the work
and how a killed run resumes (run the same command again).
"""
from __future__ import annotations

import logging
from typing import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.data import DataProvider
from moofa.distributed import init_backend
from moofa.errors import CheckpointError, ConfigError
from moofa.models.spec import DEFAULT_MODEL_CONFIGS
from moofa.predictor.create import SubnetMeter, check_bins, output_paths, prepare, run_plan
from moofa.run import Run

log = logging.getLogger("moofa.create_dataset")


def build_parser() -> ArgParser:
    p = ArgParser(prog="create_moofa_predictor_dataset.py",
                  description="Sample subnets of a trained supernet evenly over peak-memory bins, measure "
                  "their accuracy (after BN re-calibration, on a fixed subset of the test split) and append "
                  "them to the predictor dataset (JSON Lines). Rerun the same command to resume.")
    p.add_argument("--config", required=True, help="run config YAML (args, dataset_config, search_config)")
    p.add_argument("--model_config_path", default=str(DEFAULT_MODEL_CONFIGS), help="model_configs.yaml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    run = Run.load(ns.config, ns.model_config_path)
    args = run.args()
    spec = run.spec(args)
    checkpoint = run.supernet_file(args)
    if checkpoint is None:
        raise ConfigError("dataset creation needs the trained supernet's weights (null given)",
                          file=run.path, key="args.checkpoint")
    if not checkpoint.is_file():
        raise CheckpointError("checkpoint file not found (args.checkpoint)", file=checkpoint)
    dc = run.cfg.dataset_config
    output_paths(dc.output)  # bad output path: the same error on every rank, before any work
    check_bins(spec, dc)
    backend = init_backend(args.device)
    try:
        plan = prepare(spec, dc, backend)
        provider = DataProvider(args, spec.image_sizes, rank=0, world_size=1)
        supernet = run.supernet(args, provider.n_classes, load=True).to(backend.device)
        meter = SubnetMeter(supernet, provider, dc.eval_images)
        if backend.is_main:
            log.info("accuracy: top-1 on %d of %d test images (even stride over %s/val), after BN "
                     "re-calibration on %d training images; checkpoint %s", len(meter.indices),
                     meter.n_test, provider.root, int(args.bn_calib_images), checkpoint)
        summary = run_plan(plan, meter, backend, provider.n_classes, log_interval=int(dc.save_interval))
    finally:
        backend.shutdown()
    if backend.is_main:
        state = "complete" if summary.complete else "INCOMPLETE (see the warnings above)"
        print(f"{summary.paths.jsonl}: {summary.n_records} subnets ({summary.added} new), {state}")
    return 0


def run() -> int:
    """Console-script entry point: :func:`main` with the one-line error handling."""
    return run_cli(main)
