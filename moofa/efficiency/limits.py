"""Several hard limits at once: a peak-memory budget (in the memory model's unit), MMACs and
parameters (the exported subnet's, head included: what goes to Flash).

Why the checks are exact: peak memory, MACs and parameters all grow with every choice (kernel
size, expand ratio, depth, resolution), and the configs within a memory budget form per
resolution a product of per-stage sets that are closed under taking smaller choices
(:mod:`moofa.efficiency.bounds`). The smallest MACs (or parameters) within a budget is therefore
a per-stage minimum over those sets, and the config that takes the smallest choices everywhere
at the smallest feasible resolution attains the minimum of all three at once; so a set of limits
can be met if and only if each limit is at least its own exact minimum (within the budget).
Tests check that every model attains all minima with one config.

Sampling within several limits draws uniformly within the memory budget without rejection
(:func:`moofa.efficiency.sample_feasible`) and keeps the draws that also meet the MMACs and
parameter limits (a bounded number of rounds); slots still empty are filled by repairing draws,
so the draw is uniform when the extra limits are loose and biased towards the limits when they
are tight. Repair shrinks one choice at a time, so it always ends.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from moofa.config import RunConfig
from moofa.efficiency.bounds import (
    _rng,
    allowed_pairs,
    feasible_resolutions,
    memory_bounds,
    repair_config,
    sample_feasible,
    stage_choices,
)
from moofa.efficiency.flops import count_params, flops, flops_batch, macs_table, params_batch, params_table
from moofa.efficiency.layout import ChoiceTable, resolve
from moofa.efficiency.memory import DEFAULT_OPTIONS, MemoryOptions, peak_memory, peak_memory_batch
from moofa.errors import InfeasibleConstraintError
from moofa.models.spec import N_STAGES, ModelSpec, SubnetConfig, get_model_spec

# Config keys that name each limit in error messages.
LIMIT_KEYS = {"memory": "search_config.constraints", "mmacs": "search_config.max_mmacs",
              "params": "search_config.max_params"}


@dataclass(frozen=True)
class Quantity:
    """A further hard limit on a quantity that never decreases when a choice grows (e.g. a
    target's predicted latency, SRAM or Flash): ``name`` (in :func:`violations`), ``key`` (the
    config key named in errors), ``limit`` and ``batch`` (spec, configs) -> values (N,), in ``unit``."""

    name: str
    key: str
    limit: float
    batch: Callable[[ModelSpec, Sequence[Any]], np.ndarray]
    unit: str = ""

    def values(self, spec: ModelSpec, configs: Sequence[Any]) -> np.ndarray:
        return np.asarray(self.batch(spec, list(configs)), dtype=np.float64)


def _value_of(q: Quantity, spec: ModelSpec) -> Callable[[SubnetConfig], float]:
    """``q``'s value of one config."""
    return lambda c: float(q.values(spec, [c])[0])


@dataclass(frozen=True)
class Limits:
    """Hard limits of a search: ``memory`` (peak, in ``options.unit``; None = no budget),
    ``max_mmacs`` (MMACs), ``max_params`` (parameters of the exported subnet with a classifier
    of ``n_classes``, head included), and ``quantities`` (further monotone limits, e.g. a
    target's predicted latency in ms). None means no limit."""

    memory: float | None = None
    max_mmacs: float | None = None
    max_params: int | None = None
    options: MemoryOptions = DEFAULT_OPTIONS
    n_classes: int = 1000
    quantities: tuple[Quantity, ...] = field(default=(), compare=False)

    @classmethod
    def from_config(cls, cfg: RunConfig, n_classes: int, memory: float | None = None) -> "Limits":
        """The limits of a loaded run config (``memory:`` section, ``search_config.max_mmacs`` /
        ``max_params``) for a classifier of ``n_classes``."""
        sc = cfg.search_config
        return cls(memory, sc.max_mmacs, sc.max_params, MemoryOptions.from_config(cfg, n_classes),
                   n_classes)

    def with_memory(self, memory: float | None) -> "Limits":
        return replace(self, memory=memory)

    @property
    def extra(self) -> bool:
        """Whether a limit besides memory is set."""
        return self.max_mmacs is not None or self.max_params is not None or bool(self.quantities)

    def with_quantities(self, *quantities: Quantity) -> "Limits":
        return replace(self, quantities=self.quantities + tuple(quantities))

    def to_dict(self) -> dict[str, Any]:
        out = {"memory": self.memory, "memory_unit": self.options.unit, "max_mmacs": self.max_mmacs,
               "max_params": self.max_params, "n_classes": self.n_classes}
        for q in self.quantities:
            out[q.key.rsplit(".", 1)[-1]] = q.limit
        return out


