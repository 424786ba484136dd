"""Progressive shrinking (docs/design.md#protocols): the steps and their phases, the args each
phase runs with, the choices a phase allows and the subnets validated after each epoch."""
from __future__ import annotations

from typing import Any, Mapping

from moofa.config.run_args import FINETUNE, FINETUNE_DEFAULTS, Args, PhaseArgs, TaskArgs
from moofa.config.run_config import RunConfig
from moofa.errors import ConfigError
from moofa.models.spec import ModelSpec, norm_expand

STEPS: tuple[str, ...] = ("kernel", "depth", "expand")  # progressive shrinking, in its fixed order


DEFAULT_TASKS = list(STEPS)
DEFAULT_TASKS_PHASES = {"kernel": 1, "depth": 2, "expand": 2}


def _phase_count_problem(spec: ModelSpec, step: str, n: int) -> str | None:
    """Why ``n`` phases of ``step`` do not fit ``spec`` (docs/design.md#configuration: fewer phases
    than list values)."""
    values = {"depth": spec.depth_list, "expand": spec.expand_list}.get(step)
    if values is not None and n > len(values) - 1:
        return (f"{step} needs fewer phases than {spec.name}'s {step} choices {list(values)} "
                f"(at most {len(values) - 1})")
    return None


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
