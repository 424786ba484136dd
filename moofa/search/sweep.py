"""``eval_and_search.py --mode search``: the constraint sweep (SPEC 7.4-7.5, fixed per SPEC 10).

For each constraint of :func:`moofa.config.search_constraints` (checked against the model's exact
minimum first), rank 0 runs the evolutionary search and broadcasts the result; with
``search_config.evaluate`` (default) every rank then evaluates the found subnet after BN
re-calibration (counts all-reduced, forward time synchronised) and rank 0 writes
``<res_dir>/constraint_<int>/``: the memory histogram and architecture plots, the exported subnet
(``subnet.pth.tar`` [+ ``subnet.onnx``], ``search_config.export``) and, last, ``info.json``.
After the sweep rank 0 writes ``summary.csv``, ``summary.md`` and the accuracy plot.

Resume: a constraint whose ``info.json`` records the same search (model, constraint, settings,
predictor, evaluation, checkpoint) is not searched again; ``overwrite=True`` redoes it.
With ``evaluate: false`` neither the supernet checkpoint nor the dataset is read, and
``real_accuracy`` is null.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moofa.config import SearchSettings
from moofa.data import DataProvider
from moofa.errors import ConfigError
from moofa.io import write_json
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.predictor import AccuracyPredictor
from moofa.run import INFO_NAME, Run, constraint_dir
from moofa.search.evolution import EvolutionFinder, SearchResult, check_constraints
from moofa.search.export import export_subnet
from moofa.evaluation.report import UNITS, draw_subnet_plots, subnet_report
from moofa.search.results import read_json, run_from_infos, write_summary
from moofa.training.evaluate import evaluate_subnet

log = logging.getLogger(__name__)
EXPORT_NAME = "subnet.pth.tar"


def load_search_predictor(run: Run, spec: ModelSpec) -> AccuracyPredictor:
    """The accuracy predictor of ``search_config.acc_predictor_checkpoint`` on the CPU (the
    search scores batches of at most population_size configs, too small to gain from a GPU)."""
    path = run.predictor_file
    if path is None:
        raise ConfigError("no accuracy predictor checkpoint given", file=run.path,
                          key="search_config.acc_predictor_checkpoint")
    return AccuracyPredictor.load(path, spec, device="cpu")


def fingerprint(cfg: Mapping[str, Any], spec: ModelSpec, constraint: int,
                settings: SearchSettings, args: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies one constraint's result (JSON-normalised), for resuming."""
    sc = cfg["search_config"]
    fp = {"model": spec.name, "constraint": constraint, "settings": settings.to_dict(),
          "predictor": str(sc["acc_predictor_checkpoint"]), "evaluate": bool(sc["evaluate"]),
          "checkpoint": str(args.get("checkpoint")) if sc["evaluate"] else None,
          "export": bool(sc["export"])}
    return json.loads(json.dumps(fp))


def _done(info_path: Path, fp: Mapping[str, Any]) -> dict | None:
    if not info_path.is_file():
        return None
    try:
        info = read_json(info_path)
    except Exception:  # noqa: BLE001 (an unreadable old result is redone)
        return None
    return info if info.get("fingerprint") == fp else None


def run_search(run: Run, backend: Any, overwrite: bool = False) -> list[dict]:
    """Run the sweep; returns the info dicts (on every rank)."""
    cfg, args = run.cfg, run.args()
    spec = run.spec(args)
    sc = settings = cfg.search_config
    constraints = settings.sweep()
    check_constraints(spec, constraints, file=run.path)
    predictor = load_search_predictor(run, spec)
    evaluate = bool(sc["evaluate"])
    supernet = provider = None
    if evaluate:
        provider = DataProvider(args, spec.image_sizes, backend.rank, backend.size)
        supernet = run.supernet(args, provider.n_classes, load=True).to(backend.device)
        n_classes = provider.n_classes
    else:
        n_classes = run.n_classes(args)
        if sc["export"] and backend.is_main:
            log.info("predictor-only search: no supernet weights, so the found subnets are not exported")
    finder = EvolutionFinder(spec, predictor.predict, settings)
    res_dir = run.search_dir
    if backend.is_main:
        log.info("search %s: %d constraints %s, population %d, %d generations, seed %d, %s",
                 spec.name, len(constraints), [f"{c:,}" for c in constraints],
                 settings.population_size, settings.generations, settings.seed,
                 "with evaluation" if evaluate else "predictor only")
    infos = []
    for c in constraints:
        infos.append(_one_constraint(cfg, spec, c, settings, args, finder, supernet, provider,
                                     n_classes, backend, overwrite))
    if backend.is_main:
        run = run_from_infos(spec.name, infos, res_dir)
        for p in write_summary(res_dir, run):
            log.info("wrote %s", p)
    backend.barrier()
    return infos


