"""Optimizer of docs/design.md#protocols: SGD (momentum, Nesterov) or Adam over two parameter groups."""
from __future__ import annotations

import torch
import torch.nn as nn

from moofa.config import AnyArgs


def parameter_groups(net: nn.Module, weight_decay: float, no_decay_keys: str | None) -> list[dict]:
    """Parameters whose name contains any ``#``-separated key of ``no_decay_keys`` get weight
    decay 0; the others ``weight_decay``."""
    keys = [k for k in (no_decay_keys or "").split("#") if k]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (no_decay if any(k in name for k in keys) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(net: nn.Module, args: AnyArgs, init_lr: float) -> torch.optim.Optimizer:
    """The optimizer of ``args`` (opt_type, weight_decay, no_decay_keys, momentum, no_nesterov)
    at learning rate ``init_lr``."""
    groups = parameter_groups(net, args.weight_decay, args.no_decay_keys)
    if args.opt_type == "adam":
        return torch.optim.Adam(groups, lr=init_lr)
    return torch.optim.SGD(groups, lr=init_lr, momentum=args.momentum, nesterov=not args.no_nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
