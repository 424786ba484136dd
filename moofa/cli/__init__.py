"""Command-line entry points. The top-level scripts only call :func:`run_cli` with one of these."""
from moofa.cli.common import run_cli

__all__ = ["run_cli"]