def _one_constraint(cfg: Mapping[str, Any], spec: ModelSpec, c: int, settings: SearchSettings,
                    args: Mapping[str, Any], finder: EvolutionFinder, supernet: Any, provider: Any,
                    n_classes: int, backend: Any, overwrite: bool) -> dict:
    sc = cfg["search_config"]
    out = constraint_dir(sc.res_dir, c)
    fp = fingerprint(cfg, spec, c, settings, args)
    previous = None if overwrite or not backend.is_main else _done(out / INFO_NAME, fp)
    previous = backend.broadcast_object(previous)
    if previous is not None:
        if backend.is_main:
            log.info("constraint %s: already done (%s), skipping", f"{c:,}", out / INFO_NAME)
        return previous
    result = finder.search(c, progress=True) if backend.is_main else None
    result = SearchResult.from_dict(backend.broadcast_object(result.to_dict() if result else None))
    best = result.best
    info: dict[str, Any] = {"predicted_accuracy": best.accuracy, "real_accuracy": None,
                            "peak_memory": int(best.peak), "config": best.config.to_dict()}
    report = subnet_report(spec, best.config, n_classes)
    if not report["peak_memory"] == best.peak <= c:
        raise RuntimeError(f"search returned a subnet with peak {best.peak} over the constraint {c}")
    evaluation = None
    if supernet is not None:
        evaluation = evaluate_subnet(supernet, best.config, provider, backend, split="test",
                                     time_forward=True)
        info["real_accuracy"] = evaluation.top1
    info.update({"memory_history": report["memory_history"], "flops": report["flops"],
                 "avg_forward_time": evaluation.avg_forward_time if evaluation else None,
                 "model": spec.name, "constraint": c, "params": report["params"],
                 "top5": evaluation.top5 if evaluation else None,
                 "n_images": evaluation.n_images if evaluation else 0,
                 "search_seconds": result.seconds, "n_scored": result.n_scored,
                 "history": result.history, "operator_stats": result.to_dict()["stats"],
                 "units": UNITS, "fingerprint": fp})
    if backend.is_main:
        _write_outputs(spec, info, report, out, supernet, bool(sc["export"]), n_classes, c)
        _log_result(info)
    backend.barrier()
    return info


def _write_outputs(spec: ModelSpec, info: dict, report: Mapping[str, Any], out: Path, supernet: Any,
                   export: bool, n_classes: int, c: int) -> None:
    cfg = SubnetConfig.from_dict(info["config"])
    draw_subnet_plots(spec, cfg, out, report, n_classes, constraint=c, accuracy=info["real_accuracy"])
    if export and supernet is not None:
        info["export"] = [p.name for p in export_subnet(supernet, cfg, out / EXPORT_NAME)]
    write_json(out / INFO_NAME, info)


def _log_result(info: Mapping[str, Any]) -> None:
    real = info["real_accuracy"]
    measured = (f", measured top-1 {100 * real:.2f}% on {info['n_images']:,} images, "
                f"{1e3 * info['avg_forward_time']:.1f} ms/batch") if real is not None else ""
    log.info("constraint %s: predicted top-1 %.2f%%, peak %s elements, %.1f MMACs, %.1f s search%s",
             f"{info['constraint']:,}", 100 * info["predicted_accuracy"], f"{info['peak_memory']:,}",
             info["flops"], info["search_seconds"], measured)
