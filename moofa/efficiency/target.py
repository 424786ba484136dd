"""Peak memory in a target's own bytes.

* :func:`int8_activation_bytes`: the analytic int8 activations-only peak
  (``MemoryOptions(count_weights=False, bytes_per_element=1)``).
* :func:`ethosu_activation_bytes`: the activations as an Arm Ethos-U program holds them
  (docs/ethosu.md#peak-memory-in-the-targets-bytes): int8, each tensor's channels stored in
  multiples of 16 (Vela's NHCWB16 layout), and a residual block's int8 shortcut live through
  every layer of the block. moofa lowers residual adds so that the shortcut stays int8
  (:data:`moofa.deploy.ethosu.LOWERING`); with ExecuTorch's default lowering a chained shortcut
  may instead be held as int32, 4 bytes an element, which ``shortcut_bytes=4`` models (the
  ``int32_shortcuts`` SRAM model of tables built before). moofa gives Vela this peak as its
  arena in ``Shared_Sram`` mode (docs/ethosu.md#the-sram-arena); left to its default arena, Vela
  adds weight buffers to it, a few KB up to some 300 KB (benchmarks/README.md).

:func:`operator_counts_batch` counts what the Ethos-U latency tables weigh beside MACs and bytes:
depthwise MACs, squeeze-excite elements and shortcut elements (docs/ethosu.md#latency-tables).

The latency tables (:mod:`moofa.latency`) predict Vela's SRAM on one of these peaks, with an
overhead that covers most of their compiled samples. On U65 in ``Dedicated_Sram`` mode the SRAM
is a cache of fixed size in front of DRAM, not the activations' home, and is reported as that
bound.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from moofa.efficiency.layout import (
    ChoiceTable,
    build_table,
    config_arrays,
    geometry,
    out_side,
    reduce_batch,
    resolve,
)
from moofa.efficiency.memory import (
    LayerMemory,
    MemoryOptions,
    _block_layers,
    _head_layers,
    _stem_layers,
    peak_memory,
    peak_memory_batch,
)
from moofa.models.spec import ModelSpec, get_model_spec, mid_channels

# Activations only, one byte per int8 element: the analytic part of a target's SRAM.
INT8_ACTIVATIONS = MemoryOptions(count_weights=False, bytes_per_element=1)


def int8_activation_bytes(model: Any, config: Any) -> int:
    """Analytic int8 activations-only peak of a subnet (bytes)."""
    spec, cfg = resolve(model, config)
    return int(peak_memory(spec, cfg, INT8_ACTIVATIONS))


def int8_activation_bytes_batch(model: Any, configs: Sequence[Any]) -> np.ndarray:
    """Vectorised :func:`int8_activation_bytes` (bytes, int64 (N,))."""
    return np.asarray(peak_memory_batch(model, list(configs), options=INT8_ACTIVATIONS), dtype=np.int64)


# Vela stores feature maps in NHCWB16: channels in bricks of 16.
NHCWB16 = 16


def _held_shortcut_peak(layers: Sequence[LayerMemory], shortcut_bytes: int) -> int:
    """Peak (bytes) of one block's int8 entries with the block's shortcut held at
    ``shortcut_bytes`` per element through all of them (the depthwise entry's ``residual`` is the
    shortcut's int8 size; 0 without an identity shortcut)."""
    shortcut = max(lm.residual for lm in layers)
    return max(lm.inp + lm.out + shortcut_bytes * shortcut for lm in layers)


@lru_cache(maxsize=256)
def ethosu_table(spec: ModelSpec, image_size: int, shortcut_bytes: int = 1,
                 channel_multiple: int = NHCWB16) -> ChoiceTable:
    """Per-block Ethos-U activations peak (bytes) for every (k, e) and that of the fixed layers
    (first conv, block S, final expand), at one resolution: shortcuts held at ``shortcut_bytes``
    per element, channels stored in multiples of ``channel_multiple``."""
    geo, m = geometry(spec, image_size), channel_multiple
    stem = _stem_layers(spec, geo, INT8_ACTIVATIONS, m)
    fixed = max(_held_shortcut_peak(stem[:1], shortcut_bytes), _held_shortcut_peak(stem[1:], shortcut_bytes),
                *(_held_shortcut_peak([lm], shortcut_bytes) for lm in _head_layers(spec, geo, INT8_ACTIVATIONS, m)))
    return build_table(spec, fixed, lambda i, k, e: _held_shortcut_peak(
        _block_layers(spec, geo, i, k, e, INT8_ACTIVATIONS, m), shortcut_bytes))


def ethosu_activation_bytes_batch(model: Any, configs: Sequence[Any], shortcut_bytes: int = 1,
                                  channel_multiple: int = NHCWB16) -> np.ndarray:
    """The Ethos-U activations peak of each subnet (bytes, int64 (N,); see the module docstring)."""
    spec = get_model_spec(model)
    arrays = config_arrays(spec, list(configs))
    return reduce_batch(spec, arrays, lambda r: ethosu_table(spec, int(r), shortcut_bytes, channel_multiple), "max")


def int32_shortcut_bytes_batch(model: Any, configs: Sequence[Any]) -> np.ndarray:
    """The int8 peak with every shortcut held as int32 and channels as they are (bytes, int64
    (N,)): the SRAM model of tables built on ExecuTorch's default lowering."""
    return ethosu_activation_bytes_batch(model, configs, shortcut_bytes=4, channel_multiple=1)


def ethosu_activation_bytes(model: Any, config: Any) -> int:
    """:func:`ethosu_activation_bytes_batch` of one subnet (bytes)."""
    spec, cfg = resolve(model, config)
    return int(ethosu_activation_bytes_batch(spec, [cfg])[0])


@lru_cache(maxsize=256)
def traffic_table(spec: ModelSpec, image_size: int, above: int = 0) -> ChoiceTable:
    """Bytes of int8 activations each layer reads and writes, counting only the layers whose input
    and output together exceed ``above`` bytes, summed per block and (k, e), and over the fixed
    layers, at one resolution. With ``above`` = 0, what an NPU that keeps activations in DRAM
    moves; with ``above`` = an SRAM cache's size, the layers that cannot work in the cache."""
    geo = geometry(spec, image_size)

    def moved(layers: Sequence[LayerMemory]) -> int:
        return sum(lm.inp + lm.out for lm in layers if lm.inp + lm.out > above)
    fixed_layers = _stem_layers(spec, geo, INT8_ACTIVATIONS) + _head_layers(spec, geo, INT8_ACTIVATIONS)
    return build_table(spec, moved(fixed_layers), lambda i, k, e: moved(
        _block_layers(spec, geo, i, k, e, INT8_ACTIVATIONS)))


def activation_traffic_batch(model: Any, configs: Sequence[Any], above: int = 0) -> np.ndarray:
    """Bytes of int8 activations read and written by each subnet's layers (int64 (N,)), counting
    only the layers whose input and output together exceed ``above`` bytes (:func:`traffic_table`)."""
    spec = get_model_spec(model)
    arrays = config_arrays(spec, list(configs))
    return reduce_batch(spec, arrays, lambda r: traffic_table(spec, int(r), int(above)), "sum")


# What a latency table weighs beside all MACs and bytes (docs/ethosu.md#latency-tables), per
# MBConv block: the depthwise conv's MACs (an NPU runs depthwise convs at a fraction of its
# pointwise MAC rate), the elements the squeeze-excite gate pools and multiplies, and the elements
# the identity shortcut adds (with the rescales TOSA puts around the ADD).
OPERATOR_COUNTS = ("dw_macs", "se_elements", "shortcut_elements")


def _mbconv_counts(mid: int, cout: int, k: int, ho: int, se: bool, shortcut: bool) -> tuple[int, int, int]:
    """:data:`OPERATOR_COUNTS` of one MBConv block (MACs, elements, elements)."""
    return mid * k * k * ho * ho, mid * ho * ho if se else 0, cout * ho * ho if shortcut else 0


@lru_cache(maxsize=256)
def operator_count_table(spec: ModelSpec, image_size: int, name: str) -> ChoiceTable:
    """Per-block (k, e) values of one of :data:`OPERATOR_COUNTS` and that of block S, at one
    resolution."""
    at = OPERATOR_COUNTS.index(name)
    geo, t = geometry(spec, image_size), spec.table
    c0, c1 = t.first_conv, t.stem.width
    hs = out_side(geo.h1, 3, t.stem.stride)
    fixed = _mbconv_counts(c0, c1, 3, hs, t.stem.se, t.stem.stride == 1 and c0 == c1)[at]

    def block(i: int, k: int, e: float) -> int:
        g = geo.blocks[i]
        return _mbconv_counts(mid_channels(g.cin, e), g.cout, k, out_side(g.h_in, k, g.stride), g.se,
                              g.shortcut)[at]

    return build_table(spec, fixed, block)


def operator_counts_batch(model: Any, configs: Sequence[Any],
                          names: Sequence[str] = OPERATOR_COUNTS) -> dict[str, np.ndarray]:
    """Each of ``names`` (of :data:`OPERATOR_COUNTS`) of each subnet (MACs or elements, int64 (N,))."""
    spec = get_model_spec(model)
    arrays = config_arrays(spec, list(configs))
    return {name: reduce_batch(spec, arrays, lambda r, n=name: operator_count_table(spec, int(r), n), "sum")
            for name in names}
