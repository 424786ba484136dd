"""Peak-memory throughput: analytic single-config path, vectorised batch path, and the
reference's measured path (set the supernet, extract the static subnet, forward hooks).

    python benchmarks/bench_memory.py [--n 1000] [--measured 20] [--models OFA MOOFA_V3] [--threads T]

All three paths see the same random configs (uniform ks, e, d, resolution; seed 0); the
measured path runs on the first ``--measured`` of them (it takes ~0.1-1 s per config) and is
checked to give the same values. Prints configs/s per path and the ratios; goal: >= 20,000
configs/s single and >= 1,000x the measured path.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from moofa.efficiency import measure_peak_memory, peak_memory, peak_memory_batch
from moofa.models import build_supernet, get_model_spec


def rate(fn, n_items: int, min_seconds: float = 0.5) -> float:
    """Items per second of ``fn`` (which processes n_items), best of repeated runs."""
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return n_items / best


def bench(model: str, n: int, n_measured: int, device: torch.device) -> dict:
    spec = get_model_spec(model)
    rng = np.random.default_rng(0)
    arrays = dict(ks=rng.choice(spec.ks_list, (n, 20)), e=rng.choice(spec.expand_list, (n, 20)),
                  d=rng.choice(spec.depth_list, (n, 5)), image_size=rng.choice(spec.image_sizes, n))
    configs = [dict(ks=arrays["ks"][i].tolist(), e=arrays["e"][i].tolist(), d=arrays["d"][i].tolist(),
                    image_size=int(arrays["image_size"][i])) for i in range(n)]
    single = [peak_memory(model, c) for c in configs]
    assert peak_memory_batch(model, **arrays).tolist() == single
    single_rate = rate(lambda: [peak_memory(model, c) for c in configs], n)
    batch_rate = rate(lambda: peak_memory_batch(model, **arrays), n)
    supernet = build_supernet(model).to(device)
    measure_peak_memory(supernet.get_active_subnet(), 128)  # warm-up, not timed
    t = time.perf_counter()
    for c in configs[:n_measured]:
        supernet.set_active_subnet(ks=c["ks"], e=c["e"], d=c["d"])
        peak, _ = measure_peak_memory(supernet.get_active_subnet(), c["image_size"])
        assert peak == peak_memory(model, c), (model, c)
    measured_rate = n_measured / (time.perf_counter() - t)
    return dict(single=single_rate, batch=batch_rate, measured=measured_rate)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="random configs per model")
    p.add_argument("--measured", type=int, default=20, help="how many of them the hook path measures")
    p.add_argument("--models", nargs="+", default=["OFA", "MOOFA_V3"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.n} configs per model, "
          f"measured path on the first {args.measured}")
    print(f"{'model':<9} {'single cfg/s':>13} {'batch cfg/s':>13} {'measured cfg/s':>15} "
          f"{'single/measured':>16} {'batch/measured':>15} {'batch/single':>13}")
    ok = True
    for model in args.models:
        r = bench(model, args.n, args.measured, device)
        print(f"{model:<9} {r['single']:>13,.0f} {r['batch']:>13,.0f} {r['measured']:>15.2f} "
              f"{r['single'] / r['measured']:>15,.0f}x {r['batch'] / r['measured']:>14,.0f}x "
              f"{r['batch'] / r['single']:>12,.1f}x")
        ok &= r["single"] >= 20_000 and r["single"] / r["measured"] >= 1_000
    print("goal (single >= 20,000 cfg/s and >= 1,000x measured): " + ("met" if ok else "NOT met"))


if __name__ == "__main__":
    main()
