"""Content fingerprints: what a resumable result was computed from (docs/resume.md).

A result that a rerun may reuse (a search constraint's ``info.json``, a finished training phase,
the records of a predictor dataset, a fine-tuning, deployed programs) records a *fingerprint*
(:class:`Inputs`): the JSON-able settings that shaped it and its input files identified by
content, not by path. A rerun computes the fingerprint again and every
site calls :func:`resolve`: :func:`assess` gives a :class:`Verdict` (FRESH, REUSABLE, STALE) and
the site's explicit :class:`Policy` decides what a STALE result means (REFUSE: stop with one line
naming what changed; REDO; MOVE_ASIDE).

Files (:func:`file_fingerprint`): size plus the SHA-256 of the whole file for files up to
:data:`FULL_HASH_BYTES`; larger files record size, modification time (ns) and the SHA-256 of their
first and last :data:`HEAD_BYTES`. The path is recorded for the messages but never compared, so
a moved or copied checkpoint still matches and a file rewritten in place does not.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from enum import Enum
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


UNRECORDED_MESSAGE = "the result records no fingerprint (written by an older version)"


@dataclass(frozen=True)
class Inputs:
    """What a result was computed from: its fingerprint, the settings that shaped it and its
    input files by content (:func:`file_fingerprint`), as plain JSON data (``fields``).

    ``recorded`` is False only for :meth:`unrecorded`: a result that exists but records no
    fingerprint (written by an older version, or its record is unreadable)."""

    fields: dict[str, Any]
    recorded: bool = True

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> Inputs:
        """``fields`` JSON-normalised (:func:`normalise`), as they read back from a file."""
        return cls(normalise(fields))

    @classmethod
    def unrecorded(cls) -> Inputs:
        """The fingerprint of an existing result that records none: it matches nothing."""
        return cls({}, recorded=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def without(self, *keys: str) -> Inputs:
        """These inputs less the top-level ``keys`` (ones derived elsewhere, not compared)."""
        return replace(self, fields={k: v for k, v in self.fields.items() if k not in keys})

    def to_json(self) -> dict[str, Any]:
        """The fields as they are written (a copy)."""
        return normalise(self.fields)

    def differences(self, current: Inputs) -> list[str]:
        """Human-readable differences from these (recorded) inputs to ``current``, e.g.
        ``"predictor (/p/acc.pth.tar): sha256 'ab12...' -> 'cd34...'"``; empty when they match
        (the ``path`` of a file is not compared)."""
        if not self.recorded:
            return [UNRECORDED_MESSAGE]
        old, new = _flat(self.fields), _flat(current.fields)
        paths = {**_paths(self.fields), **_paths(current.fields)}
        out = []
        for key in sorted(set(old) | set(new), key=lambda k: (k.split(".")[0], k)):
            a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
            if a == b:
                continue
            head, _, leaf = key.rpartition(".")
            label = f"{head} ({paths[head]}): {leaf}" if head in paths else key
            out.append(f"{label} {_short(a)} -> {_short(b)}")
        return out

    def lacks_images(self, current: Inputs) -> bool:
        """Whether these (recorded, older) inputs have a ``data`` section without the ``images``
        that ``current`` records (docs/resume.md: such a result is reused with a warning)."""
        old, new = self.get("data"), current.get("data")
        return (self.recorded and isinstance(old, dict) and isinstance(new, dict)
                and "images" not in old and "images" in new)

    def comparable(self, current: Inputs) -> Inputs:
        """``current`` as it compares with these recorded inputs: without ``data.images`` when
        :meth:`lacks_images`."""
        if not self.lacks_images(current):
            return current
        data = {k: v for k, v in current.fields["data"].items() if k != "images"}
        return replace(current, fields={**current.fields, "data": data})


class Verdict(Enum):
    """How a result's recorded inputs compare with this run's (:func:`assess`)."""

    FRESH = "fresh"        # no result to compare with: compute it
    REUSABLE = "reusable"  # recorded == current (older results: data.images aside)
    STALE = "stale"        # recorded != current: the site's Policy decides


class Policy(Enum):
    """What a site does with a STALE result (:func:`resolve`)."""

    REFUSE = "refuse"          # stop: one-line MoofaInputError naming the file and what changed
    REDO = "redo"              # compute it again, overwriting it
    MOVE_ASIDE = "move_aside"  # rename it to ``<name>.previous-<n>`` and compute it again


@dataclass(frozen=True)
class Resolution:
    """The outcome of :func:`resolve`: the verdict and, for MOVE_ASIDE, where the result went."""

    verdict: Verdict
    moved_to: Path | None = None

    @property
    def reuse(self) -> bool:
        return self.verdict is Verdict.REUSABLE


def assess(recorded: Inputs | None, current: Inputs) -> Verdict:
    """FRESH when nothing is recorded (``None``: there is no result), REUSABLE when ``recorded``
    matches ``current`` (as :meth:`Inputs.comparable`), else STALE."""
    if recorded is None:
        return Verdict.FRESH
    return Verdict.STALE if recorded.differences(recorded.comparable(current)) else Verdict.REUSABLE


def change_message(what: str, recorded: Inputs, current: Inputs, restart: str, limit: int = 3) -> str:
    """One line: ``<what> was computed from other inputs (<changes>); <restart>``."""
    diffs = recorded.differences(recorded.comparable(current))
    shown = "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")
    return f"{what} was computed from other inputs ({shown}); {restart}"


def move_aside(path: Path) -> Path:
    """Rename ``path`` (file or folder) to the first free ``<name>.previous-<n>`` beside it."""
    n = 1
    while (path.parent / f"{path.name}.previous-{n}").exists():
        n += 1
    moved = path.parent / f"{path.name}.previous-{n}"
    path.rename(moved)
    return moved


def resolve(what: str, recorded: Inputs | None, current: Inputs, policy: Policy, *,
            file: str | Path | None = None, restart: str = "rerun with --overwrite to start over",
            result: Path | None = None, error: type[MoofaInputError] = MoofaInputError) -> Resolution:
    """:func:`assess` the result, then apply ``policy`` to a STALE one: REFUSE raises ``error``
    (one line naming ``file``, what changed and ``restart``), MOVE_ASIDE renames ``result`` (the
    result's file or folder; default ``file``), REDO leaves it to be overwritten."""
    verdict = assess(recorded, current)
    if verdict is not Verdict.STALE:
        return Resolution(verdict)
    assert recorded is not None  # STALE compares a record
    if policy is Policy.REFUSE:
        raise error(change_message(what, recorded, current, restart), file=file)
    if policy is Policy.MOVE_ASIDE:
        target = result if result is not None else file
        if target is None:
            raise ValueError("Policy.MOVE_ASIDE needs the result's path")
        return Resolution(verdict, move_aside(Path(target)))
    return Resolution(verdict)


def read_fingerprint(path: str | Path) -> Inputs | None:
    """The ``fingerprint`` stored in a JSON sidecar written by :func:`write_fingerprint`
    (None when the file is missing or unreadable or records no fingerprint object)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    fp = data.get("fingerprint") if isinstance(data, Mapping) else None
    return Inputs.of(fp) if isinstance(fp, Mapping) else None


def write_fingerprint(path: str | Path, fingerprint: Inputs, **extra: Any) -> Path:
    """Write ``{"fingerprint": ..., **extra}`` atomically as JSON."""
    return write_json(path, {"fingerprint": fingerprint.to_json(), **extra})


def data_identity(dataset: str, data_path: str | None,
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset of a run: name, root folder and, for the embedded datasets, their generator
    settings ``params`` (what decides the images)."""
    out: dict[str, Any] = {"dataset": dataset, "data_path": os.path.normpath(str(data_path))}
    if params is not None:
        out["params"] = params
    return out


def model_identity(spec: Any) -> dict[str, Any]:
    """A model spec as plain data: name, class, choice lists, resolutions and widths (what
    decides the architecture, so an edited model_configs.yaml is noticed)."""
    try:
        return normalise(asdict(spec))
    except TypeError:
        return {"name": getattr(spec, "name", str(spec)), "repr": repr(spec)}
