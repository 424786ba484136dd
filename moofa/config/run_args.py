"""The ``args`` section, its nested dataset settings and the ``args_per_task`` phase entries
(the reference phase table, fine-tuning defaults): what training, data and models read."""
from __future__ import annotations

import re
from dataclasses import field
from typing import Any, Iterator, Mapping

from moofa.config.fields import _FRACTION, _INT, _NONNEG_INT, _POS_INT, Field, _bool, _choice, _num, _str, _valid_size
from moofa.config.section import Section, _checked, _unknown, schema_section

DATASETS: tuple[str, ...] = ("imagenet", "imagenette", "digits", "synthetic")


SYNTHETIC_SCHEMA: dict[str, Field] = {
    "n_classes": Field(10, _num(2, integer=True), "number of classes"),
    "train_per_class": Field(100, _POS_INT, "training images per class"),
    "val_per_class": Field(20, _POS_INT, "test (val/) images per class"),
    "image_size": Field(32, _num(8, integer=True), "side of the stored images, pixels"),
    "difficulty": Field(0.5, _FRACTION, "0 = clean class patterns, 1 = mostly noise"),
    "seed": Field(0, _INT, "generator seed"),
}

DIGITS_SCHEMA: dict[str, Field] = {
    "image_size": Field(32, _num(8, integer=True), "8x8 digits are upsampled to this side, pixels"),
    "val_fraction": Field(0.2, _num(0.0, 1.0, lo_open=True, hi_open=True),
                          "fraction of the 1,797 digits written to val/ (stratified)"),
    "seed": Field(0, _INT, "split seed"),
}

_BASE_STAGE_WIDTH_WHY = (" (the reference passes it to the constructors, which ignore it; widths come "
                         "from the model: use model_configs.yaml's widths key instead)")

