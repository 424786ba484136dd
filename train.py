#!/usr/bin/env python3
"""Progressive-shrinking training: ``python train.py --config C --step S [--phase P]``; fine-tuning
of a found subnet: ``python train.py --config C --step finetune --subnet <constraint folder | subnet.pth.tar>``."""
from moofa.cli.common import run_cli
from moofa.cli.train import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
