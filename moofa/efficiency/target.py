"""Peak memory in a target's own bytes: the analytic int8 activations-only peak
(``MemoryOptions(count_weights=False, bytes_per_element=1)``), the part of an Arm Ethos-U
program's SRAM that the analytic model covers.

Vela keeps the int8 activations in SRAM (``Shared_Sram`` on U55, ``Sram_Only`` on U85) and adds
buffers of its own: a depthwise conv's input is not overwritten in place, and in blocks with
h-swish and squeeze-excite it keeps further copies of the expanded tensor live. The latency tables
(:mod:`moofa.latency`) therefore map this peak to Vela's SRAM with a fit per model and target
(an upper envelope over compiled samples); benchmarks/bench_ethosu_sram.py measures how close
both are (benchmarks/README.md). On U65 in ``Dedicated_Sram`` mode the SRAM is a cache of fixed
size in front of DRAM, not the activations' home, and is reported as that bound.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from moofa.efficiency.layout import ChoiceTable, build_table, config_arrays, geometry, reduce_batch, resolve
from moofa.efficiency.memory import (
    MemoryOptions,
    _block_layers,
    _head_layers,
    _stem_layers,
    peak_memory,
    peak_memory_batch,
)
from moofa.models.spec import ModelSpec, get_model_spec

# Activations only, one byte per int8 element: the analytic part of a target's SRAM.
INT8_ACTIVATIONS = MemoryOptions(count_weights=False, bytes_per_element=1)


def int8_activation_bytes(model: Any, config: Any) -> int:
    """Analytic int8 activations-only peak of a subnet (bytes)."""
    spec, cfg = resolve(model, config)
    return int(peak_memory(spec, cfg, INT8_ACTIVATIONS))


def int8_activation_bytes_batch(model: Any, configs: Sequence[Any]) -> np.ndarray:
    """Vectorised :func:`int8_activation_bytes` (bytes, int64 (N,))."""
    return np.asarray(peak_memory_batch(model, list(configs), options=INT8_ACTIVATIONS), dtype=np.int64)


@lru_cache(maxsize=256)
def traffic_table(spec: ModelSpec, image_size: int) -> ChoiceTable:
    """Bytes of int8 activations each layer reads and writes, summed per block and (k, e), and
    over the fixed layers, at one resolution (what an NPU that keeps activations in DRAM moves)."""
    geo = geometry(spec, image_size)
    fixed_layers = _stem_layers(spec, geo, INT8_ACTIVATIONS) + _head_layers(spec, geo, INT8_ACTIVATIONS)
    fixed = sum(lm.inp + lm.out for lm in fixed_layers)
    return build_table(spec, fixed, lambda i, k, e: sum(
        lm.inp + lm.out for lm in _block_layers(spec, geo, i, k, e, INT8_ACTIVATIONS)))


def activation_traffic_batch(model: Any, configs: Sequence[Any]) -> np.ndarray:
    """Bytes of int8 activations read and written by each subnet's layers (int64 (N,))."""
    spec = get_model_spec(model)
    arrays = config_arrays(spec, list(configs))
    return reduce_batch(spec, arrays, lambda r: traffic_table(spec, int(r)), "sum")
