"""The data provider of a training / evaluation process (docs/design.md#protocols).

Train loader: the held-out-free part of ``train/`` through a distributed subset sampler and an
elastic-resolution batch sampler (one size per batch, drawn in the main process), training
augmentation at that size. Validation loader: the held-out training images (``valid_size``) with
the test transform, or the test loader when ``valid_size`` is null. Test loader: ``val/``, sharded
in unpadded shards when there are several processes (exact all-reduced counts). BN-calibration batches: a fixed
subset of the training folder, augmented deterministically, cached per resolution. Only the
training loader draws from the global torch RNG (saved in the resume state); the others use a
private generator, so a resumed launch, which builds its calibration batches again, trains bit for
bit as an uninterrupted one.

Corrupt images: an image file that does not decode (truncated JPEG, not an image) is dropped
from its batch by every loader of the provider; its path is logged once per process and
:attr:`DataProvider.bad_images` collects the files (the trainer reports how many per epoch: files,
not the re-reads of one file at several resolutions). With
``args.corrupt_images: error`` the first such file stops the run instead (exit 2 naming it). The
decision is made in the main process, so it works with any number of loader workers.

Folders are read by :class:`moofa.data.folder.ImageFiles` (symlink loops skipped, 16-bit and
other unusual image modes converted to 8-bit RGB correctly).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.datasets import ImageFolder

from moofa.config import AnyArgs
from moofa.data.datasets import ensure_dataset
from moofa.data.folder import ImageFiles
from moofa.data.samplers import (
    SUB_SEED,
    DistributedSubsetSampler,
    ElasticResolutionBatchSampler,
    ShardSampler,
    calibration_indices,
    candidate_sizes,
    evenly_spaced,
    split_train_valid,
)
from moofa.data.transforms import test_transform, train_transform
from moofa.errors import MoofaInputError

IMAGENETTE_IMAGENET_IDS = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
_MASK63 = (1 << 63) - 1
EVAL_LOADER_SEED = 0  # private generator of the non-training loaders (their worker seeds only)
log = logging.getLogger("moofa.data")


class BadImage(NamedTuple):
    """What a dataset item is when its file does not decode: the path and the reason."""

    path: str
    reason: str


_WARNED_IMAGES: set[str] = set()  # each corrupt file is named once per process


class BadImageLog:
    """Corrupt image files met by a provider's loaders (main process), counted as files (one
    file re-read at several resolutions counts once) and logged once per process;
    ``fatal`` raises :class:`MoofaInputError` naming the first one."""

    def __init__(self, fatal: bool = False) -> None:
        self.fatal = fatal
        self.paths: set[str] = set()  # every corrupt file met
        self._new: set[str] = set()   # ... since the last take()

    def report(self, bad: Sequence[BadImage]) -> None:
        for item in bad:
            path, reason = item
            if self.fatal:
                raise MoofaInputError(f"corrupt image ({reason}); set args.corrupt_images: skip to "
                                      "skip such files", file=path, key="args.corrupt_images")
            self.paths.add(path)
            self._new.add(path)
            if path not in _WARNED_IMAGES:
                _WARNED_IMAGES.add(path)
                log.warning("skipping corrupt image %s (%s)", path, reason)

    def take(self) -> set[str]:
        """The corrupt files met since the last call."""
        new, self._new = self._new, set()
        return new


def collate_skipping(batch: list) -> tuple:
    """``(images, labels, bad)``: the good items collated (None when there is none) and the
    :class:`BadImage` items."""
    bad = [b for b in batch if isinstance(b, BadImage)]
    good = [b for b in batch if not isinstance(b, BadImage)]
    if not good:
        return None, None, bad
    images, labels = default_collate(good)
    return images, labels, bad


def _resolution_batches(loader: DataLoader) -> ElasticResolutionBatchSampler:
    """The batch sampler of a training loader (DataLoader types it as any batch sampler)."""
    batches = loader.batch_sampler
    if not isinstance(batches, ElasticResolutionBatchSampler):
        raise TypeError(f"training loader: expected an ElasticResolutionBatchSampler, got {type(batches).__name__}")
    return batches


class SkippingLoader(DataLoader):
    """A DataLoader yielding ``(images, labels)`` without the corrupt images, which it hands to
    ``bad_images`` (:class:`BadImageLog`); a batch of only corrupt images is left out."""

    def __init__(self, dataset: Dataset, *, bad_images: BadImageLog, **kw: Any) -> None:
        super().__init__(dataset, collate_fn=collate_skipping, **kw)
        self.bad_images = bad_images

    def __iter__(self) -> Iterator:  # type: ignore[override]
        for images, labels, bad in super().__iter__():
            if bad:
                self.bad_images.report(bad)
            if images is not None:
                yield images, labels


def use_cuda(device: str = "auto") -> bool:
    """Whether ``args.device`` (auto | cpu | cuda) means CUDA on this machine."""
    return device != "cpu" and torch.cuda.is_available()


class ResolutionDataset(Dataset):
    """A view of an ImageFolder whose items are ``index`` or ``(index, image_size)``: the image is
    transformed by ``make_transform(image_size)`` (``default_size`` for plain indices). With
    ``item_seed`` each item's augmentation is seeded by (seed, size, index), so it is identical in
    every process and with any number of workers."""

    def __init__(self, folder: ImageFolder, make_transform: Callable[[int], Callable],
                 default_size: int, label_map: Sequence[int] | None = None,
                 item_seed: int | None = None) -> None:
        self.folder, self.make_transform, self.default_size = folder, make_transform, int(default_size)
        self.label_map, self.item_seed = label_map, item_seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item: int | tuple[int, int]):
        idx, size = item if isinstance(item, tuple) else (item, self.default_size)
        path, target = self.folder.samples[idx]
        try:
            img = self.folder.loader(path)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
            return BadImage(str(path), f"{type(err).__name__}: {' '.join(str(err).split())[:160]}")
        tf = self.make_transform(size)
        if self.item_seed is None:
            x = tf(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(((self.item_seed * 1000003 + size) * 1000003 + idx) & _MASK63)
                x = tf(img)
        return x, (self.label_map[target] if self.label_map is not None else target)


def class_mismatch(root: Path, train: Sequence[str], val: Sequence[str], limit: int = 5) -> str:
    """One line on how the class folders of ``root/train`` and ``root/val`` differ."""
    only_t = [c for c in train if c not in set(val)]
    only_v = [c for c in val if c not in set(train)]

    def show(names: list[str]) -> str:
        return ", ".join(repr(n) for n in names[:limit]) + (f" and {len(names) - limit} more"
                                                           if len(names) > limit else "")

    parts = [f"{root / 'train'} has {len(train)} class folders and {root / 'val'} has {len(val)}"]
    if only_t:
        parts.append(f"only in train/: {show(only_t)}")
    if only_v:
        parts.append(f"only in val/: {show(only_v)}")
    if not only_t and not only_v:
        parts.append("the same names in another order")
    return "train/ and val/ must hold the same class folders: " + "; ".join(parts)


class DataProvider:
    """Loaders of one process (``rank`` of ``world_size``) for the task args ``args`` (``args``
    after the args_per_task update) and the model's ``image_sizes`` (pixels).

    ``train_loader(epoch)``, ``valid_loader(image_size)``, ``test_loader(image_size)``,
    ``calibration_batches(image_size)``; ``n_classes`` (1000 for imagenet/imagenette)."""

    def __init__(self, args: AnyArgs, image_sizes: Sequence[int] | int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.args = args
        self.rank, self.world_size = int(rank), int(world_size)
        sizes = [int(image_sizes)] if isinstance(image_sizes, int) else [int(s) for s in image_sizes]
        self.image_sizes = sorted(set(sizes))
        self.max_size = self.image_sizes[-1]
        self.root: Path = ensure_dataset(self.args)
        self.train_folder = self._folder("train")
        self.test_folder = self._folder("val")
        if self.train_folder.classes != self.test_folder.classes:
            raise MoofaInputError(class_mismatch(self.root, self.train_folder.classes,
                                                 self.test_folder.classes), key="args.data_path",
                                  value=str(self.root))
        dataset = self.args.dataset
        self.label_map = IMAGENETTE_IMAGENET_IDS if dataset == "imagenette" else None
        if self.label_map is not None and len(self.train_folder.classes) != len(self.label_map):
            raise MoofaInputError(f"imagenette needs {len(self.label_map)} class folders, found "
                                  f"{len(self.train_folder.classes)}", key="args.data_path", value=str(self.root))
        self.n_classes = 1000 if dataset in ("imagenet", "imagenette") else len(self.train_folder.classes)
        try:
            self.train_indices, self.valid_indices = split_train_valid(len(self.train_folder),
                                                                       self.args.valid_size)
        except ValueError as err:
            raise MoofaInputError(str(err).split(": ", 1)[-1], key="args.valid_size",
                                  value=self.args.valid_size) from None
        self.train_batch_size = self.args.base_batch_size
        self.test_batch_size = 4 * self.train_batch_size
        self.n_worker = self.args.n_worker
        self.pin_memory = use_cuda(self.args.device)
        self.bad_images = BadImageLog(fatal=self.args.corrupt_images == "error")
        self.candidates = candidate_sizes(self.image_sizes, self.args.continuous_size)
        self._train_loader: DataLoader | None = None
        self._valid: dict[int, DataLoader] = {}
        self._test: dict[tuple, DataLoader] = {}
        self._calib: dict[int, list[torch.Tensor]] = {}

    # -- datasets --------------------------------------------------------------------------------
    def _folder(self, split: str) -> ImageFolder:
        try:
            return ImageFiles(self.root / split)
        except (FileNotFoundError, OSError) as err:
            raise MoofaInputError(f"cannot read {self.root / split} as an ImageFolder ({err})",
                                  key="args.data_path", value=str(self.root)) from None

    def _train_tf(self, size: int) -> Callable:
        return train_transform(size, self.args.resize_scale, self.args.distort_color)

    def _view(self, folder: ImageFolder, make_tf: Callable[[int], Callable], size: int,
              item_seed: int | None = None) -> ResolutionDataset:
        return ResolutionDataset(folder, make_tf, size, self.label_map, item_seed)

    def _loader(self, dataset: Dataset, global_rng: bool = False, **kw: Any) -> DataLoader:
        """A loader with the provider's workers, pinning and corrupt-image handling. Unless
        ``global_rng`` (the training loader) it draws its per-iteration seed from a private
        generator: iterating it leaves the global torch RNG untouched, so validation and BN
        calibration (whose batches a resumed launch builds again) never shift training's draws."""
        if not global_rng:
            kw.setdefault("generator", torch.Generator().manual_seed(EVAL_LOADER_SEED))
        return SkippingLoader(dataset, num_workers=self.n_worker, pin_memory=self.pin_memory,
                              bad_images=self.bad_images, **kw)

    def loader(self, dataset: Dataset, **kw: Any) -> DataLoader:
        """A loader of ``dataset`` (a view of this provider's folders) with the provider's
        workers, pinning and corrupt-image handling; ``kw`` as for DataLoader."""
        return self._loader(dataset, **kw)

    # -- loaders ---------------------------------------------------------------------------------
    @property
    def train_batches_per_epoch(self) -> int:
        """Batches per epoch on this rank (nBatch of docs/design.md#protocols)."""
        return len(_resolution_batches(self.train_loader(None)))

    def train_loader(self, epoch: int | None = 0) -> DataLoader:
        """The training loader, set to ``epoch`` (None: leave the epoch as it is). Each batch has
        one resolution drawn from ``self.candidates`` with seed ``int(f"{b}{epoch:03d}")``."""
        if self._train_loader is None:
            sampler = DistributedSubsetSampler(self.train_indices, self.world_size, self.rank)
            batches = ElasticResolutionBatchSampler(
                sampler, self.train_batch_size, self.candidates, drop_last=False,
                sync=not self.args.not_sync_distributed_image_size, rank=self.rank)
            self._train_loader = self._loader(self._view(self.train_folder, self._train_tf, self.max_size),
                                              global_rng=True, batch_sampler=batches,
                                              persistent_workers=self.n_worker > 0)
        if epoch is not None:
            _resolution_batches(self._train_loader).set_epoch(epoch)
        return self._train_loader

    def set_epoch(self, epoch: int) -> None:
        self.train_loader(epoch)

    def test_loader(self, image_size: int | None = None, max_images: int | None = None) -> DataLoader:
        """``val/`` at ``image_size`` (default: the largest size) with the test transform; with
        ``max_images`` a fixed, evenly spaced subset of that many images (the same whatever the
        number of ranks). Each rank gets an unpadded shard, so all-reduced counts are exact."""
        size = int(image_size or self.max_size)
        key = (size, max_images)
        if key not in self._test:
            ds = self._view(self.test_folder, test_transform, size)
            sampler = ShardSampler(evenly_spaced(len(ds), max_images), self.world_size, self.rank)
            self._test[key] = self._loader(ds, batch_size=self.test_batch_size, sampler=sampler,
                                           shuffle=False, drop_last=False)
        return self._test[key]

    def valid_loader(self, image_size: int | None = None) -> DataLoader:
        """The held-out training images at ``image_size`` with the test transform, split over the
        ranks without padding; the test loader when ``valid_size`` is null."""
        if not self.valid_indices:
            return self.test_loader(image_size)
        size = int(image_size or self.max_size)
        if size not in self._valid:
            ds = self._view(self.train_folder, test_transform, size)
            sampler = ShardSampler(self.valid_indices, self.world_size, self.rank)
            self._valid[size] = self._loader(ds, batch_size=self.test_batch_size, sampler=sampler,
                                             drop_last=False)
        return self._valid[size]

    def calibration_batches(self, image_size: int) -> list[torch.Tensor]:
        """BN re-calibration images (docs/design.md#protocols): the first ``bn_calib_images`` of a randperm of
        the full training folder seeded 937162211, training transform at ``image_size`` with a
        fixed per-image seed, batches of ``bn_calib_batch_size``. Materialised once per resolution
        and cached (identical on every rank; pinned when CUDA is used)."""
        size = int(image_size)
        if size not in self._calib:
            idx = calibration_indices(len(self.train_folder), self.args.bn_calib_images)
            ds = self._view(self.train_folder, self._train_tf, size, item_seed=SUB_SEED)
            loader = self._loader(torch.utils.data.Subset(ds, idx),
                                  batch_size=self.args.bn_calib_batch_size, shuffle=False)
            self._calib[size] = [images for images, _ in loader]
        return self._calib[size]
