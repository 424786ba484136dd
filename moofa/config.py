"""The YAML run configuration (SPEC 9.1, CONTRACT.md "Configuration"): load, validate, fill defaults.

:func:`load_config` turns a ``configs/*.yaml`` file into a nested plain dict with every default
filled in; bad content raises :class:`moofa.errors.ConfigError` with one line that names the file,
the dotted key and the value. Every reference config loads unchanged.

Keys the reference read but silently ignored are honoured here:

===================================  ==========================================================
key                                  meaning now (reference behaviour = the default)
===================================  ==========================================================
args.continuous_size                 true: training resolutions are every multiple of 4 between
                                     the smallest and largest model image size (25 sizes for
                                     128..224); false (default, what the reference really did):
                                     the model's size list. The reference YAMLs say ``true``,
                                     which now changes the training distribution (SPEC 10.20).
args.momentum                        SGD momentum (0.9). Not used by Adam.
args.no_nesterov                     true: plain momentum SGD; false (default): Nesterov.
args.not_sync_distributed_image_size true: each rank draws its own batch resolution (the seed
                                     mixes in the rank); false (default): all ranks agree.
args.dy_conv_scaling_mode            1 (default): elastic-kernel transform matrices on;
                                     -1: off (plain centre crop of the 7x7 weight, OFA).
args.print_frequency                 the trainer prints a progress line every N batches.
args.independent_distributed_sampling true: each rank samples its own subnets (the subnet seed
                                     mixes in the rank); false (default): one subnet everywhere.
args.base_stage_width                accepted only as ``proxyless`` (the reference's value) or
                                     null; it selects nothing, any other value is rejected.
===================================  ==========================================================

New optional keys (defaults reproduce the reference) are listed in the schema tables below with
their meaning; ``search_config.max_constraint``/``min_constraint`` may be given in either order
(the reference's names were swapped): the sweep always runs from the smaller to the larger value.
"""
from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from moofa.errors import ConfigError
from moofa.io import write_json
from moofa.models.spec import ModelSpec, SubnetConfig, load_model_configs, norm_expand

STEPS: tuple[str, ...] = ("kernel", "depth", "expand")
STEP_ORDER = STEPS  # the hard-coded progressive-shrinking order (SPEC 3.4)
DATASETS: tuple[str, ...] = ("imagenet", "imagenette", "digits", "synthetic")
RESOLVED_CONFIG_NAME = "resolved_config.json"
_LOG = logging.getLogger("moofa.config")
_WARNED: set = set()


class _Bad(Exception):
    """A value that fails a field check; the caller adds file, key and value."""


# ------------------------------------------------------------------------------------------------
# Field checks: each returns the normalised value or raises _Bad(reason).

