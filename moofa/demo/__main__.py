"""``python -m moofa.demo``: see :mod:`moofa.cli.demo`."""
from moofa.cli.common import run_cli
from moofa.cli.demo import main

raise SystemExit(run_cli(main))
