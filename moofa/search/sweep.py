"""``eval_and_search.py --mode search``: the constraint sweep (SPEC 7.4-7.5, fixed per SPEC 10).

For each constraint of :func:`moofa.config.search_constraints` (checked against the model's exact
minimum first), rank 0 runs the evolutionary search and broadcasts the result; with
``search_config.evaluate`` (default) every rank then evaluates the found subnet after BN
re-calibration (counts all-reduced, forward time synchronised) and rank 0 writes
``<res_dir>/constraint_<int>/``: the memory histogram and architecture plots, the exported subnet
(``subnet.pth.tar`` [+ ``subnet.onnx``], ``search_config.export``) and, last, ``info.json``.
After the sweep rank 0 writes ``summary.csv``, ``summary.md`` and the accuracy plot.

Resume: a constraint whose ``info.json`` records the same search is not searched again. The
fingerprint (:func:`fingerprint`) holds the model, the constraint, the search settings, the
predictor and (with evaluation) the supernet checkpoint *by content* (:mod:`moofa.fingerprint`),
and the dataset and BN-calibration settings. When an existing result records another fingerprint
the run stops at once with exit 2, naming what changed; ``overwrite=True``
(``--overwrite``) redoes every constraint instead. With ``evaluate: false`` neither the supernet
checkpoint nor the dataset is read, and ``real_accuracy`` is null.

Before any work rank 0 checks ``res_dir`` writable, takes its lock (:class:`moofa.lock.OutputLock`:
a second search into the same folder stops with exit 2 naming the first one's pid and host) and
removes temporary files of writes a killed run left there.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moofa.config import last_task_args, search_constraints
from moofa.errors import CheckpointError, ConfigError, MoofaInputError, on_main_rank
from moofa.fingerprint import change_message, data_identity, file_fingerprint, model_identity, same
from moofa.io import clean_stale_temps, require_file, write_json
from moofa.lock import OutputLock
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.search.evolution import (
    EvolutionFinder,
    SearchResult,
    SearchSettings,
    check_constraints,
)
from moofa.search.report import (
    UNITS,
    draw_subnet_plots,
    expected_n_classes,
    load_supernet,
    subnet_report,
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
    predictor = AccuracyPredictor.load(path, spec, device="cpu")
    if predictor.recorded_model is None:
        log.warning("%s records no model (reference format): cannot check that it was trained for "
                    "%s; make sure it was (a predictor of another model with the same input size "
                    "loads but predicts nonsense)", path, spec.name)
    return predictor


def search_inputs(cfg: Mapping[str, Any], spec: ModelSpec, args: Mapping[str, Any],
                  predictor: Any = None) -> dict[str, Any]:
    """The inputs of a sweep by content: the model, the predictor file (and the model it
    records) and, with evaluation, the supernet checkpoint and the data settings."""
    sc = cfg["search_config"]
    pred = file_fingerprint(sc["acc_predictor_checkpoint"])
    pred["model"] = getattr(predictor, "recorded_model", None)
    out: dict[str, Any] = {"model_spec": model_identity(spec), "predictor": pred}
    if sc["evaluate"]:
        ckpt = args.get("checkpoint")
        if ckpt:
            require_file(ckpt, "checkpoint file", "args.checkpoint", CheckpointError)
        out["checkpoint"] = file_fingerprint(ckpt) if ckpt else None
        out["data"] = {**data_identity(args), "bn_calib_images": args.get("bn_calib_images"),
                       "bn_calib_batch_size": args.get("bn_calib_batch_size")}
    return out


def fingerprint(cfg: Mapping[str, Any], spec: ModelSpec, constraint: int,
                settings: SearchSettings, args: Mapping[str, Any],
                inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What identifies one constraint's result (JSON-normalised), for resuming: ``inputs`` is
    :func:`search_inputs` (computed when None)."""
    sc = cfg["search_config"]
    inputs = search_inputs(cfg, spec, args) if inputs is None else inputs
    fp = {"model": spec.name, "constraint": constraint, "settings": settings.to_dict(),
          "evaluate": bool(sc["evaluate"]), "export": bool(sc["export"]), **inputs}
    return json.loads(json.dumps(fp))


def _existing(info_path: Path) -> dict | None:
    """The info.json of a finished constraint, None when absent or unreadable (redone)."""
    if not info_path.is_file():
        return None
    try:
        return read_json(info_path)
    except Exception:  # noqa: BLE001 (an unreadable old result is redone)
        return None


