#!/usr/bin/env python3
"""Balanced accuracy-predictor dataset: ``python create_moofa_predictor_dataset.py --config C``."""
from moofa.cli.common import run_cli
from moofa.cli.create_dataset import main

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
