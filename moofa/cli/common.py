"""Shared command-line plumbing: exit codes, one-line errors and graceful stops (README)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

from moofa.errors import MoofaInputError
from moofa.preempt import StopSignals, exit_status, stop_line

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT = 0, 1, 2


def error_line(message: str) -> str:
    """The one line printed for bad input: ``error: <message>`` with newlines folded."""
    return "error: " + " ".join(str(message).split())


def _launcher_value(keys: Sequence[str], default: int) -> int:
    """The first of the launcher's variables ``keys`` that is set to a number, else ``default``."""
    for key in keys:
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return default


def launch_rank() -> int:
    """This process's rank as set by its launcher (the variables :mod:`moofa.distributed` reads;
    0 for a plain process), read without importing torch."""
    return _launcher_value(("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK"), 0)


def launch_world_size() -> int:
    """How many ranks this process's launcher started (1 for a plain process), read without
    importing torch."""
    return _launcher_value(("WORLD_SIZE", "HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE"), 1)


# How long (s) a rank whose collective failed waits for its own stop signal: the launcher
# forwards SIGTERM to every rank, and a peer that got it first leaves the collective half done
# (docs/resume.md#preemption).
PEER_STOP_WAIT = 10.0


def _close_progress_bars() -> None:
    """Close the tqdm bars a stopped loop left open (each ends its line)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; bad input -> one ``error:`` line and exit 2; SIGTERM or SIGINT (Ctrl-C)
    -> the job stops (its locks released), one ``stopped by SIG... at ...`` line (rank 0) and
    exit 128 + the signal (:mod:`moofa.preempt`); anything else propagates (Python prints the
    traceback and exits 1)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    rank = launch_rank()
    with StopSignals(quiet=rank != 0) as stop:
        try:
            try:
                rc = main(argv)
            finally:
                stop.hold()
        except (Exception, KeyboardInterrupt) as err:
            # an error while stopping (a collective whose peer stopped first) is the stop too
            signum = getattr(err, "signum", None) or stop.signum
            if signum is None and launch_world_size() > 1 and not isinstance(err, MoofaInputError):
                signum = stop.wait(PEER_STOP_WAIT)  # this rank's signal may come a moment later
            if signum is None and isinstance(err, KeyboardInterrupt):
                signum = signal.SIGINT
            if signum is not None:
                if rank == 0:
                    _close_progress_bars()  # the line starts a line of its own
                    print(stop_line(signum), file=sys.stderr)
                return exit_status(signum)
            if isinstance(err, MoofaInputError):
                print(error_line(str(err)), file=sys.stderr)
                return EXIT_BAD_INPUT
            raise
        if stop.signum is not None:  # the job finished its step anyway: still say it was stopped
            if rank == 0:
                _close_progress_bars()
                print(stop_line(stop.signum), file=sys.stderr)
            return exit_status(stop.signum)
    return int(rc or 0)


class ArgParser(argparse.ArgumentParser):
    """argparse with README's error format: one ``error:`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise MoofaInputError(f"{self.prog}: {message}")
