"""Atomic file writes: everything that matters is written to a temporary file in the target's
folder and renamed into place, so a killed job never leaves a half-written file."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); when the block succeeds it is
    fsynced and renamed onto ``path``, otherwise removed. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``open(path, mode)`` that writes atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    """Atomic JSON write."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """Atomic ``torch.save``."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def save_figure(fig: Any, path_stem: str | Path, dpi: int = 150, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save a matplotlib figure as ``<stem>.png`` (``dpi``) and ``<stem>.pdf``, each atomically."""
    stem = Path(path_stem)
    written = []
    for ext in formats:
        final = stem.with_name(f"{stem.name}.{ext}")
        with atomic_path(final) as tmp:
            fig.savefig(tmp, dpi=dpi if ext == "png" else None, format=ext)
        written.append(final)
    return written
