"""Launch kinds of the trainer, as strategies: the teacher, one phase of the kernel, depth or
expand step (an elastic supernet phase), and a static network trained as its caller built it
(fine-tuning a found subnet, moofa.workflows.finetune).

Each answers the questions :class:`~moofa.training.trainer.Trainer` asks of its launch: which
network it trains, where a fresh run's weights come from, whether it distils from the teacher,
which subnets it validates, which file marks it finished and the command that launches it.
:func:`phase_for` is the one place that picks the strategy from ``--step``/``--phase``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn

from moofa.config import TaskArgs, phase_constraints, validation_subnets
from moofa.errors import ConfigError
from moofa.models.spec import ModelSpec
from moofa.models.supernet import Supernet, load_checkpoint_file
from moofa.run import PhaseFiles, Run, final_phase_file
from moofa.training.checkpoint import phase_name, predecessor

Constraints = dict[str, list]  # allowed choices of a phase: ks, e, d (moofa.config.phase_constraints)
ValidationItem = tuple[str, int, dict[str, Any] | None]  # (name, resolution px, subnet or None)


@dataclass(frozen=True)
class Source:
    """A weights file a launch reads, what to call it when it is missing and the launch that
    writes it (its command is the hint)."""

    path: Path
    what: str
    producer: Phase


class Phase:
    """The questions a launch kind answers; the defaults describe a static network that its
    caller builds and loads (fine-tuning), trained as given."""

    elastic = False          # samples a subnet of the supernet per batch (and per dynamic batch)
    distils = True           # distils from the teacher when args.kd_ratio > 0
    writes_final = True      # ends by writing files.final; its existence marks the launch finished
    validates_every_epoch = False  # else every args.validation_frequency epochs and the last one
    folder_key = "args.path"  # the config key naming the output folder (for write errors)

    def __init__(self, step: str, number: int | None = None) -> None:
        self.step, self.number = step, number

    @property
    def name(self) -> str:
        """The launch's name in logs, checkpoints and results."""
        return self.step

    def launch_args(self) -> str:
        """``--step S`` (and ``--phase P`` for a phase) of ``train.py``."""
        return f"--step {self.step}" + ("" if self.number is None else f" --phase {self.number}")

    def command(self, run: Run) -> str:
        """The command that runs this launch (the hint when its output is missing)."""
        return f"python train.py --config {run.path} {self.launch_args()}"

    def network(self, supernet: Supernet) -> nn.Module:
        """The network trained, built from the run's supernet."""
        raise NotImplementedError(f"{self.name} trains the network its caller builds")

    def init_source(self, run: Run, args: TaskArgs) -> Source | None:
        """The weights a fresh run starts from; None: the network's own, broadcast from rank 0."""
        return None

    def resort_stage(self, args: TaskArgs, constraints: Constraints | None) -> int | None:
        """The expand-ratio stage by which the loaded initial weights get their middle channels
        sorted by importance (OFA's re-sorting); None: they are not re-sorted."""
        return None

    def constraints(self, spec: ModelSpec, tasks_phases: Mapping[str, int]) -> Constraints | None:
        """The supernet's allowed choices in this launch (None: nothing is sampled)."""
        return None

    def validation_items(self, spec: ModelSpec, constraints: Constraints | None) -> list[ValidationItem]:
        """What is validated after an epoch: (name, resolution, subnet to activate or None)."""
        raise NotImplementedError(f"{self.name} validates the network its caller builds")

    def finished(self, files: PhaseFiles, n_epochs: int) -> bool:
        """Whether the launch's files say it is complete."""
        return files.final.is_file()


class TeacherPhase(Phase):
    """The teacher: the largest subnet as a static network, from random weights, validated at
    every model resolution after every epoch; its best weights are its output."""

    distils = False
    writes_final = False
    validates_every_epoch = True
    folder_key = "args.teacher_path"

    def __init__(self) -> None:
        super().__init__("teacher")

    @property
    def name(self) -> str:
        return phase_name(self.step, None)

    def network(self, supernet: Supernet) -> nn.Module:
        return supernet.build_teacher()

    def validation_items(self, spec: ModelSpec, constraints: Constraints | None) -> list[ValidationItem]:
        return [(f"R{r}", r, None) for r in spec.image_sizes]

    def finished(self, files: PhaseFiles, n_epochs: int) -> bool:
        """The teacher writes no final file: finished when its resume state holds the last epoch."""
        if not files.state.is_file():
            return False
        return int(load_checkpoint_file(files.state).get("epoch", -1)) + 1 >= n_epochs


class ElasticPhase(Phase):
    """Phase ``number`` of the kernel, depth or expand step: the supernet itself, sampled per
    batch within the phase's constraints, started from the predecessor phase's final weights (the
    teacher's for the first task), validated on the phase's uniform subnets."""

    elastic = True
    number: int  # every step but the teacher has phases

    def __init__(self, step: str, number: int) -> None:
        super().__init__(step, number)

    @property
    def name(self) -> str:
        return phase_name(self.step, self.number)

    def network(self, supernet: Supernet) -> nn.Module:
        return supernet

    def init_source(self, run: Run, args: TaskArgs) -> Source:
        prev = predecessor(self.step, self.number, run.cfg.tasks, run.cfg.tasks_phases)
        if prev is None:
            return teacher_source(run, args)
        return Source(final_phase_file(args.path, *prev), f"predecessor checkpoint of {self.name}",
                      ElasticPhase(*prev))

    def resort_stage(self, args: TaskArgs, constraints: Constraints | None) -> int | None:
        if self.step != "expand" or not args.resort_channels or constraints is None:
            return None
        return len(constraints["e"]) - 2

    def constraints(self, spec: ModelSpec, tasks_phases: Mapping[str, int]) -> Constraints:
        return phase_constraints(spec, self.step, self.number, tasks_phases)

    def validation_items(self, spec: ModelSpec, constraints: Constraints | None) -> list[ValidationItem]:
        if constraints is None:
            raise RuntimeError(f"{self.name}: validation before the phase's constraints were set")
        subs = validation_subnets(spec, self.step, constraints["ks"], constraints["e"], constraints["d"])
        return [(s["name"], s["image_size"], s) for s in subs]


class StaticPhase(Phase):
    """A static network its caller builds, loads, validates and saves (fine-tuning a found
    subnet): trained as given, distilled from the teacher, validated when due, finished when the
    caller's final file exists."""


def teacher_source(run: Run, args: TaskArgs) -> Source:
    """The teacher's best weights, which the first task starts from and every phase distils from."""
    return Source(run.teacher_file(args), "teacher checkpoint", TeacherPhase())


def phase_for(step: str, number: int | None) -> Phase:
    """The strategy of ``train.py --step step [--phase number]`` (the teacher ignores a phase)."""
    if step == "teacher":
        return TeacherPhase()
    if number is None:
        raise ConfigError(f"--phase is required for step {step}", key="--phase")
    return ElasticPhase(step, number)


__all__ = ["Phase", "TeacherPhase", "ElasticPhase", "StaticPhase", "Source", "teacher_source", "phase_for",
           "Constraints", "ValidationItem"]
