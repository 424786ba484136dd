"""Issue 6 acceptance 5: evolutionary-search speed.

1. Search time per constraint at population 100 / 500 generations (OFA's class defaults) over
   the constraints 325k ... 800k, with the reference OFA predictor (goal: all eight < 60 s on
   2 CPU cores). ``--models`` may add others; models without a reference predictor are timed
   with a random-init predictor (timing only, accuracies meaningless).
2. One search at the reference's settings (population 20, 20 generations) with our exact
   analytic peak memory (batched) vs the reference's approach: for every candidate set the
   supernet, extract the static subnet (``get_active_subnet``) and run it with forward hooks
   (``measure_peak_memory``). Same seed, so both must find the same subnet; prints the ratio.

    python benchmarks/bench_search.py [--models OFA] [--threads 1] [--skip-reference]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from moofa.efficiency import measure_peak_memory
from moofa.models import build_supernet
from moofa.models.spec import SubnetConfig
from moofa.predictor import AccuracyPredictor
from moofa.search.evolution import EvolutionFinder, SearchSettings

REF = Path(__file__).resolve().parents[2] / "shared" / "reference"
PREDICTORS = {"OFA": REF / "ofa_imagenet_acc_predictor.pth.tar"}
CONSTRAINTS = [325_000, 350_000, 400_000, 450_000, 500_000, 600_000, 700_000, 800_000]


def predictor_for(model: str) -> tuple[AccuracyPredictor, str]:
    path = PREDICTORS.get(model)
    if path is not None and path.is_file():
        return AccuracyPredictor.load(path, model, device="cpu"), f"reference {path.name}"
    torch.manual_seed(0)
    return AccuracyPredictor(model, base_acc=0.7).eval(), "random-init (timing only)"


def sweep(model: str, population: int, generations: int, constraints: list[int]) -> float:
    pred, source = predictor_for(model)
    finder = EvolutionFinder(model, pred.predict, SearchSettings(population_size=population,
                                                                 generations=generations))
    print(f"\n{model}: population {population}, {generations} generations, predictor {source}")
    print(f"{'constraint':>11} {'seconds':>8} {'pred top-1 %':>12} {'peak':>9} {'R':>4} "
          f"{'draws':>7} {'repaired':>8} {'fallback':>8}")
    total = 0.0
    for c in constraints:
        r = finder.search(c)
        total += r.seconds
        print(f"{c:>11,} {r.seconds:>8.2f} {100 * r.best.accuracy:>12.2f} {r.best.peak:>9,} "
              f"{r.best.config.image_size:>4} {r.stats.draws:>7,} {r.stats.repaired:>8} {r.stats.fallback:>8}")
    print(f"{'total':>11} {total:>8.2f} s for {len(constraints)} constraints "
          f"(goal < 60 s: {'met' if total < 60 else 'NOT met'})")
    return total


class MeasuredEfficiency:
    """The reference's efficiency model: build each candidate and run it with hooks."""

    def __init__(self, model: str, device: torch.device) -> None:
        self.net = build_supernet(model).to(device).eval()
        self.calls = 0

    def __call__(self, configs: list[SubnetConfig]) -> np.ndarray:
        out = []
        for cfg in configs:
            self.net.set_subnet(cfg)
            peak, _ = measure_peak_memory(self.net.get_active_subnet(), cfg.image_size)
            out.append(peak)
            self.calls += 1
        return np.asarray(out, dtype=np.int64)


def reference_settings(model: str, constraint: int, population: int, generations: int,
                       device: torch.device) -> None:
    pred, source = predictor_for(model)
    settings = SearchSettings(population_size=population, generations=generations)
    print(f"\n{model} at the reference's settings (population {population}, {generations} "
          f"generations), constraint {constraint:,}, predictor {source}, device {device}")
    analytic = EvolutionFinder(model, pred.predict, settings).search(constraint)
    measured_eff = MeasuredEfficiency(model, device)
    t0 = time.perf_counter()
    measured = EvolutionFinder(model, pred.predict, settings, efficiency=measured_eff).search(constraint)
    t_measured = time.perf_counter() - t0
    same = measured.best.config == analytic.best.config and measured.history == analytic.history
    print(f"  analytic (ours):   {analytic.seconds:8.3f} s  ({analytic.stats.draws:,} candidates)")
    print(f"  build + hooks:     {t_measured:8.3f} s  ({measured_eff.calls:,} candidates built and run, "
          f"{measured_eff.calls / t_measured:.1f} per s)")
    print(f"  ratio:             {t_measured / analytic.seconds:8.0f}x faster; same search result: {same}")
    if not same:
        raise SystemExit("the two efficiency models disagree")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["OFA"])
    ap.add_argument("--constraints", type=int, nargs="+", default=CONSTRAINTS)
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--ref-model", default="OFA")
    ap.add_argument("--ref-constraint", type=int, default=500_000)
    ap.add_argument("--ref-population", type=int, default=20)
    ap.add_argument("--ref-generations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the measured path")
    ap.add_argument("--device", default="auto", help="device of the measured path (auto: CUDA if present)")
    ap.add_argument("--skip-reference", action="store_true", help="skip the build-and-run comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    print(f"torch threads {torch.get_num_threads()} (the search itself runs torch on 1 thread)")
    for model in args.models:
        sweep(model, args.population, args.generations, args.constraints)
    if not args.skip_reference:
        reference_settings(args.ref_model, args.ref_constraint, args.ref_population,
                           args.ref_generations, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
