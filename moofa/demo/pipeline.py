"""The demo's orchestration (``python -m moofa.demo``, what ``make demo`` runs): the whole MOOFA
pipeline on CPU, in minutes. Checks: :mod:`moofa.demo.checks`; report: :mod:`moofa.demo.report`.

For each demo model (``MOOFA`` and its ``OFA`` baseline: ``configs/demo_<label>.yaml`` with the
scaled-down supernets of ``configs/demo_model_configs.yaml``, read from the copies packaged in
:mod:`moofa.resources`) it runs the steps of the top-level scripts, one process per stage, each as
``python -m moofa.cli.<module>`` with this interpreter from the current folder (so an installed
package needs no repository); logs show the command a user types::

    train.py --step teacher                                  (the teacher)
    eval_and_search.py --mode eval --model teacher           (its test accuracy)
    train.py --step kernel/depth/expand --phase P            (progressive shrinking: k1, d1-2, e1-2)
    create_moofa_predictor_dataset.py                        (predictor dataset)
    train_moofa_predictor.py --output scatter.png            (accuracy predictor)
    eval_and_search.py --mode search                         (search + evaluation per budget)
    train.py --step finetune --subnet <tightest budget>      (fine-tuning of that subnet)

The search deploys the tightest and the loosest budget's answer (``search_config.deploy_constraints``)
for each of ``deploy.targets``: the int8 XNNPACK program (top-1 measured in ExecuTorch) and, for
``ethos-u55-128``, the program Vela compiles (its SRAM, Flash and latency: Vela's estimates, not
silicon). Then the OFA-vs-MOOFA comparison (``eval_and_search.py --mode summary``:
``summary/summary.md`` with the Ethos-U table, ``summary.csv``, ``accuracy_vs_constraint.png``) and a
memory-histogram figure; it checks the acceptance criteria
(:mod:`moofa.demo.checks`: claims with their statistical tests) and prints the per-stage times and
the summary table.

The embedded ``digits`` dataset is written once as an ImageFolder under the run folder. The models'
stage chains run side by side, every process with the same fixed number of CPU threads (``cores /
chains``, recorded in demo_summary.json), so a stage's numbers depend only on its inputs. Rerunning
resumes: a stage whose outputs exist is reused; a killed stage is simply run again and its script
resumes (train.py from its per-phase checkpoint, the dataset from its JSON Lines file); once a
stage runs, the later stages of its chain run too. Each stage's output goes to
``<out>/<label>/logs/<stage>.log``; per-stage wall and CPU seconds are printed at the end.

``--quick`` is the same pipeline at a toy size (a small synthetic dataset, one epoch per phase,
a few subnets) for tests; its results mean nothing.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from moofa.config import RunConfig, load_config, search_constraints, task_args
from moofa.data.datasets import ensure_dataset
from moofa.demo.checks import collect_checks, finetune_folder, predictor_file, scatter_path, teacher_info_path
from moofa.demo.report import plot_memory_histograms, report_text, short_path, tail_lines, time_table
from moofa.errors import MoofaInputError
from moofa.io import atomic_write_text
from moofa.resources import resource_path
from moofa.run import INFO_NAME, Run, constraint_dir, final_phase_file, teacher_file
from moofa.training.checkpoint import PHASE_ORDER

MODEL_CONFIGS = resource_path("demo_model_configs.yaml")
LABELS: tuple[str, ...] = ("MOOFA", "OFA")
DEFAULT_OUT = Path("demo_runs")
QUICK_OUT = DEFAULT_OUT / "quick"
PATH_PREFIX = "demo_runs/"          # the shipped demo configs' path prefix, rewritten to --out
STATE_NAME = "demo.json"            # <out>/demo.json: mode of the run folder
SUMMARY_NAME = "demo_summary.json"  # <out>/demo_summary.json: stages, times, checks
STAGES_NAME = "demo_stages.json"    # <out>/<label>/demo_stages.json: finished stages
STAGE_TIMEOUT_S = 4 * 3600          # one stage never runs longer than this
# Each top-level script a stage shows -> the module a stage runs (``python -m``); the scripts are
# thin wrappers around these modules' ``main``.
SCRIPT_MODULES: dict[str, str] = {
    "train.py": "moofa.cli.train",
    "eval_and_search.py": "moofa.cli.eval_and_search",
    "create_moofa_predictor_dataset.py": "moofa.cli.create_dataset",
    "train_moofa_predictor.py": "moofa.cli.train_predictor",
}

# Keys holding paths (section, key); values starting with PATH_PREFIX are moved under --out.
PATH_KEYS: tuple[tuple[str, str], ...] = (
    ("args", "path"), ("args", "teacher_path"), ("args", "checkpoint"), ("args", "data_path"),
    ("subnet_config", "res_dir"), ("search_config", "res_dir"), ("search_config", "acc_dataset_path"),
    ("search_config", "acc_predictor_checkpoint"), ("dataset_config", "output"))

# --quick: the same pipeline at a toy size (seconds per stage). Merged over each demo config.
_QUICK_PHASE = {"n_epochs": 1, "base_lr": 1.0e-3, "warmup_epochs": 0, "warmup_lr": 0.0, "dynamic_batch_size": 1}
QUICK_OVERRIDES: dict[str, Any] = {
    "args": {"dataset": "synthetic", "data_path": "demo_runs/data/synthetic/",
             "synthetic": {"n_classes": 4, "train_per_class": 24, "val_per_class": 8,
                           "image_size": 32, "difficulty": 0.2, "seed": 0},
             "base_batch_size": 48, "valid_size": 16, "bn_calib_images": 32, "bn_calib_batch_size": 32},
    "args_per_task": {name: dict(_QUICK_PHASE, base_lr=(5.0e-3 if name == "teacher" else 1.0e-3))
                      for name in ("teacher", "kernel_1", "depth_1", "depth_2", "expand_1", "expand_2",
                                   "finetune")},
    "subnet_config": {"image_size": 32},
    "dataset_config": {"n_samples": 6, "n_bins": 2, "save_interval": 3},
    "predictor_config": {"hidden_size": 16, "n_layers": 2, "ensemble": 1, "epochs": 5, "batch_size": 4,
                         "val_fraction": 0.2, "test_fraction": 0.34},
    "search_config": {"population_size": 6, "generations": 2,  # no int8 lowering at toy size
                      "export": True, "deploy_constraints": None},  # (tests stay fast)
}


# ------------------------------------------------------------------------------------- configs
def deep_update(base: dict, new: Mapping[str, Any]) -> dict:
    """Merge ``new`` into ``base`` section-wise (nested mappings merged, other values replaced)."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _relocate(value: Any, out: Path) -> Any:
    if isinstance(value, str) and value.startswith(PATH_PREFIX):
        return str((out / value[len(PATH_PREFIX):]).resolve()) + ("/" if value.endswith("/") else "")
    return value


