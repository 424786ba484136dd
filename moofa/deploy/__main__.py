"""``python -m moofa.deploy``: see :mod:`moofa.cli.deploy`."""
from moofa.cli.common import run_cli
from moofa.cli.deploy import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
