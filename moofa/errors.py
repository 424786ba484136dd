"""Errors for bad user input. The command-line entry points turn them into one ``error:`` line on
stderr and exit status 2 (README)."""
from __future__ import annotations

from typing import Any


class MoofaInputError(ValueError):
    """Bad input: arguments, config, data, checkpoint or an infeasible constraint.

    The message names the file, the key and the value; it fits on one line.
    """

    def __init__(self, message: str, *, file: Any = None, key: str | None = None,
                 value: Any = None) -> None:
        self.reason = message  # without file, key and value
        parts = []
        if file is not None:
            parts.append(str(file))
        if key is not None:
            parts.append(str(key))
        prefix = ": ".join(parts)
        if value is not None:
            message = f"{message} (got {value!r})"
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file, self.key, self.value = file, key, value


class ConfigError(MoofaInputError):
    """A config file that does not load or does not validate."""


class CheckpointError(MoofaInputError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class InfeasibleConstraintError(MoofaInputError):
    """A memory constraint that no subnet of the model can meet."""


def on_main_rank(backend: Any, fn: Any) -> Any:
    """Run ``fn()`` on rank 0 only and broadcast its result; bad input found there
    (:class:`MoofaInputError`) is raised on every rank, so no rank waits forever for rank 0.
    ``backend`` needs ``is_main`` and ``broadcast_object``; None means one process."""
    if backend is None:
        return fn()
    result, error = None, None
    if backend.is_main:
        try:
            result = fn()
        except MoofaInputError as err:
            error = str(err)
    result, error = backend.broadcast_object((result, error), 0)
    if error is not None:
        raise MoofaInputError(error)
    return result
