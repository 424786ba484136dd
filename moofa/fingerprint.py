"""Content fingerprints: what a resumable result was computed from (docs/resume.md).

A result that a rerun may reuse (a search constraint's ``info.json``, a finished training phase,
the records of a predictor dataset) records a *fingerprint*: a JSON-able dict of the settings
that shaped it and of its input files identified by content, not by path. A rerun computes the
fingerprint again and compares: equal means the result is reused, different means it is redone
or the run stops with one line naming what changed (:func:`check_recorded`).

Files (:func:`file_fingerprint`): size plus the SHA-256 of the whole file for files up to
:data:`FULL_HASH_BYTES`; larger files record size, modification time (ns) and the SHA-256 of their
first and last :data:`HEAD_BYTES`. The path is recorded for the messages but never compared, so
a moved or copied checkpoint still matches and a file rewritten in place does not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from moofa.errors import MoofaInputError
from moofa.io import write_json

log = logging.getLogger(__name__)

FULL_HASH_BYTES = 1 << 30   # files up to 1 GiB are hashed whole (about 2 s per GiB)
HEAD_BYTES = 1 << 22        # larger files: 4 MiB from the start and from the end
NOT_COMPARED = frozenset({"path"})  # fingerprint keys shown in messages, never compared


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a whole file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(path: Path, size: int) -> tuple[str, str]:
    if size <= FULL_HASH_BYTES:
        return "sha256", sha256_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(HEAD_BYTES))
        fh.seek(size - HEAD_BYTES)
        h.update(fh.read(HEAD_BYTES))
    return "sha256_head_tail", h.hexdigest()


def file_fingerprint(path: str | Path | None) -> dict[str, Any] | None:
    """``{"path", "size", "sha256"}`` of a file (bytes; see the module docstring for large
    files), None for None. A missing file raises :class:`MoofaInputError` naming it."""
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError as err:
        raise MoofaInputError(f"cannot read ({err.strerror})", file=p) from None
    if not p.is_file():
        raise MoofaInputError("is a folder, not a file", file=p)
    kind, digest = _digest(p, st.st_size)
    fp: dict[str, Any] = {"path": str(p), "size": int(st.st_size), kind: digest}
    if kind != "sha256":
        fp["mtime_ns"] = int(st.st_mtime_ns)
    return fp


def normalise(obj: Any) -> Any:
    """``obj`` as plain JSON types (tuples become lists, keys strings, read-only mappings such as
    config sections dicts), as it reads back."""
    return json.loads(json.dumps(obj, default=lambda o: dict(o) if isinstance(o, Mapping) else str(o)))


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if k in NOT_COMPARED:
                continue
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        s = repr(v[:12] + "...")  # a digest: the first characters tell them apart
    return s if len(s) <= 60 else s[:57] + "..."


def _paths(obj: Any, prefix: str = "") -> dict[str, str]:
    """``{dotted key of a file fingerprint: its path}``."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        if "path" in obj and "size" in obj:
            out[prefix] = str(obj["path"])
        for k, v in obj.items():
            out.update(_paths(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints, e.g.
    ``"predictor (/p/acc.pth.tar): sha256 'ab12...' -> 'cd34...'"``; empty when they match
    (the ``path`` of a file is not compared)."""
    if recorded is None:
        return ["the result records no fingerprint (written by an older version)"]
    old, new = _flat(normalise(recorded)), _flat(normalise(current))
    paths = {**_paths(normalise(recorded)), **_paths(normalise(current))}
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k.split(".")[0], k)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            continue
        head, _, leaf = key.rpartition(".")
        label = f"{head} ({paths[head]}): {leaf}" if head in paths else key
        out.append(f"{label} {_short(a)} -> {_short(b)}")
    return out


def same(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    return not differences(recorded, current)


def change_message(what: str, recorded: Mapping[str, Any] | None, current: Mapping[str, Any],
                   restart: str, limit: int = 3) -> str:
    """One line: ``<what> was computed from other inputs: <changes>; <restart>``."""
    diffs = differences(recorded, current)
    shown = "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")
    return f"{what} was computed from other inputs ({shown}); {restart}"


def check_recorded(what: str, recorded: Mapping[str, Any] | None, current: Mapping[str, Any],
                   file: Any = None, restart: str = "rerun with --overwrite to start over") -> None:
    """Raise :class:`MoofaInputError` (one line naming ``file`` and what changed) unless the
    fingerprints match."""
    if not same(recorded, current):
        raise MoofaInputError(change_message(what, recorded, current, restart), file=file)


def read_fingerprint(path: str | Path) -> dict | None:
    """The ``fingerprint`` stored in a JSON sidecar written by :func:`write_fingerprint`
    (None when the file is missing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data.get("fingerprint") if isinstance(data, Mapping) else None


def write_fingerprint(path: str | Path, fingerprint: Mapping[str, Any], **extra: Any) -> Path:
    """Write ``{"fingerprint": ..., **extra}`` atomically as JSON."""
    return write_json(path, {"fingerprint": normalise(fingerprint), **extra})


def data_identity(dataset: str, data_path: str | None,
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset of a run: name, root folder and, for the embedded datasets, their generator
    settings ``params`` (what decides the images)."""
    out: dict[str, Any] = {"dataset": dataset, "data_path": os.path.normpath(str(data_path))}
    if params is not None:
        out["params"] = params
    return out


def unrecorded_images(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether ``recorded`` (an older result) has a ``data`` section without the ``images`` that
    ``current`` records (docs/resume.md: such a result is reused with a warning)."""
    old, new = (recorded or {}).get("data"), current.get("data")
    return (isinstance(old, Mapping) and isinstance(new, Mapping) and "images" not in old
            and "images" in new)


def comparable(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` as it compares with ``recorded``: without ``data.images`` when
    :func:`unrecorded_images`."""
    out = dict(current)
    if unrecorded_images(recorded, current):
        out["data"] = {k: v for k, v in current["data"].items() if k != "images"}
    return out


def subset(mapping: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The entries of ``mapping`` named in ``keys`` (absent ones skipped)."""
    return {k: mapping[k] for k in keys if k in mapping}


def model_identity(spec: Any) -> dict[str, Any]:
    """A model spec as plain data: name, class, choice lists, resolutions and widths (what
    decides the architecture, so an edited model_configs.yaml is noticed)."""
    try:
        return normalise(dataclasses.asdict(spec))
    except TypeError:
        return {"name": getattr(spec, "name", str(spec)), "repr": repr(spec)}
