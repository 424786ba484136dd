"""What eval and search modes share: the analytic report of a subnet (peak memory, histogram,
MMACs, parameters) and its plots."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class SubnetReport:
    """Analytic facts of a subnet under a memory model: the peak and the per-layer history (in
    ``memory_unit``: elements or bytes; layers in docs/design.md#memory-model order, named in
    ``memory_layers``), MMACs and parameters."""

    peak_memory: int
    memory_history: list[int]
    memory_layers: list[str]
    memory_unit: str
    flops: float  # MMACs
    params: int


def subnet_report(spec: ModelSpec, subnet: SubnetConfig, n_classes: int,
                  options: MemoryOptions | None = None) -> SubnetReport:
    """The :class:`SubnetReport` of ``subnet`` under the memory model ``options`` (elements by
    default)."""
    options = options or MemoryOptions(n_classes=n_classes)
    layers = memory_layers(spec, subnet, options)
    hist = [int(layer.total) for layer in layers]
    return SubnetReport(max(hist), hist, [layer.name for layer in layers], options.unit,
                        float(flops(spec, subnet, n_classes)), int(count_params(spec, subnet, n_classes)))


def draw_subnet_plots(spec: ModelSpec, subnet: SubnetConfig, out_dir: str | Path, report: SubnetReport,
                      n_classes: int, constraint: float | None = None,
                      accuracy: float | None = None) -> list[Path]:
    """``memory_histogram.png/.pdf`` (with the constraint line) and ``subnet.png/.pdf`` (the
    architecture diagram) in ``out_dir``."""
    out = Path(out_dir)
    unit = report.memory_unit
    title = f"{spec.name} R={subnet.image_size}" + (f", constraint {constraint:,.0f} {unit}"
                                                 if constraint is not None else "")
    paths = plot_memory_histogram(report.memory_history, out / "memory_histogram", constraint,
                                  title=title, labels=report.memory_layers, unit=unit)
    info: dict[str, int | float] = {f"peak memory ({unit})": report.peak_memory, "MMACs": report.flops}
    if accuracy is not None:
        info["top-1 (%)"] = 100.0 * float(accuracy)
    return paths + draw_arch(spec, subnet, out / "subnet", info=info, n_classes=n_classes)
