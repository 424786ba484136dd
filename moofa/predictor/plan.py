"""Planning a balanced predictor dataset (docs/dataset.md): peak-memory bins and their quotas,
where the dataset is written, what it already holds (resume), and the candidate subnets drawn per
bin in the order they are measured. Nothing here measures; :mod:`moofa.predictor.create` runs a
:class:`Plan`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from moofa.config import DatasetSettings
from moofa.efficiency import (
    DEFAULT_OPTIONS,
    MemoryOptions,
    count_feasible,
    memory_bounds,
    peak_memory,
    sample_feasible,
)
from moofa.errors import MoofaInputError
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.predictor.dataset import read_jsonl, repair_tail

LOG = logging.getLogger("moofa.create_dataset")

_SEED_MASK = (1 << 63) - 1
OUTPUT_KEY = "dataset_config.output"  # its default is search_config.acc_dataset_path


# ------------------------------------------------------------------------------------------------
# Bins and quotas


@dataclass(frozen=True)
class MemoryBin:
    """One peak-memory bin ``[low, high)`` (elements) and how many full configs of the model
    (all 20 (k, e), 5 depths, one resolution) have their peak in it (0 = unreachable)."""

    index: int
    low: float
    high: float
    n_configs: int

    @property
    def reachable(self) -> bool:
        return self.n_configs > 0

    @property
    def lower(self) -> int:
        """Smallest integer peak inside the bin (elements)."""
        return math.ceil(self.low)

    @property
    def upper(self) -> int:
        """Largest integer peak inside the bin (elements)."""
        return math.ceil(self.high) - 1

    def contains(self, peak: float) -> bool:
        return self.low <= peak < self.high

    def label(self) -> str:
        return f"b{self.index} [{self.low:,.0f}, {self.high:,.0f})"


def memory_bins(spec: ModelSpec, min_memory: float, max_memory: float, n_bins: int,
                options: MemoryOptions | None = None) -> list[MemoryBin]:
    """``n_bins`` equal-width bins between ``min_memory`` and ``max_memory`` (in the unit of the
    memory model ``options``: elements by default), each with its exact number of configs (see
    docs/dataset.md, "Bins and quotas")."""
    if not min_memory < max_memory:
        raise ValueError(f"min_memory: {min_memory} must be below max_memory {max_memory}")
    if n_bins < 1:
        raise ValueError(f"n_bins: expected a positive count, got {n_bins}")
    edges = np.linspace(float(min_memory), float(max_memory), int(n_bins) + 1)
    bins = []
    for i in range(int(n_bins)):
        low, high = float(edges[i]), float(edges[i + 1])
        lo, hi = math.ceil(low), math.ceil(high) - 1
        n = count_feasible(spec, hi, lower=lo, options=options) if lo <= hi else 0
        bins.append(MemoryBin(i, low, high, int(n)))
    return bins


def bin_index(bins: Sequence[MemoryBin], peak: float) -> int | None:
    """Index of the bin holding ``peak`` (elements), or None outside every bin."""
    for b in bins:
        if b.contains(peak):
            return b.index
    return None


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder (Hamilton) apportionment of ``total`` over ``weights`` (>= 0): integer
    shares that add up to ``total``; ties in the remainders go to the lower index."""
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or w.size == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"apportion: need total >= 0 and non-negative weights with a positive sum, "
                         f"got total={total}, weights={list(weights)}")
    exact = total * w / w.sum()
    shares = np.floor(exact).astype(np.int64)
    order = sorted(range(w.size), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - int(shares.sum())]:
        shares[i] += 1
    return [int(s) for s in shares]


def bin_quotas(bins: Sequence[MemoryBin], n_samples: int) -> dict[int, int]:
    """Samples per reachable bin (``{bin index: count}``, ascending), adding up to ``n_samples``."""
    reachable = [b.index for b in bins if b.reachable]
    if not reachable:
        return {}
    return dict(zip(reachable, apportion(int(n_samples), [1.0] * len(reachable))))


def check_bins(spec: ModelSpec, dc: DatasetSettings,
               options: MemoryOptions | None = None) -> tuple[list[MemoryBin], dict[int, int]]:
    """Bins and quotas of ``dataset_config`` ``dc`` under the memory model ``options``;
    MoofaInputError when no bin is reachable."""
    bins = memory_bins(spec, dc.min_memory, dc.max_memory, dc.n_bins, options)
    quotas = bin_quotas(bins, dc.n_samples)
    if not quotas:
        lo, hi = memory_bounds(spec, None, options)
        unit = (options or DEFAULT_OPTIONS).unit
        raise MoofaInputError(f"no memory bin holds a subnet of {spec.name}, whose peaks range over "
                              f"{lo}..{hi} {unit}", key="dataset_config.min_memory/max_memory",
                              value=[dc.min_memory, dc.max_memory])
    return bins, quotas


