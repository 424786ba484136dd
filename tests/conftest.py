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
