"""The ``deploy`` section: int8 deployment with ExecuTorch (XNNPACK, Arm Ethos-U via Vela)."""
from __future__ import annotations

from typing import Any

from moofa.config.fields import _POS_INT, Field, _Bad, _bool, _list, _str
from moofa.config.section import Section, schema_section


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
                     "ethos-u85-256, any Vela knows): subnet_<target>.pte with Vela's estimates; "
                     "needs the ethos-u extra"),
    "system_config": Field(None, _str(nullable=True),
                           "Ethos-U: Vela system configuration (null = ExecuTorch's default per target)"),
    "memory_mode": Field(None, _str(nullable=True),
                         "Ethos-U: Vela memory mode (null = ExecuTorch's default per target)"),
}


@schema_section(DEPLOY_SCHEMA, "deploy")
class DeploySettings(Section):
    """``deploy``: int8 deployment with ExecuTorch."""

    calibration_images: int  # training images
    per_channel: bool
    targets: list[str]
    system_config: str | None
    memory_mode: str | None
