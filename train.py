#!/usr/bin/env python3
"""Progressive-shrinking training: ``python train.py --config C --step S [--phase P]``."""
from moofa.cli.common import run_cli
from moofa.cli.train import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
