"""A tiny elastic net and its data, shared by the distributed worker and the single-process check.

Two optimizer steps, each with ``PASSES`` backward passes (micro-steps); each micro-step samples
one of three branches with ``random.seed`` of the reference's seed formula (docs/design.md#protocols), so some
parameters get no gradient on some ranks. Each rank sees different data (seeded by its rank).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

PASSES = 2          # backward_passes_per_step
STEPS = 2           # optimizer steps
BATCH = 4           # images per micro-step and rank
N_CLASSES = 3
SGD_KW = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)


class TinyNet(nn.Module):
    """stem conv + BN, then one of three branches (3x3, 5x5, or an unused 1x1), pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.branches = nn.ModuleList([nn.Conv2d(4, 4, k, padding=k // 2) for k in (3, 5, 1)])
        self.head = nn.Linear(4, N_CLASSES)
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.branches[self.active](x))
        return self.head(x.mean(dim=(2, 3)))


def build(init_seed: int) -> TinyNet:
    torch.manual_seed(init_seed)
    return TinyNet()


def sample_branch(step: int, micro: int) -> int:
    """The reference's per-micro-step seed, then a draw among the two used branches."""
    random.seed(int(f"{step}{micro:03d}{0:03d}"))
    return random.randint(0, 1)


def batch(rank: int, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + 10 * step + micro)
    return torch.randn(BATCH, 3, 8, 8, generator=g), torch.randint(0, N_CLASSES, (BATCH,), generator=g)


def micro_step(model: TinyNet, rank: int, step: int, micro: int) -> tuple[int, float]:
    """Sample the branch, forward and backward one micro-batch; returns (branch, loss)."""
    model.active = sample_branch(step, micro)
    x, y = batch(rank, step, micro)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return model.active, float(loss.detach())


def flat_params(model: nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()
