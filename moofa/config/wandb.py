"""The ``wandb`` section: Weights & Biases logging."""
from __future__ import annotations

from moofa.config.fields import Field, _bool, _str
from moofa.config.section import Section, schema_section

WANDB_SCHEMA: dict[str, Field] = {
    "use_wandb": Field(True, _bool(), "log to Weights & Biases on rank 0"),
    "project_name": Field("memory-optimized-once-for-all", _str(), "wandb project"),
}


@schema_section(WANDB_SCHEMA, "wandb")
class WandbSettings(Section):
    """``wandb``: Weights & Biases logging."""

    use_wandb: bool
    project_name: str