# ------------------------------------------------------------------------------------------------
# Output files


@dataclass(frozen=True)
class OutputPaths:
    """The append-only JSON Lines file, and the reference-format pickle written from it at the
    end of every run when the configured output ends in ``.pkl`` (else None)."""

    jsonl: Path
    pickle: Path | None = None


def output_paths(output: str | Path) -> OutputPaths:
    """``x.jsonl`` -> itself; ``x.pkl`` (the reference configs' acc_dataset_path) -> records in
    ``x.jsonl`` next to it and the merged reference pickle at ``x.pkl``. Other suffixes, folders
    (the reference's per-GPU layout) and a foreign ``x.pkl`` are refused."""
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        paths = OutputPaths(path)
    elif suffix in (".pkl", ".pickle"):
        paths = OutputPaths(path.with_suffix(".jsonl"), path)
    else:
        raise MoofaInputError("the dataset file must end in .jsonl (or .pkl for a reference-format "
                              "copy)", key=OUTPUT_KEY, value=str(output))
    for p in (paths.jsonl, paths.pickle):
        if p is not None and p.exists() and not p.is_file():
            raise MoofaInputError("is a folder, not a dataset file (the reference kept per-GPU pickles "
                                  "there); choose another path", file=p, key=OUTPUT_KEY)
    if paths.pickle is not None and paths.pickle.exists() and not paths.jsonl.exists():
        raise MoofaInputError(f"exists but was not written by this script (no {paths.jsonl.name} "
                              "beside it) and would be overwritten; move it or choose another path",
                              file=paths.pickle, key=OUTPUT_KEY)
    return paths


# ------------------------------------------------------------------------------------------------
# Existing records (resume)


@dataclass
class ExistingData:
    """What the output already holds: canonical configs, per-bin counts (keys are bin indices)
    and the number of records outside every bin."""

    n_records: int = 0
    keys: set = field(default_factory=set)
    per_bin: dict[int, int] = field(default_factory=dict)
    outside: int = 0
    repaired_bytes: int = 0


def read_existing(path: Path, spec: ModelSpec, bins: Sequence[MemoryBin],
                  options: MemoryOptions | None = None) -> ExistingData:
    """Read the records already in the JSON Lines file ``path`` (missing or empty = none) and
    count them per bin by their recomputed peak memory. A partial last line (a kill during an
    append) is cut off first. A malformed record or one of another model raises
    :class:`MoofaInputError` naming the file and line."""
    out = ExistingData()
    if not path.is_file():
        return out
    out.repaired_bytes = repair_tail(path)
    if path.stat().st_size == 0:
        return out
    for cfg in read_jsonl(path, spec).configs:
        out.n_records += 1
        out.keys.add(cfg.canonical(spec))
        b = bin_index(bins, peak_memory(spec, cfg, options))
        if b is None:
            out.outside += 1
        else:
            out.per_bin[b] = out.per_bin.get(b, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------
# Candidates


@dataclass
class BinDraw:
    """New candidates of one bin, the draws (attempts) it took, its budget and how many it
    still lacks (0 = the bin reaches its quota)."""

    index: int
    configs: list[SubnetConfig]
    attempts: int
    budget: int
    missing: int


def bin_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of bin ``index``: depends only on (seed, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & _SEED_MASK, int(index)]))


def draw_bin(spec: ModelSpec, b: MemoryBin, quota: int, have: int, existing: set, seed: int,
             budget: int, chunk: int = 64, options: MemoryOptions | None = None) -> BinDraw:
    """Unique new candidates for bin ``b`` until ``have`` + new = ``quota`` or ``budget`` draws.

    The draw sequence is fixed by (seed, b.index); a candidate already in ``existing`` (canonical
    configs) or drawn before is skipped. Drawing in chunks gives the same sequence as drawing one
    at a time (sample_feasible consumes the generator sample by sample)."""
    need = quota - have
    configs: list[SubnetConfig] = []
    attempts = 0
    if need <= 0 or not b.reachable:
        return BinDraw(b.index, configs, 0, budget, 0)
    rng = bin_rng(seed, b.index)
    seen: set = set()
    while len(configs) < need and attempts < budget:
        n = min(budget - attempts, max(chunk, 2 * (need - len(configs))))
        for cfg in sample_feasible(spec, b.upper, rng, n=n, lower=b.lower, options=options):
            attempts += 1
            key = cfg.canonical(spec)
            if key in seen:
                continue
            seen.add(key)
            if key in existing:
                continue
            configs.append(cfg)
            if len(configs) == need:
                break
    return BinDraw(b.index, configs, attempts, budget, need - len(configs))


