"""The YAML run configuration (docs/design.md#configuration, README): load, validate, fill defaults.

:func:`load_config` turns a ``configs/*.yaml`` file into a frozen :class:`RunConfig` (one typed
section per schema table below, every default filled in, see ``docs/design.md#configuration``);
bad content raises :class:`moofa.errors.ConfigError` with one line that names the file, the dotted
key and the value. Every reference config loads unchanged.

Keys the reference read but silently ignored are honoured here:

===================================  ==========================================================
key                                  meaning now (reference behaviour = the default)
===================================  ==========================================================
args.continuous_size                 true: training resolutions are every multiple of 4 between
                                     the smallest and largest model image size (25 sizes for
                                     128..224); false (default, what the reference really did):
                                     the model's size list. The reference YAMLs say ``true``,
                                     which now changes the training distribution (docs/design.md#departures-from-the-reference).
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
import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Self, TypeVar

import numpy as np
import yaml

from moofa.errors import ConfigError
from moofa.io import read_utf8, write_json
from moofa.models.spec import ChoiceError, ModelSpec, SubnetConfig, load_model_configs, norm_expand

STEPS: tuple[str, ...] = ("kernel", "depth", "expand")  # progressive shrinking, in its fixed order
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
    "resort_channels": Field(False, _bool(), "OFA's channel re-sorting before expand phases (docs/design.md#architecture)"),
    "teacher_eval_mode": Field(False, _bool(), "KD teacher in eval mode (docs/design.md#departures-from-the-reference); false = reference"),
    "average_subnet_losses": Field(False, _bool(), "divide the loss by dynamic_batch_size (docs/design.md#departures-from-the-reference)"),
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
    "target": Field(None, _str(nullable=True),
                    "Ethos-U configuration (e.g. ethos-u55-128) whose limits below apply; the answer is "
                    "compiled for it and Vela's figures are reported (null = none)"),
    "max_latency_ms": Field(None, _num(0.0, lo_open=True, nullable=True),
                            "hard limit on the target's inference time, ms (predicted by the latency table "
                            "during the search, Vela's estimate for the answer; null = none)"),
    "max_sram_bytes": Field(None, _num(1, integer=True, nullable=True),
                            "hard limit on the target's SRAM, bytes (the latency table's fit of the int8 "
                            "activations peak during the search, Vela's figure for the answer; null = none)"),
    "max_flash_bytes": Field(None, _num(1, integer=True, nullable=True),
                             "hard limit on the target's Flash, bytes (null = none)"),
    "latency_table": Field(None, _str(nullable=True),
                           "latency table JSON of python -m moofa.latency build (null = the shipped one)"),
    "compile_tries": Field(3, _POS_INT, "candidates compiled for the target at most until one fits"),
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
    "max_tries": Field(10, _POS_INT, "draws of a child (from the same parents) before it is repaired"),
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

def _deploy_target(v: Any) -> str:
    """``xnnpack`` or an Ethos-U accelerator configuration (``ethos-u...``; Vela checks the rest)."""
    if not isinstance(v, str) or not (v.lower() == "xnnpack" or v.lower().startswith("ethos-u")):
        raise _Bad("must be xnnpack or an Ethos-U configuration such as ethos-u55-128")
    return v.lower()


# int8 deployment with ExecuTorch (python -m moofa.deploy, search_config.export: [executorch]).
DEPLOY_SCHEMA: dict[str, Field] = {
    "calibration_images": Field(256, _POS_INT, "training images (test transform) calibrating the int8 ranges"),
    "per_channel": Field(True, _bool(), "per-channel symmetric int8 weights (false = per-tensor)"),
    "targets": Field(["xnnpack"], _list(_deploy_target),
                     "xnnpack and/or Ethos-U configurations (ethos-u55-128, ethos-u55-256, ethos-u65-256, "
                     "ethos-u85-256, any Vela knows): subnet_<target>.pte with Vela's estimates; needs the ethos-u extra"),
    "system_config": Field(None, _str(nullable=True),
                           "Ethos-U: Vela system configuration (null = ExecuTorch's default per target)"),
    "memory_mode": Field(None, _str(nullable=True), "Ethos-U: Vela memory mode (null = ExecuTorch's default per target)"),
}

WANDB_SCHEMA: dict[str, Field] = {
    "use_wandb": Field(True, _bool(), "log to Weights & Biases on rank 0"),
    "project_name": Field("memory-optimized-once-for-all", _str(), "wandb project"),
}

DEFAULT_TASKS = list(STEPS)
DEFAULT_TASKS_PHASES = {"kernel": 1, "depth": 2, "expand": 2}

SECTIONS: tuple[str, ...] = ("args", "tasks", "tasks_phases", "args_per_task", "subnet_config",
                             "search_config", "dataset_config", "predictor_config", "wandb",
                             "memory", "deploy")


# ------------------------------------------------------------------------------------------------
# Typed sections: one frozen dataclass per schema table, its fields derived from the table (a key
# added to a table is a field of its section). Construction validates every field with the
# table's check and then the section's cross-key rules; it never changes its input. A section is
# also read-only Mapping under the YAML key names (``cfg["search_config"]["seed"]``), which is
# what the resolved-config JSON and the reference-style call sites use.


def _field_default(f: Field) -> Any:
    if f.schema is not None:
        return field(default_factory=lambda: _SECTION_OF[id(f.schema)]())
    if isinstance(f.default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(f.default))
    return f.default


_S = TypeVar("_S", bound="Section")


def schema_section(schema: Mapping[str, Field], where: str) -> Callable[[type[_S]], type[_S]]:
    """Class decorator: make ``cls`` a frozen dataclass with one field per key of ``schema``
    (default and check from the table) and register it as the section of that table.

    The field types are the annotations ``cls`` and its field mixins declare (so type checkers
    see ``settings.population_size`` as ``int``); every key of ``schema`` must be declared, and
    nothing else but extra fields of ``cls`` itself. The defaults stay in the table only."""
    def wrap(cls: type[_S]) -> type[_S]:
        declared: dict[str, Any] = {}
        for base in reversed(cls.__mro__):
            declared.update(base.__dict__.get("__annotations__", {}))
        missing = [name for name in schema if name not in declared]
        if missing:  # a key added to a table needs its typed declaration
            raise TypeError(f"{cls.__name__} does not declare the type of {', '.join(missing)}")
        own = dict(cls.__dict__.get("__annotations__", {}))
        cls.__annotations__ = {**{name: declared[name] for name in schema}, **own}
        for name, f in schema.items():
            setattr(cls, name, _field_default(f))
        cls.SCHEMA, cls.WHERE = schema, where
        out = dataclass(frozen=True, eq=False)(cls)
        _SECTION_OF[id(schema)] = out
        return out
    return wrap


def _checked(f: Field, value: Any, key: str) -> Any:
    """``value`` normalised by ``f`` (a nested mapping becomes its section); ConfigError naming
    ``key`` and the value otherwise."""
    if f.schema is not None:
        cls = _SECTION_OF[id(f.schema)]
        return value if isinstance(value, cls) else cls.from_mapping(value, key)
    try:
        return f.check(value)
    except _Bad as err:
        raise ConfigError(str(err), key=key, value=value) from None


def _mapping(data: Any, key: str) -> dict:
    """``data`` as a dict with string keys (null = empty); ConfigError otherwise."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"must be a mapping, not {type(data).__name__}", key=key, value=data)
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError("keys must be strings", key=f"{key}.{bad[0]}", value=bad[0])
    return dict(data)


