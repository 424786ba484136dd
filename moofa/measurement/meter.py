"""Measuring many subnets of one supernet in one process: the fixed evaluation subset of a split
(every image or ``eval_images`` evenly spaced) and :class:`SubnetMeter`, top-1 of a subnet after
BN re-calibration (a fraction). Shared by the predictor's dataset creation and the search sweep."""
from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Subset

from moofa.errors import MoofaInputError
from moofa.measurement.evaluate import calibrate_subnet, evaluate
from moofa.models.spec import SubnetConfig
from moofa.models.supernet import Supernet

EVAL_SPLITS = ("selection", "test")


def eval_subset_indices(n_images: int, eval_images: int | None) -> list[int]:
    """The fixed evaluation subset: ``floor(i * n_images / eval_images)`` for ``i <
    eval_images`` (every image when ``eval_images`` is None or >= ``n_images``)."""
    if eval_images is None or eval_images >= n_images:
        return list(range(n_images))
    return [i * n_images // int(eval_images) for i in range(int(eval_images))]


def split_images(provider: Any, split: str, eval_images: int | None) -> tuple[Any, list[int], str]:
    """``(view factory, indices, description)`` of the images subnets are measured on for
    selection: ``split="selection"``: the training images held out of supernet training
    (``args.valid_size``, OFA's protocol), with the test transform; ``split="test"`` (the
    reference's choice): the test split ``val/``. ``eval_images`` evenly spaced of them."""
    if split not in EVAL_SPLITS:
        raise MoofaInputError(f"must be one of {', '.join(EVAL_SPLITS)}", key="dataset_config.eval_split",
                              value=split)
    if split == "test":
        pool = list(range(len(provider.test_folder)))
        view = lambda size: provider.test_loader(size).dataset  # noqa: E731
        where = f"test split {provider.root / 'val'}"
    else:
        pool = list(provider.valid_indices)
        if not pool:
            raise MoofaInputError("the selection split is the training images held out by "
                                  "args.valid_size, which is null; set args.valid_size or "
                                  "dataset_config.eval_split: test (the reference's choice)",
                                  key="dataset_config.eval_split", value=split)
        view = lambda size: provider.valid_loader(size).dataset  # noqa: E731
        where = (f"selection split: held-out training images of {provider.root / 'train'} "
                 f"(args.valid_size {provider.args.valid_size})")
    idx = [pool[i] for i in eval_subset_indices(len(pool), eval_images)]
    return view, idx, f"{len(idx):,} images of the {where}"


class SubnetMeter:
    """Measures subnets of ``supernet`` within one process: BN re-calibration on ``provider``'s
    calibration batches, then top-1 on the fixed evaluation subset of ``split`` (see
    :func:`split_images`; loaders cached per size). ``provider`` must be a single-process
    provider (rank 0 of 1) so that its splits are whole."""

    def __init__(self, supernet: Supernet, provider: Any, eval_images: int | None,
                 split: str = "test") -> None:
        if getattr(provider, "world_size", 1) != 1:
            raise ValueError("provider: SubnetMeter needs a provider of world_size 1 (whole test split)")
        self.supernet, self.provider, self.split = supernet, provider, split
        self.n_test = len(provider.test_folder)
        self._view, self.indices, self.description = split_images(provider, split, eval_images)
        self._loaders: dict[int, DataLoader] = {}

    def loader(self, image_size: int) -> DataLoader:
        """The evaluation subset at ``image_size`` with the test transform."""
        if image_size not in self._loaders:
            p = self.provider
            ds = Subset(self._view(image_size), self.indices)
            self._loaders[image_size] = p.loader(ds, batch_size=p.test_batch_size, shuffle=False,
                                                 persistent_workers=p.n_worker > 0)
        return self._loaders[image_size]

    def accuracy(self, subnet: SubnetConfig) -> float:
        """Top-1 fraction of ``subnet`` on the evaluation subset (complete counts, no reduction)."""
        calibrate_subnet(self.supernet, subnet, self.provider)
        return evaluate(self.supernet, self.loader(subnet.image_size), None).top1
