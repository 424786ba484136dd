"""Progressive-shrinking training (SPEC 3): the teacher step and the kernel, depth and expand
phases, with distillation, elastic resolution, validation, resumable checkpoints and logs.

One function, :func:`train_step`, runs one launch (``train.py --step S --phase P``); the teacher
and the supernet phases differ only in the network trained, the subnet sampling and the
validation set.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from moofa.config import phase_constraints, save_resolved_config, validation_subnets
from moofa.data.provider import DataProvider
from moofa.errors import CheckpointError, ConfigError
from moofa.io import atomic_save
from moofa.models.bn_calibration import set_running_statistics
from moofa.models.spec import ModelSpec
from moofa.models.supernet import load_checkpoint_file, load_weights
from moofa.run import Run, final_phase_file
from moofa.training.checkpoint import phase_name, predecessor, rng_state, set_rng_state
from moofa.training.evaluate import evaluate
from moofa.training.logger import RunLogger
from moofa.training.losses import distillation_loss
from moofa.training.optim import build_optimizer, set_lr
from moofa.training.schedule import learning_rate


@dataclass
class StepResult:
    phase: str
    epochs: int
    best_acc: float          # mean validation top-1, fraction
    resumed_from: int | None = None
    already_done: bool = False
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _command_hint(run: Run, step: str, phase: int | None) -> str:
    ph = "" if step == "teacher" else f" --phase {phase}"
    return f"python train.py --config {run.path} --step {step}{ph}"


def _require(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"missing {what}; produce it with `{hint}`", file=path)
    return path


def subnet_seed(global_step: int, j: int, rank: int = 0) -> int:
    """The reference's per-subnet seed: decimal concatenation of the global step, 3-digit j and a
    3-digit rank field (0 unless ranks sample independently)."""
    return int(f"{global_step}{j:03d}{rank:03d}")


class Trainer:
    """State of one launch; see :func:`train_step`."""

    def __init__(self, run: Run, step: str, phase: int | None, backend: Any) -> None:
        if step != "teacher" and phase is None:
            raise ConfigError(f"--phase is required for step {step}", key="--phase")
        self.layout, self.cfg, self.step, self.backend = run, run.cfg, step, backend
        self.phase = phase if step != "teacher" else None
        self.args = run.args(step, phase)
        self.spec: ModelSpec = run.spec(self.args)
        if self.spec.compound and step != "teacher":
            raise ConfigError("CompOFA supernets are not trained by progressive shrinking here (as in "
                              "the reference); evaluate or search a pretrained CompOFA checkpoint instead",
                              key="args.model", value=self.spec.name)
        self.name = phase_name(step, phase)
        self.files = run.phase_files(step, phase)
        self.device = backend.device
        self.log = RunLogger(self.files.run_dir, backend.is_main, self.name, self.cfg.wandb,
                             self.args.as_dict())
        seed_everything(int(self.args["manual_seed"]))
        self.provider = DataProvider(self.args, self.spec.image_sizes, backend.rank, backend.size)
        a = self.args
        self.supernet = run.supernet(a, self.provider.n_classes)
        self.teacher: nn.Module | None = None
        self.net: nn.Module = self.supernet.build_teacher() if step == "teacher" else self.supernet
        self.n_epochs = int(a["warmup_epochs"]) + int(a["n_epochs"])
        self.init_lr = float(a["base_lr"]) * backend.size
        self.use_cuda = self.device.type == "cuda"
        if self.use_cuda:
            torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------------------ set-up
    def _teacher_file(self) -> Path:
        return _require(self.layout.teacher_file(self.args), "teacher checkpoint",
                        _command_hint(self.layout, "teacher", None))

    def _init_weights(self) -> None:
        """Initial weights of a fresh run: random (teacher, broadcast from rank 0), the teacher's
        best weights (first task) or the predecessor phase's final weights."""
        if self.step == "teacher":
            self.backend.broadcast_parameters(self.net, root=0)
            return
        prev = predecessor(self.step, self.phase, list(self.cfg["tasks"]), self.cfg["tasks_phases"])
        if prev is None:
            src = self._teacher_file()
        else:
            src = _require(final_phase_file(self.args.path, *prev),
                           f"predecessor checkpoint of {self.name}", _command_hint(self.layout, *prev))
        load_weights(self.supernet, src)
        self.log.info(f"Loaded init from {src}")
        if self.step == "expand" and self.args["resort_channels"]:
            n_e = len(self.constraints["e"])
            self.supernet.re_organize_middle_weights(n_e - 2)
            self.log.info(f"Re-sorted middle channels by importance (expand_ratio_stage={n_e - 2})")

    def _build_teacher(self) -> None:
        if self.step == "teacher" or float(self.args["kd_ratio"]) <= 0:
            return
        teacher = self.layout.teacher(self.args, self.provider.n_classes, load=False)
        load_weights(teacher, self._teacher_file())
        self.teacher = teacher.to(self.device)

    def setup(self) -> tuple[int, float, int | None]:
        """Weights, optimizer and resume state; returns (start epoch, best accuracy, resumed from)."""
        if self.step != "teacher":
            self.constraints = phase_constraints(self.spec, self.step, self.phase, self.cfg["tasks_phases"])
            for key, ctype in (("ks", "kernel_size"), ("e", "expand_ratio"), ("d", "depth")):
                self.supernet.set_constraint(self.constraints[key], ctype)
        start, best, resumed = 0, 0.0, None
        state = None
        if self.files.state.is_file():
            state = load_checkpoint_file(self.files.state)
            if state.get("phase") != self.name or "epoch" not in state:
                raise CheckpointError(f"resume file belongs to phase {state.get('phase')!r}, not {self.name}",
                                      file=self.files.state)
        if state is None:
            self._init_weights()
        self.net.to(self.device)
        self._build_teacher()
        opt = build_optimizer(self.net, self.args, self.init_lr)
        if state is not None:
            load_weights(self.net, self.files.state)
            opt.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            start, best, resumed = int(state["epoch"]) + 1, float(state["best_acc"]), int(state["epoch"]) + 1
            self.log.info(f"Resumed {self.name} from {self.files.state} at epoch {start} "
                          f"(best top-1 {100 * best:.2f}%)")
        dbs = 1 if self.step == "teacher" else int(self.args["dynamic_batch_size"])
        self.dbs = dbs
        self.optimizer = self.backend.distributed_optimizer(
            opt, self.net.named_parameters(), backward_passes_per_step=dbs,
            fp16_compression=bool(self.args["fp16_allreduce"]))
        return start, best, resumed

    # ----------------------------------------------------------------------------- training
    def _autocast(self):
        enabled = bool(self.args["amp"]) and self.use_cuda
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_epoch(self, epoch: int) -> dict:
        self.net.train()
        loader = self.provider.train_loader(epoch)
        n_batches = len(loader)
        a = self.args
        sums = torch.zeros(4, dtype=torch.float64)  # loss*n, correct top1, correct top5, n
        independent = bool(a["independent_distributed_sampling"])
        bar = tqdm(loader, desc=f"{self.name} epoch {epoch + 1}/{self.n_epochs}", leave=False,
                   disable=None if self.backend.is_main else True, dynamic_ncols=True)
        lr = self.init_lr
        for i, (images, labels) in enumerate(bar):
            lr = learning_rate(epoch, i, n_batches, self.init_lr, int(a["n_epochs"]), int(a["warmup_epochs"]),
                               float(a["warmup_lr"]), a["lr_schedule_type"])
            set_lr(self.optimizer, lr)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            soft = None
            if self.teacher is not None:
                self.teacher.train(not a["teacher_eval_mode"])
                with torch.no_grad(), self._autocast():
                    soft = self.teacher(images).float()
            self.optimizer.zero_grad()
            for j in range(self.dbs):
                if self.step != "teacher":
                    random.seed(subnet_seed(epoch * n_batches + i, j, self.backend.rank if independent else 0))
                    self.supernet.sample_active_subnet()
                with self._autocast():
                    out = self.net(images).float()
                loss = distillation_loss(out, labels, soft, float(a["kd_ratio"]), a["kd_type"],
                                         float(a["label_smoothing"]))
                if a["average_subnet_losses"]:
                    loss = loss / self.dbs
                loss.backward()
                with torch.no_grad():
                    top = out.topk(min(5, out.size(1)), dim=1).indices.eq(labels.view(-1, 1))
                    sums += torch.tensor([loss.item() * len(labels), top[:, 0].sum().item(),
                                          top.any(1).sum().item(), len(labels)], dtype=torch.float64)
            self.optimizer.step()
            if self.backend.is_main and (i + 1) % int(a["print_frequency"]) == 0:
                bar.set_postfix(loss=f"{sums[0].item() / max(sums[3].item(), 1):.3f}", lr=f"{lr:.2e}")
        sums = self.backend.allreduce_sum_(sums)
        n = max(sums[3].item(), 1.0)
        return {"train_loss": sums[0].item() / n, "train_top1": 100 * sums[1].item() / n,
                "train_top5": 100 * sums[2].item() / n, "learning_rate": lr}

    # ---------------------------------------------------------------------------- validation
    def validate(self) -> tuple[float, dict[str, float]]:
        """Mean validation top-1 (fraction) and the per-subnet top-1 (percent, for the logs)."""
        results: dict[str, float] = {}
        if self.step == "teacher":
            items = [(f"R{r}", r, None) for r in self.spec.image_sizes]
        else:
            subs = validation_subnets(self.spec, self.step, self.constraints["ks"], self.constraints["e"],
                                      self.constraints["d"])
            items = [(s["name"], s["image_size"], s) for s in subs]
        for name, r, sub in items:
            if sub is not None:
                self.supernet.set_active_subnet(sub["ks"], sub["e"], sub["d"])
            set_running_statistics(self.net, self.provider.calibration_batches(r))
            res = evaluate(self.net, self.provider.valid_loader(r), self.backend)
            results[name] = res.top1
        mean = sum(results.values()) / len(results)
        return mean, results

    # ----------------------------------------------------------------------------------- run
    def save_state(self, epoch: int, best: float, is_best: bool) -> None:
        if not self.backend.is_main:
            return
        sd = self.net.state_dict()
        atomic_save({"phase": self.name, "epoch": epoch, "best_acc": best, "state_dict": sd,
                     "optimizer": self.optimizer.state_dict(), "rng": rng_state()}, self.files.state)
        if is_best:
            atomic_save({"state_dict": sd}, self.files.best)
        (self.files.state.parent / "latest.txt").write_text(str(self.files.state) + "\n")

    def run(self) -> StepResult:
        if self.step != "teacher" and self.files.final.is_file():
            self.log.info(f"{self.name} is already complete ({self.files.final}); nothing to do")
            return StepResult(self.name, self.n_epochs, 0.0, already_done=True)
        start, best, resumed = self.setup()
        if self.backend.is_main:
            save_resolved_config({**self.cfg.as_dict(), "args": self.args.as_dict()}, self.files.run_dir)
        if start >= self.n_epochs:
            self.log.info(f"{self.name} is already complete ({self.files.state}); nothing to do")
        else:
            self.log.info(f"Training {self.name}: {self.spec.name}, {self.n_epochs} epochs from epoch {start}, "
                          f"{self.backend.size} process(es) on {self.device}, init_lr {self.init_lr:g}")
        history = []
        for epoch in range(start, self.n_epochs):
            t0 = time.time()
            metrics = self.train_epoch(epoch)
            due = (epoch + 1) % int(self.args["validation_frequency"]) == 0 or epoch + 1 == self.n_epochs
            is_best = False
            if self.step == "teacher" or due:
                val, per = self.validate()
                is_best = val > best or not self.files.best.is_file()
                best = max(best, val)
                metrics.update(val_acc=val, per_subnet={k: round(100 * v, 3) for k, v in per.items()})
                entries = ", ".join(f"{k} ({100 * v:.2f})" for k, v in per.items())
                self.log.valid(f"Valid [{epoch + 1}/{self.n_epochs}] top-1={100 * val:.3f}% "
                               f"(best {100 * best:.3f}%), Train top-1 {metrics['train_top1']:.3f}%, "
                               f"Train loss {metrics['train_loss']:.4f}\t{entries}")
            self.save_state(epoch, best, is_best)
            metrics.update(epoch=epoch + 1, seconds=round(time.time() - t0, 2))
            self.log.record(**metrics)
            self.log.info(f"epoch {epoch + 1}/{self.n_epochs} loss {metrics['train_loss']:.4f} "
                          f"train top-1 {metrics['train_top1']:.2f}% "
                          + (f"val top-1 {100 * metrics['val_acc']:.2f}% " if "val_acc" in metrics else "")
                          + f"({metrics['seconds']:.1f}s)")
            history.append(metrics)
        if self.step != "teacher" and self.backend.is_main:
            atomic_save({"state_dict": self.net.state_dict()}, self.files.final)
            self.log.info(f"Wrote {self.files.final}")
        self.backend.barrier()
        self.log.close()
        return StepResult(self.name, self.n_epochs, best, resumed, history=history)


def train_step(run: Run, step: str, phase: int | None, backend: Any) -> StepResult:
    """Run one launch of ``train.py`` (teacher, or one phase of kernel/depth/expand)."""
    return Trainer(run, step, phase, backend).run()
