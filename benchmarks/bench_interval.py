"""Issue 19: empirical coverage of ``predicted_interval`` (the 90 % interval of a predicted top-1).

With the reference OFA predictor and its 2,610 measured subnets
(``../shared/reference``): a 5-fold split (seed 0). For each fold the robust fitness is built on
the other four folds (its measured data, which also calibrate the interval by leave-one-out) and
predicts the held-out fold. Printed, pooled over the folds:

1. overall: the fraction of held-out subnets whose measured top-1 lies in its interval (goal
   90 %) and the mean width in pp (goal <= 3 pp);
2. per budget of the paper (325k .. 800k elements): the held-out subnets that fit, ranked by
   predicted top-1 as the search ranks them (top 1 and top 10 of each fold): coverage and width.
   These are selected for a high prediction, like the search's answers;
3. the search itself (the robust sweep of ``bench_search.py --quality-only``, all 2,610 subnets):
   each budget's answer with the ``predicted_interval`` that info.json records.

    python benchmarks/bench_interval.py [--folds 5] [--generations 500] [--skip-search]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from bench_search import CONSTRAINTS, PREDICTORS, REF_DATA

from moofa.predictor import AccuracyPredictor
from moofa.predictor.dataset import read_dataset
from moofa.search.robust import INTERVAL_LEVEL, FitnessSettings, RobustFitness


def held_out_intervals(pred: AccuracyPredictor, data, folds: int, seed: int) -> dict[str, np.ndarray]:
    """Per subnet (each held out once): measured top-1, predicted mean, interval, fold, peak."""
    parts = np.array_split(np.random.default_rng(seed).permutation(len(data)), folds)
    out: dict[str, list] = {k: [] for k in ("y", "mean", "lo", "hi", "fold", "peak")}
    for f, test in enumerate(parts):
        train = np.concatenate([p for g, p in enumerate(parts) if g != f])
        held = data.subset(test)
        fit = RobustFitness(pred, data.subset(train), FitnessSettings())
        iv = fit.interval(held.configs)
        out["y"].append(held.accuracies)
        out["mean"].append(fit(held.configs).mean)
        out["lo"].append(iv[:, 0])
        out["hi"].append(iv[:, 1])
        out["fold"].append(np.full(len(test), f))
        out["peak"].append(np.asarray(held.peak_memory))
        cal = fit.interval_calibration
        print(f"fold {f}: {len(train)} calibrating subnets, quantile {cal.quantile:.3f}, reference "
              f"distance {cal.reference_distance:.0f} genes")
    return {k: np.concatenate(v) for k, v in out.items()}


def report(r: dict[str, np.ndarray], budgets: list[int]) -> None:
    inside = (r["lo"] <= r["y"]) & (r["y"] <= r["hi"])
    width = 100 * (r["hi"] - r["lo"])
    below, above = (r["y"] < r["lo"]).mean(), (r["y"] > r["hi"]).mean()
    print(f"\noverall: {inside.sum()}/{len(inside)} held-out subnets inside their interval, coverage "
          f"{inside.mean():.3f} (goal {INTERVAL_LEVEL:.2f}; below {below:.3f}, above {above:.3f}), "
          f"mean width {width.mean():.2f} pp (goal <= 3.00)")
    print(f"\n{'budget':>7} {'top-1 coverage':>15} {'width pp':>9} {'top-10 coverage':>16} {'width pp':>9} "
          f"{'pred - measured pp':>19}")
    pooled = {1: [], 10: []}
    for c in budgets:
        cells = []
        for k in (1, 10):
            picks = []
            for f in np.unique(r["fold"]):
                fit = np.flatnonzero((r["fold"] == f) & (r["peak"] <= c))
                picks += list(fit[np.argsort(-r["mean"][fit], kind="stable")[:k]])
            picks = np.array(picks)
            pooled[k] += list(picks)
            cells.append((inside[picks].sum(), len(picks), width[picks].mean(),
                          100 * (r["mean"][picks] - r["y"][picks]).mean()))
        (i1, n1, w1, _), (i10, n10, w10, err) = cells
        print(f"{c // 1000:>6}k {i1:>5}/{n1} ({i1 / n1:.2f}) {w1:>9.2f} {i10:>7}/{n10} ({i10 / n10:.2f}) "
              f"{w10:>9.2f} {err:>+19.2f}")
    for k, picks in pooled.items():
        picks = np.array(picks)
        print(f"eight budgets, top {k} of each fold: coverage {inside[picks].mean():.3f} "
              f"({inside[picks].sum()}/{len(picks)}, subnets repeat across budgets), mean width "
              f"{width[picks].mean():.2f} pp")


def search_answers(pred: AccuracyPredictor, data, budgets: list[int], population: int,
                   generations: int) -> None:
    """The robust sweep with all measured subnets; each answer's interval as info.json has it."""
    from moofa.search.evolution import EvolutionFinder, SearchSettings, search_sweep

    fitness = RobustFitness(pred, data, FitnessSettings())
    finder = EvolutionFinder("OFA", fitness, SearchSettings(population_size=population, generations=generations))
    t0 = time.perf_counter()
    rows = search_sweep(finder, budgets, top_k=10)
    print(f"\nthe search (population {population}, {generations} generations, {len(fitness.configs)} "
          f"measured subnets, {time.perf_counter() - t0:.0f} s): answer and predicted_interval")
    print(f"{'budget':>7} {'predicted % [90 % interval]':>30} {'width pp':>9} {'dist':>5} {'measured?':>9} "
          f"{'best measured %':>16}")
    widths = []
    for (_, ans), c in zip(rows, sorted(budgets)):
        lo, hi = fitness.interval_of(ans.config)
        widths.append(100 * (hi - lo))
        base = fitness.accuracies[fitness.best_measured(c)]
        print(f"{c // 1000:>6}k {100 * ans.predicted:>10.2f} [{100 * lo:.2f}, {100 * hi:.2f}] {widths[-1]:>9.2f} "
              f"{ans.distance:>5.0f} {str(ans.measured):>9} {100 * base:>16.2f}")
    predicted = [w for (_, ans), w in zip(rows, widths) if not ans.measured]
    if predicted:
        print(f"mean width of the predicted answers {np.mean(predicted):.2f} pp (goal <= 3.00: "
              f"{'met' if np.mean(predicted) <= 3 else 'NOT met'}); measured answers have width 0 "
              "(their measurement)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--constraints", type=int, nargs="+", default=CONSTRAINTS)
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--skip-search", action="store_true", help="only the held-out coverage")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = read_dataset(REF_DATA, "OFA")
    pred = AccuracyPredictor.load(PREDICTORS["OFA"], "OFA", device="cpu")
    print(f"reference OFA predictor, {len(data)} measured subnets, {args.folds}-fold split (seed {args.seed}), "
          f"interval level {INTERVAL_LEVEL:.2f}")
    report(held_out_intervals(pred, data, args.folds, args.seed), sorted(args.constraints))
    if not args.skip_search:
        search_answers(pred, data, args.constraints, args.population, args.generations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
