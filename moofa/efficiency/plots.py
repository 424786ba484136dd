"""Per-layer memory histogram plot (PNG and PDF)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from moofa.io import save_figure


def plot_memory_histogram(hist: Sequence[int], path_stem: str | Path, constraint: float | None = None,
                          title: str | None = None, labels: Sequence[str] | None = None,
                          unit: str = "elements") -> list[Path]:
    """Bar chart of per-layer memory (``unit``, elements by default) in execution order, the peak
    layer(s) in red with an annotation, an optional horizontal constraint line. Writes
    ``<path_stem>.png`` and ``<path_stem>.pdf`` atomically and returns both paths."""
    if not hist:
        raise ValueError("hist: expected at least one layer, got an empty histogram")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    values = [int(v) for v in hist]
    peak = max(values)
    peak_i = values.index(peak)
    colours = ["tab:red" if v == peak else "tab:blue" for v in values]
    top = max(peak, constraint if constraint is not None else 0)
    fig = Figure(figsize=(max(6.0, 0.16 * len(values) + 2), 4.2))
    ax = fig.subplots()
    ax.bar(range(len(values)), values, color=colours, width=0.8)
    name = f" at {labels[peak_i]}" if labels is not None else f" at layer {peak_i}"
    ties = sum(v == peak for v in values)
    more = f" (+{ties - 1} equal)" if ties > 1 else ""
    ax.annotate(f"peak {peak:,}{name}{more}", xy=(peak_i, peak), xytext=(peak_i, top * 1.1),
                ha="center", color="tab:red", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="tab:red", lw=0.5),
                arrowprops=dict(arrowstyle="->", color="tab:red", lw=0.8))
    if constraint is not None:
        ax.axhline(constraint, color="black", linestyle="--", linewidth=1,
                   label=f"constraint {constraint:,.0f} {unit}")
        ax.legend(loc="upper left", fontsize=8)
    if labels is not None and len(labels) == len(values):
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel(f"memory ({unit})")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylim(0, top * 1.25)
    ax.set_title((title or "Per-layer memory") + "\nper layer: input + output + weights (+ residual at DW)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, stem)
