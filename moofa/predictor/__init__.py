"""Accuracy predictor: the reference encoding, MLP ensemble, dataset files and training recipe
(docs/design.md#encoding, docs/design.md#run-layout). Sampling, mutation and crossover of subnets live in
:class:`moofa.models.space.SearchSpace`."""
from moofa.predictor.dataset import (
    PredictorDataset,
    RestrictedUnpickler,
    append_records,
    load_restricted_pickle,
    make_record,
    read_dataset,
    read_jsonl,
    read_pickle,
    repair_tail,
)
from moofa.predictor.encoder import ArchEncoder
from moofa.predictor.mlp import EXTRA_FEATURES, AccuracyMLP, AccuracyPredictor
from moofa.predictor.plots import plot_predictions
from moofa.predictor.training import (
    PredictorRecipe,
    regression_metrics,
    split_indices,
    train_predictor,
)

__all__ = ["ArchEncoder", "AccuracyMLP", "AccuracyPredictor", "EXTRA_FEATURES", "PredictorDataset",
           "PredictorRecipe", "RestrictedUnpickler", "append_records", "load_restricted_pickle",
           "make_record", "plot_predictions", "read_dataset", "read_jsonl", "read_pickle",
           "repair_tail", "regression_metrics", "split_indices", "train_predictor"]
