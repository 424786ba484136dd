"""``python -m moofa.docs``: kept as a name; the command lives in :mod:`moofa.cli.docs`."""
from moofa.cli.common import run_cli
from moofa.cli.docs import BEGIN, END, config_reference_markdown, format_default, main, replace_block

__all__ = ["BEGIN", "END", "config_reference_markdown", "format_default", "main", "replace_block"]

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
