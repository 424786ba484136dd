"""The reference's one-hot architecture encoding ("mbv3" MobileNetArchEncoder, docs/design.md#encoding).

Layout of a feature vector (float64 0/1, ``n_dim = |R| + n_blocks*|K| + n_blocks*|E|``, 124 for
the reference models), with the choice lists in the order written in ``model_configs.yaml``
(:attr:`moofa.models.spec.ModelSpec.layout_lists`, see ``docs/design.md#encoding``):

* ``[0, |R|)``: one-hot resolution, in ``image_size`` order;
* ``|R| + |K|*i + idx_K(k_i)``: kernel size of block ``i`` (0..19);
* ``|R| + n_blocks*|K| + |E|*i + idx_E(e_i)``: expand ratio of block ``i``.

Inactive blocks (position in stage >= depth of the stage) have all-zero kernel and expand slots.
Sampling, mutation and crossover live in :class:`moofa.models.space.SearchSpace`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from moofa.models.space import LAYOUT_NAMES, ConfigLike, SearchSpace
from moofa.models.spec import N_STAGES, ModelSpec, SubnetConfig


def _index_of(space: SearchSpace, values: np.ndarray, key: str) -> np.ndarray:
    """Layout positions of ``values`` (one row per config); ValueError naming the config, key and
    value of the first entry that is not a choice."""
    idx, bad = space.index(values, key)
    if bad.any():
        pos = tuple(np.argwhere(bad)[0])
        where = f"{key}[{pos[1]}]" if values.ndim > 1 else key
        raise ValueError(f"config {pos[0]}: {where}: value {values[pos]:g} is not one of the "
                         f"choices {list(space.layout[LAYOUT_NAMES[key]])}")
    return idx


class ArchEncoder:
    """One-hot encoder of a model's subnet configs (docs/design.md#encoding).

    ``model`` is a name from ``model_configs.yaml``, a :class:`ModelSpec` or a
    :class:`SearchSpace`; the encoding uses its layout lists (as written in model_configs.yaml).
    """

    def __init__(self, model: "str | ModelSpec | SearchSpace",
                 model_configs: "str | Path | None" = None) -> None:
        self.space = model if isinstance(model, SearchSpace) else SearchSpace(model, model_configs)
        self.spec: ModelSpec = self.space.spec
        layout = self.space.layout
        self.image_sizes = tuple(int(r) for r in layout["image_sizes"])
        self.ks_list = tuple(layout["ks_list"])
        self.expand_list = tuple(layout["expand_list"])
        self.depth_list = tuple(layout["depth_list"])
        self.blocks_per_stage = self.spec.blocks_per_stage
        self.n_blocks = self.spec.n_blocks
        self.k_offset = len(self.image_sizes)
        self.e_offset = self.k_offset + self.n_blocks * len(self.ks_list)
        self.n_dim = self.e_offset + self.n_blocks * len(self.expand_list)

    # ----------------------------------------------------------------------------- description
    @property
    def lists(self) -> dict[str, list]:
        """The four choice lists that define the layout (stored in our predictor checkpoints)."""
        return {"image_sizes": list(self.image_sizes), "ks_list": list(self.ks_list),
                "expand_list": list(self.expand_list), "depth_list": list(self.depth_list)}

    def __repr__(self) -> str:
        return f"ArchEncoder({self.spec.name!r}, n_dim={self.n_dim})"

    # ------------------------------------------------------------------------------- encoding
    def _arrays(self, configs: Iterable[ConfigLike]) -> tuple[np.ndarray, ...]:
        cfgs = [SubnetConfig.from_dict(c) for c in configs]
        for i, c in enumerate(cfgs):
            if len(c.ks) != self.n_blocks or len(c.e) != self.n_blocks or len(c.d) != N_STAGES:
                raise ValueError(f"config {i}: expected {self.n_blocks} ks, {self.n_blocks} e and "
                                 f"{N_STAGES} d values, got {len(c.ks)}, {len(c.e)}, {len(c.d)}")
        n = len(cfgs)
        ks = np.array([c.ks for c in cfgs], dtype=np.float64).reshape(n, self.n_blocks)
        ex = np.array([c.e for c in cfgs], dtype=np.float64).reshape(n, self.n_blocks)
        d = np.array([c.d for c in cfgs], dtype=np.float64).reshape(n, N_STAGES)
        r = np.array([c.image_size for c in cfgs], dtype=np.float64)
        return ks, ex, d, r

    def encode_batch(self, configs: Iterable[ConfigLike]) -> np.ndarray:
        """Encode many configs at once: an ``(N, n_dim)`` float64 array of 0/1.

        Raises ValueError naming the config index, key and value that is not one of the model's
        choices (values of inactive blocks are not encoded and not checked, as in the reference).
        """
        ks, ex, d, r = self._arrays(configs)
        n = len(r)
        ri = _index_of(self.space, r, "image_size")
        _index_of(self.space, d, "d")
        pos = np.arange(self.n_blocks) % self.blocks_per_stage
        stage = np.arange(self.n_blocks) // self.blocks_per_stage
        active = pos[None, :] < d[:, stage]                      # N, n_blocks
        # inactive blocks are not encoded, so any value (e.g. 0 from decode_dict) is accepted
        ki = _index_of(self.space, np.where(active, ks, self.ks_list[0]), "ks")
        ei = _index_of(self.space, np.where(active, ex, self.expand_list[0]), "e")
        feat = np.zeros((n, self.n_dim), dtype=np.float64)
        feat[np.arange(n), ri] = 1.0
        rr, bb = np.nonzero(active)
        feat[rr, self.k_offset + len(self.ks_list) * bb + ki[rr, bb]] = 1.0
        feat[rr, self.e_offset + len(self.expand_list) * bb + ei[rr, bb]] = 1.0
        return feat

    def encode(self, config: ConfigLike) -> np.ndarray:
        """Encode one config: a 1-D float64 array of length ``n_dim`` (the reference's
        ``arch2feature``)."""
        return self.encode_batch([config])[0]

    # ------------------------------------------------------------------------------- decoding
    def decode_dict(self, feature: "np.ndarray | Sequence[float]") -> dict[str, Any]:
        """The reference's ``feature2arch``: argmax resolution, the set kernel/expand slot of each
        block or 0/0 for an empty block, and d = the number of set blocks per stage."""
        f = np.asarray(feature, dtype=np.float64).reshape(-1)
        if f.shape[0] != self.n_dim:
            raise ValueError(f"feature: expected {self.n_dim} values, got {f.shape[0]}")
        nk, ne = len(self.ks_list), len(self.expand_list)
        kslots = f[self.k_offset:self.e_offset].reshape(self.n_blocks, nk)
        eslots = f[self.e_offset:].reshape(self.n_blocks, ne)
        ks: list = []
        e: list = []
        for i in range(self.n_blocks):
            kset, eset = kslots[i] > 0.5, eslots[i] > 0.5
            if kset.any() != eset.any():
                raise ValueError(f"feature: block {i} has a kernel slot but no expand slot "
                                 "(or the reverse)")
            ks.append(self.ks_list[int(np.argmax(kslots[i]))] if kset.any() else 0)
            e.append(self.expand_list[int(np.argmax(eslots[i]))] if eset.any() else 0)
        d = []
        for s in range(N_STAGES):
            setb = [ks[s * self.blocks_per_stage + j] != 0 for j in range(self.blocks_per_stage)]
            depth = sum(setb)
            if setb != [True] * depth + [False] * (self.blocks_per_stage - depth):
                raise ValueError(f"feature: stage {s} has a gap between its active blocks")
            d.append(depth)
        r = self.image_sizes[int(np.argmax(f[:self.k_offset]))]
        return {"ks": ks, "e": e, "d": d, "image_size": r}

    def decode(self, feature: "np.ndarray | Sequence[float]") -> SubnetConfig:
        """Decode a feature into a usable :class:`SubnetConfig`.

        Inactive blocks, which the encoding does not record (the reference decodes them as 0/0),
        are filled with the smallest kernel and expand choice, so that
        ``decode(encode(c)) == c`` up to the (k, e) of inactive blocks and
        ``encode(decode(f)) == f``.
        """
        raw = self.decode_dict(feature)
        k0, e0 = min(self.ks_list), min(self.expand_list)
        ks = [k if k else k0 for k in raw["ks"]]
        e = [x if x else e0 for x in raw["e"]]
        return SubnetConfig(tuple(ks), tuple(e), tuple(raw["d"]), raw["image_size"])
