"""The search space of one supernet: its choices and every operation on subnet configs.

:class:`SearchSpace` is the one place that knows which subnets a model has: the choice lists,
validation, index lookup (choice lists in any order), uniform sampling, mutation, crossover and
CompOFA's compound coupling (a stage's expand ratio follows its depth). The predictor's encoder,
the evolutionary search, the feasibility bounds and the dataset sampler all go through it.

Two orders of the choice lists exist (see ``docs/design.md#encoding``):

* the *sorted* lists of :class:`~moofa.models.spec.ModelSpec` (``ks_list``, ``expand_list``,
  ``depth_list`` ascending; ``image_sizes`` as written), which the supernet, the memory tables and
  the random draws use;
* the *layout* lists, exactly as written in ``model_configs.yaml``, which fix the positions of the
  one-hot encoding (the reference encoder takes the lists in the given order).

Randomness always comes from a generator passed in: a :class:`random.Random` or a
:class:`numpy.random.Generator` (never the global RNGs).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from moofa.models.spec import N_STAGES, ModelSpec, SubnetConfig, get_model_spec

Rng = Union[random.Random, np.random.Generator]
ConfigLike = Union[SubnetConfig, Mapping[str, Any]]
KEYS = ("image_size", "ks", "e", "d")  # the four genes of a subnet config
LAYOUT_NAMES = {"image_size": "image_sizes", "ks": "ks_list", "e": "expand_list", "d": "depth_list"}


def lookup(values: Any, choices: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` (any shape) in ``choices`` (any order) and the mask of the values
    that are not a choice (their position is meaningless)."""
    ch = np.asarray(choices, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(ch, kind="stable")
    pos = np.clip(np.searchsorted(ch[order], v), 0, len(ch) - 1)
    idx = order[pos]
    return idx, ch[idx] != v


def _choice(rng: Rng, seq: Sequence[Any]) -> Any:
    """One uniform draw from ``seq`` with either kind of generator."""
    if isinstance(rng, np.random.Generator):
        return seq[int(rng.integers(len(seq)))]
    return rng.choice(list(seq))


def _uniform(rng: Rng) -> float:
    """A uniform float in [0, 1) with either kind of generator."""
    return float(rng.random())


class SearchSpace:
    """The subnets of one model (a name from ``model_configs.yaml`` or a :class:`ModelSpec`)."""

    def __init__(self, model: "str | ModelSpec", model_configs: "str | Path | None" = None) -> None:
        self.spec: ModelSpec = get_model_spec(model, model_configs)
        self.n_blocks = self.spec.n_blocks
        self.blocks_per_stage = self.spec.blocks_per_stage
        self.layout: dict[str, tuple] = self.spec.layout_lists

    def __repr__(self) -> str:
        return f"SearchSpace({self.spec.name!r})"

    @property
    def compound(self) -> bool:
        """True when a stage's expand ratio is coupled to its depth (CompOFA)."""
        return self.spec.compound

    def choices(self, key: str) -> tuple:
        """The choices of gene ``key`` (image_size, ks, e or d) in the order the draws use."""
        s = self.spec
        return {"image_size": s.image_sizes, "ks": s.ks_list, "e": s.expand_list, "d": s.depth_list}[key]

    # ---------------------------------------------------------------------------- validation
    def validate(self, config: ConfigLike, check_image_size: bool = False) -> SubnetConfig:
        """The config as a :class:`SubnetConfig`; ValueError naming the key and value that is not
        one of the model's choices."""
        return SubnetConfig.from_dict(config).validate(self.spec, check_image_size)

    def index(self, values: Any, key: str, layout: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """:func:`lookup` of ``values`` in gene ``key``'s layout list (``layout=False``: in the
        sorted list of the supernet and memory tables)."""
        return lookup(values, self.layout[LAYOUT_NAMES[key]] if layout else self.choices(key))

    # -------------------------------------------------------------------------- coupling
    def couple(self, d: Sequence[int]) -> tuple:
        """CompOFA's expand ratio of every block: the one of its stage's depth."""
        return tuple(self.spec.compound_expand(int(d[i // self.blocks_per_stage]))
                     for i in range(self.n_blocks))

    def block_choices(self, depth: int) -> tuple[tuple[int, int | float], ...]:
        """(k, e) pairs a block may take in a stage of depth ``depth`` (e coupled when compound)."""
        if self.compound:
            e = self.spec.compound_expand(depth)
            return tuple((k, e) for k in self.spec.ks_list)
        return tuple((k, e) for k in self.spec.ks_list for e in self.spec.expand_list)

    def _config(self, ks: Sequence[int], e: Sequence[Any], d: Sequence[int], r: int) -> SubnetConfig:
        if self.compound:
            e = self.couple(d)
        return SubnetConfig(tuple(ks), tuple(e), tuple(d), int(r))

    # -------------------------------------------------------------------------- operators
    def sample(self, rng: Rng) -> SubnetConfig:
        """Uniform random config (the reference's ``random_sample_arch``): i.i.d. ks, e per block,
        d per stage, resolution. Compound models draw d per stage and couple e to it."""
        ks = [int(_choice(rng, self.spec.ks_list)) for _ in range(self.n_blocks)]
        if self.compound:
            d = [int(_choice(rng, self.spec.depth_list)) for _ in range(N_STAGES)]
            return self._config(ks, (), d, int(_choice(rng, self.spec.image_sizes)))
        e = [_choice(rng, self.spec.expand_list) for _ in range(self.n_blocks)]
        d = [int(_choice(rng, self.spec.depth_list)) for _ in range(N_STAGES)]
        return self._config(ks, e, d, int(_choice(rng, self.spec.image_sizes)))

    def sample_arrays(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` uniform random configs as arrays ks (n, 20), e (n, 20), d (n, 5), image_size
        (n,), the vectorised form of :meth:`sample` (a different draw order)."""
        nb, b, spec = self.n_blocks, self.blocks_per_stage, self.spec
        ks = rng.choice(np.asarray(spec.ks_list), size=(n, nb))
        d = rng.choice(np.asarray(spec.depth_list), size=(n, N_STAGES))
        if self.compound:
            lut = {dd: float(spec.compound_expand(dd)) for dd in spec.depth_list}
            e = np.vectorize(lambda dd: lut[int(dd)])(np.repeat(d, b, axis=1)) if n else \
                np.zeros((0, nb))
        else:
            e = rng.choice(np.asarray(spec.expand_list, dtype=np.float64), size=(n, nb))
        r = rng.choice(np.asarray(spec.image_sizes), size=n)
        return {"ks": ks, "e": e, "d": d, "image_size": r}

    def mutate(self, config: ConfigLike, arch_p: float, res_p: float, rng: Rng) -> SubnetConfig:
        """The reference mutation: with probability ``res_p`` resample the resolution; then for
        each block with probability ``arch_p`` resample both k and e; then for each stage with
        probability ``arch_p`` resample d. Compound models resample only k per block and
        re-couple e to the (possibly new) d of each stage."""
        c = SubnetConfig.from_dict(config)
        r = c.image_size
        if _uniform(rng) < res_p:
            r = int(_choice(rng, self.spec.image_sizes))
        ks, e, d = list(c.ks), list(c.e), list(c.d)
        for i in range(self.n_blocks):
            if _uniform(rng) < arch_p:
                ks[i] = int(_choice(rng, self.spec.ks_list))
                if not self.compound:
                    e[i] = _choice(rng, self.spec.expand_list)
        for s in range(N_STAGES):
            if _uniform(rng) < arch_p:
                d[s] = int(_choice(rng, self.spec.depth_list))
        return self._config(ks, e, d, r)

    def crossover(self, a: ConfigLike, b: ConfigLike, rng: Rng) -> SubnetConfig:
        """The reference crossover: every list element and the resolution come from either parent
        with probability 1/2. Compound models take each stage's (d, e of its blocks) together from
        one parent, so the child keeps the coupling."""
        pa, pb = SubnetConfig.from_dict(a), SubnetConfig.from_dict(b)

        def pick(x: Any, y: Any) -> Any:
            return x if _uniform(rng) < 0.5 else y

        ks = [pick(x, y) for x, y in zip(pa.ks, pb.ks)]
        if self.compound:
            bps = self.blocks_per_stage
            d: list[int] = []
            e: list[float] = []
            for s in range(N_STAGES):
                src = pa if _uniform(rng) < 0.5 else pb
                d.append(src.d[s])
                e.extend(src.e[s * bps:(s + 1) * bps])
        else:
            e = [pick(x, y) for x, y in zip(pa.e, pb.e)]
            d = [pick(x, y) for x, y in zip(pa.d, pb.d)]
        r = pick(pa.image_size, pb.image_size)
        return SubnetConfig(tuple(ks), tuple(e), tuple(d), r)


__all__ = ["SearchSpace", "lookup", "KEYS", "Rng", "ConfigLike"]
