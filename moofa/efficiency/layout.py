"""Shared plumbing of the analytic efficiency models: resolving (model, config), the feature-map
geometry of a supernet at a resolution, and per-block choice tables with a single-config and a
vectorised (numpy) evaluator.

Every analytic quantity here (peak memory, MACs, parameters) has the same shape: a part that
depends only on the resolution (first conv, block S, head) plus one value per *active* elastic
block that depends only on that block's own (kernel, expand ratio), its position and the
resolution. A :class:`ChoiceTable` stores exactly that, and the quantity of a config is the
max (memory) or the sum (MACs, parameters) over the fixed part and the active blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from moofa.models.space import lookup
from moofa.models.spec import N_STAGES, ModelSpec, SubnetConfig, get_model_spec


def resolve(model: "str | ModelSpec", config: "Mapping[str, Any] | SubnetConfig") -> tuple[ModelSpec, SubnetConfig]:
    """The model's spec and the validated config; ValueError naming the argument and value."""
    spec = get_model_spec(model)
    cfg = SubnetConfig.from_dict(config).validate(spec)
    return spec, cfg


def out_side(h: int, k: int, stride: int) -> int:
    """Output side (pixels) of a conv with 'same' padding k//2: floor((h + 2(k//2) - k)/s) + 1."""
    return (h + 2 * (k // 2) - k) // stride + 1


class BlockGeom(NamedTuple):
    """Static facts of one elastic block at one resolution (channels, pixels)."""

    cin: int
    cout: int
    stride: int
    h_in: int
    h_out: int
    shortcut: bool
    se: bool


class Geometry(NamedTuple):
    """Feature-map sides (pixels) and channels of a supernet at resolution ``image_size``."""

    image_size: int
    h1: int  # side after first_conv (= block S side)
    blocks: tuple[BlockGeom, ...]  # the 20 elastic blocks, all assumed active
    h_final: int  # side at final_expand_layer


@lru_cache(maxsize=512)
def geometry(spec: ModelSpec, image_size: int) -> Geometry:
    """Sides do not depend on the kernel size (odd kernels, 'same' padding) nor on the depth:
    a stage's first block carries its stride, the others keep the side."""
    t = spec.table
    h1 = out_side(image_size, 3, 2)
    h = out_side(h1, 3, t.stem.stride)
    blocks = []
    for i in range(spec.n_blocks):
        cin, cout, stride = spec.block_io(i)
        stage = t.stages[i // spec.blocks_per_stage]
        ho = out_side(h, 3, stride)
        blocks.append(BlockGeom(cin, cout, stride, h, ho, stride == 1 and cin == cout, stage.se))
        h = ho
    return Geometry(image_size, h1, tuple(blocks), h)


def choice_pairs(spec: ModelSpec) -> list[tuple[int, int | float]]:
    """All (kernel, expand) pairs of the model, kernel-major, in the order of its sorted lists."""
    return [(k, e) for k in spec.ks_list for e in spec.expand_list]


def build_table(spec: ModelSpec, fixed: int, block_value) -> "ChoiceTable":
    """A ChoiceTable from ``block_value(i, k, e) -> int`` over all blocks and pairs."""
    pairs = choice_pairs(spec)
    blocks = tuple({(k, e): block_value(i, k, e) for k, e in pairs} for i in range(spec.n_blocks))
    return ChoiceTable(fixed, blocks, spec.ks_list, spec.expand_list)


@dataclass(frozen=True, eq=False)
class ChoiceTable:
    """``fixed`` (resolution-only part) and, per elastic block, a dict (k, e) -> value."""

    fixed: int
    blocks: tuple[dict, ...]
    ks_list: tuple[int, ...]
    expand_list: tuple[int | float, ...]

    @cached_property
    def values(self) -> np.ndarray:
        """The block values as an int64 array (n_blocks, len(ks_list), len(expand_list))."""
        out = np.zeros((len(self.blocks), len(self.ks_list), len(self.expand_list)), dtype=np.int64)
        for i, table in enumerate(self.blocks):
            for a, k in enumerate(self.ks_list):
                for b, e in enumerate(self.expand_list):
                    out[i, a, b] = table[(k, e)]
        return out


def reduce_single(spec: ModelSpec, subnet: SubnetConfig, table: ChoiceTable, how: str) -> int:
    """Max or sum of ``table`` over the fixed part and the active blocks of ``subnet``."""
    bt, b, ks, es = table.blocks, spec.blocks_per_stage, subnet.ks, subnet.e
    if how == "max":
        best = table.fixed
        for s, d in enumerate(subnet.d):
            for i in range(s * b, s * b + d):
                v = bt[i][(ks[i], es[i])]
                if v > best:
                    best = v
        return best
    total = table.fixed
    for s, d in enumerate(subnet.d):
        for i in range(s * b, s * b + d):
            total += bt[i][(ks[i], es[i])]
    return total


class ConfigArrays(NamedTuple):
    """A batch of validated configs as index arrays (rows = configs)."""

    k_idx: np.ndarray  # (N, n_blocks) index into ks_list
    e_idx: np.ndarray  # (N, n_blocks) index into expand_list
    d: np.ndarray  # (N, 5) depths
    image_size: np.ndarray  # (N,) pixels


def _index_of(values: np.ndarray, choices: Sequence[float], name: str, spec: ModelSpec) -> np.ndarray:
    """Indices of ``values`` in ``choices``; ValueError naming the first bad entry."""
    idx, bad = lookup(values, choices)
    if bad.any():
        row, col = (int(x) for x in np.argwhere(bad)[0])
        v = float(values[row, col])
        raise ValueError(f"{name}[{row}][{col}]: value {int(v) if v.is_integer() else v} is not one of "
                         f"{spec.name}'s choices {list(choices)}")
    return idx


def config_arrays(spec: ModelSpec, configs: Iterable[Any] | None = None, *, ks: Any = None,
                  e: Any = None, d: Any = None, image_size: Any = None) -> ConfigArrays:
    """Validate a batch given as configs (mappings or SubnetConfig) or as arrays ks (N, 20),
    e (N, 20), d (N, 5) and image_size (N,) or a scalar. ValueError names argument, row and value."""
    if configs is not None:
        rows = [c.to_dict() if isinstance(c, SubnetConfig) else c for c in configs]
        for n, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"configs[{n}]: expected a mapping, got {type(row).__name__}")
            missing = [key for key in ("ks", "e", "d", "image_size") if key not in row]
            if missing:
                raise ValueError(f"configs[{n}]: missing key {missing[0]!r}")
        ks = [r["ks"] for r in rows]
        e = [r["e"] for r in rows]
        d = [r["d"] for r in rows]
        image_size = [r["image_size"] for r in rows]
    if ks is None or e is None or d is None or image_size is None:
        raise ValueError("peak_memory_batch: give configs or all of ks, e, d, image_size")
    arrays = {}
    for name, value, width in (("ks", ks, spec.n_blocks), ("e", e, spec.n_blocks), ("d", d, N_STAGES)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a rectangular numeric array (N, {width})") from None
        if arr.size == 0:
            arr = arr.reshape(0, width)
        if arr.ndim != 2 or arr.shape[1] != width:
            raise ValueError(f"{name}: expected shape (N, {width}) for {spec.name}, got {arr.shape}")
        arrays[name] = arr
    n = arrays["ks"].shape[0]
    if arrays["e"].shape[0] != n or arrays["d"].shape[0] != n:
        raise ValueError(f"ks, e, d: row counts differ ({n}, {arrays['e'].shape[0]}, {arrays['d'].shape[0]})")
    r = np.asarray(image_size)
    if r.size == 0:
        r = r.astype(np.int64).reshape(0)
    if r.ndim == 0:
        r = np.full(n, r)
    if r.shape != (n,) or not np.issubdtype(r.dtype, np.number) or (r != np.round(r)).any() or (r < 8).any():
        raise ValueError(f"image_size: expected {n} integer resolutions >= 8, got {np.asarray(image_size)!r}")
    k_idx = _index_of(arrays["ks"], spec.ks_list, "ks", spec)
    e_idx = _index_of(arrays["e"], spec.expand_list, "e", spec)
    d_idx = _index_of(arrays["d"], spec.depth_list, "d", spec)
    depth = np.asarray(spec.depth_list, dtype=np.int64)[d_idx]
    return ConfigArrays(k_idx, e_idx, depth, r.astype(np.int64))


def reduce_batch(spec: ModelSpec, arrays: ConfigArrays, table_of, how: str) -> np.ndarray:
    """Vectorised :func:`reduce_single`: ``table_of(R)`` gives the ChoiceTable of resolution R.
    Returns int64 (N,)."""
    n, nb = arrays.k_idx.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    res, inv = np.unique(arrays.image_size, return_inverse=True)
    tables = [table_of(int(r)) for r in res]
    values = np.stack([t.values for t in tables])  # (U, nb, nk, ne)
    fixed = np.array([t.fixed for t in tables], dtype=np.int64)
    blocks = np.arange(nb)
    vals = values[inv[:, None], blocks[None, :], arrays.k_idx, arrays.e_idx]  # (N, nb)
    pos = blocks % spec.blocks_per_stage
    stage = blocks // spec.blocks_per_stage
    active = pos[None, :] < arrays.d[:, stage]
    vals = np.where(active, vals, 0)
    if how == "max":
        return np.maximum(vals.max(axis=1), fixed[inv])
    return vals.sum(axis=1) + fixed[inv]
