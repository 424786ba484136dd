"""Fine-tuning of a found subnet: ``train.py --step finetune --subnet <constraint folder | export>``.

The subnet is a static network: the export (``subnet.pth.tar``, :mod:`moofa.models.subnet_file`) or,
for a search result folder ``constraint_<int>/``, the arch of its ``info.json`` extracted from the
supernet ``args.checkpoint`` after BN re-calibration (what the search measured). It is trained on
the training split with distillation from the teacher (``kd_ratio``, ``kd_type``, as in the
progressive-shrinking phases) under the schedule of ``args_per_task.finetune`` (defaults:
:data:`moofa.config.FINETUNE_DEFAULTS`), validated on the held-out training images after each
epoch, and resumed after a kill by the same per-epoch checkpoints as every phase (the
:class:`~moofa.training.trainer.Trainer` machinery; only the network, its initial weights, the
validation and the outputs differ).

Output, next to the subnet (``<folder of the subnet>/finetuned/``)::

    subnet.pth.tar        the fine-tuned subnet in the export format (load_exported, moofa.deploy)
    subnet.onnx           the same network as ONNX, when the optional onnx package is installed
    info.json             written last: test top-1 before and after (fractions, measured on the
                          whole test split), peak memory (elements), MMACs, epochs, recipe
    inputs.json           what the run is computed from, by content (see below)
    resolved_config.json  the config the run used
    checkpoint/           resume state (checkpoint.pth.tar), best-validation weights, before.json
    logs/                 train_console.txt, valid_console.txt, log.jsonl

Inputs are identified by content: the SHA-256 of the subnet file (or of ``args.checkpoint`` plus
the arch), of the teacher file, and the training settings. A rerun with the same inputs resumes or
reports "already complete"; with other inputs the old folder is moved aside to
``finetuned.previous-<n>/`` (nothing is lost, nothing stale is served) and fine-tuning starts again.

The exported weights are those of the last epoch; their BN statistics are re-calibrated on the
fixed calibration subset (as every subnet the search measures), which also makes every rank hold
the same buffers. Selection never sees the test split: validation uses ``args.valid_size`` held-out
training images; the test split only gives the reported before/after numbers.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from moofa.config import FINETUNE
from moofa.data.provider import DataProvider
from moofa.errors import CheckpointError, ConfigError, MoofaInputError, on_main_rank
from moofa.fingerprint import Inputs, Policy, normalise, resolve, sha256_file
from moofa.io import check_writable, clean_stale_temps, read_json, write_json
from moofa.lock import OutputLock
from moofa.measurement.evaluate import EvalResult, evaluate
from moofa.measurement.report import UNITS, subnet_report
from moofa.models.bn_calibration import set_running_statistics
from moofa.models.layers import MobileNetV3
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.models.subnet_file import export_static, load_exported
from moofa.records import FinetuneInfo
from moofa.run import EXPORT_NAME, INFO_NAME, PhaseFiles, Run, SubnetSource
from moofa.run import FINETUNED_NAME as OUT_NAME
from moofa.stats import PerImage, compare_stored, per_image_record
from moofa.training.logger import RunLogger
from moofa.training.phase import StaticPhase
from moofa.training.trainer import Trainer, seed_everything

INPUTS_NAME = "inputs.json"
BEFORE_NAME = "before.json"
INFO_FORMAT = "moofa-finetune/1"
# Run settings outside the inputs' identity: paths whose content is hashed instead, the log
# frequency, and the device (a CPU run may resume on a GPU, as every phase). Everything else counts,
# also n_worker and validation_frequency: both change what the global RNG draws.
_NOT_INPUTS = ("path", "teacher_path", "checkpoint", "data_path", "print_frequency", "device")


class FinetuneTrainer(Trainer):
    """One launch of ``train.py --step finetune``; see the module docstring."""

    def __init__(self, run: Run, subnet: str | Path, backend: Any, overwrite: bool = False) -> None:
        self.layout, self.cfg, self.step, self.backend = run, run.cfg, FINETUNE, backend
        self.phase = StaticPhase(FINETUNE)
        self.name = FINETUNE
        self.args = run.args(FINETUNE)
        self.spec: ModelSpec = run.spec(self.args)
        self.source = SubnetSource.resolve(subnet)
        out = self.source.out_dir
        ckpt = out / "checkpoint"
        self.files = PhaseFiles(out, ckpt / "checkpoint.pth.tar", ckpt / "model_best.pth.tar", out / INFO_NAME)
        self.device = backend.device
        self.use_cuda = self.device.type == "cuda"
        a = self.args
        seed_everything(a.manual_seed)
        # the static network, built (and for a folder extracted) identically on every rank
        exported = load_exported(self.source.path) if self.source.kind == "export" else None
        self.arch: SubnetConfig
        self.subnet_spec: ModelSpec
        if exported is None:
            self.arch, self.subnet_spec = self._folder_arch(), self.spec
        elif exported.subnet_config is None or exported.model_spec is None:  # load_exported sets both
            raise CheckpointError("the exported subnet records no arch or model", file=self.source.path)
        else:
            self.arch, self.subnet_spec = exported.subnet_config, exported.model_spec
        self.provider = DataProvider(a, [self.arch.image_size], backend.rank, backend.size)
        self.net = exported if exported is not None else self._extract(self.provider.n_classes)
        if _n_classes(self.net) != self.provider.n_classes:
            raise CheckpointError(f"the subnet has {_n_classes(self.net)} classes, the dataset of "
                                  f"args.data_path {self.provider.n_classes}", file=self.source.path)
        self.teacher: nn.Module | None = None
        # no self.supernet: nothing is sampled (Trainer.elastic is false), the static net is trained
        self.n_epochs = a.warmup_epochs + a.n_epochs
        self.init_lr = a.base_lr * backend.size
        self.fingerprint, self.inputs = self._inputs()
        # the lock sits beside finetuned/, which _claim_folder may move aside
        self.lock = OutputLock(out.parent, "train.py --step finetune", key="--subnet",
                               name=".moofa-finetune.lock")

        def take_folder() -> Path | None:  # writable, ours, tidy: before any long work
            self.lock.acquire()
            if overwrite and out.exists():
                shutil.rmtree(out)
            moved = self._claim_folder()  # before anything is created in out
            check_writable(out / "logs", "--subnet")
            clean_stale_temps(folders=[out], recursive=True)
            return moved

        try:
            moved = on_main_rank(backend, take_folder)
            backend.barrier()
            self.log = RunLogger(out, backend.is_main, self.name, self.cfg.wandb, self.args.as_dict())
        except BaseException:  # stopped or failed before run() (which releases it)
            self.lock.release()
            raise
        if moved is not None:
            self.log.info(f"{out} held a fine-tuning of other inputs; moved it to {moved}")
        seed_everything(a.manual_seed)  # the same RNG state whatever __init__ drew
        if self.use_cuda:
            torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------------------ inputs
    def _folder_arch(self) -> SubnetConfig:
        """The arch of a search result folder (its info.json), checked against args.model."""
        info = self.source.info
        model = None if info is None else info.model
        if model is not None and model != self.spec.name:
            raise ConfigError(f"the search result {self.source.path} is of model {model}, not the config's",
                              file=self.layout.path, key="args.model", value=self.spec.name)
        try:
            return SubnetConfig.from_dict(info.config if info is not None else {}).validate(self.spec)
        except ValueError as err:
            raise MoofaInputError(f"bad subnet config ({err})", file=self.source.path / INFO_NAME,
                                  key="config") from None

    def _extract(self, n_classes: int) -> MobileNetV3:
        """The folder's arch cut from ``args.checkpoint``, BN re-calibrated as the search did."""
        path = self.args.checkpoint
        if not path:
            raise ConfigError("no supernet checkpoint to extract the subnet from (or give the exported "
                              f"{EXPORT_NAME} as --subnet)", file=self.layout.path, key="args.checkpoint")
        supernet = self.layout.supernet(self.args, n_classes, load=True)
        supernet.set_subnet(self.arch)
        net = supernet.get_active_subnet().to(self.device)
        set_running_statistics(net, self.provider.calibration_batches(self.arch.image_size))
        return net

    def _inputs(self) -> tuple[str, dict]:
        """(fingerprint, description) of what this fine-tuning is computed from, by content."""
        a, src = self.args, self.source
        teacher = None
        if a.kd_ratio > 0:
            teacher_file = self._teacher_file()
            teacher = {"file": str(teacher_file), "sha256": sha256_file(teacher_file)}
        weights: dict[str, Any]
        if src.kind == "export":
            weights = {"file": str(src.path), "sha256": sha256_file(src.path)}
        else:  # _extract refused a missing checkpoint before
            weights = {"file": str(a.checkpoint), "sha256": sha256_file(str(a.checkpoint)),
                       "extracted_from_supernet": True}
        settings = normalise({k: v for k, v in a.items() if k not in _NOT_INPUTS})
        described = {"source": {"kind": src.kind, "path": str(src.path)}, "model": self.subnet_spec.name,
                     "arch": self.arch.to_dict(), "weights": weights, "teacher": teacher,
                     "data": str(self.provider.root), "settings": settings}
        identity = dict(described, source=src.kind,
                        weights={"sha256": weights["sha256"]},
                        teacher=None if teacher is None else {"sha256": teacher["sha256"]})
        fp = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        return fp, dict(described, fingerprint=fp)

    def _claim_folder(self) -> Path | None:
        """Rank 0: move a ``finetuned/`` folder computed from other inputs aside; record ours.
        Returns where the old folder went, or None."""
        out = self.source.out_dir
        recorded = None  # an empty or missing folder records nothing: FRESH
        if out.is_dir() and any(out.iterdir()):
            try:
                recorded = self._recorded(read_json(out / INPUTS_NAME).get("fingerprint"))
            except (OSError, ValueError, AttributeError):
                recorded = Inputs.unrecorded()
        # another fine-tuning's folder is kept: moved aside, this one starts afresh
        moved = resolve("the fine-tuning", recorded, self._recorded(self.fingerprint), Policy.MOVE_ASIDE,
                        file=out / INPUTS_NAME, result=out).moved_to
        if not (out / INPUTS_NAME).is_file():
            write_json(out / INPUTS_NAME, self.inputs)
        return moved

    # ------------------------------------------------------------------------ Trainer hooks
    def check_recipe(self, overwrite: bool = False) -> bool:
        """The inputs were checked by content when the folder was claimed (another fine-tuning's
        folder was moved aside): finished means our info.json is there."""
        return self.completed()

    def completed(self) -> bool:
        if not (self.files.final.is_file() and (self.source.out_dir / EXPORT_NAME).is_file()):
            return False
        try:
            recorded = self._recorded(FinetuneInfo.read(self.files.final).fingerprint)
        except ConfigError:  # a newer moofa's result: stop rather than redo and overwrite it
            raise
        except (OSError, ValueError):  # unreadable (MoofaInputError is a ValueError): redone
            return False
        # a result of other inputs is trained again over (its folder was claimed: ours by now)
        return resolve("the fine-tuning", recorded, self._recorded(self.fingerprint), Policy.REDO,
                       file=self.files.final).reuse

    @staticmethod
    def _recorded(fingerprint: object) -> Inputs:
        """A fine-tuning's fingerprint (the SHA-256 of its inputs, :meth:`_inputs`) as
        :class:`Inputs`; None (not recorded) as :meth:`Inputs.unrecorded`."""
        return Inputs.unrecorded() if fingerprint is None else Inputs.of({"sha256": fingerprint})

    def _init_weights(self) -> None:
        """The source weights are in ``self.net`` already; rank 0's are broadcast anyway."""
        self.backend.broadcast_parameters(self.net, root=0)
        self.log.info(f"Fine-tuning {self.source.kind.replace('_', ' ')} {self.source.path}: "
                      f"{self.subnet_spec.name} R={self.arch.image_size}")

    def setup(self) -> tuple[int, float, int | None]:
        start, best, resumed = super().setup()
        before_file = self.files.state.parent / BEFORE_NAME
        before = None
        if resumed is not None and before_file.is_file():
            try:
                before = read_json(before_file)
            except (OSError, ValueError):
                before = None
        if before is None:  # a fresh start: measure the subnet as given, before any training
            test = self._test()
            val = self._valid()
            before = {"test": _eval_dict(test), "valid": _eval_dict(val)}
            if self.backend.is_main:
                write_json(before_file, before)
            self.log.info(f"Before fine-tuning: test top-1 {100 * test.top1:.2f}% on {test.n_images:,} images, "
                          f"validation top-1 {100 * val.top1:.2f}% on {val.n_images:,} held-out training images")
        self.before = before
        return start, best, resumed

    def _valid(self) -> EvalResult:
        return evaluate(self.net, self.provider.valid_loader(self.arch.image_size), self.backend)

    def _test(self) -> EvalResult:
        return evaluate(self.net, self.provider.test_loader(self.arch.image_size), self.backend)

    def validate(self) -> tuple[float, dict[str, float]]:
        """BN re-calibration, then top-1 (fraction) on the held-out training images."""
        set_running_statistics(self.net, self.provider.calibration_batches(self.arch.image_size))
        top1 = self._valid().top1
        return top1, {f"R{self.arch.image_size}": top1}

    def finish(self) -> FinetuneInfo:
        """Measure the fine-tuned subnet on the test split and write the export, then info.json."""
        out = self.source.out_dir
        test = self._test()
        val = self._valid()
        report = subnet_report(self.subnet_spec, self.arch, self.provider.n_classes)
        n_test = test.n_images
        before = PerImage.from_dict(self.before["test"].get("per_image"))
        outcomes = test.per_image("test_top1_after", f"the test split {self.provider.root / 'val'}")
        if outcomes is not None and before is not None and "correct" in before.bits:
            outcomes = outcomes.merged(replace(before, bits={"test_top1_before": before.bits["correct"]}))
        versus = compare_stored(outcomes, "test_top1_after", outcomes, "test_top1_before")
        info = FinetuneInfo(
            format=INFO_FORMAT, model=self.subnet_spec.name, config=self.arch.to_dict(),
            source=str(self.source.path), source_kind=self.source.kind,
            subnet=EXPORT_NAME,
            test_top1_before=self.before["test"]["top1"], test_top1_after=test.top1,
            test_top5_before=self.before["test"]["top5"], test_top5_after=test.top5,
            n_test_images=n_test,
            test_images=f"all {n_test:,} images of the test split ({self.provider.root / 'val'})",
            valid_top1_before=self.before["valid"]["top1"], valid_top1_after=val.top1,
            n_valid_images=val.n_images,
            valid_images=(f"{val.n_images:,} held-out training images (args.valid_size)"
                          if self.provider.valid_indices else "the test split (args.valid_size is null)"),
            accuracy_source="measured",
            per_image=per_image_record(outcomes), test_difference=None if versus is None else versus.to_dict(),
            peak_memory=report.peak_memory, memory_history=report.memory_history,
            flops=report.flops, params=report.params,
            epochs=self.n_epochs, n_epochs=self.args.n_epochs,
            warmup_epochs=self.args.warmup_epochs,
            recipe={k: self.args[k] for k in ("base_lr", "warmup_lr", "lr_schedule_type", "opt_type",
                                              "kd_ratio", "kd_type", "label_smoothing", "weight_decay",
                                              "base_batch_size", "manual_seed")},
            init_lr=self.init_lr, world_size=self.backend.size,
            teacher=(self.inputs["teacher"] or {}).get("file"),
            logs="logs/", units=dict(UNITS, test_top1_before="fraction", test_top1_after="fraction"),
            fingerprint=self.fingerprint, finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        if self.backend.is_main:
            written = export_static(self.net, self.subnet_spec, self.arch, out / EXPORT_NAME)
            info.export = [p.name for p in written]
            info.write(self.files.final)
            self.log.info(f"Fine-tuned {self.subnet_spec.name} R={self.arch.image_size}: test top-1 "
                          f"{100 * (info.test_top1_before or 0.0):.2f}% -> {100 * test.top1:.2f}% on {n_test:,} images "
                          + ("" if versus is None else f"(after minus before {versus.text()}, {versus.verdict}) ")
                          + f"({self.n_epochs} epochs); peak {report.peak_memory:,} elements, "
                          f"{report.flops:.1f} MMACs; wrote {out / EXPORT_NAME} and {self.files.final}")
        return info


def _n_classes(net: nn.Module) -> int:
    clf = net.get_submodule("classifier")
    linear = getattr(clf, "linear", clf)  # a LinearLayer wraps its nn.Linear
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"classifier: expected a Linear or LinearLayer, got {type(clf).__name__}")
    return int(linear.out_features)


def _eval_dict(res: EvalResult) -> dict:
    return {"top1": res.top1, "top5": res.top5, "loss": res.loss, "n_images": res.n_images,
            "per_image": per_image_record(res.per_image("correct"))}


def finetune(run: Run, subnet: str | Path, backend: Any, overwrite: bool = False):
    """Run one launch of ``train.py --step finetune --subnet <subnet>``; returns the StepResult
    (``info`` = the info.json written, None when it was already complete). ``overwrite``
    fine-tunes again from the start."""
    return FinetuneTrainer(run, subnet, backend, overwrite).run()


__all__ = ["FinetuneTrainer", "SubnetSource", "finetune", "OUT_NAME"]
