"""``python -m moofa.demo``: see :mod:`moofa.cli.demo`."""
from moofa.cli.common import run_cli
from moofa.cli.demo import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
