"""``eval_and_search.py --mode search``: the constraint sweep (docs/design.md#search-space, fixed
per docs/design.md#departures-from-the-reference).

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

Resume: a constraint whose ``info.json`` records the same search is not searched again. The
fingerprint (:func:`fingerprint`) holds the model, the constraint, the search and fitness
settings, the predictor, the measured dataset of the robust fitness and (with evaluation) the
supernet checkpoint *by content* (:mod:`moofa.fingerprint`), the data (its image lists with sizes and
mtimes, :func:`moofa.data.folder.data_fingerprint`) and BN-calibration settings,
and the answer of the previous (smaller) budget that seeded this one. When an existing result
records other inputs the run stops at once with exit 2, naming what changed; ``overwrite=True``
(``--overwrite``) redoes every constraint instead. A result whose inputs agree but whose previous
budget's answer differs (that budget was redone) is searched again. With ``evaluate: false``
neither the supernet checkpoint nor the dataset is read, and ``real_accuracy`` is null.
The re-ranking measurements go to ``acc_dataset_path`` after the last budget; a resumed sweep
re-queues those of the budgets it skips (their ``info.json``) and appends only rows the file does
not hold yet (:func:`append_measurements`): each is there exactly once, interrupted or not.

Before any work rank 0 checks ``res_dir`` writable, takes its lock (:class:`moofa.lock.OutputLock`:
a second search into the same folder stops with exit 2 naming the first one's pid and host) and
removes temporary files of writes a killed run left there.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from moofa import preempt
from moofa.config import AnyArgs, RunConfig, SearchSettings
from moofa.data import DataProvider
from moofa.data.folder import data_fingerprint
from moofa.deploy import DEPLOY_NAME, deploy_exported, require_executorch
from moofa.deploy.ethosu import ARENA, LOWERING
from moofa.efficiency import MemoryOptions
from moofa.efficiency.limits import Limits, violations
from moofa.errors import CheckpointError, ConfigError, on_main_rank
from moofa.fingerprint import Inputs, Policy, file_fingerprint, model_identity, resolve
from moofa.io import clean_stale_temps, require_file
from moofa.lock import OutputLock
from moofa.measurement.evaluate import EvalResult, calibrate_subnet, evaluate_subnet
from moofa.measurement.meter import SubnetMeter
from moofa.measurement.report import SubnetReport, draw_subnet_plots, subnet_report, units
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.models.subnet_file import export_subnet
from moofa.models.supernet import Supernet
from moofa.predictor import AccuracyPredictor
from moofa.predictor.create import subnet_record
from moofa.predictor.dataset import append_records, read_dataset
from moofa.records import SearchInfo
from moofa.run import INFO_NAME, Run, constraint_dir
from moofa.search.evolution import EvolutionFinder, Individual, SearchResult, check_constraints, search_budget
from moofa.search.results import format_prediction, series_from_infos, write_summary
from moofa.search.robust import FitnessSettings, RobustFitness
from moofa.search.target import TARGET_KEYS, compile_answer, random_weights_net, target_table, with_target_limits
from moofa.stats import Comparison, PerImage, compare_stored, per_image_record

log = logging.getLogger(__name__)
EXPORT_NAME = "subnet.pth.tar"
RERANK_SOURCE = "search re-ranking"  # the ``source`` of the dataset rows a sweep appends


def load_search_predictor(run: Run, spec: ModelSpec, n_classes: int | None = None):
    """The accuracy predictor of ``search_config.acc_predictor_checkpoint`` on the CPU (the
    search scores batches of at most population_size configs, too small to gain from a GPU).
    Its FLOPs input uses the class count it was trained with (recorded in our checkpoints); a
    checkpoint that does not record it uses ``n_classes`` (the run's data), as dataset creation
    did."""
    path = run.predictor_file
    if path is None:
        raise ConfigError("no accuracy predictor checkpoint given", file=run.path,
                          key="search_config.acc_predictor_checkpoint")
    pred = AccuracyPredictor.load(path, spec, device="cpu")
    if pred.recorded_model is None:
        log.warning("%s records no model (reference format): cannot check that it was trained for "
                    "%s; make sure it was (a predictor of another model with the same input size "
                    "loads but predicts nonsense)", path, spec.name)
    if n_classes is not None:
        set_flops_classes(pred, n_classes)
    return pred


def set_flops_classes(pred: Any, n_classes: int) -> None:
    """Give a checkpoint that does not record its FLOPs class count the data's ``n_classes``;
    one that does keeps its own (with a warning when the data has another)."""
    if "flops" not in pred.extra_features:
        return
    if not getattr(pred, "n_classes_recorded", False):
        pred.n_classes = int(n_classes)
    elif pred.n_classes != n_classes:
        log.warning("the predictor was trained with the FLOPs of a %d-class network, the data has %d "
                    "classes; the search keeps the predictor's %d", pred.n_classes, n_classes,
                    pred.n_classes)


def load_measured(cfg: RunConfig, spec: ModelSpec):
    """The measured subnets of ``search_config.acc_dataset_path`` (None, with a warning, when
    the file does not exist: the robust fitness then only subtracts the ensemble spread)."""
    path = Path(cfg.search_config.acc_dataset_path)
    if not path.exists():
        log.warning("no predictor dataset at %s: the search cannot check its predictions against "
                    "measured subnets (search_config.acc_dataset_path)", path)
        return None
    return read_dataset(path, spec)


def search_inputs(cfg: RunConfig, spec: ModelSpec, args: AnyArgs,
                  predictor: Any = None) -> dict[str, Any]:
    """The inputs of a sweep by content: the model, the predictor file (and the model it
    records), the measured dataset the robust fitness reads, with a target the latency table it
    predicts the chip's figures with and, with evaluation, the supernet checkpoint and the data
    settings."""
    sc = cfg.search_config
    pred = dict(file_fingerprint(sc.acc_predictor_checkpoint) or {})  # the search needs a predictor
    pred["model"] = getattr(predictor, "recorded_model", None)
    out: dict[str, Any] = {"model_spec": model_identity(spec), "predictor": pred, "dataset": None}
    data = Path(sc.acc_dataset_path)
    if sc.fitness == "robust" and data.is_file():
        out["dataset"] = measured_identity(data)
    if sc.target is not None:  # a rebuilt or upgraded table changes the candidates
        table = json.dumps(target_table(sc, spec, cfg.path).to_dict(), sort_keys=True)
        out["latency_table"] = hashlib.sha256(table.encode()).hexdigest()
        out["lowering"] = LOWERING  # the answer's compiled figures depend on how it is lowered
        out["arena"] = ARENA  # and on the arena Vela is given
    if sc.evaluate:
        ckpt = args.checkpoint
        if ckpt:
            require_file(ckpt, "checkpoint file", "args.checkpoint", CheckpointError)
        out["checkpoint"] = file_fingerprint(ckpt) if ckpt else None
        out["data"] = {**data_fingerprint(args), "bn_calib_images": args.bn_calib_images,
                       "bn_calib_batch_size": args.bn_calib_batch_size}
    return out


def measured_identity(path: Path) -> dict[str, Any]:
    """The measured dataset by content, without the re-ranking rows a sweep appends to it
    (:data:`RERANK_SOURCE`): the sweep's own appends do not make its finished results stale,
    while any other change of the data does."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for line in fh:
            if f'"source": "{RERANK_SOURCE}"'.encode() not in line:
                h.update(line.rstrip(b"\r\n") + b"\n")
                n += 1
    return {"path": str(path), "records": n, "sha256": h.hexdigest()}


def fingerprint(cfg: RunConfig, spec: ModelSpec, constraint: int,
                settings: SearchSettings, args: AnyArgs,
                inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies one constraint's result (JSON-normalised), for resuming: ``inputs`` is
    :func:`search_inputs` (computed when None). The previous budget's answer is added per
    constraint (key ``previous``)."""
    sc, dc = cfg.search_config, cfg.dataset_config
    inputs = search_inputs(cfg, spec, args) if inputs is None else inputs
    formats = list(sc.export)
    fp = {"model": spec.name, "constraint": constraint, "settings": settings.to_dict(),
          "evaluate": sc.evaluate,
          # the default formats keep the fingerprints of results written before formats existed
          "export": bool(formats) if formats in ([], ["subnet", "onnx"]) else formats,
          "fitness": FitnessSettings.from_config(sc).to_dict(),
          "rerank": ({"top_k": sc.rerank_top_k, "split": dc.eval_split,
                      "eval_images": dc.eval_images} if sc.evaluate else None),
          **inputs}
    options = MemoryOptions.from_config(cfg)
    if not options.is_reference:  # the reference's memory model and no extra limit: as before
        fp["memory"] = options.to_dict()
    if sc.max_mmacs is not None or sc.max_params is not None:
        fp["limits"] = {"max_mmacs": sc.max_mmacs, "max_params": sc.max_params}
    if sc.target is not None:  # the chip's limits and how the answer is compiled
        fp["target"] = {k: sc[k] for k in ("target", *TARGET_KEYS, "latency_table", "compile_tries")}
    if deploys(sc, constraint):
        fp["deploy"] = cfg.deploy.as_dict()
    return json.loads(json.dumps(fp))


def deploys(sc: SearchSettings, constraint: float) -> bool:
    """Whether the subnet of ``constraint`` gets the int8 ExecuTorch export (``executorch`` in
    ``search_config.export`` and the constraint in ``deploy_constraints``, null = all)."""
    chosen = sc.deploy_constraints
    return "executorch" in sc.export and (chosen is None or
                                             int(round(constraint)) in {int(round(c)) for c in chosen})


def _existing(info_path: Path) -> SearchInfo | None:
    if not info_path.is_file():
        return None
    try:
        return SearchInfo.read(info_path)
    except ConfigError:  # a newer moofa's result: stop rather than overwrite it
        raise
    except Exception:  # noqa: BLE001 (an unreadable old result is redone)
        return None


def check_finished(res_dir: str | Path, fps: Mapping[int, Inputs], overwrite: bool = False) -> None:
    """Stop (:class:`~moofa.errors.MoofaInputError`, exit 2) when a finished result of ``res_dir`` records
    other inputs than ``fps[c]`` (the previous budget's answer aside, which is derived), naming
    its file and what changed; ``overwrite`` means every result is redone anyway."""
    # --overwrite redoes every budget (nothing to check); otherwise other inputs stop the sweep
    policy = Policy.REDO if overwrite else Policy.REFUSE
    if policy is Policy.REDO:
        return
    for c, fp in fps.items():
        path = constraint_dir(res_dir, c) / INFO_NAME
        info = _existing(path)
        if info is None:
            continue
        # a result without a fingerprint compares as recording nothing: every input differs
        recorded = Inputs.of(info.fingerprint or {}).without("previous")
        if recorded.lacks_images(fp):
            log.warning("%s records no image list (written before images were fingerprinted): reused "
                        "without checking its images; --overwrite redoes it", path)
        resolve(f"this search result (constraint {c:,})", recorded, fp, policy, file=path,
                restart="rerun with --overwrite to redo the search, or choose another search_config.res_dir")


def _done(info_path: Path, fp: Inputs) -> SearchInfo | None:
    """The finished result at ``info_path`` when it records ``fp`` (previous answer included);
    a stale one is redone (Policy.REDO: check_finished refused the other inputs before)."""
    info = _existing(info_path)
    if info is None:
        return None
    recorded = Inputs.unrecorded() if info.fingerprint is None else Inputs.of(info.fingerprint)
    return info if resolve("this search result", recorded, fp, Policy.REDO, file=info_path).reuse else None


class _Context:
    """What the constraints of one sweep share (on every rank; search state on rank 0)."""

    def __init__(self, run: Run, spec: ModelSpec, backend: Any, predictor: Any,
                 inputs: dict[str, Any]) -> None:
        cfg = run.cfg
        sc = cfg.search_config
        self.cfg, self.spec, self.backend, self.sc = cfg, spec, backend, sc
        self.settings: SearchSettings = sc
        self.fitness_settings = FitnessSettings.from_config(sc)
        self.args = run.args()
        self.evaluate = sc.evaluate
        self.top_k = sc.rerank_top_k
        # the measuring parts: set when search_config.evaluate (see measuring())
        self.supernet: Supernet | None = None
        self.provider: DataProvider | None = None
        self.meter: SubnetMeter | None = None
        if self.evaluate:
            self.provider = DataProvider(self.args, spec.image_sizes, backend.rank, backend.size)
            self.supernet = run.supernet(self.args, self.provider.n_classes, load=True).to(backend.device)
            self.n_classes = self.provider.n_classes
            whole = self.provider if backend.size == 1 else \
                DataProvider(self.args, spec.image_sizes, 0, 1)
            dc = cfg.dataset_config
            self.meter = SubnetMeter(self.supernet, whole, dc.eval_images, dc.eval_split)
        else:
            self.n_classes = run.n_classes(self.args)
            if sc.export and backend.is_main:
                log.info("predictor-only search: no supernet weights, so the found subnets are not exported")
        self.predictor, self.inputs = predictor, inputs
        set_flops_classes(predictor, self.n_classes)  # the data's, once the data is read
        self.table = target_table(sc, spec, cfg.path)  # Ethos-U latency table or None
        self.limits = with_target_limits(Limits.from_config(cfg, self.n_classes), sc, spec, cfg.path)
        measured = load_measured(cfg, spec) if self.fitness_settings.robust else None
        self.fitness = RobustFitness(self.predictor, measured, self.fitness_settings, self.limits)
        self.finder = EvolutionFinder(spec, self.fitness, self.settings, limits=self.limits)
        self.selection_measured: dict[tuple, float] = {}  # canonical config -> selection top-1
        self.new_records: list[dict] = []

    def measuring(self) -> tuple[Supernet, DataProvider, SubnetMeter]:
        """The supernet, its data and the selection-split meter of a sweep that evaluates
        (search_config.evaluate); RuntimeError in a predictor-only sweep."""
        if self.supernet is None or self.provider is None or self.meter is None:
            raise RuntimeError("predictor-only search (search_config.evaluate is false): nothing is measured")
        return self.supernet, self.provider, self.meter

    def key(self, config: SubnetConfig) -> tuple:
        c = config.canonical(self.spec)
        return (c.ks, c.e, c.d, c.image_size)

    def dataset_accuracy(self, config: SubnetConfig) -> float | None:
        """The dataset's (or this sweep's) selection measurement of ``config``, if any."""
        k = self.key(config)
        if k in self.selection_measured:
            return self.selection_measured[k]
        if self.fitness.has_data:
            est = self.fitness([config])
            if est.measured[0]:
                return float(est.mean[0])
        return None


def run_search(run: Run, backend: Any, overwrite: bool = False) -> list[SearchInfo]:
    """Run the sweep; returns the info.json records (on every rank)."""
    cfg, args = run.cfg, run.args()
    spec = run.spec(args)
    sc = cfg.search_config
    constraints = sc.sweep()
    check_constraints(spec, constraints, file=run.path,
                      limits=with_target_limits(Limits.from_config(cfg, run.n_classes(args)), sc, spec, run.path))
    if "executorch" in sc.export and sc.evaluate:
        require_executorch()  # before any search, not after the first one
    res_dir = run.search_dir
    lock = OutputLock(res_dir, "search", key="search_config.res_dir")

    def take_folder() -> dict[str, Any]:  # writable, ours, tidy, same inputs: before any long work
        lock.acquire()
        clean_stale_temps(folders=[res_dir], recursive=True)
        inputs = search_inputs(cfg, spec, args, predictor)
        check_finished(res_dir, {c: Inputs.of(fingerprint(cfg, spec, c, sc, args, inputs))
                                 for c in constraints}, overwrite)
        return inputs

    try:
        # the FLOPs input's class count is the dataset's, as in dataset creation
        predictor = load_search_predictor(run, spec, run.n_classes(args))
        inputs = on_main_rank(backend, take_folder)
        return _sweep(run, spec, backend, overwrite, constraints, predictor, inputs)
    finally:
        lock.release()


def _sweep(run: Run, spec: ModelSpec, backend: Any, overwrite: bool,
           constraints: list[int], predictor: Any, inputs: dict[str, Any]) -> list[SearchInfo]:
    sc = run.cfg.search_config
    ctx = _Context(run, spec, backend, predictor, inputs)
    res_dir = run.search_dir
    if backend.is_main:
        s = ctx.settings
        lim = ctx.limits
        log.info("search %s: %d constraints %s (%s), population %d, %d generations, seed %d, fitness %s "
                 "(%d measured subnets), %s%s", spec.name, len(constraints), [f"{c:,}" for c in constraints],
                 lim.options.describe(), s.population_size, s.generations, s.seed, sc.fitness,
                 len(ctx.fitness.configs),
                 f"re-ranking the top {ctx.top_k} by measurement on {ctx.measuring()[2].description}"
                 if ctx.evaluate else "predictor only",
                 f"; max_mmacs {lim.max_mmacs}, max_params {lim.max_params}" if lim.extra else "")
    infos: list[SearchInfo] = []
    for c in constraints:  # ascending: each budget starts from the previous answer
        preempt.progress("budget", len(infos) + 1, len(constraints), f"constraint {c:,}")
        infos.append(_one_constraint(ctx, c, infos[-1] if infos else None, overwrite))
    if backend.is_main and ctx.new_records and sc.append_measurements:
        path = Path(sc.acc_dataset_path)
        if path.suffix.lower() == ".jsonl":
            n = append_measurements(path, ctx.new_records, spec)
            log.info("appended %d re-ranking measurement(s) to %s (%d already there; retrain the "
                     "predictor and search again for the next round)", n, path, len(ctx.new_records) - n)
        else:
            log.warning("re-ranking measurements not appended: %s is not a .jsonl dataset", path)
    if backend.is_main:
        series = series_from_infos(spec.name, infos, res_dir)
        for p in write_summary(res_dir, series):
            log.info("wrote %s", p)
    backend.barrier()
    return infos


def _record_key(rec: Mapping[str, Any]) -> str:
    """A dataset row by content (key order aside): the same measurement gives the same key."""
    return json.dumps(rec, sort_keys=True)


def append_measurements(path: Path, records: list[dict], spec: ModelSpec) -> int:
    """Append to ``path`` the re-ranking ``records`` (:data:`RERANK_SOURCE` rows) that it does not
    hold yet (:func:`_record_key`); returns how many were appended. A resumed sweep re-queues the
    measurements of the budgets it skips (their ``info.json`` ``rerank`` rows), so each one is in
    the dataset exactly once whether the sweep was killed before, during or after its append."""
    have: set[str] = set()
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("source") == RERANK_SOURCE:
                    have.add(_record_key(rec))
    new = []
    for rec in records:
        key = _record_key(rec)
        if key not in have:
            have.add(key)
            new.append(rec)
    return append_records(path, new, spec)


def _rerank_record(ctx: _Context, config: SubnetConfig, accuracy: float) -> dict:
    """The dataset row of one re-ranking measurement (selection top-1, a fraction)."""
    return dict(subnet_record(ctx.spec, config, accuracy, ctx.n_classes), source=RERANK_SOURCE)


def _measure(ctx: _Context, configs: list[SubnetConfig]) -> list[float]:
    """Selection-split top-1 of ``configs``, batched across ranks: in round t rank k measures
    config t * world + k on the whole selection subset (no reduction needed)."""
    b = ctx.backend
    meter = ctx.measuring()[2]
    out: list[float] = []
    for start in range(0, len(configs), b.size):
        mine = start + b.rank
        acc = meter.accuracy(configs[mine]) if mine < len(configs) else None
        out += [a for a in b.allgather_object(acc) if a is not None]
    return out[:len(configs)]


def _rerank(ctx: _Context, c: int, found: Individual, top: list[Individual],
            previous: SearchInfo | None, baseline: SubnetConfig | None
            ) -> tuple[SubnetConfig, list[dict]]:
    """Measure the top candidates on the selection split; return the best measured config among
    them, the previous budget's answer and ``baseline`` (the best measured subnet of the dataset),
    and the measured rows."""
    pool: list[tuple[SubnetConfig, float | None, dict]] = []
    seen: set = set()

    def add(cfg: SubnetConfig, row: dict) -> None:
        k = ctx.key(cfg)
        if k not in seen:
            seen.add(k)
            pool.append((cfg, ctx.dataset_accuracy(cfg), row))

    if previous is not None:
        add(SubnetConfig.from_dict(previous.config), {"source": "previous budget's answer"})
    if baseline is not None:
        add(baseline, {"source": "best measured subnet of the dataset"})
    for ind in [found] + top[:ctx.top_k]:
        add(ind.config, {"source": "search", "predicted_accuracy": ind.predicted,
                         "predicted_std": ind.std, "fitness": ind.accuracy})
    todo = [i for i, (_, acc, _) in enumerate(pool) if acc is None]
    measured = _measure(ctx, [pool[i][0] for i in todo])
    for i, acc in zip(todo, measured):
        cfg = pool[i][0]
        pool[i] = (cfg, acc, pool[i][2])
        ctx.selection_measured[ctx.key(cfg)] = acc

        ctx.new_records.append(_rerank_record(ctx, cfg, acc))
    rows = []
    for i, (cfg, selection, row) in enumerate(pool):
        rows.append(dict(row, config=cfg.to_dict(), selection_accuracy=selection, newly_measured=i in todo))
    best = max(range(len(pool)), key=lambda i: (pool[i][1], -i))  # ties: the earlier entry
    return pool[best][0], rows


def _baseline(ctx: _Context, c: int) -> dict | None:
    i = ctx.fitness.best_measured(c)
    if i is None:
        return None
    cfg = ctx.fitness.configs[i]
    return {"config": cfg.to_dict(), "peak_memory": int(ctx.fitness.peaks[i]),
            "dataset_accuracy": float(ctx.fitness.accuracies[i]), "real_accuracy": None}


def _one_constraint(ctx: _Context, c: int, previous: SearchInfo | None, overwrite: bool) -> SearchInfo:
    """One budget as steps: the finished result when its inputs are the same, else search ->
    re-rank (measured on the selection images) -> compile for the target -> measure on the test
    images -> record -> write."""
    out = constraint_dir(ctx.sc.res_dir, c)
    fp = fingerprint(ctx.cfg, ctx.spec, c, ctx.settings, ctx.args, ctx.inputs)
    fp["previous"] = None if previous is None else previous.config
    fp = json.loads(json.dumps(fp))
    if (done := _finished(ctx, c, out, fp, overwrite)) is not None:
        return done
    result, answer = _search(ctx, c, previous)
    baseline = _baseline(ctx, c)
    chosen = answer.config
    rerank: list[dict] = []
    if ctx.evaluate and ctx.top_k > 0:
        chosen, rerank = _rerank(ctx, c, answer, result.top, previous,
                                 None if baseline is None else SubnetConfig.from_dict(baseline["config"]))
    target = None
    if ctx.table is not None:  # the answer as compiled for the chip: the first candidate Vela says fits
        chosen, target = _compile_for_target(ctx, c, chosen, rerank, result, out)
    evaluation, outcomes = _measure_on_test(ctx, chosen, baseline) if ctx.evaluate else (None, None)
    info, report = _record(ctx, c, fp, result, answer, chosen, baseline, rerank, target, evaluation, outcomes)
    if ctx.supernet is not None and ctx.sc.export:  # export the weights as measured, not the baseline's BN
        calibrate_subnet(ctx.supernet, chosen, ctx.provider)
    if ctx.backend.is_main:
        _write_outputs(ctx.spec, info, report, out, ctx.supernet, list(ctx.sc.export), ctx.n_classes, c,
                       ctx.cfg if deploys(ctx.sc, c) else None)
        _log_result(info)
    ctx.backend.barrier()
    return info


def _finished(ctx: _Context, c: int, out: Path, fp: dict[str, Any], overwrite: bool) -> SearchInfo | None:
    """The budget's info.json when it was written from the inputs ``fp`` (every rank gets it); its
    newly measured re-ranking rows are queued again for the dataset (see append_measurements)."""
    done = None if overwrite or not ctx.backend.is_main else _done(out / INFO_NAME, Inputs.of(fp))
    done = ctx.backend.broadcast_object(done)
    if done is None:
        return None
    if ctx.backend.is_main:
        log.info("constraint %s: already done with the same inputs (%s), skipping", f"{c:,}", out / INFO_NAME)
    for row in done.rerank:
        if row.get("selection_accuracy") is not None:
            measured = SubnetConfig.from_dict(row["config"])
            ctx.selection_measured[ctx.key(measured)] = row["selection_accuracy"]
            if row.get("newly_measured"):  # re-queued: appended once, at the end (append_measurements)
                ctx.new_records.append(_rerank_record(ctx, measured, row["selection_accuracy"]))
    return done


def _search(ctx: _Context, c: int, previous: SearchInfo | None) -> tuple[SearchResult, Individual]:
    """The evolutionary search of budget ``c`` on rank 0 (seeded with the previous budget's
    answer and candidates), broadcast to every rank."""
    ctx.fitness.clear_cache()  # each budget scored as in an uninterrupted sweep (see clear_cache)
    payload = None
    if ctx.backend.is_main:
        prev_ind = prev_top = None
        if previous is not None:
            prev_ind = Individual.from_dict(previous.answer or {})
            prev_top = [Individual.from_dict(t) for t in previous.candidates]
        result, answer = search_budget(ctx.finder, c, prev_ind, prev_top or [], max(ctx.top_k, 10),
                                       progress=True)
        payload = (result.to_dict(), answer.to_dict())
    payload = ctx.backend.broadcast_object(payload)
    return SearchResult.from_dict(payload[0]), Individual.from_dict(payload[1])


def _measure_on_test(ctx: _Context, chosen: SubnetConfig, baseline: dict[str, Any] | None
                     ) -> tuple[EvalResult, PerImage | None]:
    """Top-1 of ``chosen`` on the test images and, with a ``baseline``, the baseline's on the same
    images (written into ``baseline``: ``real_accuracy``, ``real_difference``), with both per-image
    outcomes."""
    supernet, provider, _ = ctx.measuring()
    evaluation = evaluate_subnet(supernet, chosen, provider, ctx.backend, split="test", time_forward=True)
    outcomes = evaluation.per_image("real_accuracy", _test_images(ctx, evaluation))
    if baseline is not None:
        base_cfg = SubnetConfig.from_dict(baseline["config"])
        base_eval = evaluation if ctx.key(base_cfg) == ctx.key(chosen) else \
            evaluate_subnet(supernet, base_cfg, provider, ctx.backend, split="test")
        baseline["real_accuracy"] = base_eval.top1
        if outcomes is not None:
            outcomes = outcomes.merged(base_eval.per_image("baseline.real_accuracy"))
        versus = compare_stored(outcomes, "real_accuracy", outcomes, "baseline.real_accuracy")
        baseline["real_difference"] = versus.to_dict() if versus is not None else None
    return evaluation, outcomes


def _record(ctx: _Context, c: int, fp: dict[str, Any], result: SearchResult, answer: Individual,
            chosen: SubnetConfig, baseline: dict[str, Any] | None, rerank: list[dict], target: dict | None,
            evaluation: EvalResult | None, outcomes: PerImage | None) -> tuple[SearchInfo, SubnetReport]:
    """The budget's info.json record and the analytic report of ``chosen`` (checked against the
    budget and the limits once more)."""
    spec = ctx.spec
    est = ctx.fitness([chosen])
    limits = ctx.limits.with_memory(c)
    report = subnet_report(spec, chosen, ctx.n_classes, limits.options)
    if not report.peak_memory <= c or violations(spec, chosen, limits):
        raise RuntimeError(f"search returned a subnet over its limits: peak {report.peak_memory} "
                           f"(constraint {c}), {violations(spec, chosen, limits)}")
    selection = ctx.dataset_accuracy(chosen) if ctx.evaluate else None
    info = SearchInfo(
        predicted_accuracy=float(est.mean[0]), real_accuracy=evaluation.top1 if evaluation else None,
        peak_memory=int(report.peak_memory), config=chosen.to_dict(),
        predicted_std=float(est.std[0]), predicted_source=_predicted_source(ctx, est),
        predicted_interval=ctx.fitness.interval_of(chosen),
        selection_accuracy=selection,
        images=_images(ctx, evaluation), baseline=baseline, per_image=per_image_record(outcomes),
        answer=answer.to_dict() if ctx.key(chosen) == ctx.key(answer.config) else
        Individual(float(est.fitness[0]), chosen, int(report.peak_memory), float(est.mean[0]),
                   float(est.std[0]), float(est.distance[0]), bool(est.measured[0])).to_dict(),
        candidates=[t.to_dict() for t in result.top[:max(ctx.top_k, 10)]],
        rerank=rerank, fitness=ctx.fitness.describe(),
        distance_to_data=None if est.distance[0] == float("inf") else float(est.distance[0]),
        target=target,
        memory_history=report.memory_history, flops=report.flops,
        avg_forward_time=evaluation.avg_forward_time if evaluation else None,
        model=spec.name, constraint=c, params=report.params,
        top5=evaluation.top5 if evaluation else None,
        n_images=evaluation.n_images if evaluation else 0,
        search_seconds=result.seconds, n_scored=result.n_scored,
        history=result.history, operator_stats=result.to_dict()["stats"],
        memory_unit=limits.options.unit, memory_model=limits.options.to_dict(),
        limits=limits.to_dict(), units=units(limits.options), fingerprint=fp)
    return info, report


def _compile_for_target(ctx: _Context, c: float, chosen: SubnetConfig, rerank: list[dict], result: Any,
                        out: Path) -> tuple[SubnetConfig, dict]:
    """:func:`moofa.search.target.compile_answer` on rank 0 (candidates: the answer, then the
    re-ranked ones by measured accuracy, then the search's top), broadcast to every rank."""
    payload = None
    if ctx.backend.is_main:
        ranked = sorted((r for r in rerank if r.get("selection_accuracy") is not None),
                        key=lambda r: -r["selection_accuracy"])
        candidates = [chosen, *(SubnetConfig.from_dict(r["config"]) for r in ranked), *(t.config for t in result.top)]
        net_of: Callable[[SubnetConfig], nn.Module]
        if ctx.supernet is not None:
            supernet, provider, _ = ctx.measuring()

            def extracted(subnet: SubnetConfig) -> nn.Module:
                calibrate_subnet(supernet, subnet, provider)
                supernet.set_subnet(subnet)
                return supernet.get_active_subnet().cpu().eval()
            net_of = extracted
        else:
            net_of = random_weights_net(ctx.spec, ctx.n_classes)
        n_calib = ctx.cfg.deploy.calibration_images

        def calibration_of(r: int) -> list:
            if ctx.provider is None:  # predictor-only: seeded random images
                return [torch.randn(8, 3, r, r, generator=torch.Generator().manual_seed(0))]
            from moofa.deploy import calibration_batches
            return calibration_batches(ctx.provider, r, n_calib)

        d = ctx.cfg.deploy
        cfg, record = compile_answer(ctx.spec, ctx.sc, ctx.table, candidates, ctx.limits.with_memory(c), net_of,
                                     calibration_of, out, d.system_config, d.memory_mode)
        payload = (cfg.to_dict(), record)
    payload = ctx.backend.broadcast_object(payload)
    return SubnetConfig.from_dict(payload[0]), payload[1]


def _predicted_source(ctx: _Context, est: Any) -> str:
    if est.measured[0]:
        return f"measured: the subnet's accuracy in {ctx.sc.acc_dataset_path} (selection images)"
    if not ctx.fitness_settings.robust:
        return f"predicted: raw output of {ctx.sc.acc_predictor_checkpoint} (fitness: reference)"
    return (f"predicted: {ctx.sc.acc_predictor_checkpoint} calibrated by the measured subnets of "
            f"{ctx.sc.acc_dataset_path} (+- predicted_std)")


def _images(ctx: _Context, evaluation: Any) -> dict[str, Any]:
    """Which images each measured number of info.json comes from."""
    out: dict[str, Any] = {"selection_accuracy": None, "real_accuracy": None,
                           "baseline.dataset_accuracy": "the dataset's images (dataset_config.eval_split)"}
    if ctx.meter is not None:
        out["selection_accuracy"] = {"split": ctx.meter.split, "n_images": len(ctx.meter.indices),
                                     "description": ctx.meter.description}
        out["baseline.dataset_accuracy"] = out["selection_accuracy"]
    if evaluation is not None:
        out["real_accuracy"] = {"split": "test", "n_images": int(evaluation.n_images),
                                "description": _test_images(ctx, evaluation)}
        out["baseline.real_accuracy"] = out["real_accuracy"]
    return out


def _test_images(ctx: _Context, evaluation: Any) -> str:
    return f"{evaluation.n_images:,} images of the test split {ctx.measuring()[1].root / 'val'}"


def _write_outputs(spec: ModelSpec, info: SearchInfo, report: SubnetReport, out: Path, supernet: Any,
                   formats: list[str], n_classes: int, c: int, deploy_cfg: RunConfig | None) -> None:
    """Plots, the exported files of ``formats`` and, last, info.json. With ``deploy_cfg`` (the
    run config) the exported subnet also becomes int8/fp32 ExecuTorch programs in ``out``."""
    cfg = SubnetConfig.from_dict(info.config)
    draw_subnet_plots(spec, cfg, out, report, n_classes, constraint=c, accuracy=info.real_accuracy)
    if formats and supernet is not None:
        info.export = [p.name for p in export_subnet(supernet, cfg, out / EXPORT_NAME,
                                                      with_onnx="onnx" in formats)]
        if deploy_cfg is not None:
            # a budget whose answer is another budget's subnet file copies that budget's programs
            dep = deploy_exported(out / EXPORT_NAME, deploy_cfg, out,
                                  reuse_from=sorted(out.parent.glob("constraint_*")))
            info.deploy = dep.summary()
            info.int8_accuracy = dep.int8_accuracy
            info.export += [n for n in ("subnet_int8.pte", "subnet_fp32.pte", DEPLOY_NAME) if (out / n).is_file()]
            if dep.targets:  # Ethos-U programs: Vela's estimates
                info.export += [f"subnet_{t}.pte" for t in dep.targets]
    info.write(out / INFO_NAME)


def _log_result(info: SearchInfo) -> None:
    real = info.real_accuracy
    measured = (f", measured top-1 {100 * real:.2f}% on {info.n_images:,} test images, "
                f"{1e3 * (info.avg_forward_time or 0.0):.1f} ms/batch") if real is not None else ""
    base = info.baseline
    if base is not None:
        measured += f"; best subnet already measured: {100 * base['dataset_accuracy']:.2f}% (dataset)"
        if base.get("real_accuracy") is not None:
            measured += f", {100 * base['real_accuracy']:.2f}% on the test images"
        if base.get("real_difference"):
            d = Comparison.from_dict(base["real_difference"])
            measured += f" (found minus baseline {d.text()}, {d.verdict})"
    if info.deploy and info.deploy.get("int8_accuracy") is not None:
        dep = info.deploy
        measured += (f", int8 top-1 {100 * dep['int8_accuracy']:.2f}% (ExecuTorch), program "
                     f"{dep['pte_bytes']:,} bytes, planned activations {dep['runtime_memory_bytes']:,} bytes")
    log.info("constraint %s: top-1 %s, sd %.2f pp, peak %s %s, %.1f MMACs, %.1f s search%s",
             f"{info.constraint:,}", format_prediction(info.predicted_accuracy, info.predicted_interval,
                                                             info.predicted_source), 100 * (info.predicted_std or 0.0),
             f"{info.peak_memory:,}", info.memory_unit, info.flops, info.search_seconds, measured)
