"""``python -m moofa.profile``: kept as a name; the command lives in :mod:`moofa.cli.profile`."""
from moofa.cli.common import run_cli
from moofa.cli.profile import format_table, main, read_subnet_config

__all__ = ["format_table", "main", "read_subnet_config"]

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
