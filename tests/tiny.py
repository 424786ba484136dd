"""A tiny project for end-to-end tests: small supernets (the reference classes with small widths),
a synthetic ImageFolder dataset and a config with one-epoch phases. Everything is written under a
temporary folder; nothing is downloaded."""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def script_env() -> dict[str, str]:
    """The environment of the scripts the tests start: unbuffered, wandb offline, one thread."""
    return dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")

TINY_MODELS = {
    "TINY": dict(model_class="OFAMobileNetV3CtV3", expand_list=[2, 3, 4], ks_list=[3, 5, 7],
                 depth_list=[2, 3, 4], width_mult_list=1.0, image_size=[32, 48],
                 widths=[3, 8, 8, 16, 16, 24, 24, 32, 32]),
    "TINY_OFA": dict(model_class="OFAMobileNetV3", expand_list=[3, 4, 6], ks_list=[3, 5, 7],
                     depth_list=[2, 3, 4], width_mult_list=1.0, image_size=[32, 48],
                     widths=[8, 8, 8, 16, 16, 24, 24, 32, 32]),
}


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def tiny_config(root: Path, model: str = "TINY") -> dict:
    run = root / "run"
    phase = dict(n_epochs=1, base_lr=0.01, warmup_epochs=0, warmup_lr=0.001, dynamic_batch_size=1)
    return {
        "args": dict(path=str(run), teacher_path=str(run / "teacher"),
                     checkpoint=str(run / "checkpoint" / "checkpoint-expand_2.pth.tar"),
                     model=model, dataset="synthetic", data_path=str(root / "data"), device="cpu",
                     base_batch_size=16, n_worker=0, valid_size=40, bn_calib_images=64,
                     bn_calib_batch_size=32, kd_ratio=1.0, manual_seed=0,
                     synthetic=dict(n_classes=4, train_per_class=40, val_per_class=10, image_size=48,
                                    difficulty=0.2, seed=0)),
        "tasks": ["kernel", "depth", "expand"],
        "tasks_phases": {"kernel": 1, "depth": 2, "expand": 2},
        "args_per_task": {
            "teacher": dict(phase, n_epochs=3, base_lr=0.05),
            "kernel_1": dict(phase), "depth_1": dict(phase, dynamic_batch_size=2),
            "depth_2": dict(phase, dynamic_batch_size=2), "expand_1": dict(phase, dynamic_batch_size=2),
            "expand_2": dict(phase, dynamic_batch_size=2),
        },
        "subnet_config": dict(image_size=32, res_dir=str(root / "results"), name="subnet"),
        "search_config": dict(population_size=8, generations=3, res_dir=str(root / "search"),
                              acc_dataset_path=str(root / "dataset.jsonl"),
                              acc_predictor_checkpoint=str(root / "predictor.pth.tar"), seed=0),
        "dataset_config": dict(n_samples=12, n_bins=3, eval_images=40, seed=0),
        "predictor_config": dict(hidden_size=32, n_layers=2, ensemble=2, epochs=20, batch_size=8),
        "wandb": dict(use_wandb=False),
    }


