"""The demo's acceptance checks, read from the files the pipeline wrote. Every check is a claim a
measurement can support (docs/statistics.md):

* the teacher is above chance by an exact one-sided binomial test on the test images;
* the predictor's test Kendall tau is positive;
* every found subnet fits its budget (its peak recomputed from the config);
* on the selection images the found subnet is at least the best subnet already measured under its
  budget, exactly (the re-ranking guarantees it);
* on the test images the found subnet is not *significantly* worse than that baseline, fine-tuning
  does not make the subnet significantly worse, and the int8 program is not significantly worse
  than fp32: a check fails only when the upper end of the paired 95 % interval is below 0;
* every deployed subnet was compiled for each Ethos-U target of ``deploy.targets`` as exactly one
  delegate call (Vela's SRAM, Flash and latency recorded in info.json: estimates, not silicon),
  and summary.md holds each target's table.

Every paired comparison, MOOFA against OFA on the same test images included, is recorded with its
difference, interval, number of images and verdict (:func:`comparisons`)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from moofa.config import RunConfig, search_constraints
from moofa.deploy.ethosu import XNNPACK, is_ethosu
from moofa.efficiency import MemoryOptions, peak_memory
from moofa.errors import ConfigError
from moofa.records import EvalInfo, FinetuneInfo, Record, SearchInfo, TargetFigures
from moofa.run import INFO_NAME, Run, constraint_dir
from moofa.search.results import target_heading
from moofa.stats import Accuracy, Comparison, PerImage, binomial_p_at_least, compare_stored
from moofa.workflows.sweep import deploys

R = TypeVar("R", bound=Record)
ALPHA = 0.05  # significance level of the teacher's binomial test (one-sided)


def predictor_file(cfg: RunConfig) -> Path:
    """``search_config.acc_predictor_checkpoint`` (the demo's configs always name one)."""
    return Path(str(cfg.search_config.acc_predictor_checkpoint))


def scatter_path(cfg: RunConfig) -> Path:
    """Where the predictor's scatter plot goes: next to its checkpoint."""
    return predictor_file(cfg).parent / "scatter.png"


def finetune_folder(cfg: RunConfig) -> Path:
    """The search result folder the demo fine-tunes: the tightest budget's."""
    return constraint_dir(cfg.search_config.res_dir, min(cfg.search_config.sweep()))


def teacher_info_path(cfg: RunConfig) -> Path:
    """``info.json`` of ``eval_and_search.py --mode eval --model teacher``."""
    return Run(cfg).eval_dir("teacher") / INFO_NAME


def _read(path: Path, kind: type[R]) -> R | None:
    """The record of ``path``; None when it is missing or unreadable (a check fails). A newer
    moofa's file (ConfigError) stops the demo with one line."""
    try:
        return kind.read(path)
    except ConfigError:
        raise
    except (OSError, ValueError):
        return None


def teacher_check(label: str, info: EvalInfo | None, n_classes: int) -> dict[str, Any]:
    """The teacher's measured test top-1 with its Wilson interval, and the exact one-sided
    binomial test against chance (1 / n_classes): ok when p < :data:`ALPHA`."""
    row: dict[str, Any] = {"label": label, "chance": 1 / n_classes}
    if info is None or not isinstance(info.accuracy, (int, float)) or not info.n_images:
        return dict(row, ok=False, accuracy=None)
    acc = Accuracy.of(float(info.accuracy), int(info.n_images))
    p = binomial_p_at_least(acc.correct, acc.n_images, 1 / n_classes)
    return dict(row, accuracy=acc.value, interval=list(acc.interval), n_images=acc.n_images,
                p_value=p, ok=p < ALPHA)


def predictor_metrics(cfg: RunConfig) -> dict[str, float]:
    """Test metrics stored in the predictor checkpoint's ``info`` (Kendall's tau, RMSE in pp)."""
    path = predictor_file(cfg)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError):
        return {}
    info = ckpt.get("info", {}) if isinstance(ckpt, dict) else {}
    return {k: float(info[k]) for k in ("test_kendall_tau", "test_pearson", "test_rmse_pp")
            if isinstance(info.get(k), (int, float))}


def baseline_check(selection: float | None, baseline_selection: float | None,
                   versus: Comparison | None, reranked: bool = True) -> list[str]:
    """Why a found subnet fails against the best already-measured subnet under its budget: below
    it on the selection images (only when the answer was chosen by re-ranking, which guarantees
    it), or significantly worse on the test images (paired interval entirely below 0)."""
    bad = []
    if reranked and selection is not None and baseline_selection is not None and selection < baseline_selection:
        bad.append(f"below the best already-measured subnet on the selection images "
                   f"({100 * selection:.2f} % < {100 * baseline_selection:.2f} %)")
    if versus is not None and versus.significantly_worse:
        bad.append(f"significantly worse than the best already-measured subnet on the test images "
                   f"({versus.text()}, {versus.n_images:,} images)")
    return bad


def ethosu_targets(cfg: RunConfig) -> list[str]:
    """The Ethos-U targets of ``deploy.targets``: every deployed budget is compiled for each."""
    return [t for t in cfg.deploy.targets if is_ethosu(t)]


