"""Peak memory in a target's own bytes: the SRAM an Arm Ethos-U program needs, predicted from the
analytic model.

Vela keeps every int8 activation of the network in SRAM (weights stay in Flash in the
``Shared_Sram`` memory mode of U55 and are cached in the ``Dedicated_Sram`` mode of U65), so its
SRAM figure follows the activations-only int8 peak (``MemoryOptions(count_weights=False,
bytes_per_element=1)``) plus a small fixed overhead per target: buffers Vela adds (a depthwise
conv's input is not overwritten in place, staging of the input) and alignment. The overheads
below were measured by ``benchmarks/bench_ethosu_sram.py`` (full-size random subnets, Vela
5.1.0, ExecuTorch's default system configuration per target; see benchmarks/README.md): each is
the largest difference seen, so the prediction errs on the safe side.
"""
from __future__ import annotations

from typing import Any

from moofa.efficiency.layout import resolve
from moofa.efficiency.memory import MemoryOptions, peak_memory

# Activations only, one byte per int8 element: the analytic part of a target's SRAM.
INT8_ACTIVATIONS = MemoryOptions(count_weights=False, bytes_per_element=1)

# Measured fixed SRAM overhead per (target, memory mode), bytes (benchmarks/bench_ethosu_sram.py).
SRAM_OVERHEAD_BYTES: dict[tuple[str, str], int] = {}
DEFAULT_MEMORY_MODE = {"ethos-u55": "Shared_Sram", "ethos-u65": "Dedicated_Sram_384KB", "ethos-u85": "Sram_Only"}


def default_memory_mode(target: str) -> str:
    """ExecuTorch's default Vela memory mode of ``target`` (e.g. Shared_Sram for ethos-u55-128)."""
    for prefix, mode in DEFAULT_MEMORY_MODE.items():
        if str(target).lower().startswith(prefix):
            return mode
    raise ValueError(f"not an Ethos-U target: {target!r}")


def sram_overhead_bytes(target: str, memory_mode: str | None = None) -> int | None:
    """The measured fixed overhead (bytes) of ``target`` in ``memory_mode`` (None = the
    default), or None when it was not measured."""
    mode = memory_mode or default_memory_mode(target)
    return SRAM_OVERHEAD_BYTES.get((str(target).lower(), mode))


def predicted_sram_bytes(model: Any, config: Any, target: str, memory_mode: str | None = None,
                         overhead: int | None = None) -> int | None:
    """Predicted SRAM of the Ethos-U program (bytes): the analytic int8 activations-only peak plus
    the target's fixed overhead (``overhead`` when given, else the measured one; None when the
    target was not measured)."""
    spec, cfg = resolve(model, config)
    extra = sram_overhead_bytes(target, memory_mode) if overhead is None else overhead
    if extra is None:
        return None
    return int(peak_memory(spec, cfg, INT8_ACTIVATIONS)) + int(extra)
