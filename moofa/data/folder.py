"""Reading an image folder safely: the file list, the pixels and the folder's identity.

* :class:`ImageFiles`: torchvision's ImageFolder (same classes, same sample order) whose walk of a
  class folder follows a symlinked directory only when it leads outside the split folder
  (``train/`` or ``val/``) and to a folder not listed yet: a link back into the split (a loop such
  as ``up -> ..``, another class's folder, a second copy of the same images) or to one of its
  ancestors is skipped with one warning naming the link (resolved real paths decide). Symlinked
  files are read as usual.
* :func:`load_rgb`: 8-bit RGB of any PIL mode: 16-bit and 32-bit integer images (``I;16``,
  ``I;16B``, ``I``) are scaled from 0..65535 to 0..255, float images (``F``) from 0..1 (or clipped
  to 0..255 when their values exceed 1), images with transparency (``LA``, ``RGBA``, ``P`` with a
  transparent colour, ...) are composited onto white, other modes (``CMYK``, ``P``, ``L``, ``1``,
  ``YCbCr``) converted by PIL. Plain ``convert("RGB")`` clips ``I;16`` to white squares.
* :func:`split_identity`: a split folder by content, cheaply: the number of images, their total
  size and the SHA-256 of the sorted list of (relative path, size, mtime) (docs/resume.md).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from moofa.config import AnyArgs
from moofa.data.datasets import ensure_dataset
from moofa.fingerprint import data_identity

log = logging.getLogger("moofa.data")
SPLITS = ("train", "val")
_WARNED_LINKS: set[str] = set()  # each skipped symlink is named once per process
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _skip_link(link: str, target: str, split_real: str, seen: set[str]) -> bool:
    """Whether the symlinked directory ``link`` (real path ``target``) must not be followed;
    warns once per link."""
    if _inside(target, split_real) or _inside(split_real, target):
        why = f"it leads back into {split_real} (a loop or a second copy of its images)"
    elif target in seen:
        why = "its folder is already listed (a loop)"
    else:
        return False
    if link not in _WARNED_LINKS:
        _WARNED_LINKS.add(link)
        log.warning("not following symlink %s -> %s: %s", link, target, why)
    return True


def _walk(top: str, split_real: str, seen: set[str]) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` under ``top``, following only the safe directory links."""
    for root, dirs, files in os.walk(top):
        seen.add(os.path.realpath(root))
        yield root, files
        for d in dirs:
            link = os.path.join(root, d)
            if os.path.islink(link):
                target = os.path.realpath(link)
                if not _skip_link(link, target, split_real, seen):
                    yield from _walk(link, split_real, seen)


class ImageFiles(ImageFolder):
    """An ImageFolder with the symlink rules and the loader of the module docstring."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(str(root), loader=load_rgb)

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int],
                     extensions: tuple[str, ...] | None = IMG_EXTENSIONS,
                     is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        """``(path, class index)`` in torchvision's order (sorted folders, sorted names)."""
        directory = os.path.expanduser(str(directory))
        split_real = os.path.realpath(directory)
        valid = is_valid_file or (lambda p: has_file_allowed_extension(p, extensions or IMG_EXTENSIONS))
        samples, empty = [], []
        for name in sorted(class_to_idx):
            class_dir = os.path.join(directory, name)
            if not os.path.isdir(class_dir):
                continue
            found = [(os.path.join(root, f), class_to_idx[name])
                     for root, files in sorted(_walk(class_dir, split_real, {split_real}))
                     for f in sorted(files) if valid(os.path.join(root, f))]
            samples += found
            if not found:
                empty.append(name)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return samples


def _to_uint8(a: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(a.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB (see the module docstring for each mode)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _INT_MODES:
        gray = _to_uint8(np.asarray(img), 65535.0)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        gray = _to_uint8(a, 1.0 if a.size == 0 or np.nanmax(a) <= 1.0 else 255.0)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """The image file ``path`` as 8-bit RGB (decoding errors raise, as PIL's)."""
    with open(path, "rb") as fh:
        img = Image.open(fh)
        img.load()
    return to_rgb(img)


def split_identity(folder: ImageFolder) -> dict[str, Any]:
    """``{"files", "bytes", "sha256"}`` of the images of ``folder`` (the digest covers each
    image's path relative to the folder, size and mtime in ns; no bytes are read)."""
    h, total = hashlib.sha256(), 0
    for path, _ in folder.samples:
        try:
            st = os.stat(path)
            size, mtime = int(st.st_size), int(st.st_mtime_ns)
        except OSError:  # a broken link: listed, and skipped as corrupt when read
            size = mtime = -1
        total += max(size, 0)
        h.update(f"{os.path.relpath(path, folder.root)}\t{size}\t{mtime}\n".encode())
    return {"files": len(folder.samples), "bytes": total, "sha256": h.hexdigest()}


def data_fingerprint(args: AnyArgs,
                     folders: Mapping[str, ImageFolder] | None = None) -> dict[str, Any]:
    """The dataset of a run by content: :func:`moofa.fingerprint.data_identity` plus ``images``,
    the :func:`split_identity` of ``train/`` and ``val/`` (``folders``: already listed ones, by
    split; else they are listed, an embedded dataset written first if missing)."""
    if folders is None:
        root = ensure_dataset(args)
        folders = {split: ImageFiles(root / split) for split in SPLITS}
    embedded = {"synthetic": args.synthetic, "digits": args.digits}.get(args.dataset)
    params = None if embedded is None else embedded.as_dict()  # the settings that decide the images
    return {**data_identity(args.dataset, args.data_path, params),
            "images": {split: split_identity(folders[split]) for split in SPLITS}}
