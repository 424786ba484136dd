"""Shared test helpers. Reference conformance data is read from ../shared/reference (never copied
into the project); tests that need it skip with a clear reason when it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(),
                                     reason=f"reference data not found at {REFERENCE}")

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402

# Tiny convolutions on a shared 2-core machine run much faster single-threaded; subprocesses get
# OMP_NUM_THREADS=1 from tests/tiny.py.
torch.set_num_threads(1)

# The slowest modules first, longest first (each takes minutes on a busy 2-core machine): with
# `--dist loadfile` a worker takes whole modules in collection order, so a long module drawn last
# would keep one worker busy while the other sits idle.
SLOW_FIRST = ("test_demo.py", "test_package.py", "test_search.py", "test_training.py", "test_create_dataset.py",
              "test_finetune.py", "test_deploy.py", "test_trust.py", "test_latency.py", "test_ethosu.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: module order kept
