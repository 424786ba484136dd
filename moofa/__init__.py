"""moofa: Memory-Optimized Once-For-All.

Elastic MobileNetV3 supernets (OFA, CompOFA, MOOFA_V1-V3), an exact analytic peak-memory model,
FLOPs, an accuracy predictor and memory-constrained evolutionary search. Units: peak memory in
elements, FLOPs in MMACs, accuracy as a fraction (README).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from moofa.models import MODELS, SubnetConfig, build_supernet

__version__ = "0.1.0"

_LAZY = {
    "peak_memory": "moofa.efficiency", "memory_histogram": "moofa.efficiency",
    "measure_peak_memory": "moofa.efficiency", "flops": "moofa.efficiency",
    "peak_memory_batch": "moofa.efficiency", "MemoryOptions": "moofa.efficiency",
    "memory_bounds": "moofa.efficiency", "sample_feasible": "moofa.efficiency",
    "count_params": "moofa.efficiency",
    "ArchEncoder": "moofa.predictor", "AccuracyPredictor": "moofa.predictor",
    "SearchSpace": "moofa.models.space", "Run": "moofa.run", "load_config": "moofa.config",
    "RunConfig": "moofa.config",
}

__all__ = ["MODELS", "SubnetConfig", "build_supernet", *_LAZY]


def __getattr__(name: str) -> Any:  # lazy imports keep `import moofa` light
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moofa' has no attribute {name!r}")
