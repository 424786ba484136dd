"""Atomic file writes: everything that matters is written to a temporary file in the target's
folder and renamed into place, so a killed job never leaves a half-written file. A job killed
during a write leaves its temporary file (``.<stem>.<random>.tmp<suffix>``) behind; the next run
removes it (:func:`clean_stale_temps`). Also the start-of-run checks of inputs and outputs:
:func:`require_file` and :func:`check_writable`."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import torch

from moofa.errors import MoofaInputError

TEMP_MARK = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); when the block succeeds it is
    fsynced and renamed onto ``path``, otherwise removed. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{TEMP_MARK}{path.suffix}", dir=path.parent)
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
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def save_figure(fig: Any, path_stem: str | Path, dpi: int = 150,
                formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save a matplotlib figure as ``<stem>.png`` (``dpi``) and ``<stem>.pdf``, each atomically."""
    stem = Path(path_stem)
    written = []
    for ext in formats:
        final = stem.with_name(f"{stem.name}.{ext}")
        with atomic_path(final) as tmp:
            fig.savefig(tmp, dpi=dpi if ext == "png" else None, format=ext)
        written.append(final)
    return written


# ------------------------------------------------------------------------------- start-of-run checks
def is_temp_of(candidate: Path, target: Path) -> bool:
    """Whether ``candidate`` is a temporary file of :func:`atomic_path` for ``target``."""
    name, stem = candidate.name, f".{target.stem}."
    end = f"{TEMP_MARK}{target.suffix}"
    return (candidate.parent == target.parent and name.startswith(stem) and name.endswith(end)
            and len(name) > len(stem) + len(end))


def clean_stale_temps(targets: Iterable[str | Path] = (), folders: Iterable[str | Path] = (),
                      recursive: bool = False) -> list[Path]:
    """Remove temporary files that interrupted atomic writes left: those of the files
    ``targets`` and, in ``folders`` (the caller holds their lock, so no other writer is busy
    there), every ``.*.tmp*`` file (``recursive``: also in sub-folders). Returns what was
    removed (logged)."""
    removed: list[Path] = []
    for t in targets:
        t = Path(t)
        if t.parent.is_dir():
            removed += [c for c in t.parent.iterdir() if c.is_file() and is_temp_of(c, t)]
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            found = folder.rglob(".*") if recursive else folder.glob(".*")
            removed += [c for c in found if c.is_file() and f"{TEMP_MARK}" in c.name
                        and c.name.count(".") >= 3]
    out = []
    for c in dict.fromkeys(removed):
        try:
            size = c.stat().st_size
            c.unlink()
        except OSError:
            continue
        logging.getLogger("moofa").info("removed %s (%s bytes), left by an interrupted write", c,
                                        f"{size:,}")
        out.append(c)
    return out


def require_file(path: str | Path, what: str = "file", key: str | None = None,
                 error: type[MoofaInputError] = MoofaInputError, hint: str = "") -> Path:
    """``path`` as a Path when it is a readable file; otherwise ``error`` saying whether it is
    missing or a folder (naming ``key``)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"is a folder, not a {what}" + hint, file=path, key=key)
    if not path.is_file():
        raise error(f"{what} not found" + hint, file=path, key=key)
    return path


def read_json(path: str | Path) -> dict:
    """Read a JSON object; MoofaInputError naming the file when missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MoofaInputError("file not found", file=path) from None
    except (OSError, json.JSONDecodeError) as err:
        raise MoofaInputError(f"cannot read JSON ({err})", file=path) from None
    if not isinstance(data, dict):
        raise MoofaInputError("expected a JSON object", file=path)
    return data


def read_utf8(path: str | Path, error: type[MoofaInputError] = MoofaInputError) -> str:
    """The text of ``path`` decoded as UTF-8 (whatever the locale); bytes that are not UTF-8
    raise ``error`` naming the file and the byte offset. OSError propagates."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"not UTF-8 text: byte offset {err.start} ({err.reason}); save the file as "
                    "UTF-8", file=path, value=data[err.start:err.start + 1]) from None


def check_writable(folder: str | Path, key: str | None = None) -> Path:
    """Create ``folder`` (and its parents) and check that a file can be written there, before
    any long work. A file in the way, a missing permission or a read-only disk raises
    :class:`MoofaInputError` naming the folder and ``key``."""
    folder = Path(folder)
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise MoofaInputError(f"cannot write to {folder}: {blocker} is a file, not a folder",
                              key=key, value=str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=f"{TEMP_MARK}", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise MoofaInputError(f"cannot write to {folder} ({err.strerror or err})", key=key,
                              value=str(folder)) from None
    return folder
