"""Compiled subnet samples on disk: each sampled subnet is quantised and lowered to TOSA once
(the slow ExecuTorch passes), then ``vela`` compiles the kept ``out.tosa`` for every target
(about a second each). One folder per sample, written atomically, so a killed job (even
``kill -9``) rerun with the same arguments continues where it stopped.

Layout of ``<cache>/<model>/<index>_<hash>/``, the hash of the subnet and of how it is lowered
(:data:`moofa.deploy.ethosu.LOWERING`, so samples lowered another way are never reused):
``config.json`` (the subnet, its seed, the weights and the lowering), ``out.tosa``,
``vela_<target>/`` (Vela's summary and per-layer CSVs) and ``figures_<target>.json``
(:class:`moofa.deploy.ethosu.VelaFigures`). A sample is complete for a target when its figures
file exists and records the current arena rule (:data:`moofa.deploy.ethosu.ARENA`); figures of
another arena rule are compiled again from the kept ``out.tosa`` (a second each).

Weights: ``torch.manual_seed(0)`` then the supernet's default initialisation (random weights),
unless a checkpoint is given; calibration: 8 seeded random-normal images (Vela's figures depend on
the shapes and the weights' compressibility, not on the quantisation scales' exact values).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from moofa.deploy.ethosu import ARENA, LOWERING
from moofa.efficiency import sample_feasible
from moofa.io import write_json
from moofa.models.spec import ModelSpec, SubnetConfig, get_model_spec

CALIBRATION_IMAGES = 8
N_CLASSES = 1000


def sample_config(spec: ModelSpec, seed: int, index: int) -> SubnetConfig:
    """The ``index``-th sampled subnet of ``seed``: a resolution drawn uniformly, then a config
    uniformly among that resolution's (independent of how many samples are drawn)."""
    gen = np.random.default_rng([int(seed), int(index)])
    return sample_feasible(spec, np.inf, gen, 1, resolution_weighting="uniform")[0]


