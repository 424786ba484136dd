"""Evaluation shared by training validation, eval mode, search and predictor-dataset creation.

Counts are all-reduced across ranks, so every rank gets the accuracy over the whole evaluated set
(the reference measured a 1/N shard per GPU; docs/design.md#departures-from-the-reference). Forward
time is measured with device synchronisation after warm-up batches (docs/design.md#departures-from-the-reference).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from moofa.distributed import to_device
from moofa.models.bn_calibration import set_running_statistics
from moofa.models.spec import SubnetConfig
from moofa.models.supernet import Supernet
from moofa.stats import PerImage


@dataclass
class EvalResult:
    """Top-1 and top-5 accuracy (fractions), mean cross-entropy loss, number of images, the
    mean forward time per batch in seconds (0 when not timed) and the per-image top-1 outcomes in
    the loader's image order over all ranks (for paired comparisons, :mod:`moofa.stats`)."""

    top1: float
    top5: float
    loss: float
    n_images: int
    avg_forward_time: float = 0.0
    correct: torch.Tensor | None = None   # bool, one per image

    def per_image(self, key: str, images: str | None = None) -> PerImage | None:
        """The outcomes under ``key`` (None when they were not kept), on the ``images`` named."""
        return PerImage.of(key, self.correct.numpy(), images) if self.correct is not None else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(net: nn.Module, loader: Iterable, backend: Any = None, device: torch.device | None = None,
             max_images: int | None = None, time_forward: bool = False, warmup_batches: int = 2) -> EvalResult:
    """Accuracy of ``net`` (eval mode) on ``loader``; sums are all-reduced over ``backend``'s ranks.

    ``max_images`` caps the images this rank evaluates (a fixed prefix of its shard).
    """
    device = device or next(net.parameters()).device
    was_training = net.training
    net.eval()
    stats = torch.zeros(4, dtype=torch.float64)  # correct1, correct5, loss_sum, n
    times: list[float] = []
    hits: list[torch.Tensor] = []
    seen = 0
    for i, (images, labels) in enumerate(loader):
        if max_images is not None and seen >= max_images:
            break
        if max_images is not None and seen + len(labels) > max_images:
            images, labels = images[: max_images - seen], labels[: max_images - seen]
        images = to_device(images, device)
        labels = labels.to(device, non_blocking=True)
        if time_forward:
            _sync(device)
            t0 = time.perf_counter()
        logits = net(images)
        if time_forward:
            _sync(device)
            times.append(time.perf_counter() - t0)
        k = min(5, logits.size(1))
        top = logits.topk(k, dim=1).indices
        hit = top.eq(labels.view(-1, 1))
        hits.append(hit[:, 0].cpu())
        stats += torch.tensor([hit[:, 0].sum().item(), hit.any(dim=1).sum().item(),
                               F.cross_entropy(logits, labels, reduction="sum").item(), len(labels)],
                              dtype=torch.float64)
        seen += len(labels)
    correct: torch.Tensor | None = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    if backend is not None:
        stats = backend.allreduce_sum_(stats)
        correct = _interleave(backend.allgather_object(correct))
    net.train(was_training)
    n = max(stats[3].item(), 1.0)
    timed = times[warmup_batches:] if len(times) > warmup_batches else times  # short loaders: all
    return EvalResult(stats[0].item() / n, stats[1].item() / n, stats[2].item() / n, int(stats[3].item()),
                      sum(timed) / len(timed) if timed else 0.0, correct)


def _interleave(shards: list[torch.Tensor]) -> torch.Tensor | None:
    """The per-image outcomes in image order from the ranks' shards (rank k evaluated every
    world-th image from offset k, :class:`moofa.data.samplers.ShardSampler`); None when the shards
    are not such a split (a capped loader)."""
    out = torch.zeros(sum(len(s) for s in shards), dtype=torch.bool)
    for rank, shard in enumerate(shards):
        if len(out[rank::len(shards)]) != len(shard):
            return None
        out[rank::len(shards)] = shard
    return out


def calibrate_subnet(supernet: Supernet, config: SubnetConfig, provider: Any) -> None:
    """Activate ``config`` and re-calibrate BN on the provider's fixed calibration subset at the
    config's resolution (docs/design.md#protocols): the state every measurement and every export
    of the subnet starts from."""
    supernet.set_subnet(config)
    set_running_statistics(supernet, provider.calibration_batches(config.image_size))


def evaluate_subnet(supernet: Supernet, config: SubnetConfig, provider: Any, backend: Any = None,
                    split: str = "test", max_images: int | None = None,
                    time_forward: bool = False) -> EvalResult:
    """Activate ``config``, re-calibrate BN on the provider's fixed calibration subset at the
    config's resolution (docs/design.md#protocols) and evaluate on the ``split`` ("test" or "valid") loader;
    ``max_images`` selects a fixed, evenly spaced subset of the test set, identical on any number of
    ranks."""
    calibrate_subnet(supernet, config, provider)
    if split == "test":
        loader = provider.test_loader(config.image_size, max_images)
    else:
        loader = provider.valid_loader(config.image_size)
    return evaluate(supernet, loader, backend, time_forward=time_forward)
