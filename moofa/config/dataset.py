"""The ``dataset_config`` (balanced predictor dataset) and ``predictor_config`` (accuracy-predictor
training recipe) sections."""
from __future__ import annotations

from typing import Any

from moofa.config.fields import _INT, _POS_INT, Field, _bool, _choice, _num, _str
from moofa.config.section import Section, schema_section
from moofa.errors import ConfigError

DATASET_SCHEMA: dict[str, Field] = {
    "n_samples": Field(2000, _POS_INT, "subnets in the predictor dataset"),
    "min_memory": Field(250000, _POS_INT, "lower edge of the first memory bin, in the memory unit"),
    "max_memory": Field(800000, _POS_INT, "upper edge of the last memory bin, in the memory unit"),
    "n_bins": Field(15, _POS_INT, "equal-width memory bins"),
    "eval_images": Field(10000, _num(1, integer=True, nullable=True),
                         "fixed evaluation subset of eval_split (images); null = all"),
    "eval_split": Field("selection", _choice("selection", "test"),
                        "images subnets are measured on for selection (this dataset, the search's re-ranking): "
                        "selection = training images held out by args.valid_size (OFA); test = val/ (reference)"),
    "seed": Field(0, _INT, "sampling seed"),
    "max_attempts": Field(1000000, _POS_INT, "sampling attempts before giving up"),
    "save_interval": Field(10, _POS_INT, "progress log line every N subnets (records are appended as measured)"),
    "output": Field(None, _str(nullable=True), "dataset file (default: search_config.acc_dataset_path)"),
}

# Accuracy-predictor training (one table: extend it here).
PREDICTOR_SCHEMA: dict[str, Field] = {
    "hidden_size": Field(400, _POS_INT, "MLP hidden width"),
    "n_layers": Field(3, _POS_INT, "hidden layers"),
    "ensemble": Field(5, _POS_INT, "ensemble members"),
    "epochs": Field(30, _POS_INT, "training epochs per ensemble member"),
    "lr": Field(1.0e-2, _num(0.0, lo_open=True), "Adam learning rate"),
    "lr_schedule": Field("cosine", _choice("cosine", "plateau", "constant"),
                         "cosine (per step), plateau (x0.5 after 5 flat epochs) or constant"),
    "weight_decay": Field(1.0e-5, _num(0.0), "Adam weight decay"),
    "batch_size": Field(32, _POS_INT, "training batch (samples)"),
    "val_fraction": Field(0.1, _num(0.0, 1.0, hi_open=True), "validation split (fraction)"),
    "test_fraction": Field(0.2, _num(0.0, 1.0, hi_open=True), "held-out test split (fraction)"),
    "extra_features": Field(True, _bool(), "add memory/FLOPs features to the encoding"),
}


@schema_section(DATASET_SCHEMA, "dataset_config")
class DatasetSettings(Section):
    """``dataset_config``: the balanced predictor dataset."""

    n_samples: int
    min_memory: int  # memory unit
    max_memory: int
    n_bins: int
    eval_images: int | None
    eval_split: str
    seed: int
    max_attempts: int
    save_interval: int
    output: str | None  # filled by load_config (search_config.acc_dataset_path)

    def check(self) -> None:
        if self.min_memory >= self.max_memory:
            raise ConfigError(f"must exceed min_memory ({self.min_memory})",
                              key=f"{self.WHERE}.max_memory", value=self.max_memory)


@schema_section(PREDICTOR_SCHEMA, "predictor_config")
class PredictorRecipe(Section):
    """``predictor_config``: hyper-parameters of the accuracy-predictor training (all optional;
    the device comes from ``args.device``)."""

    hidden_size: int
    n_layers: int
    ensemble: int
    epochs: int
    lr: float
    lr_schedule: str
    weight_decay: float
    batch_size: int  # samples
    val_fraction: float
    test_fraction: float
    extra_features: bool

    def check(self) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must be < 1",
                              key=f"{self.WHERE}.test_fraction", value=self.test_fraction)

    @classmethod
    def from_config(cls, section: Any, where: str = "predictor_config") -> "PredictorRecipe":
        """:meth:`from_mapping` (null = the defaults)."""
        return cls.from_mapping(section, where)