def config_hash(subnet: SubnetConfig, lowering: str = LOWERING) -> str:
    """Short stable hash of a subnet config and the lowering it is compiled with (12 hex digits)."""
    return hashlib.sha256(json.dumps([subnet.to_dict(), lowering], sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Job:
    """What compiles one sample: the model, its subnet, the targets and where to write."""

    model: str
    model_configs: str | None
    config: dict
    index: int
    folder: str
    targets: tuple[str, ...]
    checkpoint: str | None = None
    n_classes: int = N_CLASSES


def static_subnet(spec: ModelSpec, subnet: SubnetConfig, checkpoint: str | None, n_classes: int) -> torch.nn.Module:
    """The static subnet ``subnet`` of the supernet: weights of ``checkpoint`` or, without one,
    ``torch.manual_seed(0)`` then the default initialisation."""
    from moofa.models import build_supernet
    from moofa.models.supernet import load_weights

    torch.manual_seed(0)
    net = build_supernet(spec, n_classes=n_classes)
    if checkpoint is not None:
        load_weights(net, checkpoint)
    net.set_subnet(subnet)
    return net.get_active_subnet().eval()


def compile_sample(job: Job) -> str:
    """Compile one sample (the TOSA once, Vela per missing target); returns its folder."""
    from moofa.deploy.ethosu import (
        arena_for,
        default_settings,
        ethosu_program,
        quantize_for,
        vela_compile_tosa,
        versions,
    )

    folder = Path(job.folder)
    targets = [t for t in job.targets if not is_complete(folder, t)]
    if not targets:
        return str(folder)
    torch.set_num_threads(1)
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by a killed compile of this sample
        if not _alive(stale.name.rsplit(".", 2)[-2]):
            shutil.rmtree(stale, ignore_errors=True)
    spec = get_model_spec(job.model, job.model_configs)
    cfg = SubnetConfig.from_dict(job.config)
    if not (folder / "out.tosa").is_file():
        net = static_subnet(spec, cfg, job.checkpoint, job.n_classes)
        gen = torch.Generator().manual_seed(job.index)
        calib = [torch.randn(CALIBRATION_IMAGES, 3, cfg.image_size, cfg.image_size, generator=gen)]
        t0 = time.perf_counter()
        quantized, _ = quantize_for(net, cfg.image_size, calib, job.targets[0])
        work = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
        prog = ethosu_program(quantized, cfg.image_size, job.targets[0], work)
        seconds = time.perf_counter() - t0
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "config.json", {"model": job.model, "config": cfg.to_dict(), "index": job.index,
                                            "checkpoint": job.checkpoint, "n_classes": job.n_classes,
                                            "weights": "checkpoint" if job.checkpoint else
                                            "torch.manual_seed(0), default init",
                                            "compile_seconds": seconds, "compiled_for": job.targets[0],
                                            "lowering": LOWERING,
                                            "versions": versions()})
        tmp = folder / f".out.tosa.{os.getpid()}"
        shutil.copyfile(prog.tosa_path, tmp)
        os.replace(tmp, folder / "out.tosa")  # the sample's TOSA exists whole or not at all
        shutil.rmtree(work, ignore_errors=True)
    for t in targets:
        arena = arena_for(spec, cfg, default_settings(t)[1])
        figs = vela_compile_tosa(folder / "out.tosa", t, folder / f"vela_{t}", arena=arena)
        write_json(folder / f"figures_{t}.json", figs.to_dict(layers=True))
    return str(folder)


def _alive(pid: str) -> bool:
    """Whether the process ``pid`` (a decimal string) exists."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def sample_jobs(model: str, targets: Sequence[str], cache: str | Path, n: int, seed: int = 0,
                model_configs: str | None = None, checkpoint: str | None = None, start: int = 0) -> list[Job]:
    """Jobs of samples ``start .. start+n-1`` of ``model`` under ``cache/<model>/``."""
    spec = get_model_spec(model, model_configs)
    out = []
    for i in range(start, start + n):
        cfg = sample_config(spec, seed, i)
        folder = Path(cache) / model / f"{i:04d}_{config_hash(cfg)}"
        out.append(Job(model, model_configs, cfg.to_dict(), i, str(folder), tuple(targets), checkpoint))
    return out


def run_jobs(jobs: Sequence[Job], workers: int = 1, log: Any = print) -> list[str]:
    """Compile every job (``workers`` processes, one sample per process at a time); samples already
    complete are skipped. Returns the folders."""
    todo = [j for j in jobs if not all(is_complete(j.folder, t) for t in j.targets)]
    log(f"{len(jobs) - len(todo)} of {len(jobs)} samples already compiled; {len(todo)} to go "
        f"({workers} process{'es' if workers > 1 else ''})")
    if workers <= 1:
        for k, j in enumerate(todo):
            t0 = time.perf_counter()
            compile_sample(j)
            log(f"[{k + 1}/{len(todo)}] {Path(j.folder).name} ({time.perf_counter() - t0:.0f} s)")
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for k, folder in enumerate(pool.map(compile_sample, todo)):
                log(f"[{k + 1}/{len(todo)}] {Path(folder).name}")
    return [j.folder for j in jobs]


def _figures(folder: str | Path, target: str) -> dict[str, Any] | None:
    """The sample's figures for ``target`` when compiled with the current arena rule, else None."""
    fig = Path(folder) / f"figures_{target}.json"
    if not fig.is_file():
        return None
    figures = json.loads(fig.read_text())
    return figures if figures.get("arena") == ARENA else None


def is_complete(folder: str | Path, target: str) -> bool:
    """Whether the sample in ``folder`` holds figures for ``target`` under the current arena rule."""
    return _figures(folder, target) is not None


def load_sample(folder: str | Path, target: str) -> dict[str, Any] | None:
    """``{"config": SubnetConfig, "figures": dict, ...}`` of a complete sample, else None."""
    f = Path(folder)
    figures, conf = _figures(f, target), f / "config.json"
    if figures is None or not conf.is_file():
        return None
    meta = json.loads(conf.read_text())
    return {**meta, "config": SubnetConfig.from_dict(meta["config"]), "figures": figures, "folder": str(f)}
