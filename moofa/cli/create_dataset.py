"""``create_moofa_predictor_dataset.py``: the balanced predictor dataset (SPEC 6, 9.3).

Run as a plain process, under ``horovodrun -np N`` or under ``torchrun --nproc_per_node N``. The
supernet, the model and the data come from the config (``args`` updated with the last
``args_per_task`` entry, SPEC 6.1); bins, counts and the output come from ``dataset_config``. See
:mod:`moofa.predictor.create` for the algorithm, the evaluation subset, how ranks share the work
and how a killed run resumes (run the same command again).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from moofa.cli.common import ArgParser
from moofa.config import last_task_args, load_config, validate_model
from moofa.errors import CheckpointError, ConfigError
from moofa.models.spec import DEFAULT_MODEL_CONFIGS


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
    cfg = load_config(ns.config)
    args = last_task_args(cfg)
    spec = validate_model(dict(cfg, args=args), ns.model_config_path)
    checkpoint = args.get("checkpoint")
    where = cfg.get("_path", ns.config)
    if checkpoint is None:
        raise ConfigError("dataset creation needs the trained supernet's weights (null given)",
                          file=where, key="args.checkpoint")
    if not Path(checkpoint).is_file():
        raise CheckpointError("checkpoint file not found (args.checkpoint)", file=checkpoint)
    dc = dict(cfg["dataset_config"])

    # Imports that pull in torch and the data stack wait until the cheap checks passed.
    from moofa.data import DataProvider
    from moofa.distributed import init_backend
    from moofa.models import build_supernet, load_weights
    from moofa.predictor.create import (
        SubnetMeter,
        check_bins,
        output_paths,
        prepare,
        run_plan,
    )

    from moofa.efficiency import MemoryOptions
    from moofa.search.report import expected_n_classes

    options = MemoryOptions.from_config(cfg, expected_n_classes(args))
    output_paths(dc["output"])  # bad output path: the same error on every rank, before any work
    check_bins(spec, dc, options)
    backend = init_backend(args["device"])
    try:
        plan = prepare(spec, dc, backend, options)
        provider = DataProvider(args, spec.image_sizes, rank=0, world_size=1)
        supernet = build_supernet(spec, provider.n_classes, dropout=args["dropout"],
                                  bn_momentum=args["bn_momentum"], bn_eps=args["bn_eps"],
                                  kernel_transform=args["dy_conv_scaling_mode"] == 1)
        load_weights(supernet, checkpoint)
        supernet.to(backend.device)
        meter = SubnetMeter(supernet, provider, dc["eval_images"])
        if backend.is_main:
            import logging
            logging.getLogger("moofa.create_dataset").info(
                "accuracy: top-1 on %d of %d test images (even stride over %s/val), after BN "
                "re-calibration on %d training images; checkpoint %s", len(meter.indices), meter.n_test,
                provider.root, int(args["bn_calib_images"]), checkpoint)
        summary = run_plan(plan, meter, backend, provider.n_classes, log_interval=int(dc["save_interval"]))
    finally:
        backend.shutdown()
    if backend.is_main:
        state = "complete" if summary.complete else "INCOMPLETE (see the warnings above)"
        print(f"{summary.paths.jsonl}: {summary.n_records} subnets ({summary.added} new), {state}")
    return 0