ARGS_SCHEMA: dict[str, Field] = {
    "path": Field("models/MOOFA/", _str(), "supernet run directory (checkpoints in path/checkpoint)"),
    "teacher_path": Field("models/MOOFA/teacher/", _str(), "teacher run directory"),
    "checkpoint": Field("models/MOOFA/checkpoint/checkpoint-expand_2.pth.tar", _str(nullable=True),
                        "supernet weights for eval / search / dataset creation"),
    "model": Field("MOOFA_V3", _str(), "key into model_configs.yaml"),
    "dataset": Field("imagenet", _choice(*DATASETS), "imagenet, imagenette, digits or synthetic"),
    "data_path": Field(None, _str(nullable=True),
                       "root holding train/ and val/ (default depends on dataset, see default_data_path)"),
    "device": Field("auto", _choice("auto", "cpu", "cuda"), "auto = CUDA when present, else CPU"),
    "amp": Field(False, _bool(), "automatic mixed precision on CUDA"),
    "base_batch_size": Field(64, _POS_INT, "training batch per process (images); test batch = 4x"),
    "base_stage_width": Field("proxyless", _choice("proxyless", nullable=True, explain=_BASE_STAGE_WIDTH_WHY),
                              "accepted for compatibility; selects nothing"),
    "bn_eps": Field(1e-5, _num(0.0, lo_open=True), "BatchNorm epsilon"),
    "bn_momentum": Field(0.1, _FRACTION, "BatchNorm momentum"),
    "continuous_size": Field(False, _bool(), "true = train on every multiple of 4 between min and max size"),
    "distort_color": Field("tf", _choice("tf", "torch", nullable=True), "colour augmentation"),
    "dropout": Field(0.1, _num(0.0, 1.0, hi_open=True), "classifier dropout (fraction)"),
    "dy_conv_scaling_mode": Field(1, _choice(1, -1), "1 = kernel transform matrices on, -1 = off"),
    "fp16_allreduce": Field(False, _bool(), "Horovod fp16 gradient compression"),
    "independent_distributed_sampling": Field(False, _bool(), "true = ranks sample different subnets"),
    "kd_ratio": Field(1.0, _num(0.0), "distillation weight (0 disables the teacher)"),
    "kd_type": Field("ce", _choice("ce", "mse"), "ce = soft cross-entropy, mse = MSE on logits"),
    "label_smoothing": Field(0.1, _num(0.0, 1.0, hi_open=True), "smoothing of the hard-label CE"),
    "lr_schedule_type": Field("cosine", _choice("cosine", nullable=True), "cosine or null (constant)"),
    "manual_seed": Field(0, _INT, "seeds torch, numpy and random"),
    "model_init": Field("he_fout", _choice("he_fout", "he_fin"), "conv weight initialisation"),
    "momentum": Field(0.9, _num(0.0, 1.0, hi_open=True), "SGD momentum"),
    "n_worker": Field(12, _NONNEG_INT, "data-loader worker processes"),
    "no_decay_keys": Field("bn#bias", _str(nullable=True), "#-separated name substrings without weight decay"),
    "no_nesterov": Field(False, _bool(), "true = plain momentum SGD"),
    "not_sync_distributed_image_size": Field(False, _bool(), "true = each rank draws its own resolution"),
    "opt_type": Field("sgd", _choice("sgd", "adam"), "optimizer"),
    "print_frequency": Field(10, _POS_INT, "progress line every N batches"),
    "resize_scale": Field(0.08, _num(0.0, 1.0, lo_open=True), "RandomResizedCrop minimum area fraction"),
    "valid_size": Field(100, _valid_size, "held-out training images: count, fraction or null (= test set)"),
    "validation_frequency": Field(1, _POS_INT, "validate every k epochs"),
    "weight_decay": Field(3.0e-5, _num(0.0), "weight decay of the decayed parameter group"),
    "resort_channels": Field(False, _bool(),
                             "OFA's channel re-sorting before expand phases (docs/design.md#architecture)"),
    "teacher_eval_mode": Field(False, _bool(), "KD teacher in eval mode "
                               "(docs/design.md#departures-from-the-reference); false = reference"),
    "average_subnet_losses": Field(False, _bool(), "divide the loss by dynamic_batch_size "
                                   "(docs/design.md#departures-from-the-reference)"),
    "bn_calib_images": Field(2000, _POS_INT, "training images used for BN re-calibration"),
    "bn_calib_batch_size": Field(200, _POS_INT, "batch size of BN re-calibration (images)"),
    "corrupt_images": Field("skip", _choice("skip", "error"),
                            "an image in train/ or val/ that does not decode: skip (path logged, count per "
                            "epoch in the log and log.jsonl) or error (exit 2 naming the file)"),
    "synthetic": Field(None, lambda v: v, "generator settings of dataset synthetic", SYNTHETIC_SCHEMA),
    "digits": Field(None, lambda v: v, "writer settings of dataset digits", DIGITS_SCHEMA),
}

PHASE_SCHEMA: dict[str, Field] = {
    "n_epochs": Field(None, _POS_INT, "epochs after warmup"),
    "base_lr": Field(None, _num(0.0, lo_open=True), "learning rate per process (x number of processes)"),
    "warmup_epochs": Field(0, _NONNEG_INT, "extra linear-warmup epochs"),
    "warmup_lr": Field(0.0, _num(0.0), "learning rate at the start of the warmup (not scaled)"),
    "dynamic_batch_size": Field(1, _POS_INT, "subnets sampled per training step (not used by finetune)"),
}

# docs/design.md#protocols: (n_epochs, base_lr, warmup_epochs, warmup_lr, dynamic_batch_size)
REFERENCE_PHASES: dict[str, dict[str, Any]] = {
    name: dict(zip(PHASE_SCHEMA, values)) for name, values in {
        "teacher": (180, 3.0e-2, 0, 3.0e-3, 1),
        "kernel_1": (120, 3.0e-3, 5, 3.0e-3, 1),
        "depth_1": (25, 2.5e-4, 0, 2.5e-3, 2),
        "depth_2": (120, 7.5e-4, 5, 7.5e-5, 2),
        "expand_1": (25, 2.5e-4, 0, 2.5e-5, 4),
        "expand_2": (120, 2.5e-4, 5, 7.5e-5, 4),
    }.items()
}
FINETUNE = "finetune"  # train.py --step finetune: the found static subnet, not a supernet phase
# Defaults of args_per_task.finetune (not in the reference, which has no fine-tuning). OFA publishes
# its specialised subnets "finetune@25" (25 epochs); the learning rate and warmup are those of the
# reference's 25-epoch phases (depth_1, expand_1): low, because the subnet is already trained and
# distillation from the teacher continues. dynamic_batch_size is ignored (one static network).
FINETUNE_DEFAULTS: dict[str, Any] = dict(zip(PHASE_SCHEMA, (25, 2.5e-4, 0, 2.5e-5, 1)))
_PHASE_NAME = re.compile(r"^(?:teacher|finetune|(kernel|depth|expand)(?:_([1-9][0-9]*))?)$")