def _unknown(data: Mapping, valid: Any, where: str) -> None:
    for k in data:
        if k not in valid:
            raise ConfigError(f"unknown key (valid keys: {', '.join(valid)})",
                              key=f"{where}.{k}" if where else k, value=data[k])


def _rekey(err: ConfigError, old: str, new: str, file: Any = None) -> ConfigError:
    """The same error under another key prefix (and file)."""
    key = err.key
    if key is not None and old != new and (key == old or key.startswith(old + ".")):
        key = new + key[len(old):]
    return ConfigError(err.reason, file=file if file is not None else err.file, key=key,
                       value=err.value)


class Section(Mapping):
    """Base of the typed config sections (see :func:`schema_section`)."""

    SCHEMA: ClassVar[Mapping[str, Field]] = {}
    WHERE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, f in self.SCHEMA.items():
            object.__setattr__(self, name, _checked(f, getattr(self, name), f"{self.WHERE}.{name}"))
        self.check()

    def check(self) -> None:
        """Rules between keys of the section; ConfigError naming the key."""

    @classmethod
    def from_mapping(cls, data: Any, where: str | None = None) -> Self:
        """Validate a mapping (unknown keys refused, missing keys take the table's defaults);
        errors name ``where.key`` (default: the section's YAML name)."""
        where = where or cls.WHERE
        values = _mapping(data, where)
        _unknown(values, cls.SCHEMA, where)
        try:
            return cls(**values)
        except ConfigError as err:
            raise _rekey(err, cls.WHERE, where) from None

    def replace(self, **changes: Any) -> Self:
        """A new, validated section with ``changes``."""
        # every concrete section is a dataclass (schema_section); this base is not
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready) under the YAML key names."""
        return {k: _plain(v) for k, v in self.items()}

    def __getitem__(self, key: str) -> Any:
        if key not in self.SCHEMA:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.SCHEMA)

    def __len__(self) -> int:
        return len(self.SCHEMA)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"


def _plain(value: Any) -> Any:
    if isinstance(value, (Section, RunConfig)):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_SECTION_OF: dict[int, type[Section]] = {}


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


@schema_section(SUBNET_SCHEMA, "subnet_config")
class SubnetSettings(Section):
    """``subnet_config``: the subnet of ``eval_and_search.py --mode eval``."""

    random_sample: bool
    ks: list[int] | None
    e: list[int | float] | None
    d: list[int] | None
    image_size: int  # pixels
    res_dir: str
    name: str
    draw_graphs: bool


@schema_section(SEARCH_SCHEMA, "search_config")
class SearchSettings(Section):
    """``search_config``: the constraint sweep and the evolutionary search (the reference class
    defaults 100 / 500; the reference run used 20 / 20)."""

    # the keys that define one evolutionary search (recorded with each result)
    KEYS: ClassVar[tuple[str, ...]] = ("population_size", "generations", "mutation_ratio",
                                       "parent_ratio", "arch_mutate_prob",
                                       "resolution_mutate_prob", "seed", "max_tries")

    N_constraint: int
    min_constraint: float  # memory unit (elements, or bytes with a memory: section)
    max_constraint: float
    constraint_start: float | None
    constraint_stop: float | None
    constraints: list[float] | None
    max_mmacs: float | None
    max_params: int | None
    target: str | None
    max_latency_ms: float | None
    max_sram_bytes: int | None
    max_flash_bytes: int | None
    latency_table: str | None
    compile_tries: int
    population_size: int
    generations: int
    mutation_ratio: float
    parent_ratio: float
    arch_mutate_prob: float
    resolution_mutate_prob: float
    seed: int
    evaluate: bool
    res_dir: str
    acc_dataset_path: str
    acc_predictor_checkpoint: str | None
    export: list[str]
    deploy_constraints: list[float] | None
    fitness: str
    trust_radius: float  # genes
    pessimism: float  # standard deviations
    neighbours: int
    distance_uncertainty_pp: float
    bound_margin_pp: float
    rerank_top_k: int
    append_measurements: bool
    max_tries: int

    def check(self) -> None:
        if (self.constraint_start is None) != (self.constraint_stop is None):
            missing = "constraint_stop" if self.constraint_stop is None else "constraint_start"
            raise ConfigError("constraint_start and constraint_stop go together",
                              key=f"{self.WHERE}.{missing}")
        if self.n_parents < 1:
            raise ConfigError(f"keeps no parent of a population of {self.population_size}",
                              key=f"{self.WHERE}.parent_ratio", value=self.parent_ratio)
        if self.deploy_constraints is not None:
            key = f"{self.WHERE}.deploy_constraints"
            if "executorch" not in self.export:
                raise ConfigError("needs executorch in search_config.export", key=key,
                                  value=self.deploy_constraints)
            sweep = self.sweep()
            outside = [c for c in self.deploy_constraints if int(round(c)) not in sweep]
            if outside:
                raise ConfigError(f"{outside[0]:g} is not one of the search constraints {sweep}",
                                  key=key, value=self.deploy_constraints)

    @property
    def n_parents(self) -> int:
        """Parents kept per generation: round(parent_ratio x population_size) (reference)."""
        return int(round(self.parent_ratio * self.population_size))

    @property
    def n_mutants(self) -> int:
        """Mutants per generation: round(mutation_ratio x population_size) (reference)."""
        return int(round(self.mutation_ratio * self.population_size))

    @property
    def n_crossovers(self) -> int:
        """Crossover children per generation: population_size - n_mutants (reference)."""
        return self.population_size - self.n_mutants

    def to_dict(self) -> dict[str, Any]:
        """The evolution's settings (:attr:`KEYS`), as each result records them."""
        return {k: getattr(self, k) for k in self.KEYS}

    def sweep(self) -> list[int]:
        """The peak-memory constraints of the sweep (elements), ascending and distinct:
        ``constraints`` when given, else ``N_constraint`` evenly spaced values between the two
        ends (``constraint_start/stop`` or ``min/max_constraint``, in either order), rounded."""
        if self.constraints:
            return sorted({int(round(c)) for c in self.constraints})
        if self.constraint_start is not None and self.constraint_stop is not None:  # check(): both or none
            a, b = self.constraint_start, self.constraint_stop
        else:
            a, b = self.min_constraint, self.max_constraint
        values = np.linspace(min(a, b), max(a, b), int(self.N_constraint), endpoint=True)
        return sorted({int(round(float(v))) for v in values})


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


