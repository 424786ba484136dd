"""Exact feasibility reasoning on peak memory: bounds, feasible choices, counting, sampling and
repair under a memory constraint (elements x bytes_per_element, as in :mod:`memory`).

Why it is exact: at a fixed resolution R, the peak is ``max(fixed_R, max over active blocks of
block_peak(i, k_i, e_i))``, and each block's peak depends only on its own (k, e) and position
(its input width and side are fixed by the stage table). Stages are therefore independent, and
so are the blocks of a stage once its depth is chosen. Hence

* min over configs of the peak = max(fixed_R, max over stages of min over depths d of
  max over positions j < d of min over (k, e) of block_peak) (and the same with max for the
  largest peak); no monotonicity assumption is needed;
* the configs with peak <= C form, per resolution, a product over stages of per-stage sets,
  which can be counted and sampled uniformly without rejection.

Counting and sampling are over *full* configs, i.e. including the (k, e) of inactive blocks, as
the reference's uniform sampler draws them: a uniform draw here has the same distribution as the
reference's "sample uniformly until peak <= C" loop (docs/design.md#search-space), but never loops. For CompOFA
(compound models) a stage's e is coupled to its depth (docs/design.md#architecture).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Mapping, Sequence

import numpy as np

from moofa.efficiency.layout import ChoiceTable, resolve
from moofa.efficiency.memory import (
    DEFAULT_OPTIONS,
    MemoryOptions,
    memory_table,
    peak_memory,
)
from moofa.errors import InfeasibleConstraintError
from moofa.models.space import SearchSpace
from moofa.models.spec import N_STAGES, ModelSpec, SubnetConfig, get_model_spec

Pair = tuple  # (kernel size, expand ratio)


def allowed_pairs(spec: ModelSpec, depth: int) -> tuple[Pair, ...]:
    """(k, e) pairs a block may take in a stage of depth ``depth`` (e coupled for CompOFA)."""
    return SearchSpace(spec).block_choices(depth)


def _table(spec: ModelSpec, image_size: int, options: MemoryOptions | None) -> ChoiceTable:
    return memory_table(spec, int(image_size), options or DEFAULT_OPTIONS)


def _resolutions(spec: ModelSpec, image_size: int | None) -> list[int]:
    return list(spec.image_sizes) if image_size is None else [int(image_size)]


def _stage_extremes(spec: ModelSpec, table: ChoiceTable, s: int) -> tuple[int, int]:
    """(smallest, largest) achievable max over stage ``s``'s active blocks."""
    b, lows, highs = spec.blocks_per_stage, [], []
    for d in spec.depth_list:
        pairs = allowed_pairs(spec, d)
        per_block = [[table.blocks[s * b + j][p] for p in pairs] for j in range(d)]
        lows.append(max(min(v) for v in per_block))
        highs.append(max(max(v) for v in per_block))
    return min(lows), max(highs)


def memory_bounds(model: "str | ModelSpec", image_size: int | None = None,
                  options: MemoryOptions | None = None) -> tuple[int, int]:
    """(smallest, largest) achievable peak memory over all configs of the model, at one
    resolution or (``image_size`` None) over the model's resolutions. Exact, not sampled."""
    spec = get_model_spec(model)
    lo, hi = [], []
    for r in _resolutions(spec, image_size):
        t = _table(spec, r, options)
        ext = [_stage_extremes(spec, t, s) for s in range(N_STAGES)]
        lo.append(max(t.fixed, *(e[0] for e in ext)))
        hi.append(max(t.fixed, *(e[1] for e in ext)))
    return min(lo), max(hi)


def memory_range_table(model: "str | ModelSpec", options: MemoryOptions | None = None) -> dict[int, tuple[int, int]]:
    """{resolution: (min, max) peak} over the model's resolutions (docs/design.md#memory-model)."""
    spec = get_model_spec(model)
    return {r: memory_bounds(spec, r, options) for r in spec.image_sizes}


def feasible_resolutions(model: "str | ModelSpec", constraint: float,
                         options: MemoryOptions | None = None) -> list[int]:
    """The model's resolutions at which some config has peak <= ``constraint``."""
    spec = get_model_spec(model)
    return [r for r in spec.image_sizes if memory_bounds(spec, r, options)[0] <= constraint]


@dataclass(frozen=True)
class StageChoices:
    """Feasible choices of one stage at one resolution: for each depth d, the (k, e) pairs each
    active position j < d may take (block peak <= constraint); ``inactive[d]`` are the pairs an
    inactive position may carry (any). ``depths`` lists the depths whose positions all have a
    choice."""

    stage: int
    active: dict[int, tuple[tuple[Pair, ...], ...]]
    inactive: dict[int, tuple[Pair, ...]]

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(d for d, pos in self.active.items() if all(pos))

    def count(self, depth: int | None = None) -> int:
        """Number of full stage settings (all positions, inactive included) that fit."""
        ds = self.active if depth is None else [depth]
        b = len(self.active[max(self.active)])
        return sum(prod(len(p) for p in self.active[d]) * len(self.inactive[d]) ** (b - d) for d in ds)


