"""What eval and search modes share: the analytic report of a subnet (peak memory, histogram,
MMACs, parameters) and its plots."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moofa.efficiency import MemoryOptions, count_params, flops, memory_layers
from moofa.efficiency.plots import plot_memory_histogram
from moofa.measurement.arch_plot import draw_arch
from moofa.models.spec import ModelSpec, SubnetConfig

UNITS = {"peak_memory": "elements", "memory_history": "elements", "flops": "MMACs",
         "params": "parameters", "accuracy": "fraction", "avg_forward_time": "seconds per batch"}


def units(options: MemoryOptions | None = None) -> dict[str, str]:
    """The ``units`` entry of an info.json: UNITS with the memory model's unit (elements or
    bytes) for the peak and the histogram."""
    unit = (options or MemoryOptions()).unit
    return {**UNITS, "peak_memory": unit, "memory_history": unit}


def subnet_report(spec: ModelSpec, subnet: SubnetConfig, n_classes: int,
                  options: MemoryOptions | None = None) -> dict[str, Any]:
    """Analytic facts of a subnet: ``peak_memory`` and ``memory_history`` (per layer, docs/design.md#memory-model
    order) under the memory model ``options`` (elements by default, else bytes; ``memory_unit``
    says which), ``memory_layers`` (their names), ``flops`` (MMACs), ``params``."""
    options = options or MemoryOptions(n_classes=n_classes)
    layers = memory_layers(spec, subnet, options)
    hist = [int(layer.total) for layer in layers]
    return {"peak_memory": max(hist), "memory_history": hist, "memory_layers": [layer.name for layer in layers],
            "memory_unit": options.unit,
            "flops": float(flops(spec, subnet, n_classes)), "params": int(count_params(spec, subnet, n_classes))}


def draw_subnet_plots(spec: ModelSpec, subnet: SubnetConfig, out_dir: str | Path, report: Mapping[str, Any],
                      n_classes: int, constraint: float | None = None,
                      accuracy: float | None = None) -> list[Path]:
    """``memory_histogram.png/.pdf`` (with the constraint line) and ``subnet.png/.pdf`` (the
    architecture diagram) in ``out_dir``."""
    out = Path(out_dir)
    unit = report.get("memory_unit", "elements")
    title = f"{spec.name} R={subnet.image_size}" + (f", constraint {constraint:,.0f} {unit}"
                                                 if constraint is not None else "")
    paths = plot_memory_histogram(report["memory_history"], out / "memory_histogram", constraint,
                                  title=title, labels=report["memory_layers"], unit=unit)
    info = {f"peak memory ({unit})": int(report["peak_memory"]), "MMACs": float(report["flops"])}
    if accuracy is not None:
        info["top-1 (%)"] = 100.0 * float(accuracy)
    return paths + draw_arch(spec, subnet, out / "subnet", info=info, n_classes=n_classes)