@schema_section(WANDB_SCHEMA, "wandb")
class WandbSettings(Section):
    """``wandb``: Weights & Biases logging."""

    use_wandb: bool
    project_name: str


@schema_section(MEMORY_SCHEMA, "memory")
class MemorySettings(Section):
    """``memory``: the memory model of every peak (defaults: the reference's count in elements)."""

    bytes_per_element: int  # bytes
    count_weights: bool
    count_head: bool
    inplace_depthwise: bool


@schema_section(DEPLOY_SCHEMA, "deploy")
class DeploySettings(Section):
    """``deploy``: int8 deployment with ExecuTorch."""

    calibration_images: int  # training images
    per_channel: bool
    targets: list[str]
    system_config: str | None
    memory_mode: str | None


@dataclass(frozen=True, eq=False)
class RunConfig(Mapping):
    """A loaded run config: the typed sections, the file they came from and, once resolved
    against a model_configs.yaml (:func:`resolve_model`), the model specs it names. Read also as
    a mapping of its sections under the YAML names."""

    path: Path
    args: Args
    tasks: list[str]
    tasks_phases: dict[str, int]
    args_per_task: dict[str, PhaseArgs]
    subnet_config: SubnetSettings
    search_config: SearchSettings
    dataset_config: DatasetSettings
    predictor_config: PredictorRecipe
    wandb: WandbSettings
    memory: MemorySettings
    deploy: DeploySettings
    model_config_path: Path | None = None
    specs: Mapping[str, ModelSpec] = field(default_factory=dict)  # the models the config names

    @property
    def spec(self) -> ModelSpec:
        """The spec of ``args.model`` (needs :func:`resolve_model`)."""
        return self.spec_of(self.args.model)

    def spec_of(self, model: str) -> ModelSpec:
        if model not in self.specs:
            raise ConfigError("the model is not resolved (load the config with a model_configs.yaml)",
                              file=self.path, key="args.model", value=model)
        return self.specs[model]

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dict of the sections (what resolved_config.json holds)."""
        return {k: _plain(v) for k, v in self.items()}

    def __getitem__(self, key: str) -> Any:
        if key not in SECTIONS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(SECTIONS)

    def __len__(self) -> int:
        return len(SECTIONS)


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
        text = read_utf8(path, ConfigError)
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


def default_data_path(dataset: str) -> str:
    """Default ``args.data_path``: ``/imagenet/`` (or ``/imagenette2/``) when that folder exists,
    else the same name under the working directory (docs/design.md#protocols); ``./data/<dataset>/`` for the
    embedded datasets."""
    if dataset in ("imagenet", "imagenette"):
        name = "imagenet" if dataset == "imagenet" else "imagenette2"
        return f"/{name}/" if Path(f"/{name}").is_dir() else f"./{name}/"
    return f"./data/{dataset}/"


def _tasks(raw: Any) -> list[str]:
    if raw is None:
        return list(DEFAULT_TASKS)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"must be a non-empty list of {', '.join(STEPS)}", key="tasks", value=raw)
    for t in raw:
        if t not in STEPS:
            raise ConfigError(f"unknown task {t!r} (valid: {', '.join(STEPS)})", key="tasks", value=raw)
    if len(set(raw)) != len(raw):
        raise ConfigError("lists a task twice", key="tasks", value=raw)
    return list(raw)


def _tasks_phases(raw: Any) -> dict[str, int]:
    data = _mapping(raw, "tasks_phases")
    _unknown(data, STEPS, "tasks_phases")
    out = dict(DEFAULT_TASKS_PHASES)
    for step, n in data.items():
        out[step] = _checked(Field(None, _POS_INT, ""), n, f"tasks_phases.{step}")
    return {s: out[s] for s in STEPS}


def _phase_entry(name: str, raw: Any) -> PhaseArgs:
    """One ``args_per_task`` entry; missing phase keys come from the reference row of the same
    name, else the table's default (n_epochs and base_lr are then required)."""
    key = f"args_per_task.{name}"
    data = _mapping(raw, key)
    _unknown(data, list(PHASE_SCHEMA) + list(ARGS_SCHEMA), key)
    ref = FINETUNE_DEFAULTS if name == FINETUNE else REFERENCE_PHASES.get(name, {})
    values: dict[str, Any] = {}
    for pname, f in PHASE_SCHEMA.items():
        if pname in data:
            values[pname] = data[pname]
        elif pname in ref:
            values[pname] = ref[pname]
        elif f.default is not None:
            values[pname] = f.default
        else:
            raise ConfigError("missing key (required for entries that are not in the reference "
                              f"table {', '.join(REFERENCE_PHASES)})", key=f"{key}.{pname}")
    overrides = {k: v for k, v in data.items() if k not in PHASE_SCHEMA}
    try:
        return PhaseArgs(**{**values, "overrides": overrides})
    except ConfigError as err:
        raise _rekey(err, PhaseArgs.WHERE, key) from None


def _args_per_task(raw: Any, tasks: list[str], phases: dict[str, int]) -> dict[str, PhaseArgs]:
    """The user's section replaces the reference table (docs/design.md#protocols) as a whole; absent -> the table."""
    if raw is None:
        return {name: PhaseArgs(**row) for name, row in REFERENCE_PHASES.items()}
    data = _mapping(raw, "args_per_task")
    out = {}
    for name, entry in data.items():
        if not _PHASE_NAME.match(name):
            raise ConfigError("unknown entry (valid: teacher, finetune, <step> or <step>_<phase> with "
                              f"step one of {', '.join(STEPS)})", key=f"args_per_task.{name}", value=entry)
        out[name] = _phase_entry(name, entry)
    needed = ["teacher"] + [f"{s}_{p}" for s in tasks for p in range(1, phases[s] + 1)]
    for name in needed:
        if name not in out and name.split("_")[0] not in out:
            plain = name.split("_")[0]
            raise ConfigError(f"missing entry (define {name}" + (f" or {plain})" if plain != name else ")"),
                              key=f"args_per_task.{name}")
    return out


def _with_data_paths(args: Args, apt: dict[str, PhaseArgs]) -> tuple[Args, dict[str, PhaseArgs]]:
    """``args.data_path`` (and that of entries naming another dataset) filled with
    :func:`default_data_path` when not given."""
    if args.data_path is not None:
        return args, apt
    out = {}
    for name, entry in apt.items():
        o = entry.overrides
        if "dataset" in o and "data_path" not in o:
            entry = entry.replace(overrides={**o, "data_path": default_data_path(o["dataset"])})
        out[name] = entry
    return args.replace(data_path=default_data_path(args.dataset)), out


def _sections(path: Path, data: dict) -> RunConfig:
    args = Args.from_mapping(data.get("args"))  # validated in the order of the YAML sections
    subnet = SubnetSettings.from_mapping(data.get("subnet_config"))
    search = SearchSettings.from_mapping(data.get("search_config"))
    dc = DatasetSettings.from_mapping(data.get("dataset_config"))
    predictor = PredictorRecipe.from_mapping(data.get("predictor_config"))
    wandb = WandbSettings.from_mapping(data.get("wandb"))
    memory = MemorySettings.from_mapping(data.get("memory"))
    deploy = DeploySettings.from_mapping(data.get("deploy"))
    tasks = _tasks(data.get("tasks"))
    phases = _tasks_phases(data.get("tasks_phases"))
    apt = _args_per_task(data.get("args_per_task"), tasks, phases)
    args, apt = _with_data_paths(args, apt)
    if dc.output is None:
        dc = dc.replace(output=search.acc_dataset_path)
    return RunConfig(path=path, args=args, tasks=tasks, tasks_phases=phases, args_per_task=apt,
                     subnet_config=subnet, search_config=search, dataset_config=dc,
                     predictor_config=predictor, wandb=wandb, memory=memory, deploy=deploy)


def load_config(path: str | Path, model_config_path: str | Path | None = None) -> RunConfig:
    """Read and validate a run config into a frozen :class:`RunConfig` with every default filled.
    With ``model_config_path`` it is also resolved against the models (:func:`resolve_model`).
    Raises :class:`ConfigError` (one line: file, dotted key, value) on bad input."""
    path = Path(path)
    raw = _read_yaml(path)
    if raw is None:  # a 0-byte or comment-only file: a truncated copy, not "all defaults"
        raise ConfigError("config file is empty (no keys)", file=path)
    try:
        data = _mapping(raw, "(top level)")
        for k in data:
            if k not in SECTIONS:
                raise ConfigError(f"unknown key (valid keys: {', '.join(SECTIONS)})", key=k, value=data[k])
        cfg = _sections(path, data)
    except ConfigError as err:
        raise _rekey(err, "", "", file=path) from None
    if model_config_path is not None:
        cfg = resolve_model(cfg, model_config_path)
    return cfg


# ------------------------------------------------------------------------------------------------
# Model-dependent checks


def _phase_count_problem(spec: ModelSpec, step: str, n: int) -> str | None:
    """Why ``n`` phases of ``step`` do not fit ``spec`` (docs/design.md#configuration: fewer phases than list values)."""
    values = {"depth": spec.depth_list, "expand": spec.expand_list}.get(step)
    if values is not None and n > len(values) - 1:
        return (f"{step} needs fewer phases than {spec.name}'s {step} choices {list(values)} "
                f"(at most {len(values) - 1})")
    return None


def resolve_model(cfg: RunConfig, model_config_path: str | Path) -> RunConfig:
    """``cfg`` resolved against model_configs.yaml: ``args.model`` and the models named in
    args_per_task must exist, the phase counts must fit the model's choice lists, and
    ``subnet_config`` must fit the model (its null ks/e/d lists become the largest values).
    Returns a new config carrying the specs (``cfg.spec``); ``cfg`` is not changed."""
    def error(key: str, message: str, value: Any = None) -> ConfigError:
        return ConfigError(message, file=cfg.path, key=key, value=value)

    try:
        specs = load_model_configs(model_config_path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    names = [("args.model", cfg.args.model)] + [
        (f"args_per_task.{n}.model", e.overrides["model"]) for n, e in cfg.args_per_task.items()
        if "model" in e.overrides]
    for key, name in names:
        if name not in specs:
            raise error(key, f"unknown model (known in {model_config_path}: {', '.join(specs)})", name)
    spec = specs[cfg.args.model]
    for step in cfg.tasks:
        problem = _phase_count_problem(spec, step, cfg.tasks_phases[step])
        if problem:
            raise error(f"tasks_phases.{step}", problem, cfg.tasks_phases[step])
    sc = cfg.subnet_config
    full = spec.max_config(sc.image_size)
    filled = {k: list(getattr(full, k)) if sc[k] is None else sc[k] for k in ("ks", "e", "d")}
    try:
        SubnetConfig.from_dict(filled, image_size=sc.image_size).validate(spec)
    except ChoiceError as err:
        raise error(f"subnet_config.{err.key}", err.reason) from None
    if int(sc.image_size) not in spec.image_sizes and (cfg.path, sc.image_size) not in _WARNED:
        _WARNED.add((cfg.path, sc.image_size))  # once per process (a config may be resolved twice)
        _LOG.warning("%s: subnet_config.image_size %s is not one of %s's resolutions %s; the supernet "
                     "was not trained at it, so eval accuracy there is not comparable", cfg.path,
                     sc.image_size, spec.name, list(spec.image_sizes))
    return cfg.replace(subnet_config=sc.replace(**filled), model_config_path=Path(model_config_path),
                       specs={name: specs[name] for _, name in names})


# ------------------------------------------------------------------------------------------------
# Helpers used by the scripts


def task_args(cfg: RunConfig, step: str, phase: int | None = None) -> TaskArgs:
    """``args`` updated with ``args_per_task["<step>_<phase>"]`` (falling back to
    ``args_per_task["<step>"]``), or with ``args_per_task["teacher"]`` for the teacher (docs/design.md#protocols).
    ``step`` must be ``teacher`` or in ``tasks``; ``phase`` in 1..tasks_phases[step]. For
    ``finetune`` (no phase): ``args_per_task["finetune"]``, or :data:`FINETUNE_DEFAULTS` when the
    config has no such entry."""
    def error(key: str, message: str, value: Any = None) -> ConfigError:
        return ConfigError(message, file=cfg.path, key=key, value=value)

    apt = cfg.args_per_task
    if step == FINETUNE:
        return _merged(cfg.args, apt.get(FINETUNE) or PhaseArgs(**FINETUNE_DEFAULTS))
    if step == "teacher":
        names = ["teacher"]
    else:
        if step not in cfg.tasks:
            raise error("tasks", f"step {step!r} is not in tasks {cfg.tasks} (nor teacher)", step)
        n = cfg.tasks_phases[step]
        if phase is None:
            raise error(f"tasks_phases.{step}", f"step {step} needs a phase in 1..{n} (none given)")
        if isinstance(phase, bool) or not isinstance(phase, int) or not 1 <= phase <= n:
            raise error(f"tasks_phases.{step}", f"phase must be in 1..{n} for step {step}", phase)
        names = [f"{step}_{phase}", step]
    for name in names:
        if name in apt:
            return _merged(cfg.args, apt[name])
    raise error(f"args_per_task.{names[0]}", "missing entry", None)


def _merged(args: Args, entry: PhaseArgs) -> TaskArgs:
    return TaskArgs(**{**dict(args.items()), **dict(entry.items())})


def last_task_args(cfg: RunConfig) -> TaskArgs:
    """``args`` updated with the last ``args_per_task`` entry (dataset creation and search,
    docs/design.md#protocols). The ``finetune`` entry is skipped wherever it is written: it configures only the
    fine-tuning of a found subnet, never the supernet those scripts read."""
    entries = [v for k, v in cfg.args_per_task.items() if k != FINETUNE]
    return _merged(cfg.args, entries[-1])  # teacher is always there


def search_constraints(cfg: RunConfig) -> list[int]:
    """The peak-memory constraints of the search sweep (elements): :meth:`SearchSettings.sweep`."""
    return cfg.search_config.sweep()


def save_resolved_config(cfg: Mapping, run_dir: str | Path) -> Path:
    """Write the resolved config (sections) as JSON to ``<run_dir>/resolved_config.json`` (atomic)."""
    path = Path(run_dir) / RESOLVED_CONFIG_NAME
    write_json(path, _plain(cfg))
    return path


# ------------------------------------------------------------------------------------------------
# Progressive-shrinking choices (docs/design.md#protocols)


def phase_constraints(spec: ModelSpec, step: str, phase: int, tasks_phases: Mapping[str, int]) -> dict:
    """Allowed choices of a progressive-shrinking phase: ``dict(ks=[..], e=[..], d=[..])``, each
    sorted ascending (docs/design.md#protocols). The kernel step ignores its phase index."""
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
    """Resolutions of the progressive-shrinking validation (docs/design.md#protocols): the reference uses
    [160, 224] for its size list [128, 160, 192, 224]. Generalised as the second-smallest and the
    largest size (all sizes when there are at most two)."""
    sizes = sorted(set(spec.image_sizes))
    return sizes if len(sizes) <= 2 else [sizes[1], sizes[-1]]


def subnet_name(ks: int, e: float, d: int, image_size: int) -> str:
    """The reference's label of a uniform validation subnet, e.g. ``R160-D4-E4-K3-W0``."""
    return f"R{image_size}-D{d}-E{norm_expand(e)}-K{ks}-W0"


def validation_subnets(spec: ModelSpec, step: str, ks_task, e_task, d_task) -> list[dict]:
    """Uniform subnets validated after each epoch (docs/design.md#protocols): ks = the whole task list in the
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