@dataclass
class TinyProject:
    root: Path
    config_path: Path
    model_config_path: Path
    config: dict

    def write(self, **overrides: Any) -> Path:
        """Rewrite the config with ``overrides`` merged section-wise; returns its path."""
        cfg = deep_update(copy.deepcopy(self.config), overrides)
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return self.config_path

    def command(self, script: str, *args: str, nproc: int = 1, launcher: str = "torchrun") -> list[str]:
        """The command line of a top-level script (train.py, ...) with this project's config,
        under ``launcher`` (torchrun or horovod) when ``nproc`` > 1."""
        cmd = [str(ROOT / script), "--config", str(self.config_path),
               "--model_config_path", str(self.model_config_path), *args]
        if nproc > 1 and launcher == "torchrun":
            return [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_port", str(free_port()), *cmd]
        if nproc > 1:
            return [str(Path(PYTHON).parent / "horovodrun"), "-np", str(nproc), "--gloo", PYTHON, *cmd]
        return [PYTHON, *cmd]

    def run(self, script: str, *args: str, nproc: int = 1, launcher: str = "torchrun",
            timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Run a top-level script (train.py, ...) with this project's config."""
        cmd = self.command(script, *args, nproc=nproc, launcher=launcher)
        proc = subprocess.run(cmd, cwd=self.root, env=script_env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def call(self, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a top-level script (train.py, ...) with this project's config in this process: its
        ``main`` under ``run_cli``, as the script does, with the project root as working folder and
        stdout / stderr (log lines included) captured. Same result as :meth:`run` without the
        seconds a fresh interpreter spends importing torch; keep :meth:`run` where a real process
        is the point (kills, signals, launchers)."""
        cmd = self.command(script, *args)
        main = script_main(script)
        from moofa.cli.common import run_cli

        out, err = io.StringIO(), io.StringIO()
        handler = logging.StreamHandler(err)  # what run_cli's basicConfig gives a fresh process
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root_log = logging.getLogger()
        level, cwd = root_log.level, os.getcwd()
        root_log.addHandler(handler)
        root_log.setLevel(logging.INFO)
        try:
            os.chdir(self.root)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = run_cli(main, cmd[2:])
                except SystemExit as stop:  # argparse --help and the like
                    rc = stop.code if isinstance(stop.code, int) else 1
        finally:
            os.chdir(cwd)
            root_log.removeHandler(handler)
            root_log.setLevel(level)
        done = subprocess.CompletedProcess(cmd, rc, out.getvalue(), err.getvalue())
        if check and rc != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {rc} (in-process)\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def kill_when(self, script: str, *args: str, when: Callable[[], bool], timeout: float = 900) -> bool:
        """Start a top-level script with this project's config and SIGKILL it as soon as
        ``when()`` holds (polled every 10 ms). Returns True when it was killed, False when it
        ended first."""
        return self.signal_when(script, *args, when=when, sig=signal.SIGKILL, timeout=timeout) is not None

    def signal_when(self, script: str, *args: str, when: Callable[[], bool], sig: int = signal.SIGTERM,
                    nproc: int = 1, launcher: str = "torchrun", timeout: float = 900,
                    stop_timeout: float = 60) -> subprocess.CompletedProcess | None:
        """Start a top-level script with this project's config (under ``launcher`` when ``nproc``
        > 1) and send it ``sig`` as soon as ``when()`` holds (polled every 10 ms). Returns the
        ended process (exit status, stdout, stderr; ``stop_seconds``: from the signal to the
        exit, at most ``stop_timeout``) or None when it ended before the signal."""
        cmd = self.command(script, *args, nproc=nproc, launcher=launcher)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, cwd=self.root, env=script_env(), stdout=out, stderr=err)
            try:
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    if when():
                        sent = time.monotonic()
                        proc.send_signal(sig)
                        proc.wait(stop_timeout)
                        out.seek(0)
                        err.seek(0)
                        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
                        done.stop_seconds = time.monotonic() - sent  # type: ignore[attr-defined]
                        return done
                    time.sleep(0.01)
                return None
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def script_main(script: str) -> Callable:
    """The ``main`` a top-level script (train.py, ...) runs: read from its ``from M import main``
    line, so the tests follow the script wherever its module lives."""
    m = re.search(r"^from ([\w.]+) import main$", (ROOT / script).read_text(), flags=re.MULTILINE)
    if not m:
        raise ValueError(f"{script}: no 'from <module> import main' line")
    return importlib.import_module(m.group(1)).main


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_project(root: Path, model: str = "TINY", **overrides: Any) -> TinyProject:
    root.mkdir(parents=True, exist_ok=True)
    mc = root / "model_configs.yaml"
    mc.write_text(yaml.safe_dump(TINY_MODELS, sort_keys=False))
    project = TinyProject(root, root / "config.yaml", mc, deep_update(tiny_config(root, model), overrides))
    project.write()
    return project


def stopped_at(proc: subprocess.CompletedProcess, sig: int = signal.SIGTERM) -> str | None:
    """Check that ``proc`` (from :meth:`TinyProject.signal_when`) stopped gracefully on ``sig``:
    exit status 128 + ``sig``, exactly one ``stopped by <SIG>`` line, no traceback. Returns where
    the line says it stopped (``epoch 2/3 (kernel_1)``), None for a stop before the job's loop."""
    name = signal.Signals(sig).name
    lines = [line for line in proc.stderr.splitlines() if line.startswith("stopped by")]
    assert proc.returncode == 128 + sig, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    m = re.fullmatch(rf"stopped by {name}(?: at (.+); rerun the same command to resume|; rerun the same command)",
                     lines[0])
    assert m, lines[0]
    return m.group(1)