@schema_section(SYNTHETIC_SCHEMA, "args.synthetic")
class SyntheticSettings(Section):
    """``args.synthetic``: the generator of dataset ``synthetic``."""

    n_classes: int
    train_per_class: int
    val_per_class: int
    image_size: int  # pixels
    difficulty: float
    seed: int


@schema_section(DIGITS_SCHEMA, "args.digits")
class DigitsSettings(Section):
    """``args.digits``: the writer of dataset ``digits``."""

    image_size: int  # pixels
    val_fraction: float
    seed: int


class _ArgsFields:
    """The typed keys of the ``args`` table (declarations only: defaults and checks are the
    table's), shared by :class:`Args` and :class:`TaskArgs`."""

    path: str
    teacher_path: str
    checkpoint: str | None
    model: str
    dataset: str
    data_path: str | None  # filled by load_config (default_data_path)
    device: str
    amp: bool
    base_batch_size: int  # images per process
    base_stage_width: str | None
    bn_eps: float
    bn_momentum: float
    continuous_size: bool
    distort_color: str | None
    dropout: float
    dy_conv_scaling_mode: int
    fp16_allreduce: bool
    independent_distributed_sampling: bool
    kd_ratio: float
    kd_type: str
    label_smoothing: float
    lr_schedule_type: str | None
    manual_seed: int
    model_init: str
    momentum: float
    n_worker: int
    no_decay_keys: str | None
    no_nesterov: bool
    not_sync_distributed_image_size: bool
    opt_type: str
    print_frequency: int  # batches
    resize_scale: float
    valid_size: int | float | None  # images, or a fraction
    validation_frequency: int  # epochs
    weight_decay: float
    resort_channels: bool
    teacher_eval_mode: bool
    average_subnet_losses: bool
    bn_calib_images: int
    bn_calib_batch_size: int
    corrupt_images: str
    synthetic: SyntheticSettings
    digits: DigitsSettings


class _PhaseFields:
    """The typed keys of one progressive-shrinking phase (declarations only)."""

    n_epochs: int
    base_lr: float
    warmup_epochs: int
    warmup_lr: float
    dynamic_batch_size: int


@schema_section(ARGS_SCHEMA, "args")
class Args(_ArgsFields, Section):
    """``args``: run settings shared by every script."""


@schema_section(PHASE_SCHEMA, "args_per_task.<entry>")
class PhaseArgs(_PhaseFields, Section):
    """One ``args_per_task`` entry: the phase keys plus the ``args`` keys it overrides
    (``overrides``, validated by the ``args`` table). Read as a mapping it holds both."""

    overrides: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        _unknown(self.overrides, ARGS_SCHEMA, self.WHERE)
        object.__setattr__(self, "overrides", {
            k: _checked(ARGS_SCHEMA[k], v, f"{self.WHERE}.{k}") for k, v in self.overrides.items()})

    def __getitem__(self, key: str) -> Any:
        if key in self.overrides:
            return self.overrides[key]
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        yield from self.SCHEMA
        yield from (k for k in self.overrides if k not in self.SCHEMA)

    def __len__(self) -> int:
        return len(list(iter(self)))


@schema_section({**ARGS_SCHEMA, **PHASE_SCHEMA}, "args")
class TaskArgs(_ArgsFields, _PhaseFields, Section):
    """``args`` merged with one ``args_per_task`` entry: what one step or phase runs with."""


# What the data, model and training consumers read: the ``args`` section or one step's merge.
AnyArgs = Args | TaskArgs
