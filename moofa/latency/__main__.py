"""``python -m moofa.latency build ...``: see :mod:`moofa.cli.latency`."""
from moofa.cli.common import run_cli
from moofa.cli.latency import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
