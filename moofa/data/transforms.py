"""Image transforms of the reference data providers (docs/design.md#protocols).

Train: RandomResizedCrop(size, scale=(resize_scale, 1), ratio 3/4..4/3, bilinear), horizontal
flip, colour distortion, ToTensor, ImageNet normalisation. Test/validation: Resize(ceil(r/0.875))
on the shorter side, CenterCrop(r), ToTensor, normalisation.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DISTORT_COLOR = ("tf", "torch", None)


def color_jitter(distort_color: str | None) -> Callable | None:
    """``tf``: ColorJitter(brightness=32/255, saturation=0.5); ``torch``: ColorJitter(0.4, 0.4,
    0.4, 0.1); None: no colour distortion."""
    if distort_color == "tf":
        return T.ColorJitter(brightness=32.0 / 255.0, saturation=0.5)
    if distort_color == "torch":
        return T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    if distort_color is None:
        return None
    raise ValueError(f"distort_color: {distort_color!r} is not one of {DISTORT_COLOR}")


def test_resize_size(image_size: int) -> int:
    """Shorter-side resize before the centre crop: ceil(r / 0.875) pixels (147/183/220/256)."""
    return int(math.ceil(image_size / 0.875))


@lru_cache(maxsize=None)
def train_transform(image_size: int, resize_scale: float = 0.08,
                    distort_color: str | None = "tf") -> T.Compose:
    """The training augmentation producing ``image_size`` x ``image_size`` tensors."""
    steps = [T.RandomResizedCrop(image_size, scale=(resize_scale, 1.0),
                                 interpolation=T.InterpolationMode.BILINEAR),
             T.RandomHorizontalFlip()]
    jitter = color_jitter(distort_color)
    if jitter is not None:
        steps.append(jitter)
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


@lru_cache(maxsize=None)
def test_transform(image_size: int) -> T.Compose:
    """The deterministic evaluation transform at ``image_size`` pixels."""
    return T.Compose([T.Resize(test_resize_size(image_size)), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# Not tests: keep pytest from collecting these when a test module imports them by name.
test_transform.__test__ = False  # type: ignore[attr-defined]
test_resize_size.__test__ = False  # type: ignore[attr-defined]
