"""A loaded run config (:class:`RunConfig`): the typed sections under their YAML names."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from moofa.config.dataset import DatasetSettings, PredictorRecipe
from moofa.config.deploy import DeploySettings
from moofa.config.memory import MemorySettings
from moofa.config.run_args import Args, PhaseArgs
from moofa.config.search import SearchSettings
from moofa.config.section import _plain
from moofa.config.subnet import SubnetSettings
from moofa.config.wandb import WandbSettings
from moofa.errors import ConfigError
from moofa.models.spec import ModelSpec

SECTIONS: tuple[str, ...] = ("args", "tasks", "tasks_phases", "args_per_task", "subnet_config",
                             "search_config", "dataset_config", "predictor_config", "wandb",
                             "memory", "deploy")


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