def demo_config(label: str, out: Path, quick: bool = False) -> dict:
    """The raw YAML of ``configs/demo_<label>.yaml`` with ``--quick`` overrides merged and every
    ``demo_runs/...`` path moved under ``out`` (absolute)."""
    src = resource_path(f"demo_{label}.yaml")
    try:
        raw = yaml.safe_load(src.read_text())
    except OSError as err:
        raise MoofaInputError(f"cannot read the demo config ({err.strerror})", file=src) from None
    if quick:
        deep_update(raw, QUICK_OVERRIDES)
    for section, key in PATH_KEYS:
        sec = raw.get(section)
        if isinstance(sec, dict) and key in sec:
            sec[key] = _relocate(sec[key], out)
    return raw


def write_demo_configs(out: Path, labels: Sequence[str], quick: bool) -> dict[str, Path]:
    """Write ``<out>/configs/demo_<label>.yaml`` for each label (validated with
    :func:`moofa.config.load_config`); returns their paths."""
    paths = {}
    for label in labels:
        path = out / "configs" / f"demo_{label}.yaml"
        how = " with the --quick overrides" if quick else ""
        text = f"# Written by python -m moofa.demo from configs/demo_{label}.yaml{how}; paths under {out.resolve()}.\n"
        text += yaml.safe_dump(demo_config(label, out, quick), sort_keys=False)
        atomic_write_text(path, text)
        load_config(path, MODEL_CONFIGS)
        paths[label] = path
    return paths


