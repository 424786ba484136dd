"""Per-iteration learning-rate schedule (docs/design.md#protocols): linear warmup, then cosine without minimum."""
from __future__ import annotations

import math


def learning_rate(epoch: int, batch: int, n_batches: int, init_lr: float, n_epochs: int,
                  warmup_epochs: int = 0, warmup_lr: float = 0.0, schedule: str | None = "cosine") -> float:
    """Learning rate of batch ``batch`` of epoch ``epoch`` (both from 0).

    Warmup (epoch < warmup_epochs): linear from ``warmup_lr`` to ``init_lr`` with
    ``T_cur = epoch * n_batches + batch + 1`` over ``T_total = warmup_epochs * n_batches``. Then
    cosine ``0.5 * init_lr * (1 + cos(pi * t_cur / t_total))`` with ``t_cur = (epoch - W) *
    n_batches + batch`` and ``t_total = n_epochs * n_batches``; ``schedule=None`` keeps init_lr.
    """
    if epoch < warmup_epochs:
        t_cur = epoch * n_batches + batch + 1
        return t_cur / (warmup_epochs * n_batches) * (init_lr - warmup_lr) + warmup_lr
    if schedule is None:
        return init_lr
    t_cur = (epoch - warmup_epochs) * n_batches + batch
    return 0.5 * init_lr * (1 + math.cos(math.pi * t_cur / (n_epochs * n_batches)))