def _stage_choices(spec: ModelSpec, table: ChoiceTable, s: int, keep) -> StageChoices:
    b, active, inactive = spec.blocks_per_stage, {}, {}
    for d in spec.depth_list:
        pairs = allowed_pairs(spec, d)
        active[d] = tuple(tuple(p for p in pairs if keep(table.blocks[s * b + j][p])) for j in range(d))
        inactive[d] = pairs
    return StageChoices(s, active, inactive)


def stage_choices(model: "str | ModelSpec", constraint: float, image_size: int,
                  options: MemoryOptions | None = None) -> list[StageChoices]:
    """Per stage, the (depth, per-position (k, e)) choices whose block peaks fit ``constraint``
    at ``image_size``. The fixed layers (first conv, block S, final expand) are not checked here:
    see :func:`feasible_resolutions`."""
    spec = get_model_spec(model)
    t = _table(spec, image_size, options)
    return [_stage_choices(spec, t, s, lambda v: v <= constraint) for s in range(N_STAGES)]


class _Window:
    """Stage sets of one resolution for lower <= peak <= upper: X (all blocks <= upper) and
    Y (all blocks < lower, the settings that miss the window from below)."""

    def __init__(self, spec: ModelSpec, r: int, upper: float, lower: float | None,
                 options: MemoryOptions | None) -> None:
        if lower is not None and lower > upper:
            raise ValueError(f"lower: {lower} is above the constraint {upper}")
        t = _table(spec, r, options)
        self.spec, self.r = spec, r
        self.fixed_ok = t.fixed <= upper
        self.needs_hit = lower is not None and t.fixed < lower
        self.x = [_stage_choices(spec, t, s, lambda v: v <= upper) for s in range(N_STAGES)]
        low = lower if lower is not None else -np.inf
        self.y = [_stage_choices(spec, t, s, lambda v: v < low) for s in range(N_STAGES)]

    def count(self) -> int:
        if not self.fixed_ok:
            return 0
        total = prod(x.count() for x in self.x)
        return total - prod(y.count() for y in self.y) if self.needs_hit else total


def _pick(rng: np.random.Generator, weights: Sequence[int]) -> int:
    """Index drawn with probability proportional to the (big) integer ``weights``."""
    total = sum(weights)
    return int(rng.choice(len(weights), p=[w / total for w in weights]))


def _first_hit_modes(rng: np.random.Generator, x: Sequence[int], y: Sequence[int]) -> list[str]:
    """Uniform draw from prod(X_c) minus prod(Y_c) (Y_c subset of X_c, sizes x, y), split by
    the first component outside Y: components before it come from Y ("Y"), it from X minus Y
    ("H"), the rest from X ("X")."""
    weights = [prod(y[:c]) * (x[c] - y[c]) * prod(x[c + 1:]) for c in range(len(x))]
    hit = _pick(rng, weights)
    return ["Y"] * hit + ["H"] + ["X"] * (len(x) - hit - 1)


def _draw(rng: np.random.Generator, pool: Sequence[Pair]) -> Pair:
    return pool[int(rng.integers(len(pool)))]


def _sample_stage(rng: np.random.Generator, x: StageChoices, y: StageChoices, mode: str) -> tuple[int, list[Pair]]:
    """Depth and the stage's (k, e) per position, uniform over the settings of ``mode``:
    "X" (all active blocks fit), "Y" (all below the lower limit) or "H" (fit, some block not
    below the lower limit)."""
    depths = list(x.active)
    cx = [x.count(d) for d in depths]
    cy = [y.count(d) for d in depths]
    weights = {"X": cx, "Y": cy, "H": [a - b for a, b in zip(cx, cy)]}[mode]
    d = depths[_pick(rng, weights)]
    xs, ys = x.active[d], y.active[d]
    if mode == "H":
        modes = _first_hit_modes(rng, [len(p) for p in xs], [len(p) for p in ys])
    else:
        modes = [mode] * d
    pairs = []
    for j, m in enumerate(modes):
        pool = xs[j] if m == "X" else ys[j] if m == "Y" else tuple(p for p in xs[j] if p not in ys[j])
        pairs.append(_draw(rng, pool))
    b = len(x.active[max(depths)])
    pairs += [_draw(rng, x.inactive[d]) for _ in range(b - d)]
    return d, pairs


def _rng(rng: "np.random.Generator | int | None") -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def count_feasible(model: "str | ModelSpec", constraint: float, *, lower: float | None = None,
                   image_size: int | None = None, options: MemoryOptions | None = None) -> int:
    """Number of full configs (all 20 (k, e), 5 depths, one resolution) with
    lower <= peak <= constraint, at ``image_size`` or summed over the model's resolutions."""
    spec = get_model_spec(model)
    return sum(_Window(spec, r, constraint, lower, options).count() for r in _resolutions(spec, image_size))


