#!/usr/bin/env python3
"""Training-step throughput (images/s) of the supernet for each phase type on the current device.

One step = teacher forward (distillation) + ``dynamic_batch_size`` sampled subnets forward and
backward + optimizer step, exactly as moofa.training.trainer does it (images placed by
moofa.distributed.to_device: channels-last on the CPU). On the CPU the last column is the
speed-up over the same steps in the plain NCHW layout.

    python benchmarks/bench_train.py --model MOOFA_V3 --image-size 128 --batch 16 --steps 5
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from moofa.config import Args, phase_constraints
from moofa.distributed import resolve_device, to_device
from moofa.models import build_supernet
from moofa.training.losses import distillation_loss
from moofa.training.optim import build_optimizer

PHASES = [("teacher", None, 1), ("kernel", 1, 1), ("depth", 2, 2), ("expand", 2, 4)]
ARGS = Args.from_mapping({"weight_decay": 3e-5, "no_decay_keys": "bn#bias", "opt_type": "sgd", "momentum": 0.9,
                          "no_nesterov": False})


def bench(model: str, image_size: int, batch: int, steps: int, device: torch.device,
          nchw: bool = False) -> list[tuple[str, float]]:
    """(phase, images/s); ``nchw``: the images in the plain layout instead of the trainer's."""
    torch.manual_seed(0)
    supernet = build_supernet(model, n_classes=1000).to(device)
    teacher = supernet.build_teacher().to(device)
    x = torch.randn(batch, 3, image_size, image_size)
    x = x.to(device) if nchw else to_device(x, device)
    y = torch.randint(0, 1000, (batch,), device=device)
    out = []
    for step, phase, dbs in PHASES:
        net = teacher if step == "teacher" else supernet
        if step != "teacher":
            c = phase_constraints(supernet.spec, step, phase, {"kernel": 1, "depth": 2, "expand": 2})
            for key, ctype in (("ks", "kernel_size"), ("e", "expand_ratio"), ("d", "depth")):
                supernet.set_constraint(c[key], ctype)
        opt = build_optimizer(net, ARGS, 0.01)
        net.train()

        def one_step(i: int) -> None:
            soft = None
            if step != "teacher":
                with torch.no_grad():
                    soft = teacher(x)
            opt.zero_grad()
            for j in range(dbs):
                if step != "teacher":
                    random.seed(int(f"{i}{j:03d}000"))
                    supernet.sample_active_subnet()
                distillation_loss(net(x), y, soft, 1.0).backward()
            opt.step()

        one_step(0)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            one_step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((f"{step} (dynamic_batch_size {dbs})", steps * batch / (time.perf_counter() - t0)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="MOOFA_V3")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    device = resolve_device(a.device)
    print(f"model {a.model}, resolution {a.image_size}, batch {a.batch}, device {device}, "
          f"threads {torch.get_num_threads()}")
    results = bench(a.model, a.image_size, a.batch, a.steps, device)
    plain = bench(a.model, a.image_size, a.batch, a.steps, device, nchw=True) if device.type == "cpu" else None
    base = results[0][1]
    print(f"{'phase':32s} {'images/s':>10s} {'vs teacher':>10s}" + (f" {'vs NCHW':>10s}" if plain else ""))
    for i, (name, ips) in enumerate(results):
        print(f"{name:32s} {ips:10.1f} {ips / base:10.2f}" + (f" {ips / plain[i][1]:10.2f}" if plain else ""))


if __name__ == "__main__":
    main()
