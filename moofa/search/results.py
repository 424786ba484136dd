"""Search results on disk: ``<res_dir>/constraint_<int>/info.json`` per constraint, and over a
sweep (or several sweeps, one per model) ``summary.csv``, ``summary.md`` in the layout of the
paper's Table 1 (docs/design.md#protocols: rows = constraints, one column per model, cells "top-1 % /
memory peak / MFLOPs") and an accuracy-versus-constraint plot overlaying the runs.

Units: accuracy is a fraction in info.json and percent (labelled) in the tables and plots; memory
in the unit each info.json names (``memory_unit``: elements by default, bytes under a device
memory model); MFLOPs are MMACs. A cell's top-1 is the measured (real) accuracy when the run
evaluated its subnets, else the predicted one, marked ``*``.

Below Table 1, ``summary.md`` has one "search against its data" table per run: the predicted
accuracy with its standard deviation and its 90 % interval (``predicted_interval``, fractions in
info.json; docs/search.md), the measured accuracies and the images they were measured on,
and as a baseline the best subnet that was already measured (in the predictor dataset) under the
same budget, so a reader sees at which budgets the search beat the data it had.
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from moofa.errors import MoofaInputError
from moofa.io import atomic_write_text, read_json, save_figure  # noqa: F401 (read_json: re-exported)
from moofa.records import SearchInfo
from moofa.run import INFO_NAME, constraint_dir  # noqa: F401 (constraint_dir: re-exported)
from moofa.stats import NO_DIFFERENCE, Accuracy, Comparison, PerImage, compare_stored

SUMMARY_CSV, SUMMARY_MD, SUMMARY_PLOT = "summary.csv", "summary.md", "accuracy_vs_constraint"
_DIR_RE = re.compile(r"^constraint_(\d+)$")


# ------------------------------------------------------------------------------------------ files
# ---------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ResultRow:
    """One constraint of one run: top-1 (fraction; real if measured, else predicted), whether it
    is predicted, peak memory (elements) and MMACs."""

    constraint: int
    top1: float | None
    predicted: bool
    predicted_top1: float | None
    peak_memory: int
    mflops: float
    predicted_std: float | None = None
    selection_top1: float | None = None      # measured on the selection images
    selection_images: str | None = None
    test_images: str | None = None
    baseline_dataset_top1: float | None = None  # best already-measured subnet under the budget
    baseline_real_top1: float | None = None     # ... measured on the same test images
    predicted_source: str | None = None
    memory_unit: str = "elements"  # of peak_memory: elements (reference model) or bytes
    deploy: Mapping[str, Any] | None = None  # the int8 ExecuTorch export's measured figures
    predicted_interval: tuple[float, float] | None = None  # 90 % interval (fractions); None in old results
    n_images: int = 0                           # test images behind top1 when measured
    per_image: PerImage | None = None  # per-image outcomes, for paired comparisons
    vs_baseline: Comparison | None = None  # found minus baseline on the test images, paired
    targets: Mapping[str, Any] | None = None  # Ethos-U target -> Vela's figures of the answer (estimates)


@dataclass(frozen=True)
class SearchSeries:
    """The results of one sweep: a label (column header) and its rows sorted by constraint."""

    label: str
    rows: tuple[ResultRow, ...]

    @property
    def is_predicted(self) -> bool:
        return any(r.predicted for r in self.rows)

    @property
    def memory_unit(self) -> str:
        """The unit of the run's peaks ("elements", "bytes", or "mixed units")."""
        found = {r.memory_unit for r in self.rows}
        return found.pop() if len(found) == 1 else "mixed units"


