"""Dataset folders: the two embedded datasets written as ImageFolders, and checks of external ones.

Both embedded datasets are written to disk as ``<root>/train/<class>/<n>.png`` and
``<root>/val/<class>/<n>.png`` so that the real torchvision loading path runs:

* ``digits``: the 1,797 real 8x8 handwritten digits that scikit-learn ships (no download),
  upsampled (bilinear) to ``image_size`` pixels and replicated to RGB; a stratified split with a
  fixed seed puts ``val_fraction`` of them in ``val/``.
* ``synthetic``: class-dependent coloured gratings (hue, orientation and frequency encode the class)
  plus noise; ``difficulty`` in [0, 1] lowers the contrast, randomises the colour and adds noise.
  Fully deterministic for a given parameter set (same PNG bytes every time).

A folder is written into a temporary sibling and renamed into place, then marked with
``.moofa_dataset.json`` (dataset name, parameters, image counts); an existing folder is checked
against that marker.
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from moofa.config import AnyArgs
from moofa.errors import MoofaInputError

MARKER = ".moofa_dataset.json"
EMBEDDED = ("digits", "synthetic")
EXTERNAL = ("imagenet", "imagenette")
_FORMAT = 1


def _class_dir(c: int, n_classes: int) -> str:
    """Zero-padded class folder name, so ImageFolder's sorted order is the numeric order."""
    return str(c).zfill(len(str(n_classes - 1)))


def _write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, n_classes: int) -> int:
    """Write uint8 HxWx3 images as PNGs under ``root/split/<class>/``; returns the count."""
    for c in range(n_classes):
        (root / split / _class_dir(c, n_classes)).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(root / split / _class_dir(int(y), n_classes) / f"{i:06d}.png")
    return len(images)


def digits_arrays(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0):
    """The scikit-learn digits as uint8 RGB arrays: ``(x_train, y_train, x_val, y_val)``."""
    try:  # optional dependency (moofa[digits]): only this dataset needs scikit-learn
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise MoofaInputError("needs scikit-learn (pip install 'moofa[digits]')",
                              key="args.dataset", value="digits") from None
    d = load_digits()
    gray = np.clip(d.images / 16.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    big = np.stack([np.asarray(Image.fromarray(g).resize((image_size, image_size),
                                                                   Image.Resampling.BILINEAR)) for g in gray])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    idx = np.arange(len(rgb))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=d.target)
    tr, va = np.sort(tr), np.sort(va)
    return rgb[tr], d.target[tr], rgb[va], d.target[va]


def synthetic_class_images(c: int, n: int, n_classes: int, image_size: int, difficulty: float,
                           rng: np.random.Generator) -> np.ndarray:
    """``n`` uint8 RGB images of class ``c``: a grating whose hue, orientation and frequency
    depend on the class, with contrast loss, colour randomisation and noise growing with
    ``difficulty`` (0 = clean, 1 = hard)."""
    hue = c / n_classes
    base = np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.95))
    theta0 = np.pi * ((c * 3) % n_classes) / n_classes
    freq = 1.5 + (c % 3)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64) / image_size
    theta = theta0 + rng.normal(0.0, 0.4 * difficulty, size=n)
    phase = rng.uniform(0.0, 2 * np.pi, size=n)
    proj = xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None]
    pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * proj + phase[:, None, None])
    mix = 0.7 * difficulty
    colour = (1 - mix) * base[None] + mix * rng.uniform(0.0, 1.0, size=(n, 3))
    contrast = 1.0 - 0.6 * difficulty
    img = (0.5 * (1 - contrast) + contrast * pattern[..., None] * colour[:, None, None, :]
           + rng.normal(0.0, 0.35 * difficulty, size=(n, image_size, image_size, 3)))
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def synthetic_arrays(n_classes: int = 10, train_per_class: int = 100, val_per_class: int = 20,
                     image_size: int = 32, difficulty: float = 0.5, seed: int = 0):
    """The synthetic dataset as arrays: ``(x_train, y_train, x_val, y_val)``, class-major."""
    out = []
    for split_id, per_class in ((0, train_per_class), (1, val_per_class)):
        xs = [synthetic_class_images(c, per_class, n_classes, image_size, difficulty,
                                     np.random.default_rng([seed, split_id, c])) for c in range(n_classes)]
        out += [np.concatenate(xs), np.repeat(np.arange(n_classes), per_class)]
    return tuple(out)


