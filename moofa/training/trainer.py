"""Progressive-shrinking training (docs/design.md#protocols): the teacher step and the kernel, depth and expand
phases, with distillation, elastic resolution, validation, resumable checkpoints and logs.

One function, :func:`train_step`, runs one launch (``train.py --step S --phase P``); the teacher
and the supernet phases differ only in the network trained, the subnet sampling and the
validation set.

Recipe check: a launch records its recipe (:func:`phase_recipe`: the task args that shape the
weights, the model, the effective learning rate and, by content, the weights it starts and
distils from) in ``recipe.json`` beside the phase's resume state before its first epoch. A rerun
that finds the phase finished, or resumes it, with another recipe stops with exit 2 naming what
changed; ``overwrite=True`` (``train.py --overwrite``) deletes the phase's files and trains it
again. Files written before recipes were recorded are reused with a warning. Each launch also
holds a lock on the phase's folder (a second launch of the same phase stops with exit 2) and
removes temporary files of checkpoint writes a killed launch left.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from moofa import preempt
from moofa.config import save_resolved_config
from moofa.data.datasets import check_dataset_args
from moofa.data.provider import DataProvider
from moofa.distributed import to_device
from moofa.errors import CheckpointError, ConfigError, on_main_rank
from moofa.fingerprint import (
    Inputs,
    Policy,
    Verdict,
    file_fingerprint,
    model_identity,
    normalise,
    read_fingerprint,
    resolve,
    write_fingerprint,
)
from moofa.io import atomic_save, check_writable, clean_stale_temps, require_file
from moofa.lock import OutputLock
from moofa.measurement.evaluate import evaluate
from moofa.models.bn_calibration import set_running_statistics
from moofa.models.spec import ModelSpec
from moofa.models.supernet import load_checkpoint_file, load_weights
from moofa.records import FinetuneInfo
from moofa.run import Run
from moofa.training.checkpoint import rng_state, set_rng_state
from moofa.training.logger import RunLogger
from moofa.training.losses import distillation_loss
from moofa.training.optim import build_optimizer, set_lr
from moofa.training.phase import Constraints, Phase, Source, phase_for, teacher_source
from moofa.training.schedule import learning_rate

# args that do not change the trained weights (where and how fast, not what)
NOT_RECIPE_ARGS = ("device", "n_worker", "print_frequency", "checkpoint", "path", "teacher_path",
                   "corrupt_images")


@dataclass
class StepResult:
    phase: str
    epochs: int
    best_acc: float          # mean validation top-1, fraction
    resumed_from: int | None = None
    already_done: bool = False
    history: list[dict] = field(default_factory=list)
    info: FinetuneInfo | None = None   # what the launch wrote besides weights (fine-tuning: its info.json)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _require(run: Run, source: Source) -> Path:
    """The source's file; CheckpointError naming the command that produces it when missing."""
    return require_file(source.path, source.what, error=CheckpointError,
                        hint=f"; produce it with `{source.producer.command(run)}`")


def subnet_seed(global_step: int, j: int, rank: int = 0) -> int:
    """The reference's per-subnet seed: decimal concatenation of the global step, 3-digit j and a
    3-digit rank field (0 unless ranks sample independently)."""
    return int(f"{global_step}{j:03d}{rank:03d}")


_LOG = logging.getLogger("moofa.training")


def resolution_note(spec: ModelSpec, candidates: list[int]) -> str:
    """What ``args.continuous_size: true`` means at run time (said once per launch)."""
    return (f"args.continuous_size: true: training on {len(candidates)} resolutions "
            f"{candidates[0]}..{candidates[-1]} (every multiple of 4 px), not only the model's "
            f"{list(spec.image_sizes)}; the reference never did (it ignored the key): set it to false "
            "to train as the reference did")


