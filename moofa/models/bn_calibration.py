"""BN re-calibration (docs/design.md#protocols): re-estimate BatchNorm running statistics of the active subnet."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from moofa.distributed import to_device
from moofa.models.dynamic import full_bn_mode
from moofa.models.layers import running_stats


@torch.no_grad()
def set_running_statistics(net: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Run ``batches`` (image tensors) through ``net`` and write, into the leading slices of every
    BatchNorm's ``running_mean``/``running_var``, the batch-size-weighted average over batches of
    the per-batch mean and biased variance. Affine parameters are unchanged.

    Unlike the reference this patches the BatchNorm forwards in place (and restores them) instead
    of deep-copying the network, which gives the same numbers without a copy of the weights.
    """
    sums: dict[nn.BatchNorm2d, list] = {}

    def patched(bn: nn.BatchNorm2d):
        def forward(x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=(0, 2, 3))
            var = ((x - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
            acc = sums.setdefault(bn, [0, 0.0, 0.0])
            n = x.size(0)
            acc[0] += n
            acc[1] = acc[1] + mean * n
            acc[2] = acc[2] + var * n
            c = mean.numel()
            return F.batch_norm(x, mean, var, bn.weight[:c], bn.bias[:c], False, 0.0, bn.eps)
        return forward

    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    device = next(net.parameters()).device
    for bn in bns:
        bn.forward = patched(bn)  # type: ignore[method-assign]
    try:
        with full_bn_mode():
            for images in batches:
                net(to_device(images, device))
    finally:
        for bn in bns:
            del bn.forward
    for bn, (n, mean_sum, var_sum) in sums.items():
        if n:
            c = mean_sum.numel()
            running_mean, running_var = running_stats(bn)
            running_mean[:c].copy_(mean_sum / n)
            running_var[:c].copy_(var_sum / n)