def feasible_fraction(model: "str | ModelSpec", constraint: float, *, lower: float | None = None,
                      options: MemoryOptions | None = None) -> float:
    """Probability (fraction) that the reference's uniform sampler (uniform resolution, then
    uniform ks, e, d) draws a config with lower <= peak <= constraint."""
    spec = get_model_spec(model)
    fr = [_Window(spec, r, constraint, lower, options).count() / _Window(spec, r, np.inf, None, options).count()
          for r in spec.image_sizes]
    return sum(fr) / len(fr)


def sample_feasible(model: "str | ModelSpec", constraint: float, rng: "np.random.Generator | int | None" = None,
                    n: int = 1, *, lower: float | None = None, image_size: int | None = None,
                    options: MemoryOptions | None = None,
                    resolution_weighting: str = "count") -> list[SubnetConfig]:
    """``n`` configs with lower <= peak <= constraint, drawn without rejection.

    With ``resolution_weighting="count"`` the draw is uniform over all such configs (the same
    distribution as the reference's sample-until-feasible loop); ``"uniform"`` first picks a
    feasible resolution uniformly. Raises InfeasibleConstraintError if no config fits.
    """
    spec = get_model_spec(model)
    if resolution_weighting not in ("count", "uniform"):
        raise ValueError(f"resolution_weighting: expected 'count' or 'uniform', got {resolution_weighting!r}")
    if n < 0:
        raise ValueError(f"n: expected a non-negative count, got {n}")
    gen = _rng(rng)
    windows = [_Window(spec, r, constraint, lower, options) for r in _resolutions(spec, image_size)]
    counts = [w.count() for w in windows]
    if not any(counts):
        lo, hi = memory_bounds(spec, image_size, options)
        window = f"[{lower}, {constraint}]" if lower is not None else f"<= {constraint}"
        raise InfeasibleConstraintError(
            f"{spec.name}: no subnet has peak memory {window}; achievable peaks are {lo}..{hi}",
            key="constraint", value=constraint)
    weights = counts if resolution_weighting == "count" else [int(c > 0) for c in counts]
    out = []
    for _ in range(n):
        w = windows[_pick(gen, weights)]
        if w.needs_hit:
            modes = _first_hit_modes(gen, [x.count() for x in w.x], [y.count() for y in w.y])
        else:
            modes = ["X"] * N_STAGES
        ks, es, ds = [], [], []
        for x, y, m in zip(w.x, w.y, modes):
            d, pairs = _sample_stage(gen, x, y, m)
            ds.append(d)
            ks += [p[0] for p in pairs]
            es += [p[1] for p in pairs]
        out.append(SubnetConfig(tuple(ks), tuple(es), tuple(ds), w.r))
    return out


def repair_config(model: "str | ModelSpec", config: "Mapping[str, Any] | SubnetConfig", constraint: float,
                  rng: "np.random.Generator | int | None" = None,
                  options: MemoryOptions | None = None) -> SubnetConfig:
    """The config itself if its peak fits ``constraint``, else a nearby config that fits: the
    largest feasible resolution not above its own (else the smallest feasible), per stage its
    depth if feasible (else the largest feasible below, else the smallest), and for each block
    that does not fit a random fitting (k, e) no larger than its own where possible."""
    spec, cfg = resolve(model, config)
    if peak_memory(spec, cfg, options) <= constraint:
        return cfg
    gen = _rng(rng)
    feasible = feasible_resolutions(spec, constraint, options)
    if not feasible:
        lo, hi = memory_bounds(spec, None, options)
        raise InfeasibleConstraintError(f"{spec.name}: no subnet has peak memory <= {constraint}; "
                                        f"achievable peaks are {lo}..{hi}", key="constraint", value=constraint)
    below = [r for r in feasible if r <= cfg.image_size]
    r = cfg.image_size if cfg.image_size in feasible else (max(below) if below else min(feasible))
    ks, es, ds = list(cfg.ks), list(cfg.e), list(cfg.d)
    b, space = spec.blocks_per_stage, SearchSpace(spec)
    for sc in stage_choices(spec, constraint, r, options):
        s, d = sc.stage, ds[sc.stage]
        if d not in sc.depths:
            lower_d = [x for x in sc.depths if x < d]
            d = max(lower_d) if lower_d else min(sc.depths)
            ds[s] = d
        if spec.compound:
            es[s * b:(s + 1) * b] = space.couple(ds)[s * b:(s + 1) * b]
        for j, pool in enumerate(sc.active[d]):
            i = s * b + j
            if (ks[i], es[i]) in pool:
                continue
            smaller = [p for p in pool if p[0] <= ks[i] and p[1] <= es[i]]
            ks[i], es[i] = _draw(gen, smaller or pool)
    return SubnetConfig(tuple(ks), tuple(es), tuple(ds), r)
