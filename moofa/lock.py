"""Locks on output folders: one writer per folder (docs/resume.md).

:class:`OutputLock` creates ``<folder>/.moofa.lock`` holding the owner's pid, host, process start
time and command. A second run that finds the lock held stops with :class:`MoofaInputError`
(exit 2) naming the running one. A lock left by a killed run is *stale* when its host is this
host and its pid is gone (or now belongs to a process with another start time); it is taken over
with a log line. A lock of another host is never taken over: the message names the file to
remove. Creation is atomic (a complete file is hard-linked into place), and taking over retries
a bounded number of times.

The holder also keeps an advisory ``flock`` on the lock file while it holds it (the kernel drops
it when the process dies). A lock file without a readable owner (empty or garbled: a crash
before its contents reached the disk) is taken over, with a warning, when it is at least
:data:`GARBLED_GRACE_S` old (younger, it may still be being written) and no live process holds
its ``flock``; otherwise the run stops naming the file.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moofa.errors import MoofaInputError
from moofa.io import check_writable

log = logging.getLogger(__name__)
LOCK_NAME = ".moofa.lock"
_ATTEMPTS = 5
GARBLED_GRACE_S = 2.0  # seconds: a lock file without an owner younger than this may be mid-write


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}


class OutputLock:
    """``with OutputLock(folder, what):`` holds ``folder`` for this process (folder created).

    ``what`` names the job in messages (e.g. ``"search"``); ``name`` is the lock file's name
    (several outputs in one folder each get their own). Re-entrant within one process."""

    def __init__(self, folder: str | Path, what: str = "run", key: str | None = None,
                 name: str = LOCK_NAME) -> None:
        self.folder, self.what, self.key = Path(folder), what, key
        self.path = self.folder / name
        self.held = False
        self._fd: int | None = None  # open on the lock file, holding its flock

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale(self, owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return False
        try:
            pid = int(owner["pid"])
        except (KeyError, TypeError, ValueError):
            return True  # unreadable (hand-edited): nobody can be named as the owner
        if not _alive(pid):
            return True
        start = owner.get("start")
        return start is not None and _start_time(pid) not in (None, start)

    def _create(self) -> bool:
        me = _owner()
        fd, tmp = tempfile.mkstemp(prefix=".moofa-lock.", suffix=".tmp", dir=self.folder)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: never contended
        try:
            os.write(fd, json.dumps(me).encode())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                os.close(fd)
                return False
            except OSError:  # no hard links on this filesystem: exclusive create instead
                os.close(fd)
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(fd, json.dumps(me).encode())
            self._fd = fd
            return True
        finally:
            os.unlink(tmp)

    def _take_garbled(self) -> bool:
        """Remove a lock file without a readable owner when no live process holds its flock;
        False when one does. Waits out :data:`GARBLED_GRACE_S` for a file still being written."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            age = time.time() - os.fstat(fd).st_mtime
            if age < GARBLED_GRACE_S:
                time.sleep(GARBLED_GRACE_S - age)
                return True  # read it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # still the file examined (its owner never writes it after creation)
                log.warning("taking over the lock %s: it names no owner (empty or garbled, "
                            "%.0f s old) and no live process holds it", self.path, age)
                self.path.unlink()
            return True
        finally:
            os.close(fd)

    def acquire(self) -> "OutputLock":
        if self.held:
            return self

        check_writable(self.folder, self.key)
        for _ in range(_ATTEMPTS):  # bounded: each pass creates the lock or removes a stale one
            if self._create():
                self.held = True
                return self
            owner = self._read()
            if owner is None:
                continue  # released meanwhile
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.held = True
                return self
            if owner.get("pid") is None or owner.get("host") is None:  # empty or garbled
                if self._take_garbled():
                    continue
                raise MoofaInputError(
                    f"another {self.what} holds the lock {self.path} (its file names no owner); "
                    "wait for it to finish", file=self.folder, key=self.key)
            if not self._stale(owner):
                raise MoofaInputError(
                    f"another {self.what} is writing here: pid {owner.get('pid')} on host "
                    f"{owner.get('host')} since {owner.get('since')} ({owner.get('command', '')!s:.80}); "
                    f"wait for it to finish, or remove {self.path} if that process is dead",
                    file=self.folder, key=self.key)
            log.warning("taking over the stale lock %s of pid %s on %s (that process is gone)",
                        self.path, owner.get("pid"), owner.get("host"))
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        raise MoofaInputError(f"could not take the lock {self.path} after {_ATTEMPTS} attempts "
                              "(another run keeps taking it)", file=self.folder, key=self.key)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner = self._read()
        if owner and owner.get("pid") == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