Check = Callable[[Any], Any]


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False, integer: bool = False, nullable: bool = False) -> Check:
    """A number in a range. Floats also accept numeric strings, because PyYAML reads ``1e-5``
    (no dot, no exponent sign) as a string."""
    if lo is not None and hi is not None:
        rng = f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f" {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        rng = f" {'<' if hi_open else '<='} {hi:g}"
    else:
        rng = ""
    what = ("an integer" if integer else "a number") + rng

    def check(v: Any) -> Any:
        if v is None:
            if nullable:
                return None
            raise _Bad(f"must be {what}, not null")
        if integer:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int) or isinstance(v, bool):
                raise _Bad(f"must be {what}")
        else:
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise _Bad(f"must be {what}") from None
            if not _is_num(v) or not math.isfinite(v):
                raise _Bad(f"must be {what}")
            v = float(v)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise _Bad(f"must be {what}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise _Bad(f"must be {what}")
        return v
    return check


def _bool() -> Check:
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise _Bad("must be true or false")
        return v
    return check


def _str(nullable: bool = False) -> Check:
    def check(v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v:
            raise _Bad("must be a non-empty string" + (" or null" if nullable else ""))
        return v
    return check


def _choice(*options: Any, nullable: bool = False, explain: str = "") -> Check:
    """One of ``options``; with ``nullable``, null (and the string "None") mean None."""
    def check(v: Any) -> Any:
        if nullable and (v is None or v == "None"):
            return None
        if v not in options:
            shown = ", ".join(repr(o) for o in options) + (", null" if nullable else "")
            raise _Bad(f"must be one of {shown}{explain}")
        return v
    return check


def _list(item: Check, *, nullable: bool = False, min_len: int = 1) -> Check:
    def check(v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, list) or len(v) < min_len:
            raise _Bad(f"must be a list of at least {min_len} value(s)" + (" or null" if nullable else ""))
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except _Bad as err:
                raise _Bad(f"item {i} ({x!r}) {err}") from None
        return out
    return check


def _valid_size(v: Any) -> Any:
    """int count >= 1, float fraction in (0, 1), or null (validation = test set)."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return v
    if isinstance(v, float) and 0.0 < v < 1.0:
        return v
    raise _Bad("must be an integer count >= 1, a fraction in (0, 1), or null")


def _expand_value(v: Any) -> Any:
    if not _is_num(v) or v < 1:
        raise _Bad("must be an expand ratio >= 1")
    return norm_expand(v)


@dataclass(frozen=True)
class Field:
    """One config key: default, check and a one-line meaning (units included)."""

    default: Any
    check: Check
    doc: str
    schema: Mapping[str, "Field"] | None = None  # a nested mapping section


_POS_INT = _num(1, integer=True)
_NONNEG_INT = _num(0, integer=True)
_FRACTION = _num(0.0, 1.0)
_INT = _num(integer=True)

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
    "resort_channels": Field(False, _bool(), "OFA's channel re-sorting before expand phases (SPEC 2.3)"),
    "teacher_eval_mode": Field(False, _bool(), "KD teacher in eval mode (SPEC 10.27); false = reference"),
    "average_subnet_losses": Field(False, _bool(), "divide the loss by dynamic_batch_size (SPEC 10.29)"),
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

# SPEC 3.5: (n_epochs, base_lr, warmup_epochs, warmup_lr, dynamic_batch_size)
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

SUBNET_SCHEMA: dict[str, Field] = {
    "random_sample": Field(False, _bool(), "eval: sample a random subnet instead of the given one"),
    "ks": Field(None, _list(_num(1, integer=True), nullable=True), "kernel size per block (null = max)"),
    "e": Field(None, _list(_expand_value, nullable=True), "expand ratio per block (null = max)"),
    "d": Field(None, _list(_num(1, integer=True), nullable=True), "depth per stage (null = max)"),
    "image_size": Field(224, _num(8, integer=True), "eval resolution, pixels"),
    "res_dir": Field("results/MOOFA/", _str(), "eval output root"),
    "name": Field("reference_subnet", _str(), "eval output folder name"),
    "draw_graphs": Field(True, _bool(), "draw the architecture and the memory histogram"),
}

EXPORT_FORMATS: tuple[str, ...] = ("subnet", "onnx", "executorch")


def _export_formats(v: Any) -> list[str]:
    """``search_config.export``: true = [subnet, onnx] (the ONNX file only when onnx is
    installed), false = [], or a list of EXPORT_FORMATS; onnx and executorch imply subnet."""
    if isinstance(v, bool):
        return ["subnet", "onnx"] if v else []
    if not isinstance(v, list) or any(x not in EXPORT_FORMATS for x in v):
        raise _Bad(f"must be true, false or a list of {', '.join(EXPORT_FORMATS)}")
    return [f for f in EXPORT_FORMATS if f in v or (f == "subnet" and v)]


_POS_NUM = _num(0.0, lo_open=True)
SEARCH_SCHEMA: dict[str, Field] = {
    "N_constraint": Field(10, _POS_INT, "number of constraints of the sweep"),
    "min_constraint": Field(300000, _POS_NUM, "one end of the sweep, in the memory unit (either order)"),
    "max_constraint": Field(800000, _POS_NUM, "other end of the sweep, in the memory unit (either order)"),
    "constraint_start": Field(None, _num(0.0, lo_open=True, nullable=True), "overrides min/max_constraint"),
    "constraint_stop": Field(None, _num(0.0, lo_open=True, nullable=True), "overrides min/max_constraint"),
    "constraints": Field(None, _list(_POS_NUM, nullable=True),
                         "explicit list (memory unit: elements, or bytes with a memory: section); overrides the sweep"),
    "max_mmacs": Field(None, _num(0.0, lo_open=True, nullable=True),
                       "hard limit on MMACs of every found subnet (null = none)"),
    "max_params": Field(None, _num(1, integer=True, nullable=True),
                        "hard limit on parameters of the exported subnet, head included (Flash; null = none)"),
    "population_size": Field(100, _num(2, integer=True), "evolution population"),
    "generations": Field(500, _POS_INT, "evolution generations"),
    "mutation_ratio": Field(0.5, _num(0.0, 1.0, lo_open=True), "fraction of the population mutated"),
    "parent_ratio": Field(0.25, _num(0.0, 1.0, lo_open=True), "fraction kept as parents"),
    "arch_mutate_prob": Field(0.1, _FRACTION, "per-gene mutation probability"),
    "resolution_mutate_prob": Field(0.5, _FRACTION, "resolution mutation probability"),
    "seed": Field(0, _INT, "search seed"),
    "evaluate": Field(True, _bool(), "false = predictor-only search (real_accuracy null)"),
    "res_dir": Field("searches/MOOFA/", _str(), "search output root"),
    "acc_dataset_path": Field("acc_predictor_datasets/adapted/MOOFA/dataset.jsonl", _str(),
                              "predictor dataset file (JSON Lines; reference pickle accepted)"),
    "acc_predictor_checkpoint": Field("acc_predictor_checkpoints/MOOFA_acc.pth.tar", _str(nullable=True),
                                      "predictor checkpoint (output of training, input of search)"),
    "export": Field(["subnet", "onnx"], _export_formats,
                    "true (= [subnet, onnx]), false, or a list of subnet, onnx, executorch "
                    "(int8 + fp32 .pte and deploy.json; needs the deploy extra)"),
    "deploy_constraints": Field(None, _list(_POS_NUM, nullable=True),
                                "constraints whose subnets get the executorch export (null = all)"),
    "fitness": Field("robust", _choice("robust", "reference"),
                     "robust = trust region, calibration and pessimism around the measured subnets of "
                     "acc_dataset_path (docs/search.md); reference = the raw predictor (the reference)"),
    "trust_radius": Field(4.0, _num(0.0), "robust: genes a candidate may differ from its nearest measured subnet"),
    "pessimism": Field(0.5, _num(0.0), "robust: standard deviations subtracted from the calibrated prediction"),
    "neighbours": Field(5, _POS_INT, "robust: nearest measured subnets whose residuals calibrate a prediction"),
    "distance_uncertainty_pp": Field(0.15, _num(0.0), "robust: uncertainty added per gene of distance to the data, pp"),
    "bound_margin_pp": Field(0.5, _num(0.0), "robust: predictions are capped at the best measured accuracy + this, pp"),
    "rerank_top_k": Field(10, _NONNEG_INT, "evaluate: candidates per budget measured on the selection split "
                          "(dataset_config.eval_split) to choose the answer; 0 = no re-ranking"),
    "append_measurements": Field(True, _bool(), "evaluate: append the re-ranking measurements to acc_dataset_path"),
}

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

# The memory model of every peak (dataset bins, budgets, bounds, eval, results, plots). The
# defaults are the reference's count in elements; any other setting makes every peak and budget
# bytes (moofa.efficiency.memory.MemoryOptions).
MEMORY_SCHEMA: dict[str, Field] = {
    "bytes_per_element": Field(1, _choice(1, 2, 4), "element size: 1 int8, 2 fp16, 4 fp32 (bytes)"),
    "count_weights": Field(True, _bool(), "count the largest layer's weights; false = activations only"),
    "count_head": Field(False, _bool(), "also count feature-mix layer and classifier"),
    "inplace_depthwise": Field(False, _bool(), "the depthwise conv writes into its input buffer"),
}

# int8 deployment with ExecuTorch (python -m moofa.deploy, search_config.export: [executorch]).
DEPLOY_SCHEMA: dict[str, Field] = {
    "calibration_images": Field(256, _POS_INT, "training images (test transform) calibrating the int8 ranges"),
    "per_channel": Field(True, _bool(), "per-channel symmetric int8 weights (false = per-tensor)"),
}

WANDB_SCHEMA: dict[str, Field] = {
    "use_wandb": Field(True, _bool(), "log to Weights & Biases on rank 0"),
    "project_name": Field("memory-optimized-once-for-all", _str(), "wandb project"),
}

DEFAULT_TASKS = ["kernel", "depth", "expand"]
DEFAULT_TASKS_PHASES = {"kernel": 1, "depth": 2, "expand": 2}

SECTIONS: tuple[str, ...] = ("args", "tasks", "tasks_phases", "args_per_task", "subnet_config",
                             "search_config", "dataset_config", "predictor_config", "wandb",
                             "memory", "deploy")
_MAPPING_SECTIONS: dict[str, Mapping[str, Field]] = {
    "args": ARGS_SCHEMA, "subnet_config": SUBNET_SCHEMA, "search_config": SEARCH_SCHEMA,
    "dataset_config": DATASET_SCHEMA, "predictor_config": PREDICTOR_SCHEMA, "wandb": WANDB_SCHEMA,
    "memory": MEMORY_SCHEMA, "deploy": DEPLOY_SCHEMA,
}


# ------------------------------------------------------------------------------------------------
# Loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file ({err.strerror})", file=path) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = err.problem or err.context or str(err).splitlines()[0]
        raise ConfigError(f"YAML syntax error{where}: {problem}", file=path) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"YAML syntax error: {str(err).splitlines()[0]}", file=path) from None


class _Ctx:
    """Where we are: the file, for error messages."""

    def __init__(self, path: Path | str) -> None:
        self.path = path

    def error(self, key: str, message: str, value: Any = None) -> ConfigError:
        return ConfigError(message, file=self.path, key=key, value=value)

    def mapping(self, data: Any, key: str) -> dict:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise self.error(key, f"must be a mapping, not {type(data).__name__}", data)
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise self.error(f"{key}.{bad[0]}", "keys must be strings", bad[0])
        return dict(data)

    def check(self, field: Field, value: Any, key: str) -> Any:
        if field.schema is not None:
            return self.section(value, field.schema, key)
        try:
            return field.check(value)
        except _Bad as err:
            raise self.error(key, str(err), value) from None

    def unknown(self, data: Mapping, valid: Any, where: str) -> None:
        for k in data:
            if k not in valid:
                raise self.error(f"{where}.{k}" if where else k,
                                 f"unknown key (valid keys: {', '.join(valid)})", data[k])

    def section(self, data: Any, schema: Mapping[str, Field], where: str) -> dict:
        """Validate a mapping against ``schema`` and fill the defaults (deep copies)."""
        data = self.mapping(data, where)
        self.unknown(data, schema, where)
        out = {}
        for name, field in schema.items():
            key = f"{where}.{name}"
            if name in data:
                out[name] = self.check(field, data[name], key)
            elif field.schema is not None:
                out[name] = self.section({}, field.schema, key)
            else:
                out[name] = copy.deepcopy(field.default)
        return out


def default_data_path(dataset: str) -> str:
    """Default ``args.data_path``: ``/imagenet/`` (or ``/imagenette2/``) when that folder exists,
    else the same name under the working directory (SPEC 3.10); ``./data/<dataset>/`` for the
    embedded datasets."""
    if dataset in ("imagenet", "imagenette"):
        name = "imagenet" if dataset == "imagenet" else "imagenette2"
        return f"/{name}/" if Path(f"/{name}").is_dir() else f"./{name}/"
    return f"./data/{dataset}/"


def _tasks(ctx: _Ctx, raw: Any) -> list[str]:
    if raw is None:
        return list(DEFAULT_TASKS)
    if not isinstance(raw, list) or not raw:
        raise ctx.error("tasks", f"must be a non-empty list of {', '.join(STEPS)}", raw)
    for t in raw:
        if t not in STEPS:
            raise ctx.error("tasks", f"unknown task {t!r} (valid: {', '.join(STEPS)})", raw)
    if len(set(raw)) != len(raw):
        raise ctx.error("tasks", "lists a task twice", raw)
    return list(raw)


def _tasks_phases(ctx: _Ctx, raw: Any) -> dict[str, int]:
    data = ctx.mapping(raw, "tasks_phases")
    ctx.unknown(data, STEPS, "tasks_phases")
    out = dict(DEFAULT_TASKS_PHASES)
    for step, n in data.items():
        out[step] = ctx.check(Field(None, _POS_INT, ""), n, f"tasks_phases.{step}")
    return {s: out[s] for s in STEPS}


def _phase_entry(ctx: _Ctx, name: str, raw: Any) -> dict:
    key = f"args_per_task.{name}"
    data = ctx.mapping(raw, key)
    valid = list(PHASE_SCHEMA) + [k for k in ARGS_SCHEMA]
    ctx.unknown(data, valid, key)
    ref = FINETUNE_DEFAULTS if name == FINETUNE else REFERENCE_PHASES.get(name, {})
    out: dict[str, Any] = {}
    for pname, field in PHASE_SCHEMA.items():
        if pname in data:
            out[pname] = ctx.check(field, data[pname], f"{key}.{pname}")
        elif pname in ref:
            out[pname] = ref[pname]
        elif field.default is not None:
            out[pname] = field.default
        else:
            raise ctx.error(f"{key}.{pname}", "missing key (required for entries that are not in "
                            f"the reference table {', '.join(REFERENCE_PHASES)})")
    for aname, value in data.items():
        if aname in ARGS_SCHEMA:
            out[aname] = ctx.check(ARGS_SCHEMA[aname], value, f"{key}.{aname}")
    return out


def _args_per_task(ctx: _Ctx, raw: Any, tasks: list[str], phases: dict[str, int]) -> dict[str, dict]:
    """The user's section replaces the reference table (SPEC 3.5) as a whole; absent -> the table.
    Missing per-entry keys come from the reference row of the same name (or 0 / 0.0 / 1 for
    warmup_epochs / warmup_lr / dynamic_batch_size; n_epochs and base_lr are then required)."""
    if raw is None:
        return copy.deepcopy(REFERENCE_PHASES)
    data = ctx.mapping(raw, "args_per_task")
    out = {}
    for name, entry in data.items():
        if not _PHASE_NAME.match(name):
            raise ctx.error(f"args_per_task.{name}", "unknown entry (valid: teacher, finetune, <step> "
                            f"or <step>_<phase> with step one of {', '.join(STEPS)})", entry)
        out[name] = _phase_entry(ctx, name, entry)
    needed = ["teacher"] + [f"{s}_{p}" for s in tasks for p in range(1, phases[s] + 1)]
    for name in needed:
        if name not in out and name.split("_")[0] not in out:
            plain = name.split("_")[0]
            raise ctx.error(f"args_per_task.{name}", f"missing entry (define {name}"
                            + (f" or {plain})" if plain != name else ")"))
    return out


def _check_search(ctx: _Ctx, sc: dict) -> None:
    if (sc["constraint_start"] is None) != (sc["constraint_stop"] is None):
        missing = "constraint_stop" if sc["constraint_stop"] is None else "constraint_start"
        raise ctx.error(f"search_config.{missing}", "constraint_start and constraint_stop go together")
    if sc["parent_ratio"] * sc["population_size"] < 1:
        raise ctx.error("search_config.parent_ratio", "keeps no parent with this population_size",
                        sc["parent_ratio"])
    if sc["deploy_constraints"] is not None:
        if "executorch" not in sc["export"]:
            raise ctx.error("search_config.deploy_constraints", "needs executorch in search_config.export",
                            sc["deploy_constraints"])
        sweep = search_constraints({"search_config": sc})
        missing = [c for c in sc["deploy_constraints"] if int(round(c)) not in sweep]
        if missing:
            raise ctx.error("search_config.deploy_constraints", f"{missing[0]:g} is not one of the "
                            f"search constraints {sweep}", sc["deploy_constraints"])


def _check_dataset_config(ctx: _Ctx, dc: dict, sc: dict) -> None:
    if dc["min_memory"] >= dc["max_memory"]:
        raise ctx.error("dataset_config.max_memory", f"must exceed min_memory ({dc['min_memory']})",
                        dc["max_memory"])
    if dc["output"] is None:
        dc["output"] = sc["acc_dataset_path"]


def _check_predictor(ctx: _Ctx, pc: dict) -> None:
    if pc["val_fraction"] + pc["test_fraction"] >= 1.0:
        raise ctx.error("predictor_config.test_fraction", "val_fraction + test_fraction must be < 1",
                        pc["test_fraction"])


def load_config(path: str | Path, model_config_path: str | Path | None = None) -> dict:
    """Read and validate a run config; returns a nested plain dict with every default filled and
    ``cfg["_path"] = str(path)``. With ``model_config_path`` also runs :func:`validate_model`.
    Raises :class:`ConfigError` (one line: file, dotted key, value) on bad input."""
    path = Path(path)
    ctx = _Ctx(path)
    raw = _read_yaml(path)
    data = ctx.mapping(raw, "(top level)")
    ctx.unknown(data, SECTIONS, "")
    cfg: dict[str, Any] = {}
    for name, schema in _MAPPING_SECTIONS.items():
        cfg[name] = ctx.section(data.get(name), schema, name)
    cfg["tasks"] = _tasks(ctx, data.get("tasks"))
    cfg["tasks_phases"] = _tasks_phases(ctx, data.get("tasks_phases"))
    cfg["args_per_task"] = _args_per_task(ctx, data.get("args_per_task"), cfg["tasks"],
                                          cfg["tasks_phases"])
    args = cfg["args"]
    explicit_path = args["data_path"] is not None
    if not explicit_path:
        args["data_path"] = default_data_path(args["dataset"])
    for entry in cfg["args_per_task"].values():
        if "dataset" in entry and "data_path" not in entry and not explicit_path:
            entry["data_path"] = default_data_path(entry["dataset"])
    _check_search(ctx, cfg["search_config"])
    _check_dataset_config(ctx, cfg["dataset_config"], cfg["search_config"])
    _check_predictor(ctx, cfg["predictor_config"])
    cfg = {k: cfg[k] for k in SECTIONS}
    cfg["_path"] = str(path)
    if model_config_path is not None:
        validate_model(cfg, model_config_path)
    return cfg


# ------------------------------------------------------------------------------------------------
# Model-dependent checks


def _phase_count_problem(spec: ModelSpec, step: str, n: int) -> str | None:
    """Why ``n`` phases of ``step`` do not fit ``spec`` (SPEC 9.1: fewer phases than list values)."""
    values = {"depth": spec.depth_list, "expand": spec.expand_list}.get(step)
    if values is not None and n > len(values) - 1:
        return (f"{step} needs fewer phases than {spec.name}'s {step} choices {list(values)} "
                f"(at most {len(values) - 1})")
    return None


def validate_model(cfg: dict, model_config_path: str | Path) -> ModelSpec:
    """Check ``args.model`` (and models named in args_per_task) against model_configs.yaml, the
    phase counts against the model's choice lists, and ``subnet_config`` against the model. Fills
    ``subnet_config.ks/e/d`` left null with the model's largest values. Returns the spec."""
    ctx = _Ctx(cfg.get("_path", "<config>"))
    try:
        specs = load_model_configs(model_config_path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    names = [("args.model", cfg["args"]["model"])] + [
        (f"args_per_task.{n}.model", e["model"]) for n, e in cfg["args_per_task"].items() if "model" in e]
    for key, name in names:
        if name not in specs:
            raise ctx.error(key, f"unknown model (known in {model_config_path}: {', '.join(specs)})", name)
    spec = specs[cfg["args"]["model"]]
    for step in cfg["tasks"]:
        problem = _phase_count_problem(spec, step, cfg["tasks_phases"][step])
        if problem:
            raise ctx.error(f"tasks_phases.{step}", problem, cfg["tasks_phases"][step])
    sc = cfg["subnet_config"]
    full = spec.max_config(sc["image_size"])
    for key in ("ks", "e", "d"):
        if sc[key] is None:
            sc[key] = list(getattr(full, key))
    try:
        SubnetConfig.from_dict(sc).validate(spec)
    except ValueError as err:
        msg = str(err)
        key = msg.split(":", 1)[0]
        raise ctx.error(f"subnet_config.{key}", msg.split(":", 1)[-1].strip()) from None
    if int(sc["image_size"]) not in spec.image_sizes and (ctx.path, sc["image_size"]) not in _WARNED:
        _WARNED.add((ctx.path, sc["image_size"]))  # once per process (validate_model runs twice)
        _LOG.warning("%s: subnet_config.image_size %s is not one of %s's resolutions %s; the supernet "
                     "was not trained at it, so eval accuracy there is not comparable", ctx.path,
                     sc["image_size"], spec.name, list(spec.image_sizes))
    return spec


# ------------------------------------------------------------------------------------------------
# Helpers used by the scripts


def task_args(cfg: Mapping, step: str, phase: int | None = None) -> dict:
    """``args`` updated with ``args_per_task["<step>_<phase>"]`` (falling back to
    ``args_per_task["<step>"]``), or with ``args_per_task["teacher"]`` for the teacher (SPEC 3.1).
    ``step`` must be ``teacher`` or in ``tasks``; ``phase`` in 1..tasks_phases[step]. For
    ``finetune`` (no phase): ``args_per_task["finetune"]``, or :data:`FINETUNE_DEFAULTS` when the
    config has no such entry."""
    ctx = _Ctx(cfg.get("_path", "<config>"))
    apt = cfg["args_per_task"]
    if step == FINETUNE:
        out = copy.deepcopy(dict(cfg["args"]))
        out.update(copy.deepcopy(apt.get(FINETUNE, FINETUNE_DEFAULTS)))
        return out
    if step == "teacher":
        names = ["teacher"]
    else:
        if step not in cfg["tasks"]:
            raise ctx.error("tasks", f"step {step!r} is not in tasks {cfg['tasks']} (nor teacher)", step)
        n = cfg["tasks_phases"][step]
        if phase is None:
            raise ctx.error(f"tasks_phases.{step}", f"step {step} needs a phase in 1..{n} (none given)")
        if isinstance(phase, bool) or not isinstance(phase, int) or not 1 <= phase <= n:
            raise ctx.error(f"tasks_phases.{step}", f"phase must be in 1..{n} for step {step}", phase)
        names = [f"{step}_{phase}", step]
    for name in names:
        if name in apt:
            out = copy.deepcopy(dict(cfg["args"]))
            out.update(copy.deepcopy(apt[name]))
            return out
    raise ctx.error(f"args_per_task.{names[0]}", "missing entry", None)


def last_task_args(cfg: Mapping) -> dict:
    """``args`` updated with the last ``args_per_task`` entry (dataset creation and search, SPEC
    6.1 / 7.1). The ``finetune`` entry is skipped wherever it is written: it configures only the
    fine-tuning of a found subnet, never the supernet those scripts read."""
    out = copy.deepcopy(dict(cfg["args"]))
    entries = [v for k, v in cfg["args_per_task"].items() if k != FINETUNE]
    if entries:
        out.update(copy.deepcopy(entries[-1]))
    return out


def search_constraints(cfg: Mapping) -> list[int]:
    """The peak-memory constraints of the search sweep (elements), sorted ascending, distinct:
    ``search_config.constraints`` when given, else ``N_constraint`` evenly spaced values between
    the two ends (``constraint_start/stop`` or ``min/max_constraint``, in either order), rounded."""
    sc = cfg["search_config"]
    if sc["constraints"]:
        return sorted({int(round(c)) for c in sc["constraints"]})
    if sc["constraint_start"] is not None:
        a, b = sc["constraint_start"], sc["constraint_stop"]
    else:
        a, b = sc["min_constraint"], sc["max_constraint"]
    lo, hi = min(a, b), max(a, b)
    values = np.linspace(lo, hi, int(sc["N_constraint"]), endpoint=True)
    return sorted({int(round(float(v))) for v in values})


def save_resolved_config(cfg: Mapping, run_dir: str | Path) -> Path:
    """Write the resolved config as JSON to ``<run_dir>/resolved_config.json`` (atomic)."""
    path = Path(run_dir) / RESOLVED_CONFIG_NAME
    write_json(path, cfg)
    return path


# ------------------------------------------------------------------------------------------------
# Progressive-shrinking choices (SPEC 3.3)


def phase_constraints(spec: ModelSpec, step: str, phase: int, tasks_phases: Mapping[str, int]) -> dict:
    """Allowed choices of a progressive-shrinking phase: ``dict(ks=[..], e=[..], d=[..])``, each
    sorted ascending (SPEC 3.3). The kernel step ignores its phase index."""
    if step not in STEPS:
        raise ConfigError(f"unknown step (valid: {', '.join(STEPS)})", key="step", value=step)
    n = int(tasks_phases[step])
    if isinstance(phase, bool) or not isinstance(phase, int) or not 1 <= phase <= n:
        raise ConfigError(f"phase must be in 1..{n} for step {step}", key=f"tasks_phases.{step}", value=phase)
    problem = _phase_count_problem(spec, step, n)
    if problem:
        raise ConfigError(problem, key=f"tasks_phases.{step}", value=n)
    ks, e, d = sorted(spec.ks_list), sorted(spec.expand_list), sorted(spec.depth_list)
    if step == "kernel":
        return dict(ks=ks, e=[e[-1]], d=[d[-1]])
    if step == "depth":
        return dict(ks=ks, e=[e[-1]], d=d[n - phase:])
    return dict(ks=ks, e=e[n - phase:], d=d)


def validation_image_sizes(spec: ModelSpec) -> list[int]:
    """Resolutions of the progressive-shrinking validation (SPEC 3.3): the reference uses
    [160, 224] for its size list [128, 160, 192, 224]. Generalised as the second-smallest and the
    largest size (all sizes when there are at most two)."""
    sizes = sorted(set(spec.image_sizes))
    return sizes if len(sizes) <= 2 else [sizes[1], sizes[-1]]


def subnet_name(ks: int, e: float, d: int, image_size: int) -> str:
    """The reference's label of a uniform validation subnet, e.g. ``R160-D4-E4-K3-W0``."""
    return f"R{image_size}-D{d}-E{norm_expand(e)}-K{ks}-W0"


def validation_subnets(spec: ModelSpec, step: str, ks_task, e_task, d_task) -> list[dict]:
    """Uniform subnets validated after each epoch (SPEC 3.3): ks = the whole task list in the
    kernel step, else {min, max}; e and d = {min, max} of their task lists; sizes from
    :func:`validation_image_sizes`. Enumerated d-major (d, e, ks, R). Each item is
    ``{"ks", "e", "d", "image_size", "name"}`` with scalar values."""
    def ends(values) -> list:
        v = sorted(values)
        return sorted({v[0], v[-1]})

    ks_list = sorted(ks_task) if step == "kernel" else ends(ks_task)
    out = []
    for d in ends(d_task):
        for e in ends(e_task):
            for k in ks_list:
                for r in validation_image_sizes(spec):
                    out.append({"ks": int(k), "e": norm_expand(e), "d": int(d), "image_size": int(r),
                                "name": subnet_name(k, e, d, r)})
    return out
