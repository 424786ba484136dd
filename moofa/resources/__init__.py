"""Data files the package reads at run time, shipped inside it (package data, found with
:mod:`importlib.resources`): ``model_configs.yaml`` (the default ``--model_config_path``) and the
demo's ``demo_MOOFA.yaml``, ``demo_OFA.yaml`` and ``demo_model_configs.yaml``.

These files are the source of truth. The repository's top-level ``model_configs.yaml`` and
``configs/demo_*.yaml`` are their documented copies, byte-identical (``tests/test_package.py``
fails when one drifts from the other): edit both, or copy the packaged file over the other.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_path(name: str) -> Path:
    """The packaged file ``name`` as a filesystem path (the package is installed as plain files,
    as pip installs every wheel)."""
    return Path(str(files(__name__).joinpath(name)))