class Trainer:
    """State of one launch; see :func:`train_step`. What differs between the teacher and the
    supernet phases is asked of :attr:`phase` (:mod:`moofa.training.phase`)."""

    def __init__(self, run: Run, step: str, phase: int | None, backend: Any) -> None:
        self.phase: Phase = phase_for(step, phase)
        self.layout, self.cfg, self.step, self.backend = run, run.cfg, step, backend
        self.args = run.args(step, self.phase.number)
        self.spec: ModelSpec = run.spec(self.args)
        if self.spec.compound and self.phase.elastic:
            raise ConfigError("CompOFA supernets are not trained by progressive shrinking here (as in "
                              "the reference); evaluate or search a pretrained CompOFA checkpoint instead",
                              key="args.model", value=self.spec.name)
        self.name = self.phase.name
        self.files = run.phase_files(step, self.phase.number)
        self.device = backend.device
        self.lock = OutputLock(self.files.state.parent, f"train.py {self.phase.launch_args()}")

        check_dataset_args(self.args)  # bad data settings create nothing: before the folder is taken

        def take_folder() -> None:  # writable, ours, tidy: before any long work
            check_writable(self.files.run_dir / "logs", self.phase.folder_key)
            self.lock.acquire()
            clean_stale_temps(self.files.owned)

        try:
            on_main_rank(backend, take_folder)
            self._init_rest(run, backend)
        except BaseException:
            self.lock.release()
            raise

    def _init_rest(self, run: Run, backend: Any) -> None:
        self.log = RunLogger(self.files.run_dir, backend.is_main, self.name, self.cfg.wandb,
                             self.args.as_dict())
        seed_everything(self.args.manual_seed)
        self.provider = DataProvider(self.args, self.spec.image_sizes, backend.rank, backend.size)
        a = self.args
        self.supernet = run.supernet(a, self.provider.n_classes)
        self.teacher: nn.Module | None = None
        self.net: nn.Module = self.phase.network(self.supernet)
        self.n_epochs = a.warmup_epochs + a.n_epochs
        self.init_lr = a.base_lr * backend.size
        self.use_cuda = self.device.type == "cuda"
        if self.use_cuda:
            torch.backends.cudnn.benchmark = True
        if a.continuous_size and backend.is_main:
            _LOG.warning("[%s] %s", self.name, resolution_note(self.spec, self.provider.candidates))

    # ------------------------------------------------------------------------- launch kinds
    @property
    def elastic(self) -> bool:
        """Whether training samples subnets of the supernet (the kernel, depth and expand phases);
        false for the teacher and for fine-tuning a static subnet (moofa.workflows.finetune)."""
        return self.phase.elastic

    def completed(self) -> bool:
        """Whether this launch's output exists already (then :meth:`run` trains nothing)."""
        return self.phase.writes_final and self.files.final.is_file()

    def finish(self) -> FinetuneInfo | None:
        """Write the launch's output after the last epoch (called on every rank): a phase's final
        weights, the next phase's input. Returns what goes into ``StepResult.info``."""
        if self.phase.writes_final and self.backend.is_main:
            atomic_save({"state_dict": self.net.state_dict()}, self.files.final)
            self.log.info(f"Wrote {self.files.final}")
        return None

    # ------------------------------------------------------------------------------ set-up
    def _teacher_file(self) -> Path:
        return _require(self.layout, teacher_source(self.layout, self.args))

    def _init_weights(self) -> None:
        """Initial weights of a fresh run: random (teacher, broadcast from rank 0), the teacher's
        best weights (first task) or the predecessor phase's final weights."""
        source = self.phase.init_source(self.layout, self.args)
        if source is None:
            self.backend.broadcast_parameters(self.net, root=0)
            return
        src = _require(self.layout, source)
        load_weights(self.supernet, src)
        self.log.info(f"Loaded init from {src}")
        stage = self.phase.resort_stage(self.args, self.constraints)
        if stage is not None:
            self.supernet.re_organize_middle_weights(stage)
            self.log.info(f"Re-sorted middle channels by importance (expand_ratio_stage={stage})")

    def _build_teacher(self) -> None:
        if not self.phase.distils or self.args.kd_ratio <= 0:
            return
        teacher = self.layout.teacher(self.args, self.provider.n_classes, load=False)
        load_weights(teacher, self._teacher_file())
        self.teacher = teacher.to(self.device)

    def setup(self) -> tuple[int, float, int | None]:
        """Weights, optimizer and resume state; returns (start epoch, best accuracy, resumed from)."""
        self.constraints: Constraints | None = self.phase.constraints(self.spec, self.cfg.tasks_phases)
        if self.constraints is not None:
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
        dbs = self.args.dynamic_batch_size if self.elastic else 1
        self.dbs = dbs
        self.optimizer = self.backend.distributed_optimizer(
            opt, self.net.named_parameters(), backward_passes_per_step=dbs,
            fp16_compression=self.args.fp16_allreduce)
        return start, best, resumed

    # ----------------------------------------------------------------------------- training
    def _autocast(self):
        enabled = self.args.amp and self.use_cuda
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_epoch(self, epoch: int) -> dict:
        self.net.train()
        loader = self.provider.train_loader(epoch)
        n_batches = len(loader)
        a = self.args
        sums = torch.zeros(4, dtype=torch.float64)  # loss*n, correct top1, correct top5, n
        independent = a.independent_distributed_sampling
        bar = tqdm(loader, desc=f"{self.name} epoch {epoch + 1}/{self.n_epochs}", leave=False,
                   disable=None if self.backend.is_main else True, dynamic_ncols=True)
        lr = self.init_lr
        for i, (images, labels) in enumerate(bar):
            preempt.check()  # a stop signal lost in a garbage-collection callback
            lr = learning_rate(epoch, i, n_batches, self.init_lr, a.n_epochs, a.warmup_epochs,
                               a.warmup_lr, a.lr_schedule_type)
            set_lr(self.optimizer, lr)
            images = to_device(images, self.device)
            labels = labels.to(self.device, non_blocking=True)
            soft = None
            if self.teacher is not None:
                self.teacher.train(not a.teacher_eval_mode)
                with torch.no_grad(), self._autocast():
                    soft = self.teacher(images).float()
            self.optimizer.zero_grad()
            for j in range(self.dbs):
                if self.elastic:
                    random.seed(subnet_seed(epoch * n_batches + i, j, self.backend.rank if independent else 0))
                    self.supernet.sample_active_subnet()
                with self._autocast():
                    out = self.net(images).float()
                loss = distillation_loss(out, labels, soft, a.kd_ratio, a.kd_type,
                                         a.label_smoothing)
                if a.average_subnet_losses:
                    loss = loss / self.dbs
                loss.backward()
                with torch.no_grad():
                    top = out.topk(min(5, out.size(1)), dim=1).indices.eq(labels.view(-1, 1))
                    sums += torch.tensor([loss.item() * len(labels), top[:, 0].sum().item(),
                                          top.any(1).sum().item(), len(labels)], dtype=torch.float64)
            self.optimizer.step()
            if self.backend.is_main and (i + 1) % a.print_frequency == 0:
                bar.set_postfix(loss=f"{sums[0].item() / max(sums[3].item(), 1):.3f}", lr=f"{lr:.2e}")
        sums = self.backend.allreduce_sum_(sums)
        n = max(sums[3].item(), 1.0)
        return {"train_loss": sums[0].item() / n, "train_top1": sums[1].item() / n,
                "train_top5": sums[2].item() / n, "learning_rate": lr}

    # ---------------------------------------------------------------------------- validation
    def validate(self) -> tuple[float, dict[str, float]]:
        """Mean validation top-1 and the per-subnet top-1 (fractions)."""
        results: dict[str, float] = {}
        for name, r, sub in self.phase.validation_items(self.spec, self.constraints):
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

    # ------------------------------------------------------------------------------- recipe
    def _init_source(self) -> Path | None:
        """The weights a fresh run of this phase starts from (None: random, the teacher)."""
        source = self.phase.init_source(self.layout, self.args)
        return None if source is None else source.path

    def recipe(self, recorded: Inputs | None = None) -> dict[str, Any]:
        """What this phase's weights are computed from (JSON-normalised): the phase, the model,
        the task args except :data:`NOT_RECIPE_ARGS`, the effective initial learning rate, the
        phase structure and, by content, the initial and the distillation teacher's weights. An
        input file that no longer exists takes its ``recorded`` value (it cannot be checked)."""
        files = {"init": self._init_source()}
        if self.phase.distils and self.args.kd_ratio > 0:
            files["kd_teacher"] = self.layout.teacher_file(self.args)
        out: dict[str, Any] = {
            "phase": self.name, "model_spec": model_identity(self.spec),
            "args": {k: v for k, v in sorted(self.args.items()) if k not in NOT_RECIPE_ARGS},
            "init_lr": self.init_lr, "tasks": list(self.cfg.tasks),
            "tasks_phases": dict(self.cfg.tasks_phases)}
        for key, path in files.items():
            if path is not None and path.is_file():
                out[key] = file_fingerprint(path)
            else:
                out[key] = recorded.get(key) if path is not None and recorded is not None else None
        return normalise(out)

    def check_recipe(self, overwrite: bool = False) -> bool:
        """Compare the recorded recipe with this launch's (rank 0, before any work): True when the
        phase is finished with the same recipe (nothing to do). Another recipe raises
        :class:`CheckpointError` (exit 2) naming what changed; ``overwrite`` removes the phase's
        files first. A fresh phase gets its recipe written."""
        f = self.files
        # --overwrite redoes the phase whatever it records; otherwise other inputs stop the launch
        policy = Policy.REDO if overwrite else Policy.REFUSE
        if policy is Policy.REDO:
            removed = [p for p in f.owned if p.is_file()]
            for p in removed:
                p.unlink()
            if removed:
                self.log.info(f"--overwrite: removed {', '.join(str(p) for p in removed)}")
        recorded = read_fingerprint(f.recipe)
        current = Inputs.of(self.recipe(recorded))
        finished = self.phase.finished(f, self.n_epochs)
        exists = finished or f.state.is_file()
        if exists and not f.recipe.is_file():
            _LOG.warning("%s records no recipe (written by an older version): cannot check that it "
                         "was trained with these settings", f.final if finished else f.state)
            return finished
        verb = "finished" if finished else "resumable"
        verdict = resolve(
            f"the {verb} phase {self.name}", (recorded or Inputs.unrecorded()) if exists else None, current,
            policy, file=f.recipe, error=CheckpointError,
            restart=f"rerun with --overwrite to train {self.name} again from its start (or restore the "
            "settings)").verdict
        if verdict is Verdict.FRESH:
            write_fingerprint(f.recipe, current, phase=self.name)
        return finished

    def run(self, overwrite: bool = False) -> StepResult:
        try:
            return self._run(overwrite)
        finally:
            self.lock.release()

    def _run(self, overwrite: bool) -> StepResult:
        finished = on_main_rank(self.backend, lambda: self.check_recipe(overwrite))
        if finished and self.phase.writes_final:  # a finished teacher still reports its best
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
            preempt.progress("epoch", epoch + 1, self.n_epochs, self.name)
            t0 = time.time()
            metrics = self.train_epoch(epoch)
            due = (epoch + 1) % self.args.validation_frequency == 0 or epoch + 1 == self.n_epochs
            is_best = False
            if self.phase.validates_every_epoch or due:
                val, per = self.validate()
                is_best = val > best or not self.files.best.is_file()
                best = max(best, val)
                metrics.update(val_acc=val, per_subnet={k: round(v, 5) for k, v in per.items()})
                entries = ", ".join(f"{k} ({100 * v:.2f})" for k, v in per.items())
                self.log.valid(f"Valid [{epoch + 1}/{self.n_epochs}] top-1={100 * val:.3f}% "
                               f"(best {100 * best:.3f}%), Train top-1 {100 * metrics['train_top1']:.3f}%, "
                               f"Train loss {metrics['train_loss']:.4f}\t{entries}")
            self.save_state(epoch, best, is_best)
            skipped = set().union(*self.backend.allgather_object(self.provider.bad_images.take()))
            metrics.update(epoch=epoch + 1, seconds=round(time.time() - t0, 2),
                           skipped_images=len(skipped))
            self.log.record(**metrics)
            self.log.info(f"epoch {epoch + 1}/{self.n_epochs} loss {metrics['train_loss']:.4f} "
                          f"train top-1 {100 * metrics['train_top1']:.2f}% "
                          + (f"val top-1 {100 * metrics['val_acc']:.2f}% " if "val_acc" in metrics else "")
                          + f"({metrics['seconds']:.1f}s)"
                          + (f", skipped {metrics['skipped_images']} corrupt image(s) (paths in the "
                             "warnings above)" if metrics["skipped_images"] else ""))
            history.append(metrics)
        info = self.finish()
        self.backend.barrier()
        self.log.close()
        return StepResult(self.name, self.n_epochs, best, resumed, history=history, info=info)


def train_step(run: Run, step: str, phase: int | None, backend: Any, overwrite: bool = False) -> StepResult:
    """Run one launch of ``train.py`` (teacher, or one phase of kernel/depth/expand);
    ``overwrite`` trains the phase again from its start (see the module docstring)."""
    return Trainer(run, step, phase, backend).run(overwrite)