def _params(args: AnyArgs) -> dict:
    """Generation parameters of an embedded dataset, from ``args.<dataset>`` (validated, defaults
    filled)."""
    return (args.synthetic if args.dataset == "synthetic" else args.digits).as_dict()


def write_dataset(name: str, params: Mapping[str, Any], root: str | Path) -> dict:
    """Write embedded dataset ``name`` with ``params`` under ``root`` (which must not exist yet);
    returns the marker dict."""
    root = Path(root)
    arrays = synthetic_arrays(**params) if name == "synthetic" else digits_arrays(**params)
    x_tr, y_tr, x_va, y_va = arrays
    n_classes = int(max(y_tr.max(), y_va.max())) + 1
    counts = {"train": _write_split(root, "train", x_tr, y_tr, n_classes),
              "val": _write_split(root, "val", x_va, y_va, n_classes)}
    marker = {"format": _FORMAT, "dataset": name, "params": dict(params), "counts": counts,
              "n_classes": n_classes}
    (root / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
    return marker


def _count_files(folder: Path) -> int:
    return sum(1 for sub in folder.iterdir() if sub.is_dir() for f in sub.iterdir() if f.is_file())


def _check_existing(root: Path, name: str, params: dict) -> None:
    def bad(why: str) -> MoofaInputError:
        return MoofaInputError(f"{why}; delete the folder or choose another data_path",
                               key="args.data_path", value=str(root))

    marker_path = root / MARKER
    if not marker_path.is_file():
        raise bad(f"folder exists but holds no complete {name} dataset (no {MARKER})")
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        raise bad(f"unreadable {MARKER}") from None
    if marker.get("dataset") != name or marker.get("params") != params:
        raise bad(f"holds dataset {marker.get('dataset')!r} with parameters {marker.get('params')}, "
                  f"not {name!r} with {params}")
    for split, n in marker.get("counts", {}).items():
        found = _count_files(root / split) if (root / split).is_dir() else 0
        if found != n:
            raise bad(f"{split}/ has {found} images, expected {n}")


def check_image_folder(root: str | Path, key: str = "args.data_path") -> Path:
    """An external dataset root must hold ``train/`` and ``val/`` folders."""
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise MoofaInputError(f"dataset folder {root / split} not found (expected an ImageFolder "
                                  "layout with train/ and val/)", key=key, value=str(root))
    return root


def check_dataset_args(args: AnyArgs) -> Path:
    """The dataset root ``args.data_path``, after the checks that need no writing: a folder is
    given, the dataset is known, and an external dataset's ``train/`` and ``val/`` exist. A job
    calls it before it writes anything (bad input creates nothing)."""
    if args.data_path is None:  # load_config fills it (default_data_path)
        raise MoofaInputError("no dataset folder given", key="args.data_path", value=None)
    root = Path(args.data_path)
    if args.dataset in EXTERNAL:
        return check_image_folder(root)
    if args.dataset not in EMBEDDED:
        raise MoofaInputError(f"unknown dataset (valid: {', '.join(EXTERNAL + EMBEDDED)})",
                              key="args.dataset", value=args.dataset)
    return root


def ensure_dataset(args: AnyArgs) -> Path:
    """Return the dataset root ``args.data_path``. Embedded datasets are written there when the
    folder is missing or empty (atomically: a temporary sibling renamed into place; concurrent
    callers are safe) and checked against their marker otherwise. External datasets must exist."""
    root, name = check_dataset_args(args), args.dataset
    if name in EXTERNAL:
        return root
    params = _params(args)
    if root.is_dir() and any(root.iterdir()):
        _check_existing(root, name, params)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_dataset(name, params, tmp)
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        os.rename(tmp, root)
    except OSError:
        if not (root / MARKER).is_file():  # not a lost race with another process: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _check_existing(root, name, params)
    return root
