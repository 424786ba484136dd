"""Losses of docs/design.md#protocols: soft cross-entropy, label-smoothed cross-entropy and distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_batch(sum_c -target_c * log_softmax(logits)_c)``."""
    return torch.mean(torch.sum(-target * F.log_softmax(logits, dim=1), dim=1))


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Soft cross-entropy against ``onehot(labels) * (1 - eps) + eps / n_classes``."""
    n = logits.size(1)
    target = torch.full_like(logits, smoothing / n)
    target.scatter_(1, labels.view(-1, 1), 1 - smoothing + smoothing / n)
    return soft_cross_entropy(logits, target)


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, soft_logits: torch.Tensor | None,
                      kd_ratio: float, kd_type: str = "ce", smoothing: float = 0.1) -> torch.Tensor:
    """``CE_ls(out, y)`` plus ``kd_ratio`` times the soft CE against the teacher's softmax
    (``kd_type`` ce) or the MSE to its logits (mse). No teacher term when ``soft_logits`` is None
    or ``kd_ratio`` is 0."""
    loss = label_smoothed_ce(logits, labels, smoothing)
    if soft_logits is None or kd_ratio == 0:
        return loss
    if kd_type == "ce":
        return loss + kd_ratio * soft_cross_entropy(logits, F.softmax(soft_logits, dim=1))
    return loss + kd_ratio * F.mse_loss(logits, soft_logits)
