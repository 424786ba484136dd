"""``eval_and_search.py --mode search``: the constraint sweep (SPEC 7.4-7.5, fixed per SPEC 10).

For each constraint of :func:`moofa.config.search_constraints` (checked against the model's exact
minimum first), rank 0 runs the evolutionary search and broadcasts the result; with
``search_config.evaluate`` (default) every rank then evaluates the found subnet after BN
re-calibration (counts all-reduced, forward time synchronised) and rank 0 writes
``<res_dir>/constraint_<int>/``: the memory histogram and architecture plots, the exported subnet
(``subnet.pth.tar`` [+ ``subnet.onnx``], ``search_config.export``; with ``executorch`` also
``subnet_int8.pte``, ``subnet_fp32.pte`` and ``deploy.json`` from :mod:`moofa.deploy`, for the
constraints of ``search_config.deploy_constraints``) and, last, ``info.json``.
After the sweep rank 0 writes ``summary.csv``, ``summary.md`` and the accuracy plot.
Budgets and peaks are in the unit of the ``memory:`` model (elements by default, else bytes);
``search_config.max_mmacs`` / ``max_params`` are checked up front (exit 2 naming the limit).

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

from moofa.config import last_task_args, search_constraints
from moofa.efficiency import MemoryOptions
from moofa.efficiency.limits import Limits, violations
from moofa.errors import ConfigError
from moofa.io import write_json
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.search.evolution import (
    EvolutionFinder,
    SearchResult,
    SearchSettings,
    check_constraints,
)
from moofa.search.report import (
    draw_subnet_plots,
    expected_n_classes,
    load_supernet,
    subnet_report,
    units,
)
from moofa.search.results import (
    INFO_NAME,
    constraint_dir,
    read_json,
    run_from_infos,
    write_summary,
)

log = logging.getLogger(__name__)
EXPORT_NAME = "subnet.pth.tar"


def load_search_predictor(cfg: Mapping[str, Any], spec: ModelSpec):
    """The accuracy predictor of ``search_config.acc_predictor_checkpoint`` on the CPU (the
    search scores batches of at most population_size configs, too small to gain from a GPU)."""
    from moofa.predictor import AccuracyPredictor

    path = cfg["search_config"]["acc_predictor_checkpoint"]
    if not path:
        raise ConfigError("no accuracy predictor checkpoint given", file=cfg.get("_path"),
                          key="search_config.acc_predictor_checkpoint")
    return AccuracyPredictor.load(path, spec, device="cpu")


def fingerprint(cfg: Mapping[str, Any], spec: ModelSpec, constraint: int,
                settings: SearchSettings, args: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies one constraint's result (JSON-normalised), for resuming."""
    sc = cfg["search_config"]
    formats = list(sc["export"])
    fp = {"model": spec.name, "constraint": constraint, "settings": settings.to_dict(),
          "predictor": str(sc["acc_predictor_checkpoint"]), "evaluate": bool(sc["evaluate"]),
          "checkpoint": str(args.get("checkpoint")) if sc["evaluate"] else None,
          # the reference's memory model, no extra limit and the default formats keep the
          # fingerprints that results written before these options existed carry
          "export": bool(formats) if formats in ([], ["subnet", "onnx"]) else formats}
    options = MemoryOptions.from_config(cfg)
    if not options.is_reference:
        fp["memory"] = options.to_dict()
    if sc.get("max_mmacs") is not None or sc.get("max_params") is not None:
        fp["limits"] = {"max_mmacs": sc.get("max_mmacs"), "max_params": sc.get("max_params")}
    if deploys(cfg, constraint):
        fp["deploy"] = dict(cfg["deploy"])
    return json.loads(json.dumps(fp))


def deploys(cfg: Mapping[str, Any], constraint: float) -> bool:
    """Whether the subnet of ``constraint`` gets the int8 ExecuTorch export (``executorch`` in
    ``search_config.export`` and the constraint in ``deploy_constraints``, null = all)."""
    sc = cfg["search_config"]
    chosen = sc.get("deploy_constraints")
    return "executorch" in sc["export"] and (chosen is None or
                                             int(round(constraint)) in {int(round(c)) for c in chosen})


def _done(info_path: Path, fp: Mapping[str, Any]) -> dict | None:
    if not info_path.is_file():
        return None
    try:
        info = read_json(info_path)
    except Exception:  # noqa: BLE001 (an unreadable old result is redone)
        return None
    return info if info.get("fingerprint") == fp else None