def interleave(draws: Sequence[BinDraw], have: Mapping[int, int],
               quotas: Mapping[int, int]) -> list[tuple[int, SubnetConfig]]:
    """All candidates as ``(bin, config)``, ordered so that the bins' fill fractions stay level:
    next is always the bin with the lowest (count / quota) (ties: lower index)."""
    count = {d.index: have.get(d.index, 0) for d in draws}
    pos = {d.index: 0 for d in draws}
    lists = {d.index: d.configs for d in draws}
    total = sum(len(d.configs) for d in draws)
    order: list[tuple[int, SubnetConfig]] = []
    while len(order) < total:  # bounded: one candidate per pass
        i = min((j for j in lists if pos[j] < len(lists[j])), key=lambda j: (count[j] / max(quotas[j], 1), j))
        order.append((i, lists[i][pos[i]]))
        pos[i] += 1
        count[i] += 1
    return order


@dataclass
class Plan:
    """What a run does: bins, quotas, what exists, the draws per bin and the ordered
    candidates ``(bin, config)``."""

    spec: ModelSpec
    paths: OutputPaths
    bins: list[MemoryBin]
    quotas: dict[int, int]
    existing: ExistingData
    draws: list[BinDraw]
    candidates: list[tuple[int, SubnetConfig]]
    options: MemoryOptions = DEFAULT_OPTIONS

    @property
    def shortfall(self) -> dict[int, int]:
        """``{bin: subnets missing}`` for the bins that stay below their quota."""
        return {d.index: d.missing for d in self.draws if d.missing}


def plan_run(spec: ModelSpec, dc: DatasetSettings, options: MemoryOptions | None = None) -> Plan:
    """Bins, quotas, resume state and candidates of ``dataset_config`` ``dc`` (with ``output``
    resolved) under the memory model ``options``. Reads the output file: call on one rank."""
    options = options or DEFAULT_OPTIONS
    paths = output_paths(dc.output or "")  # load_config fills output
    bins, quotas = check_bins(spec, dc, options)
    existing = read_existing(paths.jsonl, spec, bins, options)
    idx = list(quotas)
    budgets = dict(zip(idx, apportion(dc.max_attempts, [quotas[i] for i in idx])))
    draws = [draw_bin(spec, bins[i], quotas[i], existing.per_bin.get(i, 0), existing.keys,
                      dc.seed, budgets[i], options=options) for i in idx]
    return Plan(spec, paths, bins, quotas, existing, draws, interleave(draws, existing.per_bin, quotas),
                options)


def log_plan(plan: Plan, world: int) -> None:
    """Log lines: bounds, skipped bins, quotas, resume state, shortfalls and the work ahead."""
    spec, ex = plan.spec, plan.existing
    lo, hi = memory_bounds(spec, None, plan.options)
    LOG.info("%s: peaks range over %s..%s %s (memory model: %s); dataset %s", spec.name, f"{lo:,}",
             f"{hi:,}", plan.options.unit, plan.options.describe(), plan.paths.jsonl)
    skipped = [b for b in plan.bins if not b.reachable]
    if skipped:
        LOG.info("skipping %d unreachable bin(s) (no subnet of %s has its peak there): %s",
                 len(skipped), spec.name, ", ".join(b.label() for b in skipped))
    for i, q in plan.quotas.items():
        LOG.info("bin %s: quota %d, present %d", plan.bins[i].label(), q, ex.per_bin.get(i, 0))
    if ex.repaired_bytes:
        LOG.warning("cut off a partial last line (%d bytes) left by an interrupted run in %s",
                    ex.repaired_bytes, plan.paths.jsonl)
    if ex.n_records:
        LOG.info("resuming: %d record(s) already in %s", ex.n_records, plan.paths.jsonl)
    if ex.outside:
        LOG.warning("%d existing record(s) lie outside every bin (kept, not counted)", ex.outside)
    over = {i: ex.per_bin[i] - q for i, q in plan.quotas.items() if ex.per_bin.get(i, 0) > q}
    if over:
        LOG.warning("bins already above their quota (kept): %s", over)
    for d in plan.draws:
        if d.missing:
            LOG.warning("bin %s: only %d new unique subnet(s) in %d attempts (its share of "
                        "dataset_config.max_attempts); it will stay %d short",
                        plan.bins[d.index].label(), len(d.configs), d.attempts, d.missing)
    LOG.info("%d subnet(s) to measure on %d process(es)", len(plan.candidates), world)
