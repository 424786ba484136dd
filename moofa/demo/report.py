"""What the demo prints and draws at the end: the per-stage time table, the report of outputs and
checks, and the side-by-side memory histograms of the subnets found for one budget."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from moofa.config import RunConfig
from moofa.demo.checks import Checks, finetune_folder, pct, predictor_file, scatter_path
from moofa.io import save_figure
from moofa.records import SearchInfo, TargetFigures
from moofa.run import INFO_NAME, Run, constraint_dir
from moofa.stats import Accuracy, Comparison


def _cmp(stored: object) -> str:
    """``+0.28 pp [-1.9, +2.5] (360 images, no significant difference)`` of a stored comparison."""
    if (c := Comparison.read(stored)) is None:
        return "n/a (per-image outcomes not stored)"
    return f"{c.text()} ({c.n_images:,} images, {c.verdict})"


def target_line(target: str, f: TargetFigures) -> str:
    """One Ethos-U program of a deployed budget: Vela's SRAM, Flash (KiB) and latency (ms), which
    are compile-time estimates, and the TOSA reference model's int8 top-1 when it was measured."""
    line = (f"{target} program: SRAM {f.sram_bytes / 1024:,.1f} KiB, Flash {f.flash_bytes / 1024:,.1f} KiB, "
            f"{f.inference_ms:.3f} ms, {f.delegate_calls} delegate call(s) (Vela's estimates for "
            f"{f.system_config}, not measured on silicon)")
    if f.tosa_int8_accuracy is not None and f.tosa_n_images is not None:
        line += (f"; int8 top-1 {Accuracy.of(f.tosa_int8_accuracy, f.tosa_n_images).text()} "
                 "(TOSA reference model)")
    return line


def short_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def time_table(results: Sequence[Any]) -> str:
    """Per-stage wall and CPU seconds, one column per model."""
    labels = list(dict.fromkeys(r.label for r in results))
    names = list(dict.fromkeys(r.stage for r in results))
    cell = {(r.label, r.stage): r for r in results}
    width = 22
    lines = ["stage (wall s / CPU s)" + "".join(f"{lab:>{width}}" for lab in labels)]
    for name in names:
        row = f"{name:<22}"
        for lab in labels:
            r = cell.get((lab, name))
            txt = "-" if r is None else {"ran": f"{r.seconds:.1f} / {r.cpu_seconds:.1f}", "reused": "reused",
                                          "failed": "FAILED", "not run": "not run"}[r.status]
            row += f"{txt:>{width}}"
        lines.append(row)
    ran = [[r for r in results if r.label == lab and r.status == "ran"] for lab in labels]
    lines.append(f"{'total':<22}" + "".join(
        f"{f'{sum(r.seconds for r in rs):.1f} / {sum(r.cpu_seconds for r in rs):.1f}':>{width}}" for rs in ran))
    return "\n".join(lines)


