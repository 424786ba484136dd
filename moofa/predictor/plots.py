"""Scatter plot of predicted against real accuracy (docs/design.md#encoding step 10, in percent, with Kendall's
tau)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from moofa.errors import MoofaInputError
from moofa.io import atomic_path
from moofa.predictor.training import regression_metrics


def check_image_path(path: "str | Path") -> Path:
    """``path`` if matplotlib can write its suffix (png, pdf, svg, ...), else MoofaInputError."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FigureCanvasAgg.get_supported_filetypes():
        raise MoofaInputError("unsupported image format (use .png, .pdf or .svg)", file=path,
                              value=path.suffix)
    return path


def plot_predictions(real: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray, path: "str | Path",
                     title: str = "Predicted vs Real Values") -> Path:
    """Write a 10x10-inch scatter of predicted vs real accuracy (inputs are fractions, axes in
    percent) with the identity line and the Pearson / RMSE (percentage points) / Kendall tau
    texts. The image format follows the suffix; the file is replaced atomically."""
    r = 100.0 * np.asarray(real, dtype=np.float64)
    p = 100.0 * np.asarray(pred, dtype=np.float64)
    m = regression_metrics(r / 100.0, p / 100.0)
    fig = Figure(figsize=(10, 10))  # no pyplot: no global figure state, no GUI backend
    ax = fig.subplots()
    ax.scatter(r, p, alpha=0.5)
    lo, hi = float(r.min()), float(r.max())
    ax.plot([lo, hi], [lo, hi], "r--")
    ax.text(0.1, 0.9, f"Correlation: {m['pearson']:.4f}", transform=ax.transAxes)
    ax.text(0.1, 0.85, f"RMSE: {m['rmse_pp']:.3f} percentage points", transform=ax.transAxes)
    ax.text(0.1, 0.8, f"Kendall tau: {m['kendall_tau']:.4f}", transform=ax.transAxes)
    ax.set_xlabel("Real accuracy (%)")
    ax.set_ylabel("Predicted accuracy (%)")
    ax.set_title(title)
    path = check_image_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower())
    return path