def fits_batch(model: "str | ModelSpec", configs: Sequence[Any], limits: Limits,
               peaks: np.ndarray | None = None) -> np.ndarray:
    """Boolean (N,): which configs meet every limit. ``peaks`` (in the memory unit) may be given
    when already known (e.g. from another efficiency model)."""
    spec = get_model_spec(model)
    configs = list(configs)
    ok = np.ones(len(configs), dtype=bool)
    if not configs:
        return ok
    if limits.memory is not None:
        p = peak_memory_batch(spec, configs, options=limits.options) if peaks is None else np.asarray(peaks)
        ok &= p <= limits.memory
    if limits.max_mmacs is not None:
        ok &= flops_batch(spec, configs, n_classes=limits.n_classes) <= limits.max_mmacs
    if limits.max_params is not None:
        ok &= params_batch(spec, configs, n_classes=limits.n_classes) <= limits.max_params
    for q in limits.quantities:
        ok &= q.values(spec, configs) <= q.limit
    return ok


def fits(model: "str | ModelSpec", config: Any, limits: Limits) -> bool:
    """Whether one config meets every limit."""
    return bool(fits_batch(model, [config], limits)[0])


def violations(model: "str | ModelSpec", config: Any, limits: Limits) -> dict[str, float]:
    """``{limit name: value}`` of each limit the config exceeds (memory, mmacs, params)."""
    spec, cfg = resolve(model, config)
    out: dict[str, float] = {}
    if limits.memory is not None and (p := peak_memory(spec, cfg, limits.options)) > limits.memory:
        out["memory"] = p
    if limits.max_mmacs is not None and (m := flops(spec, cfg, limits.n_classes)) > limits.max_mmacs:
        out["mmacs"] = m
    if limits.max_params is not None and (n := count_params(spec, cfg, limits.n_classes)) > limits.max_params:
        out["params"] = n
    for q in limits.quantities:
        if (v := float(q.values(spec, [cfg])[0])) > q.limit:
            out[q.name] = v
    return out


# ------------------------------------------------------------------------------------- minima
def _min_sum_config(spec: ModelSpec, table: ChoiceTable, r: int, memory: float | None,
                    options: MemoryOptions) -> tuple[int, SubnetConfig] | None:
    """The smallest sum of ``table`` (MACs or parameters) over the configs at resolution ``r``
    within ``memory`` (None = any), and a config attaining it; None when none fits."""
    choices = stage_choices(spec, np.inf if memory is None else memory, r, options)
    b = spec.blocks_per_stage
    ks = [min(spec.ks_list)] * spec.n_blocks
    es = [min(spec.expand_list)] * spec.n_blocks
    ds, total = [], table.fixed

    def cheapest(pool: Sequence[Any], i: int) -> Any:
        """The (k, e) pair of ``pool`` with the smallest value of block ``i`` (ties: the smaller pair)."""
        return min(pool, key=lambda p: (table.blocks[i][p], p))

    for sc in choices:
        s = sc.stage
        best: tuple[int, int, list[Any]] | None = None
        for d in sc.depths:
            picks = [cheapest(pool, s * b + j) for j, pool in enumerate(sc.active[d])]
            value = sum(table.blocks[s * b + j][p] for j, p in enumerate(picks))
            if best is None or value < best[0]:
                best = (value, d, picks)
        if best is None:
            return None
        value, d, picks = best
        total += value
        ds.append(d)
        for j in range(b):
            ks[s * b + j], es[s * b + j] = picks[j] if j < d else min(allowed_pairs(spec, d))
    return total, SubnetConfig(tuple(ks), tuple(es), tuple(ds), r)


