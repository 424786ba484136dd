"""Analytic peak memory of a subnet (docs/design.md#memory-model), without building any module.

The reference measures, for every conv of the extracted static subnet, ``numel(input) +
numel(output) + numel(weights)`` (plus the block input at the depthwise conv of a block with an
identity shortcut), and takes the max over first_conv, every block and final_expand_layer. The
closed form below gives the same numbers from the channel widths and feature-map sides alone.

Units: **elements** by default (the reference's unit). With ``bytes_per_element`` = b every value
is multiplied by b (bytes of that element size; b = 1 means int8 bytes = elements).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np

from moofa.config import MEMORY_SCHEMA, RunConfig
from moofa.efficiency.layout import (
    ChoiceTable,
    Geometry,
    build_table,
    config_arrays,
    geometry,
    out_side,
    reduce_batch,
    reduce_single,
    resolve,
)
from moofa.models.spec import ModelSpec, SubnetConfig, get_model_spec, mid_channels


@dataclass(frozen=True)
class MemoryOptions:
    """Choices of the memory model. The defaults reproduce the reference exactly (docs/design.md#memory-model).

    bytes_per_element: element size in bytes (1 int8, 2 fp16, 4 fp32). Every value is multiplied
        by it; the default 1 makes the result the reference's element count.
    count_head: also count feature_mix_layer (F + L + F*L after pooling) and the classifier
        (L + n_classes + L*n_classes + n_classes bias). The reference leaves both out.
    count_weights: count the conv weights of each layer (the reference does). False counts
        activations only (input + output + residual), like MCUNet.
    inplace_depthwise: the depthwise conv writes its output into its input buffer, so its entry
        is max(input, output) + weights + residual instead of input + output + weights + residual.
    n_classes: classifier width, used only with ``count_head``.
    """

    # the defaults are the ``memory:`` section's (one table, in moofa.config)
    bytes_per_element: int = MEMORY_SCHEMA["bytes_per_element"].default
    count_head: bool = MEMORY_SCHEMA["count_head"].default
    count_weights: bool = MEMORY_SCHEMA["count_weights"].default
    inplace_depthwise: bool = MEMORY_SCHEMA["inplace_depthwise"].default
    n_classes: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.bytes_per_element, int) or self.bytes_per_element < 1:
            raise ValueError(f"bytes_per_element: expected a positive int (1 int8, 2 fp16, 4 fp32), "
                             f"got {self.bytes_per_element!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 1:
            raise ValueError(f"n_classes: expected a positive int, got {self.n_classes!r}")

    @property
    def is_reference(self) -> bool:
        """Whether this is the reference's count (elements of input + output + weights)."""
        return (self.bytes_per_element, self.count_head, self.count_weights,
                self.inplace_depthwise) == (1, False, True, False)

    @property
    def unit(self) -> str:
        """``"elements"`` for the reference's count, ``"bytes"`` for any device model (a budget
        and every peak under these options are then bytes of that element size)."""
        return "elements" if self.is_reference else "bytes"

    def describe(self) -> str:
        """One line for logs and plots, e.g. ``bytes (1 B/element, activations only)``."""
        if self.is_reference:
            return "elements (input + output + weights of the largest layer)"
        parts = [f"{self.bytes_per_element} B/element",
                 "weights counted" if self.count_weights else "activations only"]
        if self.count_head:
            parts.append("head counted")
        if self.inplace_depthwise:
            parts.append("in-place depthwise")
        return f"bytes ({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """The ``memory:`` config fields plus ``unit`` (what info.json records)."""
        return {"bytes_per_element": self.bytes_per_element, "count_weights": self.count_weights,
                "count_head": self.count_head, "inplace_depthwise": self.inplace_depthwise,
                "n_classes": self.n_classes, "unit": self.unit}

    @classmethod
    def from_config(cls, cfg: RunConfig, n_classes: int = 1000) -> "MemoryOptions":
        """The options of a loaded run config's ``memory:`` section (validated, defaults filled);
        ``n_classes`` is the classifier width (counted only with ``count_head``)."""
        m = cfg.memory
        return cls(bytes_per_element=m.bytes_per_element, count_head=m.count_head,
                   count_weights=m.count_weights, inplace_depthwise=m.inplace_depthwise,
                   n_classes=n_classes)


DEFAULT_OPTIONS = MemoryOptions()


class LayerMemory(NamedTuple):
    """One histogram entry. All fields are in elements x bytes_per_element."""

    name: str
    inp: int
    out: int
    weights: int
    residual: int
    total: int


def _entry(name: str, inp: int, out: int, weights: int, residual: int, opts: MemoryOptions,
           depthwise: bool = False) -> LayerMemory:
    """A conv/linear entry under ``opts`` (see MemoryOptions for each rule)."""
    w = weights if opts.count_weights else 0
    act = max(inp, out) if depthwise and opts.inplace_depthwise else inp + out
    b = opts.bytes_per_element
    return LayerMemory(name, inp * b, out * b, w * b, residual * b, (act + w + residual) * b)


def _mbconv(prefix: str, cin: int, cout: int, mid: int, k: int, has_ib: bool, h: int, ho: int,
            shortcut: bool, opts: MemoryOptions) -> list[LayerMemory]:
    """Entries of one MBConv block: [IB (if any), DW + residual, PL] (docs/design.md#memory-model)."""
    layers = []
    if has_ib:
        layers.append(_entry(f"{prefix}.ib", cin * h * h, mid * h * h, cin * mid, 0, opts))
    layers.append(_entry(f"{prefix}.dw", mid * h * h, mid * ho * ho, mid * k * k,
                         cin * h * h if shortcut else 0, opts, depthwise=True))
    layers.append(_entry(f"{prefix}.pl", mid * ho * ho, cout * ho * ho, mid * cout, 0, opts))
    return layers


def _stored(channels: int, multiple: int) -> int:
    """Channels as a layout stores them: rounded up to a multiple of ``multiple`` (1: as they are)."""
    return -(-channels // multiple) * multiple


def _block_layers(spec: ModelSpec, geo: Geometry, i: int, k: int, e: float,
                  opts: MemoryOptions, channel_multiple: int = 1) -> list[LayerMemory]:
    """Entries of active block ``i``; activations' channels stored in multiples of ``channel_multiple``."""
    g, m = geo.blocks[i], channel_multiple
    ho = out_side(g.h_in, k, g.stride)
    return _mbconv(f"b{i}", _stored(g.cin, m), _stored(g.cout, m), _stored(mid_channels(g.cin, e), m), k,
                   e != 1, g.h_in, ho, g.shortcut, opts)


def _stem_layers(spec: ModelSpec, geo: Geometry, opts: MemoryOptions, channel_multiple: int = 1) -> list[LayerMemory]:
    """first_conv (3x3, stride 2, 3 -> C0) and block S (k3, e1, no IB); the image's 3 channels are
    stored as they are, the others in multiples of ``channel_multiple``."""
    t, r, h1 = spec.table, geo.image_size, geo.h1
    c0, c1 = _stored(t.first_conv, channel_multiple), _stored(t.stem.width, channel_multiple)
    hs = out_side(h1, 3, t.stem.stride)
    first = _entry("first_conv", 3 * r * r, c0 * h1 * h1, 27 * c0, 0, opts)
    block_s = _mbconv("S", c0, c1, c0, 3, False, h1, hs,
                      t.stem.stride == 1 and t.first_conv == t.stem.width, opts)
    return [first, *block_s]


def _head_layers(spec: ModelSpec, geo: Geometry, opts: MemoryOptions, channel_multiple: int = 1) -> list[LayerMemory]:
    """final_expand_layer (+ feature_mix and classifier when ``count_head``); channels in
    multiples of ``channel_multiple``."""
    t, hf, m = spec.table, geo.h_final, channel_multiple
    c, f, mix = _stored(t.stages[-1].width, m), _stored(t.final_expand, m), t.feature_mix
    layers = [_entry("final_expand", c * hf * hf, f * hf * hf, c * f, 0, opts)]
    if opts.count_head:
        n = opts.n_classes
        layers.append(_entry("feature_mix", f, mix, f * mix, 0, opts))
        layers.append(_entry("classifier", mix, n, mix * n + n, 0, opts))
    return layers


@lru_cache(maxsize=1024)
def memory_table(spec: ModelSpec, image_size: int, options: MemoryOptions = DEFAULT_OPTIONS) -> ChoiceTable:
    """Per-block peak (max of the block's entries) for every (k, e), and the peak of the fixed
    layers, at one resolution. Cached per (spec, resolution, options)."""
    geo = geometry(spec, image_size)
    fixed = max(lm.total for lm in _stem_layers(spec, geo, options) + _head_layers(spec, geo, options))
    return build_table(spec, fixed, lambda i, k, e: max(
        lm.total for lm in _block_layers(spec, geo, i, k, e, options)))


def memory_layers(model: "str | ModelSpec", config: "Mapping[str, Any] | SubnetConfig",
                  options: MemoryOptions | None = None) -> list[LayerMemory]:
    """Every histogram entry with its parts, in the order of docs/design.md#memory-model (first_conv, block S,
    active blocks [IB, DW, PL], final_expand, then the head when counted)."""
    spec, cfg = resolve(model, config)
    opts = options or DEFAULT_OPTIONS
    geo = geometry(spec, cfg.image_size)
    layers = _stem_layers(spec, geo, opts)
    for i in cfg.active_blocks(spec):
        layers += _block_layers(spec, geo, i, cfg.ks[i], cfg.e[i], opts)
    return layers + _head_layers(spec, geo, opts)


def memory_histogram(model: "str | ModelSpec", config: "Mapping[str, Any] | SubnetConfig",
                     options: MemoryOptions | None = None) -> list[int]:
    """Per-layer memory (elements x bytes_per_element) in docs/design.md#memory-model order."""
    return [lm.total for lm in memory_layers(model, config, options)]


def peak_memory(model: "str | ModelSpec", config: "Mapping[str, Any] | SubnetConfig",
                options: MemoryOptions | None = None) -> int:
    """Peak memory (elements x bytes_per_element; elements by default) of a subnet, exact
    (docs/design.md#memory-model). ``model`` is a name from MODELS or a ModelSpec; ``config`` a mapping with ks (20),
    e (20), d (5), image_size, or a SubnetConfig. ValueError names a bad argument and value."""
    spec, cfg = resolve(model, config)
    return reduce_single(spec, cfg, memory_table(spec, cfg.image_size, options or DEFAULT_OPTIONS), "max")


def peak_memory_batch(model: "str | ModelSpec", configs: Iterable[Any] | None = None, *,
                      ks: Any = None, e: Any = None, d: Any = None, image_size: Any = None,
                      options: MemoryOptions | None = None) -> np.ndarray:
    """Vectorised :func:`peak_memory` of many configs: give ``configs`` (mappings or
    SubnetConfig) or arrays ``ks`` (N, 20), ``e`` (N, 20), ``d`` (N, 5), ``image_size`` (N,) or a
    scalar. Returns int64 (N,) in elements x bytes_per_element."""
    spec = get_model_spec(model)
    arrays = config_arrays(spec, configs, ks=ks, e=e, d=d, image_size=image_size)
    opts = options or DEFAULT_OPTIONS
    return reduce_batch(spec, arrays, lambda r: memory_table(spec, r, opts), "max")
