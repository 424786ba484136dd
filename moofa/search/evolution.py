"""Memory-constrained regularised evolution (SPEC 7.3, with the fixes of SPEC 10 items 10-17).

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
   included (the reference never looked at them, SPEC 10 item 12).

Efficiency is the exact analytic peak memory (vectorised over a batch, SPEC 4.2) unless another
efficiency function is given (the benchmark passes the reference's build-and-run measurement).
A child over the constraint is re-drawn from the same parent(s) at most ``max_tries`` times in
all (the reference looped forever), then repaired constraint-aware
(:func:`moofa.efficiency.repair_config`), and as a last resort replaced by its feasible parent.
All randomness comes from one seed mixed with the constraint, so a constraint's result does not
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

from moofa.efficiency import (
    MemoryOptions,
    memory_bounds,
    peak_memory,
    peak_memory_batch,
    repair_config,
    sample_feasible,
)
from moofa.config import SearchSettings
from moofa.errors import InfeasibleConstraintError
from moofa.models.space import SearchSpace
from moofa.models.spec import ModelSpec, SubnetConfig, get_model_spec

Scorer = Callable[[list[SubnetConfig]], "np.ndarray | Sequence[float]"]


class Individual(NamedTuple):
    """A scored subnet: predicted accuracy (fraction), config, peak memory (elements)."""

    accuracy: float
    config: SubnetConfig
    peak: int


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what rank 0 broadcasts and what info.json records)."""
        return {"constraint": self.constraint, "predicted_accuracy": self.best.accuracy,
                "config": self.best.config.to_dict(), "peak_memory": int(self.best.peak),
                "history": list(self.history), "n_scored": self.n_scored, "seconds": self.seconds,
                "settings": self.settings.to_dict(), "stats": asdict(self.stats)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        best = Individual(float(data["predicted_accuracy"]), SubnetConfig.from_dict(data["config"]),
                          int(data["peak_memory"]))
        return cls(int(data["constraint"]), best, list(data["history"]), int(data["n_scored"]),
                   float(data["seconds"]), SearchSettings(**data["settings"]),
                   OperatorStats(**data["stats"]))


def check_constraints(model: str | ModelSpec, constraints: Iterable[float],
                      options: MemoryOptions | None = None, key: str = "search_config.constraints",
                      file: Any = None) -> int:
    """Raise InfeasibleConstraintError (naming the model's exact minimum peak) if any constraint
    is below it; returns the minimum (elements)."""
    spec = get_model_spec(model)
    lo, hi = memory_bounds(spec, None, options)
    for c in constraints:
        if c < lo:
            raise InfeasibleConstraintError(
                f"constraint {c:,.0f} elements is below {spec.name}'s smallest achievable peak "
                f"memory {lo:,} elements (minimum {lo}); achievable peaks are {lo:,}..{hi:,}",
                file=file, key=key, value=c)
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
                 memory_options: MemoryOptions | None = None) -> None:
        self.spec = get_model_spec(model)
        self.space = SearchSpace(self.spec)
        self.settings = settings or SearchSettings()
        self.options = memory_options
        self._predict = predict
        self._efficiency = efficiency or (lambda cs: peak_memory_batch(self.spec, cs, options=self.options))

    # ---------------------------------------------------------------------------------- scoring
    def peaks(self, configs: list[SubnetConfig]) -> np.ndarray:
        """Peak memory (elements, int64) of a batch."""
        return np.asarray(self._efficiency(configs), dtype=np.int64).reshape(len(configs))

    def scores(self, configs: list[SubnetConfig]) -> np.ndarray:
        """Predicted accuracy (fractions, float64) of a batch."""
        acc = np.asarray(self._predict(configs), dtype=np.float64).reshape(len(configs))
        if not np.isfinite(acc).all():
            raise ValueError("predictor returned a non-finite accuracy")
        return acc

    # -------------------------------------------------------------------------------- children
    def _children(self, make: Callable[[int], SubnetConfig], fallback: Callable[[int], Individual],
                  n: int, constraint: float, rng_np: np.random.Generator,
                  stats: OperatorStats) -> tuple[list[SubnetConfig], np.ndarray]:
        """``n`` children that fit ``constraint``: slot i is drawn by ``make(i)`` up to max_tries
        times (batched), then repaired, then replaced by ``fallback(i)`` (a feasible parent)."""
        children = [make(i) for i in range(n)]
        peaks = self.peaks(children)
        stats.draws += n
        bad = np.flatnonzero(peaks > constraint)
        for _ in range(self.settings.max_tries - 1):
            if bad.size == 0:
                break
            for i in bad:
                children[i] = make(int(i))
            peaks[bad] = self.peaks([children[i] for i in bad])
            stats.draws += int(bad.size)
            bad = bad[peaks[bad] > constraint]
        for i in bad:
            fixed = repair_config(self.spec, children[i], constraint, rng_np, self.options)
            p = int(self.peaks([fixed])[0])
            if p <= constraint:
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
        acc = self.scores(configs)
        return [Individual(float(a), c, int(p)) for a, c, p in zip(acc, configs, peaks)]

    # ---------------------------------------------------------------------------------- search
    def search(self, constraint: float, progress: bool = False) -> SearchResult:
        """Run the evolution under ``constraint`` (elements); deterministic for a given seed."""
        with single_thread():
            return self._search(constraint, progress)

    def _search(self, constraint: float, progress: bool) -> SearchResult:
        t0 = time.perf_counter()
        check_constraints(self.spec, [constraint], self.options, key="constraint")
        s = self.settings
        seq = constraint_seed(s.seed, constraint)
        rng_np = np.random.default_rng(seq.spawn(1)[0])
        rng = random.Random(int(seq.generate_state(1, dtype=np.uint64)[0]))
        stats = OperatorStats()
        configs = sample_feasible(self.spec, constraint, rng_np, s.population_size, options=self.options)
        peaks = self.peaks(configs)
        if (peaks > constraint).any():  # the sampler is exact; this guards a custom efficiency model
            raise RuntimeError("sample_feasible returned a config over the constraint")
        acc = self.scores(configs)
        population = [Individual(float(a), c, int(p)) for a, c, p in zip(acc, configs, peaks)]
        best = max(population, key=lambda ind: ind.accuracy)
        history = [best.accuracy]
        n_scored = len(population)
        bar = tqdm(total=s.generations, desc=f"search <= {int(constraint):,}", disable=not progress,
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        for _ in range(s.generations):
            parents = sorted(population, key=lambda ind: -ind.accuracy)[:s.n_parents]
            children = self._generation(parents, constraint, rng, rng_np, stats)
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
                            time.perf_counter() - t0, s, stats)


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
