"""``train_moofa_predictor.py``: train the accuracy predictor on a predictor dataset (recipe:
:mod:`moofa.predictor.training`, settings: ``predictor_config``)."""
from __future__ import annotations

import logging
from typing import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.config import last_task_args, load_config
from moofa.errors import ConfigError
from moofa.models.spec import DEFAULT_MODEL_CONFIGS
from moofa.predictor.dataset import read_dataset
from moofa.predictor.plots import check_image_path, plot_predictions
from moofa.predictor.training import (
    MemberResult,
    check_dataset_size,
    deduplicate,
    format_metrics,
    split_indices,
    train_predictor,
)
from moofa.run import expected_n_classes

log = logging.getLogger("moofa.predictor.training")


def build_parser() -> ArgParser:
    p = ArgParser(prog="train_moofa_predictor.py",
                  description="Train the accuracy predictor on a predictor dataset and report test "
                              "RMSE (pp), Pearson and Kendall's tau.")
    p.add_argument("--config", required=True, help="YAML config (args, search_config, optional "
                   "predictor_config)")
    p.add_argument("--output", default=None, help="scatter plot of predicted vs real accuracy on "
                   "the test split (PNG)")
    p.add_argument("--model_config_path", default=str(DEFAULT_MODEL_CONFIGS), help="model_configs.yaml")
    return p


def main(argv: "Sequence[str] | None" = None) -> int:
    """``train_moofa_predictor.py --config C [--output PNG] [--model_config_path P]``."""
    ns = build_parser().parse_args(argv)
    if ns.output:
        check_image_path(ns.output)  # fail before training, not after
    cfg = load_config(ns.config, ns.model_config_path)
    sc, spec, recipe, seed = cfg.search_config, cfg.spec, cfg.predictor_config, cfg.args.manual_seed
    checkpoint = sc.acc_predictor_checkpoint  # nullable; acc_dataset_path is not (the loader refuses null)
    if checkpoint is None:
        raise ConfigError("missing key", file=cfg.path, key="search_config.acc_predictor_checkpoint")
    dataset = read_dataset(sc.acc_dataset_path, spec)
    log.info("predictor dataset %s: %d subnets of %s", sc.acc_dataset_path, len(dataset), spec.name)
    dataset = deduplicate(dataset, spec)  # before the split; the plot below uses the same one
    check_dataset_size(len(dataset), recipe, sc.acc_dataset_path)
    n_classes = expected_n_classes(last_task_args(cfg))  # the FLOPs input's class count

    def progress(m: int, res: MemberResult) -> None:
        log.info("member %d/%d: best epoch %d, validation RMSE %.4f pp", m + 1,
                 recipe.ensemble, res.best_epoch + 1, res.val_rmse_pp)

    predictor, metrics = train_predictor(dataset, spec, seed, recipe, device=cfg.args.device,
                                         progress=progress, n_classes=n_classes)
    out = predictor.save(checkpoint)
    print(format_metrics(metrics, spec.name))
    print(f"checkpoint: {out}")
    if ns.output:
        _, test_idx = split_indices(len(dataset), seed, recipe.test_fraction)
        real = dataset.accuracies[test_idx]
        pred = predictor.predict([dataset.configs[i] for i in test_idx])
        print(f"plot: {plot_predictions(real, pred, ns.output)}")
    return 0


def run() -> int:
    """Console-script entry point: :func:`main` with the one-line error handling."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