def minima(model: "str | ModelSpec", limits: Limits | None = None) -> dict[str, Any]:
    """Exact smallest values over all configs of the model, and within ``limits.memory``:
    ``memory`` (unit of the options), ``mmacs``, ``params``; ``mmacs_in_budget`` and
    ``params_in_budget`` (None when the budget admits nothing), and ``config``: one config that
    attains both in-budget minima when one exists (else None)."""
    spec = get_model_spec(model)
    limits = limits or Limits()
    opts, n = limits.options, limits.n_classes
    lo, _ = memory_bounds(spec, None, opts)
    out: dict[str, Any] = {"memory": lo}
    for name, table_of, div in (("mmacs", lambda r: macs_table(spec, r, n), 1e6),
                                ("params", lambda r: params_table(spec, n), None)):
        scale = (lambda v: v / div) if div else (lambda v: int(v))
        allv = [_min_sum_config(spec, table_of(r), r, None, opts) for r in spec.image_sizes]
        out[name] = scale(min(v[0] for v in allv if v is not None))  # no memory limit: none is None
        budget = [v for r in feasible_resolutions(spec, np.inf if limits.memory is None else limits.memory, opts)
                  if (v := _min_sum_config(spec, table_of(r), r, limits.memory, opts)) is not None]
        out[f"{name}_in_budget"] = scale(min(v[0] for v in budget)) if budget else None
        out[f"{name}_config"] = min(budget, key=lambda v: v[0])[1] if budget else None
    both = None
    for c in (out.pop("mmacs_config"), out.pop("params_config")):
        if c is not None and fits(spec, c, replace(limits, max_mmacs=out["mmacs_in_budget"],
                                                   max_params=out["params_in_budget"])):
            both = c
            break
    out["config"] = both
    return out


