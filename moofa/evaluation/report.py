"""What eval and search modes share: the analytic report of a subnet (peak memory, histogram,
MMACs, parameters) and its plots."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moofa.efficiency import count_params, flops, memory_layers, plot_memory_histogram
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.evaluation.arch_plot import draw_arch

UNITS = {"peak_memory": "elements", "memory_history": "elements", "flops": "MMACs",
         "params": "parameters", "accuracy": "fraction", "avg_forward_time": "seconds per batch"}


def subnet_report(spec: ModelSpec, cfg: SubnetConfig, n_classes: int) -> dict[str, Any]:
    """Analytic facts of a subnet: ``peak_memory`` (elements), ``memory_history`` (per layer,
    elements, SPEC 4.1 order), ``memory_layers`` (their names), ``flops`` (MMACs), ``params``."""
    layers = memory_layers(spec, cfg)
    hist = [int(l.total) for l in layers]
    return {"peak_memory": max(hist), "memory_history": hist, "memory_layers": [l.name for l in layers],
            "flops": float(flops(spec, cfg, n_classes)), "params": int(count_params(spec, cfg, n_classes))}


def draw_subnet_plots(spec: ModelSpec, cfg: SubnetConfig, out_dir: str | Path, report: Mapping[str, Any],
                      n_classes: int, constraint: float | None = None,
                      accuracy: float | None = None) -> list[Path]:
    """``memory_histogram.png/.pdf`` (with the constraint line) and ``subnet.png/.pdf`` (the
    architecture diagram) in ``out_dir``."""
    out = Path(out_dir)
    title = f"{spec.name} R={cfg.image_size}" + (f", constraint {constraint:,.0f} elements"
                                                 if constraint is not None else "")
    paths = plot_memory_histogram(report["memory_history"], out / "memory_histogram", constraint,
                                  title=title, labels=report["memory_layers"])
    info = {"peak memory (elements)": int(report["peak_memory"]), "MFLOPs": float(report["flops"])}
    if accuracy is not None:
        info["top-1 (%)"] = 100.0 * float(accuracy)
    return paths + draw_arch(spec, cfg, out / "subnet", info=info, n_classes=n_classes)
