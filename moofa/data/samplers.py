"""Samplers: the validation split, the distributed subset sampler and the elastic-resolution
batch sampler that draws each batch's image size in the main process (docs/design.md#protocols)."""
from __future__ import annotations

import math
import random
from typing import Iterator, Protocol, Sequence

import torch
from torch.utils.data import Sampler

VALID_SEED = 2147483647  # DataProvider.VALID_SEED
SUB_SEED = 937162211     # DataProvider.SUB_SEED (BN-calibration subset)


def split_train_valid(n_train: int, valid_size: int | float | None) -> tuple[list[int], list[int]]:
    """Hold out ``valid_size`` training images (count, or fraction of ``n_train``): the first n of
    ``torch.randperm(n_train)`` seeded VALID_SEED; the rest, in that order, is the train set.
    ``None``: no split (all indices train, in order; validation uses the test set)."""
    if valid_size is None:
        return list(range(n_train)), []
    n_valid = int(valid_size * n_train) if isinstance(valid_size, float) else int(valid_size)
    if not 0 < n_valid < n_train:
        raise ValueError(f"valid_size: {valid_size!r} leaves no training or no validation image "
                         f"out of {n_train}")
    g = torch.Generator()
    g.manual_seed(VALID_SEED)
    perm = torch.randperm(n_train, generator=g).tolist()
    return perm[n_valid:], perm[:n_valid]


def calibration_indices(n_train: int, n_images: int) -> list[int]:
    """The BN re-calibration subset (docs/design.md#protocols): the first ``n_images`` of ``torch.randperm``
    over the full training folder, seeded SUB_SEED (all images when the folder is smaller)."""
    g = torch.Generator()
    g.manual_seed(SUB_SEED)
    return torch.randperm(n_train, generator=g)[:min(n_images, n_train)].tolist()


class DistributedSubsetSampler(Sampler[int]):
    """OFA's MyDistributedSampler: each epoch, permute ``indices`` with a generator seeded by the
    epoch, pad to a multiple of ``world_size`` by repeating the head, and take every
    ``world_size``-th index from offset ``rank``."""

    def __init__(self, indices: Sequence[int], world_size: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} not in [0, {world_size})")
        self.indices = list(indices)
        self.world_size, self.rank, self.epoch = world_size, rank, 0
        self.num_samples = math.ceil(len(self.indices) / world_size)
        self.total_size = self.num_samples * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.epoch)
        order = torch.randperm(len(self.indices), generator=g).tolist()
        order += order[:self.total_size - len(order)]
        return iter([self.indices[i] for i in order[self.rank:self.total_size:self.world_size]])

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler[int]):
    """Evaluation shard: every ``world_size``-th of ``indices`` from offset ``rank``, in order,
    without padding, so counts summed over ranks cover each image exactly once (the reference's
    padded DistributedSampler double-counted some images; docs/design.md#departures-from-the-reference)."""

    def __init__(self, indices: Sequence[int], world_size: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} not in [0, {world_size})")
        self.shard = list(indices)[rank::world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard)

    def __len__(self) -> int:
        return len(self.shard)


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """``k`` indices of ``range(n)`` spread evenly (``floor(i * n / k)``); all when k is None or
    >= n. ImageFolder sorts by class, so this takes the same share of every class."""
    if k is None or k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


def candidate_sizes(image_sizes: Sequence[int], continuous: bool = False) -> list[int]:
    """Training resolutions (pixels): the size list, or with ``continuous`` every multiple of 4
    between its smallest and largest value (25 sizes for 128..224)."""
    sizes = sorted(set(int(s) for s in image_sizes))
    if not continuous or len(sizes) == 1:
        return sizes
    lo, hi = sizes[0], sizes[-1]
    return list(range(lo + (-lo) % 4, hi + 1, 4))


def resolution_seed(batch_index: int, epoch: int, rank: int | None = None) -> int:
    """Seed of batch ``b`` of epoch ``t``: ``int(f"{b}{t:03d}")`` (docs/design.md#protocols). With a
    rank (non-synchronised mode) the 3-digit rank is appended."""
    seed = f"{batch_index}{epoch:03d}"
    return int(seed if rank is None else f"{seed}{rank:03d}")


def draw_resolution(batch_index: int, epoch: int, candidates: Sequence[int], rank: int | None = None) -> int:
    """The reference's draw (OFA's ``MyRandomResizedCrop.sample_image_size``):
    ``random.seed(seed); random.choices(candidates, weights=None)[0]``, on a private RNG so the
    global ``random`` state is untouched. (``random.choices`` indexes with ``floor(random() * n)``;
    ``random.choice`` would draw differently.)"""
    if len(candidates) == 1:
        return int(candidates[0])
    return int(random.Random(resolution_seed(batch_index, epoch, rank)).choices(list(candidates))[0])


class SizedIndices(Protocol):
    """Indices with a length: a sampler such as :class:`DistributedSubsetSampler`, or a range."""

    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...


class ElasticResolutionBatchSampler(Sampler[list]):
    """Batches of ``(index, image_size)`` pairs: one resolution per batch, drawn in the main
    process from ``candidates`` with the seed of (batch index, epoch), so it works with any
    ``num_workers`` and every rank agrees (unless ``sync`` is false: then the rank is mixed in)."""

    def __init__(self, sampler: SizedIndices, batch_size: int, candidates: Sequence[int],
                 drop_last: bool = False, sync: bool = True, rank: int = 0) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, int(batch_size), drop_last
        self.candidates = [int(c) for c in candidates]
        self.rank = None if sync else int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def size_of(self, batch_index: int) -> int:
        return draw_resolution(batch_index, self.epoch, self.candidates, self.rank)

    def __iter__(self) -> Iterator[list]:
        batch: list[int] = []
        b = 0
        for idx in self.sampler:
            batch.append(idx)
            if len(batch) == self.batch_size:
                size = self.size_of(b)
                yield [(i, size) for i in batch]
                batch, b = [], b + 1
        if batch and not self.drop_last:
            size = self.size_of(b)
            yield [(i, size) for i in batch]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