def _row(info: SearchInfo, constraint: int, path: Path) -> ResultRow:
    for key in ("peak_memory", "flops"):
        if not info.has(key):
            raise MoofaInputError(f"not a search result (KeyError: {key!r})", file=path)
    try:
        real, pred = info.real_accuracy, info.predicted_accuracy
        top1 = real if real is not None else pred
        images = info.images or {}
        base = info.baseline or {}
        return ResultRow(constraint, None if top1 is None else float(top1), real is None,
                         None if pred is None else float(pred), int(info.peak_memory),
                         float(info.flops), _opt(info.predicted_std),
                         _opt(info.selection_accuracy), _describe(images.get("selection_accuracy")),
                         _describe(images.get("real_accuracy")), _opt(base.get("dataset_accuracy")),
                         _opt(base.get("real_accuracy")), info.predicted_source,
                         str(info.memory_unit or "elements"),
                         info.deploy if isinstance(info.deploy, Mapping) else None,
                         _interval(info.predicted_interval),
                         int(info.n_images or 0),
                         PerImage.from_dict(info.per_image),
                         Comparison.read(base.get("real_difference")),
                         info.deploy_targets)
    except (KeyError, TypeError, ValueError) as err:
        raise MoofaInputError(f"not a search result ({type(err).__name__}: {err})", file=path) from None


def _constraint(info: SearchInfo, where: str | Path) -> int:
    if info.constraint is None:
        raise MoofaInputError("not a search result: missing key", file=where, key="constraint")
    return int(info.constraint)


def _opt(x: Any) -> float | None:
    return None if x is None else float(x)


def _interval(x: Any) -> tuple[float, float] | None:
    """``[lo, hi]`` (fractions) from info.json; None when absent (results written before it)."""
    if x is None:
        return None
    lo, hi = (float(v) for v in x)
    if not lo <= hi:
        raise ValueError(f"predicted_interval {x}: low above high")
    return lo, hi


def format_prediction(value: float | None, interval: Sequence[float] | None, source: str | None) -> str:
    """``71.31 % [70.10, 72.00] (predicted)``: a predicted accuracy (fraction) in percent with its
    90 % interval; ``(measured)`` when the value is a dataset measurement, no interval when none
    was recorded."""
    if value is None:
        return ""
    if source is not None and source.startswith("measured"):
        return f"{100 * value:.2f} % (measured)"
    span = "" if interval is None else f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"
    return f"{100 * value:.2f} %{span} (predicted)"


def _describe(images: Any) -> str | None:
    if not isinstance(images, Mapping):
        return None
    return f"{images.get('split')}, {int(images.get('n_images', 0)):,} images"


def series_from_infos(label: str, infos: Iterable[SearchInfo], where: str | Path = "<results>") -> SearchSeries:
    """A :class:`SearchSeries` from info.json records (each with ``constraint``)."""
    rows = [_row(info, int(_constraint(info, where)), Path(where)) for info in infos]
    if not rows:
        raise MoofaInputError("no search results", file=where)
    return SearchSeries(label, tuple(sorted(rows, key=lambda r: r.constraint)))


def read_series(res_dir: str | Path, label: str | None = None) -> SearchSeries:
    """Read every ``constraint_<int>/info.json`` under ``res_dir``; the label defaults to the
    ``model`` recorded in the results, else the folder name. MoofaInputError if there is none,
    or if the results name several models."""
    res_dir = Path(res_dir)
    if not res_dir.is_dir():
        raise MoofaInputError("results folder not found", file=res_dir)
    infos, models = [], set()
    for sub in sorted(res_dir.iterdir()):
        m = _DIR_RE.match(sub.name)
        if not m or not (sub / INFO_NAME).is_file():
            continue
        info = SearchInfo.read(sub / INFO_NAME)
        if info.constraint is None:
            info.constraint = int(m.group(1))
        infos.append(info)
        if info.model:
            models.add(str(info.model))
    if not infos:
        raise MoofaInputError(f"no constraint_<int>/{INFO_NAME} results in this folder", file=res_dir)
    if len(models) > 1:
        raise MoofaInputError(f"holds the results of {len(models)} models ({', '.join(sorted(models))}); "
                              "give each model its own results folder", file=res_dir)
    if label is None:
        label = models.pop() if len(models) == 1 else res_dir.name
    return series_from_infos(label, infos, res_dir)


