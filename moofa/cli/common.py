"""Shared command-line plumbing: exit codes and one-line errors (README)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from moofa.errors import MoofaInputError

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT = 0, 1, 2


def error_line(message: str) -> str:
    """The one line printed for bad input: ``error: <message>`` with newlines folded."""
    return "error: " + " ".join(str(message).split())


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; bad input -> one ``error:`` line and exit 2; anything else propagates
    (Python prints the traceback and exits 1)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        rc = main(argv)
    except MoofaInputError as err:
        print(error_line(str(err)), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


class ArgParser(argparse.ArgumentParser):
    """argparse with README's error format: one ``error:`` line, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        raise MoofaInputError(f"{self.prog}: {message}")
