"""Runtime-planned vs analytic activation memory: how ExecuTorch's memory planner compares with
moofa's analytic peak on random subnets of each model.

    python benchmarks/bench_runtime_memory.py [--n 3] [--models OFA MOOFA_V3 ...] [--image-size R]
        [--model_config_path P] [--n-classes 1000]

For ``--n`` random subnets per model (uniform ks, e, d; seed 0; at ``--image-size``, default the
model's smallest resolution) it builds the static subnet, lowers it to an fp32 ExecuTorch program
on the portable kernels (:func:`moofa.deploy.programs.fp32_program`: every activation planned,
graph input and output excluded) and prints the planned arena (bytes) next to the analytic
activations-only peak (elements x 4 bytes: fp32) and the reference's count (elements, weights
included, x 4). Needs the deploy extra (``pip install -e '.[deploy]'``); each lowering takes
seconds to a minute.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from moofa.deploy.programs import fp32_program, require_executorch
from moofa.efficiency import MemoryOptions, peak_memory
from moofa.models import MODELS, build_supernet, get_model_spec
from moofa.models.spec import SubnetConfig
from moofa.search.evolution import random_configs

ACTS = MemoryOptions(count_weights=False)


def bench(model: str, n: int, image_size: int | None, model_config_path: str | None,
          n_classes: int) -> list[dict]:
    spec = get_model_spec(model, model_config_path)
    r = int(image_size or min(spec.image_sizes))
    a = random_configs(spec, n, np.random.default_rng(0))
    supernet = build_supernet(spec, n_classes=n_classes).eval()
    rows = []
    for i in range(n):
        cfg = SubnetConfig(a["ks"][i], a["e"][i], a["d"][i], r).validate(spec)
        supernet.set_subnet(cfg)
        t0 = time.perf_counter()
        prog = fp32_program(supernet.get_active_subnet(), r)
        acts = peak_memory(spec, cfg, ACTS)
        ref = peak_memory(spec, cfg)
        rows.append(dict(model=spec.name, r=r, d="".join(map(str, cfg.d)), planned=prog.planned_bytes,
                         analytic=4 * acts, reference=4 * ref, seconds=time.perf_counter() - t0))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3, help="random subnets per model")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--image-size", type=int, default=None, help="resolution (default: the model's smallest)")
    p.add_argument("--model_config_path", default=None)
    p.add_argument("--n-classes", type=int, default=1000)
    args = p.parse_args()
    require_executorch()
    torch.set_num_threads(1)
    head = (f"{'model':<14}{'R':>5}{'d':>7}{'planned fp32 B':>16}{'analytic acts B':>17}{'planned/acts':>14}"
            f"{'ref count B':>14}{'planned/ref':>13}{'lower s':>9}")
    print(head)
    ratios = {}
    for model in args.models:
        for row in bench(model, args.n, args.image_size, args.model_config_path, args.n_classes):
            ratio = row["planned"] / row["analytic"]
            ratios.setdefault(model, []).append(ratio)
            print(f"{row['model']:<14}{row['r']:>5}{row['d']:>7}{row['planned']:>16,}{row['analytic']:>17,}"
                  f"{ratio:>14.2f}{row['reference']:>14,}{row['planned'] / row['reference']:>13.2f}"
                  f"{row['seconds']:>9.1f}", flush=True)
    print("planned / analytic activations-only (fp32 bytes), min..max per model: " + ", ".join(
        f"{m} {min(v):.2f}..{max(v):.2f}" for m, v in ratios.items()))


if __name__ == "__main__":
    main()