def target_problems(found: Mapping[str, TargetFigures | None], targets: list[str]
                    ) -> tuple[dict[str, dict], list[str]]:
    """Vela's figures per Ethos-U target of a deployed budget (``info["deploy"]["targets"]``) as the
    demo summary stores them, and what fails: a target without a compiled program, or a program
    that is not exactly one delegate call."""
    rows: dict[str, dict] = {}
    problems = []
    for t in targets:
        f = found.get(t)
        if f is None:
            problems.append(f"no {t} program (deploy.targets asks for it; see the search log)")
            continue
        rows[t] = asdict(f)
        if f.delegate_calls != 1:
            problems.append(f"the {t} program is {f.delegate_calls} delegate calls, not one")
    return rows, problems


def budget_rows(label: str, cfg: RunConfig) -> list[dict]:
    """One row per search budget: the found subnet's peak (from info.json and recomputed with
    :func:`moofa.efficiency.peak_memory`), accuracies with their comparisons, the int8 deployment
    and what fails (``problems``; ``ok`` when there is none)."""
    spec = cfg.spec
    options = MemoryOptions.from_config(cfg, n_classes_on_disk(cfg))
    rows = []
    for c in cfg.search_config.sweep():
        path = constraint_dir(cfg.search_config.res_dir, c) / INFO_NAME
        info = _read(path, SearchInfo)
        if info is None:
            rows.append({"label": label, "constraint": c, "info": str(path), "ok": False,
                         "problems": [f"no readable {path}"]})
            continue
        recomputed = int(peak_memory(spec, info.config, options))
        deploy = info.deploy or {}
        base = info.baseline or {}
        wanted = deploys(cfg.search_config, c)
        outcomes = PerImage.from_dict(info.per_image)
        versus = compare_stored(outcomes, "real_accuracy", outcomes, "baseline.real_accuracy")
        int8 = Comparison.read(deploy.get("int8_minus_fp32"))
        problems = []
        if not int(info.peak_memory) == recomputed <= c:
            problems.append(f"peak {info.peak_memory} (recomputed {recomputed}) over the budget")
        if wanted and XNNPACK in cfg.deploy.targets and deploy.get("int8_accuracy") is None:
            problems.append("no measured int8 top-1")
        stored = deploy.get("targets")
        found = {t: TargetFigures.read(f) for t, f in stored.items()} if isinstance(stored, Mapping) else {}
        targets, bad = target_problems(found, ethosu_targets(cfg)) if wanted else ({}, [])
        problems += bad
        problems += baseline_check(info.selection_accuracy, base.get("dataset_accuracy"), versus,
                                   bool(info.rerank))
        if int8 is not None and int8.significantly_worse:
            problems.append(f"int8 significantly worse than fp32 ({int8.text()})")
        n = int(info.n_images or 0)
        real = info.real_accuracy
        rows.append({"label": label, "constraint": c, "info": str(path), "peak_memory": int(info.peak_memory),
                     "recomputed_peak": recomputed, "real_accuracy": real,
                     "real_interval": list(Accuracy.of(real, n).interval) if real is not None and n else None,
                     "n_images": n, "predicted_accuracy": info.predicted_accuracy,
                     "predicted_interval": info.predicted_interval, "flops": info.flops,
                     "selection_accuracy": info.selection_accuracy,
                     "baseline_selection_accuracy": base.get("dataset_accuracy"),
                     "baseline_real_accuracy": base.get("real_accuracy"),
                     "vs_baseline": None if versus is None else versus.to_dict(),
                     "image_size": info.config.get("image_size"), "memory_unit": options.unit,
                     "deployed": wanted, "int8_accuracy": deploy.get("int8_accuracy"),
                     "fp32_accuracy": deploy.get("fp32_accuracy"),
                     "int8_minus_fp32": None if int8 is None else int8.to_dict(),
                     "pte_bytes": deploy.get("pte_bytes"), "targets": targets, "per_image": info.per_image,
                     "problems": problems, "ok": not problems})
    return rows


def finetune_row(label: str, cfg: RunConfig) -> dict:
    """The fine-tuned tightest-budget subnet: test top-1 before and after (fractions, measured on
    the whole test split), the paired comparison, epochs, and ``ok`` unless fine-tuning made it
    significantly worse."""
    path = finetune_folder(cfg) / "finetuned" / INFO_NAME
    row: dict[str, Any] = {"label": label, "constraint": min(cfg.search_config.sweep()), "info": str(path)}
    info = _read(path, FinetuneInfo)
    if info is None:
        return dict(row, ok=False)
    try:
        row.update(before=float(info.test_top1_before), after=float(info.test_top1_after),  # type: ignore[arg-type]
                   n_images=int(info.n_test_images), epochs=int(info.epochs),  # type: ignore[arg-type]
                   peak_memory=int(info.peak_memory))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return dict(row, ok=False)
    versus = Comparison.read(info.test_difference)
    return dict(row, after_minus_before=None if versus is None else versus.to_dict(),
                ok=versus is None or not versus.significantly_worse)