def check_limits(model: "str | ModelSpec", limits: Limits, file: Any = None,
                 keys: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Raise InfeasibleConstraintError naming the limit that no subnet can meet (and its exact
    minimum); returns :func:`minima` (only ``memory`` when no other limit is set). ``keys``
    overrides the config keys named per limit."""
    spec = get_model_spec(model)
    keys = {**LIMIT_KEYS, **(keys or {})}
    unit = limits.options.unit
    lo, hi = memory_bounds(spec, None, limits.options)
    if limits.memory is not None and limits.memory < lo:
        raise InfeasibleConstraintError(
            f"constraint {limits.memory:,.0f} {unit} is below {spec.name}'s smallest achievable peak "
            f"memory {lo:,} {unit} (minimum {lo}); achievable peaks are {lo:,}..{hi:,}",
            file=file, key=keys["memory"], value=limits.memory)
    if not limits.extra:
        return {"memory": lo}
    mins = minima(spec, limits)
    within = f" within the memory budget {limits.memory:,.0f} {unit}" if limits.memory is not None else ""
    if limits.max_mmacs is not None and mins["mmacs_in_budget"] > limits.max_mmacs:
        raise InfeasibleConstraintError(
            f"max_mmacs {limits.max_mmacs:g} is below {spec.name}'s smallest achievable "
            f"{mins['mmacs_in_budget']:.4f} MMACs{within} (minimum {mins['mmacs_in_budget']:.4f})",
            file=file, key=keys["mmacs"], value=limits.max_mmacs)
    if limits.max_params is not None and mins["params_in_budget"] > limits.max_params:
        raise InfeasibleConstraintError(
            f"max_params {limits.max_params:,} is below {spec.name}'s smallest achievable "
            f"{mins['params_in_budget']:,} parameters{within} (minimum {mins['params_in_budget']})",
            file=file, key=keys["params"], value=limits.max_params)
    if limits.quantities:  # monotone: the smallest choices at the smallest feasible resolution attain each minimum
        rs = feasible_resolutions(spec, np.inf if limits.memory is None else limits.memory, limits.options)
        smallest = spec.min_config(min(rs))
        for q in limits.quantities:
            v = float(q.values(spec, [smallest])[0])
            if v > q.limit:
                raise InfeasibleConstraintError(
                    f"{q.key.rsplit('.', 1)[-1]} {q.limit:g} is below {spec.name}'s smallest achievable "
                    f"{v:,.4g} {q.unit}{within} (minimum {v:.6g})", file=file, key=q.key, value=q.limit)
        if mins["config"] is not None and not fits(spec, mins["config"], limits):
            mins["config"] = smallest
    if limits.extra and (mins["config"] is None or not fits(spec, mins["config"], limits)):
        raise InfeasibleConstraintError(f"{spec.name}: no subnet meets all limits together "
                                        f"({limits.to_dict()})", file=file, key=keys["mmacs"],
                                        value=limits.max_mmacs)
    return mins


# ------------------------------------------------------------------------- sampling and repair
def _smaller(values: Sequence[Any], v: Any) -> Any:
    below = [x for x in sorted(values) if x < v]
    return below[-1] if below else None


def _moves(spec: ModelSpec, subnet: SubnetConfig) -> list[SubnetConfig]:
    """Every config one choice smaller than ``subnet``: the next lower resolution, a stage one
    shallower, an active block's next smaller kernel or expand ratio (CompOFA: e follows d)."""
    out = []
    r = _smaller(spec.image_sizes, subnet.image_size)
    if r is not None:
        out.append(SubnetConfig(subnet.ks, subnet.e, subnet.d, r))
    b = spec.blocks_per_stage
    for s in range(N_STAGES):
        d = _smaller(spec.depth_list, subnet.d[s])
        if d is not None:
            ds = list(subnet.d)
            ds[s] = d
            es = list(subnet.e)
            if spec.compound:
                es[s * b:(s + 1) * b] = [spec.compound_expand(d)] * b
            out.append(SubnetConfig(subnet.ks, tuple(es), tuple(ds), subnet.image_size))
        for i in range(s * b, s * b + subnet.d[s]):
            k = _smaller(spec.ks_list, subnet.ks[i])
            if k is not None:
                ks = list(subnet.ks)
                ks[i] = k
                out.append(SubnetConfig(tuple(ks), subnet.e, subnet.d, subnet.image_size))
            e = None if spec.compound else _smaller(spec.expand_list, subnet.e[i])
            if e is not None:
                es = list(subnet.e)
                es[i] = e
                out.append(SubnetConfig(subnet.ks, tuple(es), subnet.d, subnet.image_size))
    return out


def repair_within(model: "str | ModelSpec", config: Any, limits: Limits,
                  rng: "np.random.Generator | int | None" = None) -> SubnetConfig:
    """The config itself when it meets every limit, else a nearby one that does: memory first
    (:func:`moofa.efficiency.repair_config`), then random one-step shrinks among those that
    lower a violated quantity and keep the others within their limits. Every step makes one
    choice smaller, so it ends; InfeasibleConstraintError when the limits admit no subnet."""
    spec, cfg = resolve(model, config)
    gen = _rng(rng)
    if limits.memory is not None:
        cfg = repair_config(spec, cfg, limits.memory, gen, limits.options)
    bad = violations(spec, cfg, limits)
    while bad:  # bounded: each step lowers one of finitely many choice indices
        quantity: dict[str, Callable[[SubnetConfig], float]] = {
            "mmacs": lambda c: flops(spec, c, limits.n_classes),
            "params": lambda c: count_params(spec, c, limits.n_classes),
            "memory": lambda c: peak_memory(spec, c, limits.options),
            **{q.name: _value_of(q, spec) for q in limits.quantities}}
        good = [m for m in _moves(spec, cfg)
                if all(quantity[q](m) < v for q, v in bad.items())
                and not (set(violations(spec, m, limits)) - set(bad))]
        if not good:
            check_limits(spec, limits)
            raise InfeasibleConstraintError(f"{spec.name}: cannot repair {cfg.to_dict()} to meet "
                                            f"{limits.to_dict()}", key="limits")
        cfg = good[int(gen.integers(len(good)))]
        bad = violations(spec, cfg, limits)
    return cfg


def sample_within(model: "str | ModelSpec", limits: Limits, rng: "np.random.Generator | int | None" = None,
                  n: int = 1, rounds: int = 20) -> list[SubnetConfig]:
    """``n`` configs meeting every limit: uniform draws within the memory budget kept when they
    meet the other limits (at most ``rounds`` batches), the rest repaired (module docstring)."""
    spec = get_model_spec(model)
    gen = _rng(rng)
    memory = np.inf if limits.memory is None else limits.memory
    if not limits.extra:
        return sample_feasible(spec, memory, gen, n, options=limits.options)
    check_limits(spec, limits)
    kept: list[SubnetConfig] = []
    last: list[SubnetConfig] = []
    for _ in range(rounds):
        if len(kept) >= n:
            break
        last = sample_feasible(spec, memory, gen, n, options=limits.options)
        ok = fits_batch(spec, last, limits)
        kept += [c for c, f in zip(last, ok) if f][: n - len(kept)]
    for c in last[: n - len(kept)]:
        kept.append(repair_within(spec, c, limits, gen))
    return kept
