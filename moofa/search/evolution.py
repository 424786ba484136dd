"""Memory-constrained regularised evolution (docs/design.md#search-space, with the fixes of
docs/design.md#departures-from-the-reference).

One run per constraint C (peak memory, elements):

1. initial population: ``population_size`` configs drawn uniformly among those with peak <= C
   (:func:`moofa.efficiency.sample_feasible`: the distribution of the reference's
   sample-until-feasible loop, without the loop), scored by the predictor in one batch;
2. each generation: keep the top ``parent_ratio`` of the population by predicted accuracy
   (fraction) as parents, then add ``mutation_ratio`` of the population as mutants (a uniform
   parent, resolution mutated with ``resolution_mutate_prob``, then every block's (k, e) and
   every stage's depth with ``arch_mutate_prob``) and the rest as crossovers (every gene from
   either of two uniform parents), all scored in one predictor batch;
3. the best individual over every scored config is returned, the last generation's children
   included (the reference never looked at them, docs/design.md#departures-from-the-reference).

With a :class:`moofa.search.robust.RobustFitness` as the scorer, individuals carry its calibrated
mean, uncertainty and distance to the measured data, and the initial population starts from the
data: the ``seeds`` given (the previous budget's answer and candidates in a sweep), then the most
accurate measured subnets that fit, filled up to ``population_size`` with their mutants (random
feasible subnets only when neither exists). The ``top_k`` best distinct unmeasured candidates seen
are kept (for re-ranking by measurement).

Efficiency is the exact analytic peak memory (vectorised over a batch, docs/design.md#memory-model) unless another
efficiency function is given (the benchmark passes the reference's build-and-run measurement).
A child over the constraint is re-drawn from the same parent(s) at most ``max_tries`` times in
all (the reference looped forever), then repaired constraint-aware
(:func:`moofa.efficiency.repair_config`), and as a last resort replaced by its feasible parent.
Optional hard limits on MMACs and parameters (``search_config.max_mmacs`` / ``max_params``,
:class:`moofa.efficiency.limits.Limits`) apply to the initial population, to every child and to
repair in the same way; peaks are in the unit of the memory model (``memory:``; elements by
default). All randomness comes from one seed mixed with the constraint, so a constraint's result does not
depend on the other constraints of the sweep.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from moofa import preempt
from moofa.config import SearchSettings
from moofa.efficiency import (
    MemoryOptions,
    memory_bounds,
    peak_memory,
    peak_memory_batch,
)
from moofa.efficiency.limits import Limits, check_limits, fits_batch, repair_within, sample_within
from moofa.errors import InfeasibleConstraintError
from moofa.models.space import SearchSpace
from moofa.models.spec import ModelSpec, SubnetConfig, get_model_spec
from moofa.search.robust import Estimates, RobustFitness

Scorer = Callable[[list[SubnetConfig]], "np.ndarray | Sequence[float] | Estimates"]


class Individual(NamedTuple):
    """A scored subnet: fitness (the predicted accuracy, fraction; the robust fitness when one is
    used), config, peak memory (elements); with a robust fitness also the calibrated predicted
    accuracy ``mean`` and its standard deviation ``std`` (fractions), the gene distance to the
    nearest measured subnet and whether it is itself measured (then mean = its measurement)."""

    accuracy: float
    config: SubnetConfig
    peak: int
    mean: float | None = None
    std: float = 0.0
    distance: float = float("inf")
    measured: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"fitness": self.accuracy, "config": self.config.to_dict(), "peak_memory": int(self.peak),
                "mean": self.accuracy if self.mean is None else self.mean, "std": self.std,
                "distance": None if self.distance == float("inf") else self.distance,
                "measured": self.measured}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Individual:
        dist = d.get("distance")
        return cls(float(d["fitness"]), SubnetConfig.from_dict(d["config"]), int(d["peak_memory"]),
                   float(d["mean"]), float(d["std"]), float("inf") if dist is None else float(dist),
                   bool(d["measured"]))

    @property
    def predicted(self) -> float:
        """The predicted accuracy to report (calibrated mean when known, else the fitness)."""
        return self.accuracy if self.mean is None else self.mean


@dataclass
class OperatorStats:
    """How children were obtained: draws tried, children repaired, children replaced by a parent."""

    draws: int = 0
    repaired: int = 0
    fallback: int = 0


@dataclass
class SearchResult:
    """Outcome of one search: the best individual, the best predicted accuracy after the initial
    population and after each generation (fractions), the number of scored configs, wall time
    (seconds) and operator statistics."""

    constraint: int
    best: Individual
    history: list[float]
    n_scored: int
    seconds: float
    settings: SearchSettings
    stats: OperatorStats = field(default_factory=OperatorStats)
    top: list[Individual] = field(default_factory=list)  # best distinct unmeasured, descending

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what rank 0 broadcasts and what info.json records)."""
        return {"constraint": self.constraint, "predicted_accuracy": self.best.accuracy,
                "config": self.best.config.to_dict(), "peak_memory": int(self.best.peak),
                "best": self.best.to_dict(), "top": [t.to_dict() for t in self.top],
                "history": list(self.history), "n_scored": self.n_scored, "seconds": self.seconds,
                "settings": self.settings.to_dict(), "stats": asdict(self.stats)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        if "best" in data:
            best = Individual.from_dict(data["best"])
        else:
            best = Individual(float(data["predicted_accuracy"]), SubnetConfig.from_dict(data["config"]),
                              int(data["peak_memory"]))
        return cls(int(data["constraint"]), best, list(data["history"]), int(data["n_scored"]),
                   float(data["seconds"]), SearchSettings(**data["settings"]),
                   OperatorStats(**data["stats"]), [Individual.from_dict(t) for t in data.get("top", [])])


def check_constraints(model: str | ModelSpec, constraints: Iterable[float],
                      options: MemoryOptions | None = None, key: str = "search_config.constraints",
                      file: Any = None, limits: Limits | None = None) -> int:
    """Raise InfeasibleConstraintError (naming the model's exact minimum peak, or the MMACs /
    parameter limit that no subnet within a constraint meets, with its minimum) if any
    constraint cannot be met; returns the minimum peak (in the memory model's unit)."""
    spec = get_model_spec(model)
    limits = limits or Limits(options=options or MemoryOptions())
    lo, _ = memory_bounds(spec, None, limits.options)
    for c in sorted(constraints):
        check_limits(spec, limits.with_memory(c), file=file, keys={"memory": key})
    return lo


def constraint_seed(seed: int, constraint: float) -> np.random.SeedSequence:
    """The seed sequence of one constraint's search: (search seed, integer constraint)."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(round(constraint))])


@contextmanager
def single_thread():
    """Run torch on one intra-op thread: the predictor's batches (<= population size rows) are
    too small to gain from threads, and on a shared CPU the threads cost more than they save."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class EvolutionFinder:
    """Regularised evolution over one model's subnets under a peak-memory constraint.

    ``predict(configs) -> accuracies`` (fractions) scores a batch; ``efficiency(configs) ->
    peaks`` (elements) defaults to the exact analytic peak memory.
    """

    def __init__(self, model: str | ModelSpec, predict: Scorer,
                 settings: SearchSettings | None = None, efficiency: Scorer | None = None,
                 memory_options: MemoryOptions | None = None, limits: Limits | None = None) -> None:
        self.spec = get_model_spec(model)
        self.space = SearchSpace(self.spec)
        self.settings = settings or SearchSettings()
        # MMACs / parameter limits (``limits.memory`` is replaced by each search's constraint)
        self.limits = limits or Limits(options=memory_options or MemoryOptions())
        self.options = self.limits.options
        self._predict = predict
        self._efficiency = efficiency or (lambda cs: peak_memory_batch(self.spec, cs, options=self.options))

    # ---------------------------------------------------------------------------------- scoring
    def peaks(self, configs: list[SubnetConfig]) -> np.ndarray:
        """Peak memory (elements, int64) of a batch."""
        return np.asarray(self._efficiency(configs), dtype=np.int64).reshape(len(configs))

    def scores(self, configs: list[SubnetConfig]) -> np.ndarray:
        """Fitness (predicted accuracy, fractions, float64) of a batch."""
        out = self._predict(configs)
        acc = np.asarray(out.fitness if isinstance(out, Estimates) else out,
                         dtype=np.float64).reshape(len(configs))
        if not np.isfinite(acc).all():
            raise ValueError("predictor returned a non-finite accuracy")
        return acc

    def individuals(self, configs: list[SubnetConfig], peaks: np.ndarray) -> list[Individual]:
        """Score a batch of configs with their peaks (elements) into individuals."""
        out = self._predict(configs)
        if not isinstance(out, Estimates):
            acc = np.asarray(out, dtype=np.float64).reshape(len(configs))
            if not np.isfinite(acc).all():
                raise ValueError("predictor returned a non-finite accuracy")
            return [Individual(float(a), c, int(p)) for a, c, p in zip(acc, configs, peaks)]
        return [Individual(float(out.fitness[i]), c, int(peaks[i]), float(out.mean[i]),
                           float(out.std[i]), float(out.distance[i]), bool(out.measured[i]))
                for i, c in enumerate(configs)]

    # -------------------------------------------------------------------------------- children
    def _children(self, make: Callable[[int], SubnetConfig], fallback: Callable[[int], Individual],
                  n: int, constraint: float, rng_np: np.random.Generator,
                  stats: OperatorStats) -> tuple[list[SubnetConfig], np.ndarray]:
        """``n`` children that fit ``constraint``: slot i is drawn by ``make(i)`` up to max_tries
        times (batched), then repaired, then replaced by ``fallback(i)`` (a feasible parent)."""
        limits = self.limits.with_memory(constraint)
        children = [make(i) for i in range(n)]
        peaks = self.peaks(children)
        stats.draws += n
        bad = np.flatnonzero(~fits_batch(self.spec, children, limits, peaks))
        for _ in range(self.settings.max_tries - 1):
            if bad.size == 0:
                break
            for i in bad:
                children[i] = make(int(i))
            peaks[bad] = self.peaks([children[i] for i in bad])
            stats.draws += int(bad.size)
            bad = bad[~fits_batch(self.spec, [children[i] for i in bad], limits, peaks[bad])]
        for i in bad:
            fixed = repair_within(self.spec, children[i], limits, rng_np)
            p = int(self.peaks([fixed])[0])
            if fits_batch(self.spec, [fixed], limits, np.array([p]))[0]:
                children[i], peaks[i] = fixed, p
                stats.repaired += 1
            else:
                parent = fallback(int(i))
                children[i], peaks[i] = parent.config, parent.peak
                stats.fallback += 1
        return children, peaks

    def _generation(self, parents: list[Individual], constraint: float, rng: random.Random,
                    rng_np: np.random.Generator, stats: OperatorStats) -> list[Individual]:
        s, space, n_par = self.settings, self.space, len(parents)
        mut_parent = [rng.randrange(n_par) for _ in range(s.n_mutants)]
        cross_parents = [(rng.randrange(n_par), rng.randrange(n_par)) for _ in range(s.n_crossovers)]
        mutants, mut_peaks = self._children(
            lambda i: space.mutate(parents[mut_parent[i]].config, s.arch_mutate_prob,
                                   s.resolution_mutate_prob, rng),
            lambda i: parents[mut_parent[i]], s.n_mutants, constraint, rng_np, stats)
        crosses, cross_peaks = self._children(
            lambda i: space.crossover(parents[cross_parents[i][0]].config,
                                      parents[cross_parents[i][1]].config, rng),
            lambda i: parents[cross_parents[i][rng.randrange(2)]], s.n_crossovers, constraint,
            rng_np, stats)
        configs = mutants + crosses
        peaks = np.concatenate([mut_peaks, cross_peaks])
        return self.individuals(configs, peaks)

    # ---------------------------------------------------------------------------------- search
    def search(self, constraint: float, progress: bool = False, seeds: Sequence[SubnetConfig] = (),
               top_k: int = 0) -> SearchResult:
        """Run the evolution under ``constraint`` (elements); deterministic for a given seed.
        ``seeds``: configs (fitting the constraint) that start the population; ``top_k``: how many
        best distinct unmeasured candidates to return in ``SearchResult.top``."""
        with single_thread():
            return self._search(constraint, progress, list(seeds), int(top_k))

    def _initial(self, constraint: float, seeds: list[SubnetConfig], rng: random.Random,
                 rng_np: np.random.Generator, stats: OperatorStats) -> tuple[list[SubnetConfig], np.ndarray]:
        """The initial population: seeds, then measured subnets that fit, filled with their
        mutants; uniform feasible samples when there is neither (see the module docstring)."""
        s = self.settings
        limits = self.limits.with_memory(constraint)
        start = list(seeds)
        fitness = self._predict if isinstance(self._predict, RobustFitness) else None
        if fitness is not None:
            measured = [fitness.configs[i] for i in fitness.measured_fitting(constraint, s.population_size)]
            if measured:  # the MMACs / parameter limits too
                keep = fits_batch(self.spec, measured, limits, self.peaks(measured))
                start += [c for c, ok in zip(measured, keep) if ok]
        if not start:
            configs = sample_within(self.spec, limits, rng_np, s.population_size)
            return configs, self.peaks(configs)
        unique: dict[tuple, SubnetConfig] = {}
        for c in start:
            k = c.canonical(self.spec)
            unique.setdefault((k.ks, k.e, k.d, k.image_size), c)
        configs = list(unique.values())[:s.population_size]
        peaks = self.peaks(configs)
        if not fits_batch(self.spec, configs, limits, peaks).all():
            raise ValueError("a seed of the initial population does not fit the limits")
        base = [Individual(0.0, c, int(p)) for c, p in zip(configs, peaks)]
        n_fill = s.population_size - len(configs)
        if n_fill > 0:
            src = [rng.randrange(len(base)) for _ in range(n_fill)]
            fill, fill_peaks = self._children(
                lambda i: self.space.mutate(base[src[i]].config, s.arch_mutate_prob,
                                            s.resolution_mutate_prob, rng),
                lambda i: base[src[i]], n_fill, constraint, rng_np, stats)
            configs, peaks = configs + fill, np.concatenate([peaks, fill_peaks])
        return configs, peaks

    def _search(self, constraint: float, progress: bool, seeds: list[SubnetConfig],
                top_k: int) -> SearchResult:
        t0 = time.perf_counter()
        check_constraints(self.spec, [constraint], key="constraint", limits=self.limits)
        s = self.settings
        seq = constraint_seed(s.seed, constraint)
        rng_np = np.random.default_rng(seq.spawn(1)[0])
        rng = random.Random(int(seq.generate_state(1, dtype=np.uint64)[0]))
        stats = OperatorStats()
        configs, peaks = self._initial(constraint, seeds, rng, rng_np, stats)
        if not fits_batch(self.spec, configs, self.limits.with_memory(constraint), peaks).all():
            raise RuntimeError("the initial population has a config over the limits")  # guards a custom model
        population = self.individuals(configs, peaks)
        archive = _TopK(top_k, self.spec)
        archive.offer(population)
        best = max(population, key=lambda ind: ind.accuracy)
        history = [best.accuracy]
        n_scored = len(population)
        bar = tqdm(total=s.generations, desc=f"search <= {int(constraint):,}", disable=not progress,
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        for _ in range(s.generations):
            preempt.check()  # a stop signal lost in a garbage-collection callback
            parents = sorted(population, key=lambda ind: -ind.accuracy)[:s.n_parents]
            children = self._generation(parents, constraint, rng, rng_np, stats)
            archive.offer(children)
            n_scored += len(children)
            top = max(children, key=lambda ind: ind.accuracy)
            if top.accuracy > best.accuracy:
                best = top
            population = parents + children
            history.append(best.accuracy)
            bar.set_postfix_str(f"best {100 * best.accuracy:.2f}% (predicted)", refresh=False)
            bar.update()
        bar.close()
        return SearchResult(int(round(constraint)), best, history, n_scored,
                            time.perf_counter() - t0, s, stats, archive.best())


def monotone_answer(previous: Individual | None, found: Individual) -> Individual:
    """The answer under a budget given the previous (smaller) budget's answer, which also fits:
    the found subnet only when neither its fitness nor its predicted accuracy is lower, so both
    never drop as the budget grows."""
    if previous is None:
        return found
    if found.accuracy >= previous.accuracy and found.predicted >= previous.predicted:
        return found
    return previous


def search_budget(finder: EvolutionFinder, constraint: float, previous: Individual | None = None,
                  previous_top: Sequence[Individual] = (), top_k: int = 10,
                  progress: bool = False) -> tuple[SearchResult, Individual]:
    """One budget of a sweep: the search seeded with the previous (smaller) budget's answer and
    candidates, and the monotone answer (:func:`monotone_answer`)."""
    seeds = [] if previous is None else [previous.config] + [t.config for t in previous_top]
    result = finder.search(constraint, progress=progress, seeds=seeds, top_k=top_k)
    return result, monotone_answer(previous, result.best)


def search_sweep(finder: EvolutionFinder, constraints: Iterable[float], top_k: int = 10,
                 progress: bool = False) -> list[tuple[SearchResult, Individual]]:
    """Search every constraint in ascending order, each starting from the previous answer
    (what ``eval_and_search.py --mode search`` does without evaluation)."""
    out: list[tuple[SearchResult, Individual]] = []
    previous: Individual | None = None
    top: list[Individual] = []
    for c in sorted(constraints):
        result, previous = search_budget(finder, c, previous, top, top_k, progress)
        top = result.top
        out.append((result, previous))
    return out


def _network_key(subnet: SubnetConfig, blocks_per_stage: int) -> tuple:
    """(ks, e of the active blocks, d, image_size): equal for configs of the same network (a
    cheaper :meth:`SubnetConfig.canonical`)."""
    active = [s * blocks_per_stage + j for s, n in enumerate(subnet.d) for j in range(n)]
    return (tuple(subnet.ks[i] for i in active), tuple(subnet.e[i] for i in active), subnet.d, subnet.image_size)


class _TopK:
    """The ``k`` best distinct (canonical config) unmeasured individuals offered so far."""

    def __init__(self, k: int, spec: ModelSpec) -> None:
        self.k, self.spec = k, spec
        self.items: dict[tuple, Individual] = {}
        self.threshold = -float("inf")

    def offer(self, individuals: Iterable[Individual]) -> None:
        if self.k <= 0:
            return
        for ind in individuals:
            if ind.measured or ind.accuracy <= self.threshold:
                continue
            key = _network_key(ind.config, self.spec.blocks_per_stage)
            old = self.items.get(key)
            if old is not None and old.accuracy >= ind.accuracy:
                continue
            self.items[key] = ind
            if len(self.items) > self.k:
                worst = min(self.items, key=lambda q: self.items[q].accuracy)
                del self.items[worst]
            if len(self.items) == self.k:
                self.threshold = min(v.accuracy for v in self.items.values())

    def best(self) -> list[Individual]:
        return sorted(self.items.values(), key=lambda ind: -ind.accuracy)


def random_configs(model: str | ModelSpec, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` uniform random configs as arrays (:meth:`SearchSpace.sample_arrays`)."""
    return SearchSpace(model).sample_arrays(n, rng)


def random_search_baseline(model: str | ModelSpec, predict: Scorer, constraint: float, n: int,
                           rng: np.random.Generator, batch: int = 100_000, max_draws: int = 10_000_000,
                           options: MemoryOptions | None = None) -> Individual:
    """Best predicted of the first ``n`` uniform random configs (:func:`random_configs`) that fit
    ``constraint`` (filtered with the vectorised analytic peak); at most ``max_draws`` draws.
    Raises InfeasibleConstraintError if fewer than ``n`` fit within that budget."""
    spec = get_model_spec(model)
    kept: list[SubnetConfig] = []
    drawn = 0
    while len(kept) < n and drawn < max_draws:
        m = min(batch, max_draws - drawn)
        a = random_configs(spec, m, rng)
        drawn += m
        ok = np.flatnonzero(peak_memory_batch(spec, options=options, **a) <= constraint)
        for i in ok[: n - len(kept)]:
            kept.append(SubnetConfig(a["ks"][i], a["e"][i], a["d"][i], a["image_size"][i]))
    if len(kept) < n:
        raise InfeasibleConstraintError(f"only {len(kept)} of {drawn} random configs fit; "
                                        f"{n} needed", key="constraint", value=constraint)
    acc = np.asarray(predict(kept), dtype=np.float64).reshape(n)
    i = int(np.argmax(acc))
    return Individual(float(acc[i]), kept[i], int(peak_memory(spec, kept[i], options)))
