"""The demo's acceptance checks, read from the files the pipeline wrote: the teacher's measured
test accuracy, the predictor's test Kendall tau and, per search budget, whether the found subnet
fits (its peak recomputed from the config)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moofa.config import RunConfig
from moofa.efficiency import peak_memory
from moofa.run import INFO_NAME, Run, constraint_dir

MIN_TEACHER_ACCURACY = 0.30  # acceptance: the teacher's test top-1 (fraction) is above this


def scatter_path(cfg: Mapping[str, Any]) -> Path:
    """Where the predictor's scatter plot goes: next to its checkpoint."""
    return Path(cfg["search_config"]["acc_predictor_checkpoint"]).parent / "scatter.png"


def teacher_info_path(cfg: RunConfig) -> Path:
    """``info.json`` of ``eval_and_search.py --mode eval --model teacher``."""
    return Run(cfg).eval_dir / INFO_NAME


def teacher_accuracy(cfg: Mapping[str, Any]) -> float | None:
    """The teacher's test top-1 (fraction) measured by ``eval_and_search.py --mode eval --model
    teacher`` (its ``info.json``)."""
    try:
        value = json.loads(teacher_info_path(cfg).read_text()).get("accuracy")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def predictor_metrics(cfg: Mapping[str, Any]) -> dict[str, float]:
    """Test metrics stored in the predictor checkpoint's ``info`` (Kendall's tau, RMSE in pp)."""
    path = Path(cfg["search_config"]["acc_predictor_checkpoint"])
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError):
        return {}
    info = ckpt.get("info", {}) if isinstance(ckpt, dict) else {}
    return {k: float(info[k]) for k in ("test_kendall_tau", "test_pearson", "test_rmse_pp")
            if isinstance(info.get(k), (int, float))}


def budget_rows(label: str, cfg: RunConfig) -> list[dict]:
    """One row per search budget: the found subnet's peak (from info.json and recomputed with
    :func:`moofa.efficiency.peak_memory`), accuracies and whether it fits."""
    spec = cfg.spec
    rows = []
    for c in cfg.search_config.sweep():
        path = constraint_dir(cfg["search_config"]["res_dir"], c) / INFO_NAME
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            rows.append({"label": label, "constraint": c, "info": str(path), "ok": False})
            continue
        recomputed = int(peak_memory(spec, info["config"]))
        rows.append({"label": label, "constraint": c, "info": str(path), "peak_memory": int(info["peak_memory"]),
                     "recomputed_peak": recomputed, "real_accuracy": info.get("real_accuracy"),
                     "predicted_accuracy": info.get("predicted_accuracy"), "flops": info.get("flops"),
                     "image_size": info["config"].get("image_size"),
                     "ok": int(info["peak_memory"]) == recomputed <= c})
    return rows


@dataclass
class Checks:
    """Acceptance criteria of the demo (fractions; Kendall's tau in [-1, 1])."""

    teacher_accuracy: dict[str, float | None] = field(default_factory=dict)
    kendall_tau: dict[str, float | None] = field(default_factory=dict)
    budgets: list[dict] = field(default_factory=list)

    def failures(self, quick: bool) -> list[str]:
        """What fails. Budgets always count; accuracy and tau only in the full demo (the
        --quick run trains for one epoch on toy data)."""
        bad = [f"{r['label']}: subnet for budget {r['constraint']:,} has peak {r.get('peak_memory')} "
               f"(recomputed {r.get('recomputed_peak')}) or no info.json ({r['info']})"
               for r in self.budgets if not r["ok"]]
        if not quick:
            bad += [f"{k}: teacher test top-1 {pct(v)} is not above {pct(MIN_TEACHER_ACCURACY)}"
                    for k, v in self.teacher_accuracy.items() if v is None or v <= MIN_TEACHER_ACCURACY]
            bad += [f"{k}: predictor test Kendall tau {v} is not positive"
                    for k, v in self.kendall_tau.items() if v is None or not v > 0]
        return bad


def n_classes_on_disk(cfg: Mapping[str, Any]) -> int:
    """Number of class folders of the dataset's ``train/``."""
    train = Path(cfg["args"]["data_path"]) / "train"
    return max(1, sum(1 for p in train.iterdir() if p.is_dir())) if train.is_dir() else 1


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def collect_checks(cfgs: Mapping[str, RunConfig]) -> Checks:
    """The demo's acceptance checks over every model's outputs."""
    checks = Checks()
    for label, cfg in cfgs.items():
        checks.teacher_accuracy[label] = teacher_accuracy(cfg)
        checks.kendall_tau[label] = predictor_metrics(cfg).get("test_kendall_tau")
        checks.budgets += budget_rows(label, cfg)
    return checks