def run_search(cfg: Mapping[str, Any], spec: ModelSpec, backend: Any,
               overwrite: bool = False) -> list[dict]:
    """Run the sweep; returns the info dicts (on every rank)."""
    sc = cfg["search_config"]
    constraints = search_constraints(cfg)
    args = last_task_args(cfg)
    check_constraints(spec, constraints, file=cfg.get("_path"),
                      limits=Limits.from_config(cfg, expected_n_classes(args)))
    if "executorch" in sc["export"] and sc["evaluate"]:
        from moofa.deploy import require_executorch

        require_executorch()  # before any search, not after the first one
    settings = SearchSettings.from_config(sc)
    predictor = load_search_predictor(cfg, spec)
    evaluate = bool(sc["evaluate"])
    supernet = provider = None
    if evaluate:
        from moofa.data import DataProvider

        provider = DataProvider(args, spec.image_sizes, backend.rank, backend.size)
        supernet = load_supernet(spec, args, provider.n_classes).to(backend.device)
        n_classes = provider.n_classes
    else:
        n_classes = expected_n_classes(args)
        if sc["export"] and backend.is_main:
            log.info("predictor-only search: no supernet weights, so the found subnets are not exported")
    limits = Limits.from_config(cfg, n_classes)
    finder = EvolutionFinder(spec, predictor.predict, settings, limits=limits)
    res_dir = Path(sc["res_dir"])
    if backend.is_main:
        log.info("search %s: %d constraints %s (%s), population %d, %d generations, seed %d, %s%s",
                 spec.name, len(constraints), [f"{c:,}" for c in constraints], limits.options.describe(),
                 settings.population_size, settings.generations, settings.seed,
                 "with evaluation" if evaluate else "predictor only",
                 f"; max_mmacs {limits.max_mmacs}, max_params {limits.max_params}" if limits.extra else "")
    infos = []
    for c in constraints:
        infos.append(_one_constraint(cfg, spec, c, settings, args, finder, supernet, provider,
                                     n_classes, backend, overwrite, limits))
    if backend.is_main:
        run = run_from_infos(spec.name, infos, res_dir)
        for p in write_summary(res_dir, run):
            log.info("wrote %s", p)
    backend.barrier()
    return infos


def _one_constraint(cfg: Mapping[str, Any], spec: ModelSpec, c: int, settings: SearchSettings,
                    args: Mapping[str, Any], finder: EvolutionFinder, supernet: Any, provider: Any,
                    n_classes: int, backend: Any, overwrite: bool, limits: Limits | None = None) -> dict:
    sc = cfg["search_config"]
    out = constraint_dir(sc["res_dir"], c)
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
    limits = (limits or Limits(n_classes=n_classes)).with_memory(c)
    report = subnet_report(spec, best.config, n_classes, limits.options)
    if not report["peak_memory"] == best.peak <= c or violations(spec, best.config, limits):
        raise RuntimeError(f"search returned a subnet over its limits: peak {best.peak} (constraint {c}), "
                           f"{violations(spec, best.config, limits)}")
    evaluation = None
    if supernet is not None:
        from moofa.training.evaluate import evaluate_subnet

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
                 "memory_unit": limits.options.unit, "memory_model": limits.options.to_dict(),
                 "limits": limits.to_dict(), "units": units(limits.options), "fingerprint": fp})
    if backend.is_main:
        _write_outputs(spec, info, report, out, supernet, list(sc["export"]), n_classes, c,
                       cfg if deploys(cfg, c) else None)
        _log_result(info)
    backend.barrier()
    return info


def _write_outputs(spec: ModelSpec, info: dict, report: Mapping[str, Any], out: Path, supernet: Any,
                   formats: list[str], n_classes: int, c: int, deploy_cfg: Mapping[str, Any] | None) -> None:
    """Plots, the exported files of ``formats`` and, last, info.json. With ``deploy_cfg`` (the
    run config) the exported subnet also becomes int8/fp32 ExecuTorch programs in ``out``."""
    cfg = SubnetConfig.from_dict(info["config"])
    draw_subnet_plots(spec, cfg, out, report, n_classes, constraint=c, accuracy=info["real_accuracy"])
    if formats and supernet is not None:
        from moofa.search.export import export_subnet

        info["export"] = [p.name for p in export_subnet(supernet, cfg, out / EXPORT_NAME,
                                                         with_onnx="onnx" in formats)]
        if deploy_cfg is not None:
            from moofa.deploy import DEPLOY_NAME, deploy_exported

            dep = deploy_exported(out / EXPORT_NAME, deploy_cfg, out)
            info["deploy"] = {k: dep[k] for k in ("int8_accuracy", "fp32_accuracy", "n_images", "pte_bytes",
                                                  "runtime_memory_bytes", "fp32_pte_bytes",
                                                  "fp32_runtime_memory_bytes", "analytic_peak_memory",
                                                  "analytic_unit", "analytic_activations_elements")}
            info["deploy"]["file"] = DEPLOY_NAME
            info["int8_accuracy"] = dep["int8_accuracy"]
            info["export"] += [n for n in ("subnet_int8.pte", "subnet_fp32.pte", DEPLOY_NAME)]
    write_json(out / INFO_NAME, info)


def _log_result(info: Mapping[str, Any]) -> None:
    real = info["real_accuracy"]
    measured = (f", measured top-1 {100 * real:.2f}% on {info['n_images']:,} images, "
                f"{1e3 * info['avg_forward_time']:.1f} ms/batch") if real is not None else ""
    if info.get("deploy"):
        d = info["deploy"]
        measured += (f", int8 top-1 {100 * d['int8_accuracy']:.2f}% (ExecuTorch), program "
                     f"{d['pte_bytes']:,} bytes, planned activations {d['runtime_memory_bytes']:,} bytes")
    log.info("constraint %s: predicted top-1 %.2f%%, peak %s %s, %.1f MMACs, %.1f s search%s",
             f"{info['constraint']:,}", 100 * info["predicted_accuracy"], f"{info['peak_memory']:,}",
             info.get("memory_unit", "elements"), info["flops"], info["search_seconds"], measured)