def finished_results(res_dir: str | Path, fps: Mapping[int, Mapping[str, Any]],
                     overwrite: bool = False) -> dict[int, dict]:
    """``{constraint: info}`` of the constraints already done with fingerprint ``fps[c]``.
    A result with another fingerprint raises :class:`MoofaInputError` naming its file and what
    changed, unless ``overwrite`` (then it is redone)."""
    done = {}
    for c, fp in fps.items():
        path = constraint_dir(res_dir, c) / INFO_NAME
        info = _existing(path)
        if info is None or overwrite:
            continue
        if not same(info.get("fingerprint"), fp):
            raise MoofaInputError(change_message(
                f"this search result (constraint {c:,})", info.get("fingerprint"), fp,
                "rerun with --overwrite to redo the search, or choose another search_config.res_dir"),
                file=path)
        done[c] = info
    return done


def run_search(cfg: Mapping[str, Any], spec: ModelSpec, backend: Any,
               overwrite: bool = False) -> list[dict]:
    """Run the sweep; returns the info dicts (on every rank)."""
    sc = cfg["search_config"]
    constraints = search_constraints(cfg)
    check_constraints(spec, constraints, file=cfg.get("_path"))
    settings = SearchSettings.from_config(sc)
    args = last_task_args(cfg)
    res_dir = Path(sc["res_dir"])
    lock = OutputLock(res_dir, "search", key="search_config.res_dir")

    def take_folder() -> None:  # writable, ours, tidy: before any long work
        lock.acquire()
        clean_stale_temps(folders=[res_dir], recursive=True)

    on_main_rank(backend, take_folder)
    try:
        return _sweep(cfg, spec, backend, overwrite, constraints, settings, args)
    finally:
        lock.release()


def _sweep(cfg: Mapping[str, Any], spec: ModelSpec, backend: Any, overwrite: bool,
           constraints: list[int], settings: SearchSettings, args: Mapping[str, Any]) -> list[dict]:
    sc = cfg["search_config"]
    res_dir = Path(sc["res_dir"])
    predictor = load_search_predictor(cfg, spec)

    def check() -> tuple[dict, dict]:
        inputs = search_inputs(cfg, spec, args, predictor)
        fps = {c: fingerprint(cfg, spec, c, settings, args, inputs) for c in constraints}
        return fps, finished_results(res_dir, fps, overwrite)

    fps, done = on_main_rank(backend, check)  # before any long work
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
    finder = EvolutionFinder(spec, predictor.predict, settings)
    if backend.is_main:
        log.info("search %s: %d constraints %s, population %d, %d generations, seed %d, %s",
                 spec.name, len(constraints), [f"{c:,}" for c in constraints],
                 settings.population_size, settings.generations, settings.seed,
                 "with evaluation" if evaluate else "predictor only")
    infos = []
    for c in constraints:
        if c in done:
            if backend.is_main:
                log.info("constraint %s: already done with the same inputs (%s), skipping", f"{c:,}",
                         constraint_dir(res_dir, c) / INFO_NAME)
            infos.append(done[c])
            continue
        infos.append(_one_constraint(cfg, spec, c, fps[c], finder, supernet, provider,
                                     n_classes, backend))
    if backend.is_main:
        run = run_from_infos(spec.name, infos, res_dir)
        for p in write_summary(res_dir, run):
            log.info("wrote %s", p)
    backend.barrier()
    return infos


def _one_constraint(cfg: Mapping[str, Any], spec: ModelSpec, c: int, fp: Mapping[str, Any],
                    finder: EvolutionFinder, supernet: Any, provider: Any,
                    n_classes: int, backend: Any) -> dict:
    sc = cfg["search_config"]
    out = constraint_dir(sc["res_dir"], c)
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
        from moofa.search.export import export_subnet

        info["export"] = [p.name for p in export_subnet(supernet, cfg, out / EXPORT_NAME)]
    write_json(out / INFO_NAME, info)


def _log_result(info: Mapping[str, Any]) -> None:
    real = info["real_accuracy"]
    measured = (f", measured top-1 {100 * real:.2f}% on {info['n_images']:,} images, "
                f"{1e3 * info['avg_forward_time']:.1f} ms/batch") if real is not None else ""
    log.info("constraint %s: predicted top-1 %.2f%%, peak %s elements, %.1f MMACs, %.1f s search%s",
             f"{info['constraint']:,}", 100 * info["predicted_accuracy"], f"{info['peak_memory']:,}",
             info["flops"], info["search_seconds"], measured)