def model_comparisons(budgets: list[dict]) -> list[dict]:
    """The first model's found subnet against each other model's under the same budget, paired on
    the same test images (skipped where the images differ or were not stored)."""
    labels = list(dict.fromkeys(r["label"] for r in budgets))
    by = {(r["label"], r["constraint"]): r for r in budgets}
    out = []
    for other in labels[1:]:
        for (label, c), r in by.items():
            o = by.get((other, c))
            if label != labels[0] or o is None:
                continue
            versus = compare_stored(PerImage.from_dict(r.get("per_image")), "real_accuracy",
                                    PerImage.from_dict(o.get("per_image")), "real_accuracy")
            if versus is not None:
                out.append({"what": f"{labels[0]} minus {other}, budget {c:,}, test images", "check": False,
                            **versus.to_dict()})
    return out


@dataclass
class Checks:
    """Acceptance criteria of the demo (fractions; Kendall's tau in [-1, 1])."""

    teacher: list[dict] = field(default_factory=list)
    kendall_tau: dict[str, float | None] = field(default_factory=dict)
    budgets: list[dict] = field(default_factory=list)
    finetune: list[dict] = field(default_factory=list)
    target_tables: dict[str, bool] = field(default_factory=dict)  # Ethos-U target -> its table in summary.md

    def check_summary(self, summary_md: str, cfgs: Mapping[str, RunConfig]) -> None:
        """Record whether summary.md holds the table of each Ethos-U target that some deployed
        budget was compiled for."""
        wanted = {t for cfg in cfgs.values() for t in ethosu_targets(cfg)
                  if any(deploys(cfg.search_config, c) for c in search_constraints(cfg))}
        self.target_tables = {t: target_heading(t) in summary_md for t in sorted(wanted)}

    def failures(self, quick: bool) -> list[str]:
        """What fails. Budgets always count; teacher, tau and fine-tuning only in the full demo
        (the --quick run trains for one epoch on toy data)."""
        bad = [f"{r['label']}: subnet for budget {r['constraint']:,}: " + "; ".join(r["problems"]) + f" ({r['info']})"
               for r in self.budgets if not r["ok"]]
        bad += [f"summary.md has no {t} table (Vela's estimates of the deployed subnets)"
                for t, present in self.target_tables.items() if not present]
        if not quick:
            bad += [f"{t['label']}: teacher test top-1 {pct(t.get('accuracy'))} is not significantly above "
                    f"chance {pct(t['chance'])} (binomial p = {t.get('p_value', float('nan')):.3g})"
                    for t in self.teacher if not t["ok"]]
            bad += [f"{k}: predictor test Kendall tau {v} is not positive"
                    for k, v in self.kendall_tau.items() if v is None or not v > 0]
            bad += [f"{r['label']}: fine-tuning made the budget {r['constraint']:,} subnet significantly worse "
                    f"({pct(r.get('before'))} -> {pct(r.get('after'))}) or wrote no info.json ({r['info']})"
                    for r in self.finetune if not r["ok"]]
        return bad

    def comparisons(self) -> list[dict]:
        """Every paired comparison of the run: what is compared, ``difference``, ``interval``
        ([lo, hi], fractions, 95 %), ``n_images``, ``verdict``, and whether it is a check."""
        out = []
        for r in self.budgets:
            tag = f"{r['label']} budget {r['constraint']:,}"
            if r.get("vs_baseline"):
                out.append({"what": f"{tag}: found minus best already-measured subnet, test images", "check": True,
                            **r["vs_baseline"]})
            if r.get("int8_minus_fp32"):
                out.append({"what": f"{tag}: int8 program minus fp32 network, test images", "check": True,
                            **r["int8_minus_fp32"]})
        for r in self.finetune:
            if r.get("after_minus_before"):
                out.append({"what": f"{r['label']} budget {r['constraint']:,}: fine-tuned minus before, test images",
                            "check": True, **r["after_minus_before"]})
        return out + model_comparisons(self.budgets)

    def to_dict(self) -> dict[str, Any]:
        """The checks as demo_summary.json stores them (per-image bit arrays left out)."""
        budgets = [{k: v for k, v in r.items() if k != "per_image"} for r in self.budgets]
        return {"teacher": self.teacher, "kendall_tau": self.kendall_tau, "budgets": budgets,
                "finetune": self.finetune, "target_tables": self.target_tables}


def n_classes_on_disk(cfg: RunConfig) -> int:
    """Number of class folders of the dataset's ``train/``."""
    train = Path(str(cfg.args.data_path)) / "train"
    return max(1, sum(1 for p in train.iterdir() if p.is_dir())) if train.is_dir() else 1


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def collect_checks(cfgs: Mapping[str, RunConfig]) -> Checks:
    """The demo's acceptance checks over every model's outputs."""
    checks = Checks()
    for label, cfg in cfgs.items():
        checks.teacher.append(teacher_check(label, _read(teacher_info_path(cfg), EvalInfo),
                                                n_classes_on_disk(cfg)))
        checks.kendall_tau[label] = predictor_metrics(cfg).get("test_kendall_tau")
        checks.budgets += budget_rows(label, cfg)
        checks.finetune.append(finetune_row(label, cfg))
    return checks
