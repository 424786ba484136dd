"""Worker launched by tests/test_distributed.py under torchrun or horovodrun (2 ranks, CPU).

Usage: python step_worker.py OUT_DIR
Different random init per rank -> broadcast from rank 0 -> STEPS optimizer steps with
backward_passes_per_step=PASSES on different data per rank -> writes OUT_DIR/rank<r>.json.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_step as T  # noqa: E402

from moofa.distributed import Metric, init_backend  # noqa: E402


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    be = init_backend("cpu")
    model = T.build(init_seed=100 + be.rank)  # different init on each rank
    before = T.flat_params(model)
    be.broadcast_parameters(model, root=0)
    opt = torch.optim.SGD(model.parameters(), **T.SGD_KW)
    be.broadcast_optimizer_state(opt, root=0)
    opt = be.distributed_optimizer(opt, model.named_parameters(), backward_passes_per_step=T.PASSES)
    loss_metric = Metric(be, "loss")
    choices = []
    for step in range(T.STEPS):
        opt.zero_grad()
        for micro in range(T.PASSES):
            branch, loss = T.micro_step(model, be.rank, step, micro)
            choices.append(branch)
            loss_metric.update(loss, T.BATCH)
        opt.step()

    # fp16 compression: one more averaged step on a copy, from identical weights.
    model16 = T.build(init_seed=100)
    opt16 = be.distributed_optimizer(torch.optim.SGD(model16.parameters(), **T.SGD_KW),
                                     model16.named_parameters(), backward_passes_per_step=T.PASSES,
                                     fp16_compression=True)
    for micro in range(T.PASSES):
        T.micro_step(model16, be.rank, 0, micro)
    opt16.step()

    weighted = Metric(be, "weighted")
    weighted.update(torch.tensor(float(be.rank + 1)), n=be.rank + 1)  # (1*1 + 2*2) / 3 on 2 ranks
    result = {
        "backend": be.name, "rank": be.rank, "size": be.size, "local_rank": be.local_rank,
        "is_main": be.is_main, "device": str(be.device),
        "params_before_broadcast": before, "params": T.flat_params(model),
        "params_fp16": T.flat_params(model16), "choices": choices,
        "loss_avg": loss_metric.compute(), "loss_local": loss_metric.local_average,
        "weighted_avg": weighted.compute(),
        "allreduce_mean": be.allreduce(torch.tensor([float(be.rank), 2.0 * be.rank])).tolist(),
        "allreduce_sum": be.allreduce(torch.tensor([be.rank + 1]), average=False).tolist(),
        "gathered": be.allgather_object({"rank": be.rank}),
        "broadcast": be.broadcast_object({"from": be.rank}, root=1 if be.size > 1 else 0),
        "opt_state_keys": sorted(len(v) for v in opt.state_dict()["state"].values()),
    }
    be.barrier()
    with open(os.path.join(out_dir, f"rank{be.rank}.json"), "w") as f:
        json.dump(result, f)
    be.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