# -------------------------------------------------------------------------------------- stages
@dataclass
class Stage:
    """One process of the pipeline: shown as ``python <script> <args>``, run from the current
    folder as ``python -m <its module> <args>`` (a top-level script, :data:`SCRIPT_MODULES`)."""

    label: str
    name: str
    script: str
    args: list[str]
    outputs: list[Path]

    def argv(self) -> list[str]:
        """This interpreter running the script's module (:data:`SCRIPT_MODULES`), or any other
        script file as given."""
        module = SCRIPT_MODULES.get(self.script)
        return [sys.executable, *(["-m", module] if module else [self.script]), *self.args]

    def shown(self) -> str:
        """The command as a user types it from the repository root (paths shortened)."""
        return shlex.join(["python", self.script, *(short_path(Path(a)) if os.sep in a else a for a in self.args)])


def pipeline_stages(label: str, config: Path, cfg: RunConfig) -> list[Stage]:
    """The stages of one model, in order; ``cfg`` is ``config`` loaded with
    :func:`moofa.config.load_config`."""
    args, sc = cfg.args, cfg.search_config
    common = ["--config", str(config)]
    mc = ["--model_config_path", str(MODEL_CONFIGS)]

    def stage(name: str, script: str, extra: list[str], outputs: list[Path]) -> Stage:
        return Stage(label, name, script, [*common, *extra, *mc], outputs)

    stages = [stage("teacher", "train.py", ["--step", "teacher"],
                    [teacher_file(args)]),
              stage("teacher_eval", "eval_and_search.py", ["--mode", "eval", "--model", "teacher"],
                    [teacher_info_path(cfg)])]
    for step in (s for s in PHASE_ORDER if s in cfg.tasks):
        for phase in range(1, cfg.tasks_phases[step] + 1):
            stages.append(stage(f"{step}_{phase}", "train.py", ["--step", step, "--phase", str(phase)],
                                [final_phase_file(args.path, step, phase)]))
    stages.append(stage("dataset", "create_moofa_predictor_dataset.py", [], [Run(cfg).dataset_file]))
    stages.append(stage("predictor", "train_moofa_predictor.py", ["--output", str(scatter_path(cfg))],
                        [predictor_file(cfg), scatter_path(cfg)]))
    stages.append(stage("search", "eval_and_search.py", ["--mode", "search"],
                        [constraint_dir(sc.res_dir, c) / INFO_NAME for c in search_constraints(cfg)]))
    tight = finetune_folder(cfg)
    stages.append(stage("finetune", "train.py", ["--step", "finetune", "--subnet", str(tight)],
                        [tight / "finetuned" / INFO_NAME]))
    return stages


def summary_stage(out: Path, cfgs: Mapping[str, RunConfig]) -> Stage:
    """The comparison of every model's search results (``--mode summary``)."""
    dirs = [cfg.search_config.res_dir for cfg in cfgs.values()]
    outdir = out / "summary"
    return Stage("summary", "summary", "eval_and_search.py",
                 ["--mode", "summary", "--results", *dirs, "--labels", *cfgs, "--output", str(outdir)],
                 [outdir / "summary.md"])


@dataclass
class StageResult:
    label: str
    stage: str
    status: str            # "ran", "reused", "failed" or "not run"
    seconds: float = 0.0
    returncode: int | None = None
    log: str = ""
    command: str = ""
    cpu_seconds: float = 0.0   # user + system CPU time of the stage's process