# ---------------------------------------------------------------------------------------- tables
def format_constraint(c: int) -> str:
    """``325000`` -> ``325k``; other values with thousands separators."""
    return f"{c // 1000}k" if c % 1000 == 0 else f"{c:,}"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _cell(row: ResultRow | None) -> str:
    if row is None:
        return "-"
    star = "*" if row.predicted else ""
    return f"{_pct(row.top1)}{star} / {row.peak_memory:,} / {row.mflops:,.0f}"


def _by_constraint(runs: Sequence[SearchSeries]) -> tuple[list[int], list[dict[int, ResultRow]]]:
    maps = [{r.constraint: r for r in run.rows} for run in runs]
    return sorted({c for m in maps for c in m}), maps


def memory_unit(runs: Sequence[SearchSeries]) -> str:
    """The peaks' unit over ``runs`` (elements, bytes or "mixed units")."""
    found = {r.memory_unit for r in runs}
    return found.pop() if len(found) == 1 else "mixed units"


def summary_markdown(runs: Sequence[SearchSeries], title: str | None = None) -> str:
    """Table 1 layout: ``| Constraint | <label> | ... |`` with cells
    ``top-1 % / memory peak / MFLOPs``; then, when some subnets were deployed, a table of their
    int8 ExecuTorch programs (:func:`deploy_markdown`)."""
    constraints, maps = _by_constraint(runs)
    lines = [f"# {title or 'Best subnet per peak-memory constraint'}", "",
             (f"Cells: top-1 (%) / memory peak ({memory_unit(runs)}) / MFLOPs (MMACs). "
              "`*` = accuracy predicted by the accuracy predictor (subnet not evaluated)."), "",
             "| Constraint | " + " | ".join(r.label for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for c in constraints:
        lines.append(f"| < {format_constraint(c)} | " + " | ".join(_cell(m.get(c)) for m in maps) + " |")
    lines += intervals_markdown(runs)
    for run in runs:
        lines += ["", *against_data_markdown(run)]
    return "\n".join(lines) + "\n" + deploy_markdown(runs) + target_markdown(runs)


def target_heading(target: str) -> str:
    """The heading of the Ethos-U ``target``'s table in summary.md (what the demo's check looks for)."""
    return f"## {target}: Vela's estimates of the found subnets"


def target_markdown(runs: Sequence[SearchSeries]) -> str:
    """Per Ethos-U target, Table 1's layout with cells ``SRAM / Flash / latency`` of each answer:
    Vela's compile-time estimates, not measurements on silicon. Empty when nothing was compiled."""
    names = sorted({t for run in runs for r in run.rows for t in (r.targets or {})})
    out: list[str] = []
    for t in names:
        constraints, maps = _by_constraint(runs)
        out += ["", target_heading(t), "",
                (f"Cells: SRAM (KiB, Vela) / Flash (KiB, Vela) / latency (ms, Vela) of the answer compiled for {t}. "
                 "Vela's compile-time estimates for its system configuration, not measurements on silicon."), "",
                "| Constraint | " + " | ".join(r.label for r in runs) + " |", "|---|" + "---|" * len(runs)]
        for c in constraints:
            cells = []
            for m in maps:
                row = m.get(c)
                f = (row.targets or {}).get(t) if row else None
                cells.append("-" if not f else f"{f['sram_bytes'] / 1024:,.1f} / {f['flash_bytes'] / 1024:,.1f} / "
                             f"{f['inference_ms']:.3f}")
            out.append(f"| < {format_constraint(c)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n" if out else ""


def _measured(row: ResultRow | None) -> str:
    if row is None or row.predicted or row.top1 is None or not row.n_images:
        return "-"
    lo, hi = Accuracy.of(row.top1, row.n_images).interval
    return f"{100 * row.top1:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _paired(c: Comparison | None) -> str:
    """A comparison as ``+0.28 pp [-1.9, +2.5]`` (``*`` when significant)."""
    if c is None:
        return "-"
    return c.text() + ("" if c.verdict == NO_DIFFERENCE else " *")


def intervals_markdown(runs: Sequence[SearchSeries]) -> list[str]:
    """The measured top-1 of every cell with its Wilson 95 % interval and, with several runs, the
    first run minus each other one, paired on the same test images (docs/statistics.md)."""
    constraints, maps = _by_constraint(runs)
    if not any(not r.predicted and r.n_images for run in runs for r in run.rows):
        return []
    n = sorted({r.n_images for run in runs for r in run.rows if r.n_images})
    head = [f"{r.label} top-1 (%)" for r in runs] + [f"{runs[0].label} minus {r.label} (pp)" for r in runs[1:]]
    lines = ["", (f"Measured top-1 with its Wilson 95 % interval (test images: {', '.join(f'{k:,}' for k in n)}); "
                  "differences per image on the same test images with a paired-bootstrap 95 % interval, "
                  "`*` = significant."), "",
             "| Constraint | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for c in constraints:
        first = maps[0].get(c)
        diffs = [compare_stored(first.per_image if first else None, "real_accuracy",
                                row.per_image if (row := m.get(c)) else None, "real_accuracy") for m in maps[1:]]
        cells = [_measured(m.get(c)) for m in maps] + [_paired(d) for d in diffs]
        lines.append(f"| < {format_constraint(c)} | " + " | ".join(cells) + " |")
    return lines


def deploy_markdown(runs: Sequence[SearchSeries]) -> str:
    """The deployed subnets (rows with ``deploy``): fp32 top-1 (PyTorch) and int8 top-1 measured
    in the ExecuTorch runtime on the same test images, program size, ExecuTorch's planned
    activation memory and the analytic peak beside it. Empty when nothing was deployed."""
    rows = [(run.label, r, r.deploy) for run in runs for r in run.rows if r.deploy]
    if not rows:
        return ""
    lines = ["", "## int8 ExecuTorch programs of the found subnets", "",
             ("fp32 top-1: the exported network in PyTorch; int8 top-1: `subnet_int8.pte` run by "
              "`executorch.runtime`, on the same test images (measured). Planned memory: ExecuTorch's "
              "activation arena of each program (bytes; the int8 figure excludes XNNPACK's own scratch). "
              "Analytic: moofa's peak-memory model."), "",
             "| Model | Constraint | images | fp32 top-1 (%) | int8 top-1 (%) | int8 .pte (bytes) | "
             "int8 planned (bytes) | fp32 planned (bytes) | analytic peak | analytic activations (elements) | "
             "int8 minus fp32 (pp, paired 95 % interval) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r, d in rows:
        lines.append(f"| {label} | < {format_constraint(r.constraint)} | {d.get('n_images', '')} | "
                     f"{_pct(d.get('fp32_accuracy'))} | {_pct(d.get('int8_accuracy'))} | "
                     f"{d.get('pte_bytes', 0):,} | {d.get('runtime_memory_bytes', 0):,} | "
                     f"{d.get('fp32_runtime_memory_bytes', 0):,} | "
                     f"{d.get('analytic_peak_memory', 0):,} {d.get('analytic_unit', '')} | "
                     f"{d.get('analytic_activations_elements', 0):,} | "
                     f"{_paired(Comparison.read(d.get('int8_minus_fp32')))} |")
    return "\n".join(lines) + "\n"


def _pm(x: float | None, sd: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}" + ("" if sd is None else f" ± {100 * sd:.2f}")


def _delta(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{100 * (a - b):+.2f}"


def against_data_markdown(run: SearchSeries) -> list[str]:
    """The "search against its data" table of one run (see the module docstring)."""
    rows = run.rows
    sel = next((r.selection_images for r in rows if r.selection_images), None)
    test = next((r.test_images for r in rows if r.test_images), None)
    lines = [f"## {run.label}: the search against the data it had", "",
             "predicted = the search's estimate (± one standard deviation; a measured subnet shows its "
             "measurement); 90 % interval = where the accuracy lies with 90 % probability, calibrated "
             "on held-out measured subnets (docs/search.md); selection = measured on the images used to "
             "choose (" + (sel or "none") + "); "
             "test = measured on the report images (" + (test or "not evaluated") + "); baseline = the "
             "best subnet already in the predictor dataset under the budget (its dataset accuracy, and "
             "its accuracy on the same test images). Accuracies in %.", "",
             "| Budget | predicted | predicted (90 % interval) | selection | test | baseline (dataset) | "
             "baseline (test) | test vs baseline (pp, paired 95 % interval) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        real = None if r.predicted else r.top1
        gap = _paired(r.vs_baseline) if r.vs_baseline else _delta(real, r.baseline_real_top1) if real is not None else \
            _delta(r.predicted_top1, r.baseline_dataset_top1) + (" (predicted)" if r.baseline_dataset_top1 is not None
                                                                 and r.predicted_top1 is not None else "")
        lines.append(f"| < {format_constraint(r.constraint)} | {_pm(r.predicted_top1, r.predicted_std)} | "
                     f"{format_prediction(r.predicted_top1, r.predicted_interval, r.predicted_source)} | "
                     f"{_pct(r.selection_top1)} | {_pct(real)} | {_pct(r.baseline_dataset_top1)} | "
                     f"{_pct(r.baseline_real_top1)} | {gap} |")
    measured = [(r.top1, r.baseline_real_top1) for r in rows
                if not r.predicted and r.top1 is not None and r.baseline_real_top1 is not None]
    if measured:
        d = [a - b for a, b in measured]
        verdicts = [r.vs_baseline.verdict for r in rows if r.vs_baseline is not None]
        lines += ["", f"On the test images the search's subnets are {100 * sum(d) / len(d):+.2f} pp from the "
                  f"best already-measured subnet on average (worst {100 * min(d):+.2f} pp, {len(d)} budgets)"
                  + (f"; paired per budget: {verdicts.count('significantly worse')} significantly worse, "
                     f"{verdicts.count('significantly better')} significantly better, "
                     f"{verdicts.count('no significant difference')} without a significant difference."
                     if verdicts else ".")]
    return lines


def summary_csv(runs: Sequence[SearchSeries]) -> str:
    """Wide CSV: ``constraint`` then per run ``<label> top1_percent``, ``<label> accuracy_source``
    (real | predicted), ``<label> predicted_top1_percent``, ``<label> peak_memory`` (elements),
    ``<label> mflops`` (MMACs), ``<label> predicted_std_percent``, ``<label>
    selection_top1_percent`` (measured on the selection images), ``<label>
    baseline_dataset_top1_percent`` and ``<label> baseline_test_top1_percent`` (the best
    already-measured subnet under the budget), ``<label> predicted_interval_low_percent`` and
    ``<label> predicted_interval_high_percent`` (the 90 % interval). Missing cells are empty."""
    constraints, maps = _by_constraint(runs)
    fields = ("top1_percent", "accuracy_source", "predicted_top1_percent", "peak_memory", "mflops",
              "predicted_std_percent", "selection_top1_percent", "baseline_dataset_top1_percent",
              "baseline_test_top1_percent", "predicted_interval_low_percent",
              "predicted_interval_high_percent")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["constraint"] + [f"{r.label} {f}" for r in runs for f in fields])
    for c in constraints:
        row: list[Any] = [c]
        for m in maps:
            r = m.get(c)
            if r is None:
                row += [""] * len(fields)
            else:
                row += [_pct(r.top1), "predicted" if r.predicted else "real", _pct(r.predicted_top1),
                        r.peak_memory, f"{r.mflops:.4f}", _pct(r.predicted_std), _pct(r.selection_top1),
                        _pct(r.baseline_dataset_top1), _pct(r.baseline_real_top1),
                        *(("", "") if r.predicted_interval is None else map(_pct, r.predicted_interval))]
        w.writerow(row)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ plot
def plot_accuracy_vs_constraint(runs: Sequence[SearchSeries], path_stem: str | Path,
                                title: str | None = None) -> list[Path]:
    """Left: top-1 (%) against the constraint (thousands of the memory unit), one line per run (dashed
    when predicted). Right: the found subnet's peak memory against the constraint, with the
    constraint itself dotted. Writes ``<stem>.png`` and ``<stem>.pdf`` atomically."""
    stem = Path(path_stem)
    fig = Figure(figsize=(11, 4.2))
    ax_acc, ax_mem = fig.subplots(1, 2)
    all_c = sorted({r.constraint for run in runs for r in run.rows})
    for run in runs:
        xs = [r.constraint / 1e3 for r in run.rows]
        label = run.label + (" (predicted)" if run.is_predicted else "")
        style = "--" if run.is_predicted else "-"
        ax_acc.plot(xs, [100 * r.top1 if r.top1 is not None else math.nan for r in run.rows],
                    style, marker="o", label=label)
        ax_mem.plot(xs, [r.peak_memory / 1e3 for r in run.rows], style, marker="o", label=run.label)
    ax_mem.plot([c / 1e3 for c in all_c], [c / 1e3 for c in all_c], ":", color="grey",
                label="constraint")
    ax_acc.set_ylabel("top-1 (%)")
    unit = memory_unit(runs)
    ax_mem.set_ylabel(f"peak memory of the found subnet (k {unit})")
    for ax in (ax_acc, ax_mem):
        ax.set_xlabel(f"peak-memory constraint (k {unit})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax_acc.set_title("Accuracy of the best subnet under each constraint", fontsize=10)
    ax_mem.set_title("Peak memory of the best subnet", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, stem)


# ---------------------------------------------------------------------------------------- writers
def write_tables(runs: Sequence[SearchSeries], out_dir: str | Path, title: str | None = None) -> list[Path]:
    """``summary.csv``, ``summary.md`` and the accuracy plot of ``runs`` in ``out_dir``."""
    if not runs:
        raise MoofaInputError("no results to summarise")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise MoofaInputError("labels must differ (give --labels)", key="labels", value=labels)
    out = Path(out_dir)
    return [atomic_write_text(out / SUMMARY_CSV, summary_csv(runs)),
            atomic_write_text(out / SUMMARY_MD, summary_markdown(runs, title)),
            *plot_accuracy_vs_constraint(runs, out / SUMMARY_PLOT, title)]


def write_summary(res_dir: str | Path, series: SearchSeries | None = None) -> list[Path]:
    """Summary of one sweep (``series``, default: every result folder under ``res_dir``), written
    into ``res_dir``."""
    series = series or read_series(res_dir)
    return write_tables([series], res_dir, f"Best subnet per peak-memory constraint ({series.label})")


def compare(dirs: Iterable[str | Path], labels: Sequence[str] | None = None,
            out_dir: str | Path = ".") -> list[Path]:
    """One comparison table and plot over several sweeps (e.g. OFA vs MOOFA), one column per
    run; labels default to each run's model name."""
    dirs = list(dirs)
    if labels is not None and len(labels) != len(dirs):
        raise MoofaInputError(f"got {len(labels)} labels for {len(dirs)} result folders",
                              key="labels", value=list(labels))
    runs = [read_series(d, labels[i] if labels else None) for i, d in enumerate(dirs)]
    return write_tables(runs, out_dir, "Best subnet per peak-memory constraint")
