"""Analytic MACs (docs/design.md#flops, reported as MMACs = MACs / 1e6, the reference's "MFLOPs") and
parameter counts (docs/design.md#flops) of a subnet, without building it.

MACs count every conv and linear: first_conv, block S, IB / DW / SE (reduce + expand) / PL of
every active block, final_expand, feature_mix and classifier. Not counted: BN, activations, the
SE multiply, residual adds, pooling and biases. Parameters are those of the extracted static
subnet: conv and linear weights, BN weight and bias (running statistics are buffers, not
parameters), SE conv biases and the classifier bias.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping

import numpy as np

from moofa.efficiency.layout import (
    ChoiceTable,
    build_table,
    config_arrays,
    geometry,
    out_side,
    reduce_batch,
    reduce_single,
    resolve,
)
from moofa.models.spec import (
    ModelSpec,
    SubnetConfig,
    get_model_spec,
    mid_channels,
    se_channels,
)


def _block_macs(cin: int, cout: int, mid: int, k: int, has_ib: bool, se: bool, h: int, ho: int) -> int:
    """MACs of one MBConv block (docs/design.md#flops): IB on the input side, DW/PL on the output side."""
    macs = cin * mid * h * h if has_ib else 0
    macs += mid * k * k * ho * ho
    if se:
        macs += 2 * mid * se_channels(mid)
    return macs + mid * cout * ho * ho


def _block_params(cin: int, cout: int, mid: int, k: int, has_ib: bool, se: bool) -> int:
    """Parameters of one static MBConv block: convs (no bias) + BN (weight, bias) + SE convs
    with bias."""
    p = cin * mid + 2 * mid if has_ib else 0
    p += mid * k * k + 2 * mid
    if se:
        s = se_channels(mid)
        p += (mid * s + s) + (s * mid + mid)
    return p + mid * cout + 2 * cout


@lru_cache(maxsize=1024)
def macs_table(spec: ModelSpec, image_size: int, n_classes: int = 1000) -> ChoiceTable:
    """MACs per block and (k, e), and the MACs of the fixed layers, at one resolution."""
    t, geo = spec.table, geometry(spec, image_size)
    c0, c1, h1 = t.first_conv, t.stem.width, geo.h1
    hs = out_side(h1, 3, t.stem.stride)
    f, mix, hf = t.final_expand, t.feature_mix, geo.h_final
    fixed = (3 * c0 * 9 * h1 * h1
             + _block_macs(c0, c1, c0, 3, False, t.stem.se, h1, hs)
             + t.stages[-1].width * f * hf * hf + f * mix + mix * n_classes)

    def block(i: int, k: int, e: float) -> int:
        g = geo.blocks[i]
        return _block_macs(g.cin, g.cout, mid_channels(g.cin, e), k, e != 1, g.se, g.h_in,
                           out_side(g.h_in, k, g.stride))

    return build_table(spec, fixed, block)


@lru_cache(maxsize=256)
def params_table(spec: ModelSpec, n_classes: int = 1000) -> ChoiceTable:
    """Parameters per block and (k, e), and those of the fixed layers (resolution-free)."""
    t = spec.table
    c0, c1, f, mix = t.first_conv, t.stem.width, t.final_expand, t.feature_mix
    fixed = (27 * c0 + 2 * c0 + _block_params(c0, c1, c0, 3, False, t.stem.se)
             + t.stages[-1].width * f + 2 * f + f * mix + mix * n_classes + n_classes)

    def block(i: int, k: int, e: float) -> int:
        cin, cout, _ = spec.block_io(i)
        return _block_params(cin, cout, mid_channels(cin, e), k, e != 1,
                             t.stages[i // spec.blocks_per_stage].se)

    return build_table(spec, fixed, block)


def macs(model: "str | ModelSpec", config: "Mapping[str, Any] | SubnetConfig", n_classes: int = 1000) -> int:
    """Multiply-accumulates (MACs, an int) of a subnet at its image_size (docs/design.md#flops)."""
    spec, cfg = resolve(model, config)
    return reduce_single(spec, cfg, macs_table(spec, cfg.image_size, n_classes), "sum")


def flops(model: "str | ModelSpec", config: "Mapping[str, Any] | SubnetConfig", n_classes: int = 1000) -> float:
    """MMACs (MACs / 1e6; the reference's "MFLOPs") of a subnet at its image_size (docs/design.md#flops)."""
    return macs(model, config, n_classes) / 1e6


def flops_batch(model: "str | ModelSpec", configs: Iterable[Any] | None = None, *, ks: Any = None,
                e: Any = None, d: Any = None, image_size: Any = None, n_classes: int = 1000) -> np.ndarray:
    """Vectorised :func:`flops` (MMACs, float64 (N,)); inputs as in peak_memory_batch."""
    spec = get_model_spec(model)
    arrays = config_arrays(spec, configs, ks=ks, e=e, d=d, image_size=image_size)
    return reduce_batch(spec, arrays, lambda r: macs_table(spec, r, n_classes), "sum") / 1e6


def count_params(model: "str | ModelSpec", config: "Mapping[str, Any] | SubnetConfig", n_classes: int = 1000) -> int:
    """Parameter count (elements) of the extracted static subnet (docs/design.md#flops), without building it."""
    spec, cfg = resolve(model, config)
    return reduce_single(spec, cfg, params_table(spec, n_classes), "sum")


def params_batch(model: "str | ModelSpec", configs: Iterable[Any] | None = None, *, ks: Any = None,
                 e: Any = None, d: Any = None, image_size: Any = None, n_classes: int = 1000) -> np.ndarray:
    """Vectorised :func:`count_params` (parameters, int64 (N,)); inputs as in peak_memory_batch."""
    spec = get_model_spec(model)
    arrays = config_arrays(spec, configs, ks=ks, e=e, d=d, image_size=image_size)
    return reduce_batch(spec, arrays, lambda r: params_table(spec, n_classes), "sum")
