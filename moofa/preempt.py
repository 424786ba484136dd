"""Graceful stop on SIGTERM and SIGINT (docs/resume.md#preemption).

Clusters stop a job with SIGTERM, then SIGKILL after a grace period. Every entry point runs
inside :class:`StopSignals` (installed by :func:`moofa.cli.common.run_cli`): the first SIGTERM or
SIGINT raises :class:`Preempted` in the main thread, so the job abandons the step in flight,
its ``finally`` blocks release its lock, and ``run_cli`` prints one :func:`stop_line`, e.g.
``stopped by SIGTERM at epoch 7/30 (teacher); rerun the same command to resume``, and exits
with :func:`exit_status` (128 + the signal: 143 for SIGTERM, 130 for SIGINT). Resumable jobs
report where they are with :func:`progress`; what they already wrote (per-epoch checkpoints,
appended records, per-budget results) is what the rerun resumes from.

Bounded: a watcher thread sees each signal as it arrives (``signal.set_wakeup_fd``), even while
the main thread waits in a C call (a collective whose peer has stopped). If the process has not
finished stopping :data:`GRACE_ENV` seconds (default :data:`DEFAULT_GRACE`) after the first
signal, the watcher prints the stop line and ends the process with the same status
(``os._exit``: a lock still held then is taken over by the rerun as stale). Later signals
do not shorten the grace (under ``torchrun`` a rank gets SIGTERM from the scheduler and again
from the launcher).

:class:`Preempted` is a :class:`KeyboardInterrupt`, so code written for Ctrl-C (the data
loader's workers, the demo's stage runner) treats a SIGTERM the same way.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_ENV = "MOOFA_STOP_GRACE"
DEFAULT_GRACE = 20.0  # seconds: below SLURM's default KillWait (30 s) and torchrun's wait (30 s)


class Preempted(KeyboardInterrupt):
    """Raised in the main thread by the first stop signal (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    """``SIGTERM``, ``SIGINT``, ... (``signal <n>`` for an unnamed number)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by ``signum``: 128 + its number, as a shell reports a
    process killed by it (SIGTERM 143, SIGINT 130)."""
    return 128 + int(signum)


_where: str | None = None  # "epoch 7/30 (teacher)": set by the running job's loop


def progress(unit: str, index: int, total: int, label: str | None = None) -> None:
    """Record that the job is at ``unit index/total`` (1-based; ``label`` in parentheses): the
    stop line says so and tells the user to rerun to resume. Also a :func:`check` point."""
    global _where
    check()
    _where = f"{unit} {index}/{total}" + (f" ({label})" if label else "")


def check() -> None:
    """Raise :class:`Preempted` when a stop signal was received and the job still runs. The
    handler raises it at once, but Python drops an exception raised where it cannot propagate
    (a weakref callback or ``__del__`` running during garbage collection): loops call this once
    per step (epoch, batch, generation, subnet, budget) so such a stop is not lost."""
    for s in _ACTIVE:
        if s.signum is not None and not s.held:
            raise Preempted(s.signum)


def stop_line(signum: int) -> str:
    """``stopped by SIGTERM at epoch 7/30 (teacher); rerun the same command to resume``."""
    if _where is None:
        return f"stopped by {signal_name(signum)}; rerun the same command"
    return f"stopped by {signal_name(signum)} at {_where}; rerun the same command to resume"


class StopSignals:
    """``with StopSignals(quiet=False) as stop:`` turns SIGTERM and SIGINT into :class:`Preempted`
    (see the module docstring); ``stop.signum`` is the first stop signal received (None if
    none). ``quiet`` (ranks other than 0) leaves the stop line to rank 0. Installs nothing
    outside the main thread."""

    def __init__(self, quiet: bool = False, grace: float | None = None) -> None:
        self.quiet = quiet
        self.grace = float(os.environ.get(GRACE_ENV, DEFAULT_GRACE)) if grace is None else grace
        self.signum: int | None = None
        self._raised = False  # Preempted raised once (or held): later signals are only recorded
        self.held = False     # the job's main function has returned: no more Preempted
        self._pid = os.getpid()
        self._saved: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._old_fd = -1
        self._watcher: threading.Thread | None = None

    # ----------------------------------------------------------------------------- install
    def __enter__(self) -> "StopSignals":
        global _where
        _where = None
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for s in STOP_SIGNALS:
            self._saved[s] = signal.signal(s, self._handle)
        self._old_unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        self._watcher = threading.Thread(target=self._watch, args=(r,), name="moofa-stop-watcher",
                                         daemon=True)
        self._watcher.start()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pipe is None:
            return
        self._raised = True
        signal.set_wakeup_fd(self._old_fd)
        for s, old in self._saved.items():
            signal.signal(s, old)
        sys.unraisablehook = self._old_unraisable
        os.close(self._pipe[1])  # the watcher reads EOF and ends
        if self._watcher is not None:
            self._watcher.join()
        os.close(self._pipe[0])
        self._pipe = None
        _ACTIVE.remove(self)

    def wait(self, seconds: float) -> int | None:
        """The stop signal received within ``seconds`` (s) from now, else None (polled every 20 ms)."""
        deadline = time.monotonic() + seconds
        while self.signum is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.signum

    def hold(self) -> None:
        """From now on a stop signal is only recorded: no exception in the middle of the
        caller's final reporting."""
        self._raised = True
        self.held = True

    # ----------------------------------------------------------------------------- signals
    def _record(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked child (data-loader worker): stop as on Ctrl-C
            raise KeyboardInterrupt
        self._record(signum)
        if not self._raised:
            self._raised = True
            raise Preempted(signum)

    def _unraisable(self, unraisable: Any) -> None:
        """Python dropped an exception where it cannot propagate (a GC callback): a dropped
        :class:`Preempted` is not an error to print; :func:`check` raises it again."""
        if isinstance(unraisable.exc_value, Preempted):
            return
        self._old_unraisable(unraisable)

    def _watch(self, fd: int) -> None:
        """Watcher thread: record stop signals as they arrive; end the process when stopping
        takes longer than the grace period."""
        deadline = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                self._hard_exit()
                return
            data = os.read(fd, 64)
            if not data:
                return  # uninstalled
            for signum in data:
                if signum in STOP_SIGNALS:
                    self._record(signum)
                    if deadline is None:
                        deadline = time.monotonic() + self.grace

    def _hard_exit(self) -> None:
        signum = self.signum or signal.SIGTERM
        if not self.quiet:
            try:
                sys.stderr.write(f"\n{stop_line(signum)} (forced after {self.grace:g} s)\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        os._exit(exit_status(signum))


_ACTIVE: list[StopSignals] = []


def stop_signal() -> int | None:
    """The stop signal this process received (None: none, or no :class:`StopSignals` active)."""
    return next((s.signum for s in _ACTIVE if s.signum is not None), None)


def _after_fork_in_child() -> None:
    """A forked child keeps the parent's handlers (they raise KeyboardInterrupt there) but must
    not write its signals into the parent's wake-up pipe."""
    if _ACTIVE:
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:  # forked from another thread than the main one
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["Preempted", "StopSignals", "STOP_SIGNALS", "GRACE_ENV", "DEFAULT_GRACE", "check", "exit_status",
           "progress", "signal_name", "stop_line", "stop_signal"]
