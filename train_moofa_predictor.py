#!/usr/bin/env python3
"""Train the accuracy predictor: python train_moofa_predictor.py --config C [--output PNG]
[--model_config_path P] (see moofa.predictor.training)."""
from moofa.cli.common import run_cli
from moofa.cli.train_predictor import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