class StageBook:
    """``<out>/<label>/demo_stages.json``: the stages that finished, with the config they ran
    with (a changed config makes every stage run again; the scripts still reuse what fits)."""

    def __init__(self, path: Path, config_text: str) -> None:
        self.path = path
        self.config_sha = hashlib.sha256(config_text.encode()).hexdigest()[:16]
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        self.done: dict[str, dict] = data.get("stages", {}) if data.get("config_sha") == self.config_sha else {}

    def is_done(self, stage: Stage) -> bool:
        return stage.name in self.done and all(p.exists() for p in stage.outputs)

    def mark(self, stage: Stage, seconds: float) -> None:
        self.done[stage.name] = {"seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(self.path, json.dumps({"config_sha": self.config_sha, "stages": self.done}, indent=1) + "\n")


# -------------------------------------------------------------------------------------- runner
class Runner:
    """Runs stage chains (one per model) side by side; stops every chain after a failure."""

    def __init__(self, out: Path, say: Callable[[str], None], tick: Callable[[], None],
                 threads: int = 1) -> None:
        self.out, self.say, self.tick = out, say, tick
        self.threads = threads  # every stage's CPU threads: fixed, so its numbers depend on its inputs only
        self.stop = threading.Event()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def env(self) -> dict[str, str]:
        n = str(self.threads)
        return dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, PYTHONUNBUFFERED="1",
                    WANDB_MODE="offline", TQDM_MININTERVAL="5")

    def run_chain(self, label: str, config: Path, stages: Sequence[Stage]) -> list[StageResult]:
        book = StageBook(self.out / label / STAGES_NAME, config.read_text())
        results = []
        upstream_ran = False  # once a stage runs, every later stage runs too (its inputs changed)
        for stage in stages:
            if self.stop.is_set():
                results.append(StageResult(label, stage.name, "not run", command=stage.shown()))
                continue
            if not upstream_ran and book.is_done(stage):
                results.append(StageResult(label, stage.name, "reused", book.done[stage.name]["seconds"],
                                           command=stage.shown()))
                self.say(f"[{label}] {stage.name}: done earlier, reused")
                self.tick()
                continue
            upstream_ran = True
            res = self.run_stage(stage)
            results.append(res)
            if res.status != "ran":
                self.stop.set()
                continue
            book.mark(stage, res.seconds)
            self.tick()
        return results

    def run_stage(self, stage: Stage) -> StageResult:
        log = self.out / stage.label / "logs" / f"{stage.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        shown = stage.shown()
        env = self.env()
        self.say(f"[{stage.label}] {stage.name}: {shown}  ({env['OMP_NUM_THREADS']} thread(s))")
        t0 = time.time()
        with open(log, "a") as fh:
            fh.write(f"\n$ {shown}\n# {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.flush()
            proc = subprocess.Popen(stage.argv(), cwd=Path.cwd(), env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            with self._lock:
                self._procs.add(proc)
            try:
                rc, cpu = self._wait(proc, t0)
            finally:
                with self._lock:
                    self._procs.discard(proc)
        seconds = time.time() - t0
        status = "ran" if rc == 0 else "failed"
        self.say(f"[{stage.label}] {stage.name}: {'finished' if rc == 0 else f'FAILED (exit {rc})'} "
                 f"in {seconds:.1f} s ({cpu:.1f} CPU s)")
        return StageResult(stage.label, stage.name, status, seconds, rc, str(log), shown, round(cpu, 2))

    def _wait(self, proc: subprocess.Popen, t0: float) -> tuple[int, float]:
        """Wait for ``proc`` (terminating it when another chain failed or the stage timed out);
        returns its exit status and the CPU seconds it used (user + system, from ``wait4``)."""
        stopping_since = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage.ru_utime + usage.ru_stime
            if stopping_since is None and (self.stop.is_set() or time.time() - t0 > STAGE_TIMEOUT_S):
                self.stop.set()
                stopping_since = time.time()
                proc.terminate()
            elif stopping_since is not None and time.time() - stopping_since > 30:
                proc.kill()
            time.sleep(0.2)

    def terminate_all(self) -> None:
        """Stop every running stage process (only the ones this runner started)."""
        self.stop.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()


# ---------------------------------------------------------------------------------------- main
def _check_mode(out: Path, quick: bool) -> None:
    """A run folder holds one kind of run: refuse to mix --quick and full results."""
    path = out / STATE_NAME
    mode = "quick" if quick else "full"
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("mode")
        except ValueError:
            old = None
        if old not in (None, mode):
            raise MoofaInputError(f"holds a {old} demo run, not a {mode} one; choose another --out or delete it",
                                  file=out, key="--out")
    atomic_write_text(path, json.dumps({"mode": mode}) + "\n")


def threads_per_process(jobs: int) -> int:
    """CPU threads of every stage process when ``jobs`` chains run side by side: the cores shared
    evenly (at most 4), fixed for the whole run."""
    return max(1, min(4, (os.cpu_count() or 1) // jobs))


def environment(threads: int) -> dict[str, Any]:
    """What the numbers of a run may depend on besides its inputs and seeds (demo_summary.json):
    library versions, the thread count of every stage and the CPU."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "threads_per_stage": threads, "cpu_count": os.cpu_count(), "cpu": cpu,
            "platform": platform.platform()}


def run_demo(out: Path, labels: Sequence[str], quick: bool = False, jobs: int | None = None,
             echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) the demo in ``out``; returns the summary written to ``<out>/demo_summary.json``.
    Raises :class:`MoofaInputError` for bad input; a failed stage is reported in the summary."""
    t_start = time.time()
    labels = list(dict.fromkeys(labels))
    out.mkdir(parents=True, exist_ok=True)
    _check_mode(out, quick)
    paths = write_demo_configs(out, labels, quick)
    cfgs = {label: load_config(paths[label], MODEL_CONFIGS) for label in labels}
    echo(f"demo ({'quick' if quick else 'full'}): models {', '.join(labels)}; run folder {out.resolve()}")

    t0 = time.time()
    for root in dict.fromkeys(cfg.args.data_path for cfg in cfgs.values()):
        cfg = next(c for c in cfgs.values() if c.args.data_path == root)
        ensure_dataset(task_args(cfg, "teacher"))
        echo(f"dataset {cfg.args.dataset}: {root}")
    data_seconds = time.time() - t0

    chains = {label: pipeline_stages(label, paths[label], cfgs[label]) for label in labels}
    jobs = max(1, min(jobs or len(labels), len(labels), os.cpu_count() or 1))
    total = sum(len(s) for s in chains.values()) + 1
    bar = tqdm(total=total, desc="demo stages", unit="stage", dynamic_ncols=True)
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            tqdm.write(f"{time.strftime('%H:%M:%S')} {msg}")

    def tick() -> None:
        with lock:
            bar.update(1)

    runner = Runner(out, say, tick, threads_per_process(jobs))
    say(f"{len(labels)} chain(s), {jobs} at a time, {runner.threads} CPU thread(s) per process; "
        f"stage logs in {short_path(out)}/<model>/logs/")
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(runner.run_chain, label, paths[label], chains[label]) for label in labels]
            results = [r for f in futures for r in f.result()]
        if not any(r.status == "failed" for r in results):
            results.append(runner.run_stage(summary_stage(out, cfgs)))
            if results[-1].status == "ran":
                tick()
    except KeyboardInterrupt:
        runner.terminate_all()
        raise
    finally:
        bar.close()

    summary: dict[str, Any] = {"mode": "quick" if quick else "full", "out": str(out.resolve()),
                               "models": labels, "configs": {k: str(v) for k, v in paths.items()},
                               "data_seconds": round(data_seconds, 2),
                               "environment": environment(runner.threads)}
    failed = [r for r in results if r.status == "failed"]
    if failed:
        summary.update(ok=False, stages=[asdict(r) for r in results],
                       failures=[f"{r.label} {r.stage}: exit {r.returncode}, log {r.log}" for r in failed],
                       seconds=round(time.time() - t_start, 1))
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=1) + "\n")
        echo("\n" + time_table(results))
        for r in failed:
            echo(f"\n{r.label} {r.stage} failed (exit {r.returncode}); last lines of {r.log}:")
            echo(tail_lines(Path(r.log)))
        return summary

    summary_dir = out / "summary"
    figures = plot_memory_histograms(cfgs, summary_dir / "memory_histograms")
    checks = collect_checks(cfgs)
    table = (summary_dir / "summary.md").read_text()
    checks.check_summary(table, cfgs)
    failures = checks.failures(quick)
    summary.update(ok=not failures, failures=failures, stages=[asdict(r) for r in results],
                   checks=checks.to_dict(), comparisons=checks.comparisons(), figures=[str(p) for p in figures],
                   seconds=round(time.time() - t_start, 1))
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=1) + "\n")
    echo(report_text(out, labels, cfgs, results, checks, failures, data_seconds, summary["seconds"], table))
    return summary