def tail_lines(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def report_text(out: Path, labels: Sequence[str], cfgs: Mapping[str, RunConfig],
            results: Sequence[Any], checks: Checks, failures: Sequence[str],
            data_seconds: float, seconds: float, table: str) -> str:
    o = short_path(out)
    lines = ["", "=" * 100, "Per-stage times (the models' chains ran side by side):",
             time_table(results), f"dataset preparation {data_seconds:.1f} s; demo wall time {seconds:.1f} s", "",
             "Results:"]
    for label in labels:
        cfg = cfgs[label]
        run = Run(cfg)
        lines += [f"  {label} ({cfg.args.model}):",
                  f"    teacher            {short_path(Path(cfg.args.teacher_path))}",
                  f"    supernet phases    {short_path(Path(cfg.args.path) / 'checkpoint')}",
                  f"    predictor dataset  {short_path(run.dataset_file)}",
                  (f"    predictor          {short_path(predictor_file(cfg))}"
                   f" (scatter plot {short_path(scatter_path(cfg))})"),
                  f"    search results     {short_path(run.search_dir)}/constraint_<budget>/",
                  f"    fine-tuned subnet  {short_path(finetune_folder(cfg) / 'finetuned')}/"]
    lines += [(f"  comparison           {o}/summary/ (summary.md, summary.csv, accuracy_vs_constraint.png, "
               "memory_histograms.png)"), f"  stage logs           {o}/<model>/logs/", "",
              "Checks (accuracies measured, with Wilson 95 % intervals; differences paired on the same images, "
              "with 95 % intervals; docs/statistics.md):"]
    for t in checks.teacher:
        tau = checks.kendall_tau.get(t["label"])
        acc = ("n/a" if t.get("accuracy") is None else
               f"{Accuracy.of(t['accuracy'], t['n_images']).text()}, chance {pct(t['chance'])}, "
               f"binomial p = {t['p_value']:.2g}")
        lines.append(f"  {t['label']}: teacher test top-1 {acc}; predictor test Kendall tau "
                     + ("n/a" if tau is None else f"{tau:+.3f}"))
    for r in checks.budgets:
        if "peak_memory" not in r:
            continue
        real = "n/a" if r["real_accuracy"] is None else Accuracy.of(r["real_accuracy"], r["n_images"]).text()
        lines.append(f"  {r['label']}: budget {r['constraint']:>7,} -> peak {r['peak_memory']:>7,} "
                     f"{r.get('memory_unit', 'elements')} at R={r['image_size']}, test top-1 {real} "
                     f"{'OK' if r['ok'] else 'FAILED'}")
        if r.get("selection_accuracy") is not None and r.get("baseline_selection_accuracy") is not None:
            lines.append(f"      selection images: found {pct(r['selection_accuracy'])} vs best already-measured "
                         f"{pct(r['baseline_selection_accuracy'])}")
        if r.get("vs_baseline"):
            lines.append(f"      test images: found minus best already-measured {_cmp(r['vs_baseline'])}")
        if r.get("int8_accuracy") is not None:
            lines.append(f"      int8 program (ExecuTorch, {r['pte_bytes']:,} B) {pct(r['int8_accuracy'])} vs fp32 "
                         f"{pct(r.get('fp32_accuracy'))}: int8 minus fp32 {_cmp(r.get('int8_minus_fp32'))}")
        for target, stored in (r.get("targets") or {}).items():
            if (f := TargetFigures.read(stored)) is not None:
                lines.append(f"      {target_line(target, f)}")
    for r in checks.finetune:
        if "after" in r:
            lines.append(f"  {r['label']}: budget {r['constraint']:>7,} subnet, "
                         f"{r['epochs']} fine-tuning epoch(s): test "
                         f"top-1 {pct(r['before'])} before -> {pct(r['after'])} after ({r['n_images']:,} test images), "
                         f"after minus before {_cmp(r.get('after_minus_before'))} {'OK' if r['ok'] else 'FAILED'}")
    for c in checks.comparisons():
        if not c["check"]:
            lines.append(f"  {c['what']}: {_cmp(c)}")
    lines += ["  all checks passed" if not failures else "  FAILED: " + "; ".join(failures), "",
              ("Best subnet per peak-memory budget (top-1 % / peak memory / MMACs; int8 programs and the "
               "Ethos-U table, Vela's estimates, below):"), "",
              table]
    return "\n".join(lines)


def plot_memory_histograms(cfgs: Mapping[str, RunConfig], out_stem: Path,
                           constraint: int | None = None) -> list[Path]:
    """Side-by-side memory histograms (elements per layer, in execution order) of the subnets the
    search found for one budget (default: the smallest common one), with the budget drawn."""
    common = sorted(set.intersection(*(set(c.search_config.sweep()) for c in cfgs.values())))
    if not common:
        return []
    c = constraint if constraint is not None else common[0]
    infos = {}
    for label, cfg in cfgs.items():
        path = constraint_dir(cfg.search_config.res_dir, c) / INFO_NAME
        if path.is_file():
            infos[label] = SearchInfo.read(path)
    if not infos:
        return []
    fig = Figure(figsize=(5.0 * len(infos), 3.6))
    axes = fig.subplots(1, len(infos), sharey=True, squeeze=False)[0]
    for ax, (label, info) in zip(axes, infos.items()):
        hist = info.memory_history
        peak = max(hist)
        colours = ["#c0392b" if v == peak else "#2e86c1" for v in hist]
        ax.bar(range(1, len(hist) + 1), hist, color=colours, width=0.85)
        ax.axhline(c, color="black", linestyle="--", linewidth=1, label=f"budget {c:,} {info.memory_unit}")
        arch = info.config
        ax.set_title(f"{label}: {info.model or ''}, R={arch['image_size']}, peak {peak:,}", fontsize=9)
        ax.set_xlabel("layer (execution order)")
        ax.legend(loc="upper right", fontsize=8)
    unit = next(iter(infos.values())).memory_unit
    axes[0].set_ylabel("memory (elements: input + output + weights)" if unit == "elements" else f"memory ({unit})")
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    fig.suptitle(f"Per-layer memory of the best subnet under a {c:,}-{unit[:-1]} budget", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_stem)
