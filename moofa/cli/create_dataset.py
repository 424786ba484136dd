"""``create_moofa_predictor_dataset.py``: the balanced predictor dataset (docs/design.md#protocols).

Run as a plain process, under ``horovodrun -np N`` or under ``torchrun --nproc_per_node N``. The
supernet, the model and the data come from the config (``args`` updated with the last
``args_per_task`` entry, docs/design.md#protocols); bins, counts and the output come from ``dataset_config``. See
:mod:`moofa.predictor.create` for the algorithm, the evaluation subset, how ranks share the work
and how a killed run resumes (run the same command again).
"""
from __future__ import annotations

import logging
from typing import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.data import DataProvider
from moofa.distributed import init_backend
from moofa.efficiency import MemoryOptions
from moofa.errors import CheckpointError, ConfigError, on_main_rank
from moofa.io import check_writable, clean_stale_temps, require_file
from moofa.lock import OutputLock
from moofa.measurement.meter import SubnetMeter
from moofa.models.spec import DEFAULT_MODEL_CONFIGS
from moofa.predictor.create import check_recipe, dataset_recipe, prepare, recipe_path, run_plan
from moofa.predictor.plan import check_bins, output_paths
from moofa.run import Run

log = logging.getLogger("moofa.create_dataset")


def build_parser() -> ArgParser:
    p = ArgParser(prog="create_moofa_predictor_dataset.py",
                  description="Sample subnets of a trained supernet evenly over peak-memory bins, measure "
                  "their accuracy (after BN re-calibration, on a fixed subset of the selection split: training "
                  "images held out by args.valid_size; dataset_config.eval_split) and append "
                  "them to the predictor dataset (JSON Lines). Rerun the same command to resume.")
    p.add_argument("--config", required=True, help="run config YAML (args, dataset_config, search_config)")
    p.add_argument("--model_config_path", default=str(DEFAULT_MODEL_CONFIGS), help="model_configs.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the existing dataset and measure it again (default: resume; records "
                   "measured with another checkpoint or settings are an error)")
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
    require_file(checkpoint, "checkpoint file", "args.checkpoint", CheckpointError)
    dc = run.cfg.dataset_config
    options = MemoryOptions.from_config(run.cfg, run.n_classes(args))
    paths = output_paths(run.dataset_file)  # bad output path: the same error on every rank, before any work
    check_bins(spec, dc, options)
    backend = init_backend(args.device)
    lock = OutputLock(paths.jsonl.parent, "dataset creation", key="dataset_config.output",
                      name=f".{paths.jsonl.name}.lock")

    def take_output() -> None:  # writable, ours, tidy, same inputs: before any long work
        check_writable(paths.jsonl.parent, "dataset_config.output")
        lock.acquire()
        clean_stale_temps([p for p in (paths.pickle, paths.jsonl, recipe_path(paths)) if p])
        check_recipe(paths, dataset_recipe(spec, dc, args, options), ns.overwrite)

    try:
        on_main_rank(backend, take_output)
        plan = prepare(spec, dc, backend, options)
        provider = DataProvider(args, spec.image_sizes, rank=0, world_size=1)
        supernet = run.supernet(args, provider.n_classes, load=True).to(backend.device)
        meter = SubnetMeter(supernet, provider, dc.eval_images, dc.eval_split)
        if backend.is_main:
            log.info("accuracy: top-1 on %s, after BN re-calibration on %d training images; checkpoint %s",
                     meter.description, int(args.bn_calib_images), checkpoint)
            if dc.eval_images is not None and len(meter.indices) < dc.eval_images:
                log.warning("only %d selection images (args.valid_size) for dataset_config.eval_images %d: "
                            "set args.valid_size (OFA holds out 10,000) or eval_split: test (the reference)",
                            len(meter.indices), dc.eval_images)
        summary = run_plan(plan, meter, backend, provider.n_classes, log_interval=int(dc.save_interval))
    finally:
        lock.release()
        backend.shutdown()
    if backend.is_main:
        state = "complete" if summary.complete else "INCOMPLETE (see the warnings above)"
        print(f"{summary.paths.jsonl}: {summary.n_records} subnets ({summary.added} new), {state}")
    return 0


def run() -> int:
    """Console-script entry point: :func:`main` with the one-line error handling."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
