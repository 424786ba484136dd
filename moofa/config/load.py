"""Reading a run config: YAML (duplicate keys refused) into a validated :class:`RunConfig`
(:func:`load_config`), resolution against model_configs.yaml (:func:`resolve_model`), and the
resolved-config JSON of a run (:func:`save_resolved_config`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import yaml

from moofa.config.dataset import DatasetSettings, PredictorRecipe
from moofa.config.deploy import DeploySettings
from moofa.config.fields import _POS_INT, Field
from moofa.config.memory import MemorySettings
from moofa.config.phases import DEFAULT_TASKS, DEFAULT_TASKS_PHASES, STEPS, _phase_count_problem
from moofa.config.run_args import (
    _PHASE_NAME,
    ARGS_SCHEMA,
    FINETUNE,
    FINETUNE_DEFAULTS,
    PHASE_SCHEMA,
    REFERENCE_PHASES,
    Args,
    PhaseArgs,
)
from moofa.config.run_config import SECTIONS, RunConfig
from moofa.config.search import SearchSettings
from moofa.config.section import _checked, _mapping, _plain, _rekey, _unknown
from moofa.config.subnet import SubnetSettings
from moofa.config.wandb import WandbSettings
from moofa.errors import ConfigError
from moofa.io import read_utf8, write_json
from moofa.models.spec import ChoiceError, SubnetConfig, load_model_configs

RESOLVED_CONFIG_NAME = "resolved_config.json"
_LOG = logging.getLogger("moofa.config")
_WARNED: set = set()


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


def search_constraints(cfg: RunConfig) -> list[int]:
    """The peak-memory constraints of the search sweep (elements): :meth:`SearchSettings.sweep`."""
    return cfg.search_config.sweep()


def save_resolved_config(cfg: Mapping, run_dir: str | Path) -> Path:
    """Write the resolved config (sections) as JSON to ``<run_dir>/resolved_config.json`` (atomic)."""
    path = Path(run_dir) / RESOLVED_CONFIG_NAME
    write_json(path, _plain(cfg))
    return path
