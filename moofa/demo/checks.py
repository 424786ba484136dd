"""The demo's acceptance checks, read from the files the pipeline wrote: the teacher's measured
test accuracy, the predictor's test Kendall tau, per search budget whether the found subnet
fits (its peak recomputed from the config), is no worse than the best subnet already measured and,
where deployed, has a measured int8 top-1, and whether fine-tuning kept the test top-1."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moofa.config import RunConfig
from moofa.efficiency import MemoryOptions, peak_memory
from moofa.run import INFO_NAME, Run, constraint_dir
from moofa.search.sweep import deploys

MIN_TEACHER_ACCURACY = 0.30  # acceptance: the teacher's test top-1 (fraction) is above this
# acceptance: fine-tuning may not lower the test top-1 by more than the test set's noise (fraction;
# one percentage point on the 360 test digits is under 4 images)
FINETUNE_TOLERANCE = 0.01
MAX_BASELINE_DROP = 0.01     # acceptance: no answer is > 1 pp below the best measured subnet


def scatter_path(cfg: Mapping[str, Any]) -> Path:
    """Where the predictor's scatter plot goes: next to its checkpoint."""
    return Path(cfg["search_config"]["acc_predictor_checkpoint"]).parent / "scatter.png"


def finetune_folder(cfg: RunConfig) -> Path:
    """The search result folder the demo fine-tunes: the tightest budget's."""
    return constraint_dir(cfg.search_config.res_dir, min(cfg.search_config.sweep()))


def teacher_info_path(cfg: RunConfig) -> Path:
    """``info.json`` of ``eval_and_search.py --mode eval --model teacher``."""
    return Run(cfg).eval_dir("teacher") / INFO_NAME


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
    :func:`moofa.efficiency.peak_memory`), accuracies, the int8 deployment and whether it fits."""
    spec = cfg.spec
    options = MemoryOptions.from_config(cfg, n_classes_on_disk(cfg))
    rows = []
    for c in cfg.search_config.sweep():
        path = constraint_dir(cfg["search_config"]["res_dir"], c) / INFO_NAME
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            rows.append({"label": label, "constraint": c, "info": str(path), "ok": False})
            continue
        recomputed = int(peak_memory(spec, info["config"], options))
        deploy = info.get("deploy") or {}
        wanted = deploys(cfg, c)
        rows.append({"label": label, "constraint": c, "info": str(path), "peak_memory": int(info["peak_memory"]),
                     "recomputed_peak": recomputed, "real_accuracy": info.get("real_accuracy"),
                     "predicted_accuracy": info.get("predicted_accuracy"), "flops": info.get("flops"),
                     "baseline_real_accuracy": (info.get("baseline") or {}).get("real_accuracy"),
                     "image_size": info["config"].get("image_size"), "memory_unit": options.unit,
                     "deployed": wanted, "int8_accuracy": deploy.get("int8_accuracy"),
                     "pte_bytes": deploy.get("pte_bytes"),
                     "ok": int(info["peak_memory"]) == recomputed <= c
                     and (not wanted or deploy.get("int8_accuracy") is not None)})
    return rows


def finetune_row(label: str, cfg: RunConfig) -> dict:
    """The fine-tuned tightest-budget subnet: test top-1 before and after (fractions, measured on
    the whole test split), epochs, and whether it stayed within :data:`FINETUNE_TOLERANCE`."""
    path = finetune_folder(cfg) / "finetuned" / INFO_NAME
    row: dict[str, Any] = {"label": label, "constraint": min(cfg.search_config.sweep()), "info": str(path)}
    try:
        info = json.loads(path.read_text())
        row.update(before=float(info["test_top1_before"]), after=float(info["test_top1_after"]),
                   n_images=int(info["n_test_images"]), epochs=int(info["epochs"]),
                   peak_memory=int(info["peak_memory"]))
    except (OSError, ValueError, KeyError, TypeError):
        return dict(row, ok=False)
    return dict(row, ok=row["after"] >= row["before"] - FINETUNE_TOLERANCE)


@dataclass
class Checks:
    """Acceptance criteria of the demo (fractions; Kendall's tau in [-1, 1])."""

    teacher_accuracy: dict[str, float | None] = field(default_factory=dict)
    kendall_tau: dict[str, float | None] = field(default_factory=dict)
    budgets: list[dict] = field(default_factory=list)
    finetune: list[dict] = field(default_factory=list)

    def failures(self, quick: bool) -> list[str]:
        """What fails. Budgets always count; accuracy and tau only in the full demo (the
        --quick run trains for one epoch on toy data)."""
        bad = [f"{r['label']}: subnet for budget {r['constraint']:,} has peak {r.get('peak_memory')} "
               f"(recomputed {r.get('recomputed_peak')}), no info.json or no measured int8 top-1 "
               f"({r['info']})"
               for r in self.budgets if not r["ok"]]
        if not quick:
            bad += self.baseline_failures()
            bad += [f"{k}: teacher test top-1 {pct(v)} is not above {pct(MIN_TEACHER_ACCURACY)}"
                    for k, v in self.teacher_accuracy.items() if v is None or v <= MIN_TEACHER_ACCURACY]
            bad += [f"{k}: predictor test Kendall tau {v} is not positive"
                    for k, v in self.kendall_tau.items() if v is None or not v > 0]
            bad += [f"{r['label']}: fine-tuning lowered the test top-1 of the budget {r['constraint']:,} subnet "
                    f"from {pct(r.get('before'))} to {pct(r.get('after'))} (more than "
                    f"{100 * FINETUNE_TOLERANCE:g} pp) or wrote no info.json ({r['info']})"
                    for r in self.finetune if not r["ok"]]
        return bad

    def baseline_gaps(self) -> dict[str, list[float]]:
        """Per model: found minus best already-measured subnet, both measured on the same test
        images (fractions), one value a budget where both are known."""
        out: dict[str, list[float]] = {}
        for r in self.budgets:
            if r.get("real_accuracy") is not None and r.get("baseline_real_accuracy") is not None:
                out.setdefault(r["label"], []).append(r["real_accuracy"] - r["baseline_real_accuracy"])
        return out

    def baseline_failures(self) -> list[str]:
        """The search's answers are on average no worse than the best subnet already measured, and
        never more than MAX_BASELINE_DROP worse (on the same test images)."""
        bad = []
        for label, gaps in self.baseline_gaps().items():
            if sum(gaps) / len(gaps) < 0:
                bad.append(f"{label}: found subnets average {100 * sum(gaps) / len(gaps):+.2f} pp below "
                           "the best already-measured subnets (test images)")
            if min(gaps) < -MAX_BASELINE_DROP:
                bad.append(f"{label}: a found subnet is {100 * min(gaps):+.2f} pp below the best "
                           "already-measured subnet under its budget (test images)")
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
        checks.finetune.append(finetune_row(label, cfg))
    return checks
