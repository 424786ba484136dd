"""Balanced predictor-dataset creation: run a :class:`moofa.predictor.plan.Plan` (subnets drawn
evenly over peak-memory bins) by measuring each subnet's accuracy and appending a JSON Lines record
per subnet; resumable, rank-parallel, with its inputs recorded (the recipe) and the
reference-format pickle written from the records. The method, file formats and guarantees are in
docs/dataset.md.
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from moofa import preempt
from moofa.config import AnyArgs, DatasetSettings
from moofa.data.folder import data_fingerprint
from moofa.efficiency import MemoryOptions, flops, peak_memory
from moofa.errors import on_main_rank
from moofa.fingerprint import (
    Inputs,
    Policy,
    Verdict,
    file_fingerprint,
    model_identity,
    read_fingerprint,
    resolve,
    write_fingerprint,
)
from moofa.io import atomic_open
from moofa.measurement.meter import SubnetMeter
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.predictor.dataset import append_records, make_record, read_jsonl
from moofa.predictor.encoder import ArchEncoder
from moofa.predictor.plan import OutputPaths, Plan, log_plan, plan_run

LOG = logging.getLogger("moofa.create_dataset")


# ------------------------------------------------------------------------------------------------
# Output files: the recipe and the reference-format pickle


def recipe_path(paths: OutputPaths) -> Path:
    """``<dataset>.recipe.json`` beside the JSON Lines file."""
    return paths.jsonl.with_name(paths.jsonl.stem + ".recipe.json")


RECIPE_DATASET_KEYS = ("min_memory", "max_memory", "n_bins", "eval_images", "eval_split", "seed")
RECIPE_ARGS_KEYS = ("bn_calib_images", "bn_calib_batch_size", "bn_eps", "bn_momentum", "valid_size",
                    "dy_conv_scaling_mode")


def dataset_recipe(spec: ModelSpec, dc: DatasetSettings, args: AnyArgs,
                   memory: Any = None) -> Inputs:
    """What the records' values depend on (see "Inputs" in docs/dataset.md); ``memory``
    (a MemoryOptions) decides the bins' unit."""
    recipe = {"model_spec": model_identity(spec), "checkpoint": file_fingerprint(args.checkpoint),
              "dataset_config": {k: dc[k] for k in RECIPE_DATASET_KEYS},  # records: read by name
              "args": {k: args[k] for k in RECIPE_ARGS_KEYS}, "data": data_fingerprint(args)}
    if memory is not None and not memory.is_reference:  # the reference model keeps old recipes valid
        recipe["memory"] = dataclasses.asdict(memory)
    return Inputs.of(recipe)


def check_recipe(paths: OutputPaths, recipe: Inputs, overwrite: bool = False) -> None:
    """Refuse to extend records measured with another recipe (MoofaInputError naming the file
    and what changed); ``overwrite`` deletes the dataset (and its reference copy) first. Writes
    the recipe when the dataset is new."""
    side = recipe_path(paths)
    # --overwrite measures the dataset again whatever it records; otherwise other inputs stop the run
    policy = Policy.REDO if overwrite else Policy.REFUSE
    if policy is Policy.REDO:
        for p in (paths.jsonl, paths.pickle, side):
            if p is not None and p.is_file():
                p.unlink()
                LOG.info("--overwrite: removed %s", p)
    has_records = paths.jsonl.is_file() and paths.jsonl.stat().st_size > 0
    if has_records and not side.is_file():
        LOG.warning("%s records no recipe (no %s): cannot check that its records were measured with "
                    "this checkpoint and settings; new records are appended", paths.jsonl, side.name)
        return
    recorded = (read_fingerprint(side) or Inputs.unrecorded()) if has_records else None
    if recorded is not None and recorded.lacks_images(recipe):
        LOG.warning("%s records no image list (written before images were fingerprinted): its records "
                    "are kept without checking the images; --overwrite measures them again", side)
    verdict = resolve(
        f"the {paths.jsonl.name} records", recorded, recipe, policy, file=paths.jsonl,
        restart="rerun with --overwrite to measure the dataset again, or choose another dataset_config.output"
    ).verdict
    if verdict is Verdict.FRESH:
        write_fingerprint(side, recipe)


def write_reference_pickle(jsonl: Path, target: Path, spec: ModelSpec) -> int:
    """Write the records of ``jsonl`` as the reference's merged pickle (docs/design.md#protocols: flat lists
    ``configs``, ``accuracies`` (fractions), ``features`` (one-hot, docs/design.md#encoding), ``efficiencies``
    (peak memory, elements)) atomically; returns the number of entries."""
    data = read_jsonl(jsonl, spec)
    features = ArchEncoder(spec).encode_batch(data.configs)
    obj = {"configs": [c.to_dict() for c in data.configs],
           "accuracies": [float(a) for a in data.accuracies],
           "features": [np.asarray(f) for f in features],
           "efficiencies": [float(peak_memory(spec, c)) for c in data.configs]}
    with atomic_open(target, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
    return len(data)


# ------------------------------------------------------------------------------------------------
# Planning on rank 0


def prepare(spec: ModelSpec, dc: DatasetSettings, backend: Any, options: MemoryOptions | None = None) -> Plan:
    """Rank 0 plans (and logs) the run and broadcasts the plan; bad input found by rank 0 is
    raised on every rank."""
    def plan_and_log() -> Plan:
        plan = plan_run(spec, dc, options)
        log_plan(plan, backend.size)
        return plan

    return on_main_rank(backend, plan_and_log)


def subnet_record(spec: ModelSpec, subnet: SubnetConfig, accuracy: float, n_classes: int) -> dict[str, Any]:
    """One dataset line (README): config, accuracy (fraction), peak memory (elements),
    FLOPs (MMACs of the network with ``n_classes`` outputs) and the model name."""
    return make_record(subnet, accuracy, peak_memory(spec, subnet), flops(spec, subnet, n_classes), spec.name)


# ------------------------------------------------------------------------------------------------
# The run


@dataclass
class RunSummary:
    """Outcome of :func:`run_plan` (the same on every rank)."""

    paths: OutputPaths
    n_records: int
    added: int
    per_bin: dict[int, int]
    quotas: dict[int, int]
    shortfall: dict[int, int]

    @property
    def complete(self) -> bool:
        return not self.shortfall


def fill_text(per_bin: Mapping[int, int], quotas: Mapping[int, int]) -> str:
    """``b1 3/4 b2 4/4 ...`` over the reachable bins."""
    return " ".join(f"b{i} {per_bin.get(i, 0)}/{q}" for i, q in quotas.items())


def run_plan(plan: Plan, meter: SubnetMeter, backend: Any, n_classes: int, log_interval: int = 10,
             progress: bool = True) -> RunSummary:
    """Measure the plan's candidates in rounds (rank k: candidate t*world + k) and let rank 0
    append each round's records; call on every rank with the same plan."""
    spec, cands, quotas = plan.spec, plan.candidates, plan.quotas
    is_main, world, rank = backend.is_main, backend.size, backend.rank
    per_bin = {i: plan.existing.per_bin.get(i, 0) for i in quotas}
    bar = None
    if is_main and progress:
        total = sum(quotas.values())
        bar = tqdm(total=total, initial=min(sum(min(per_bin[i], q) for i, q in quotas.items()), total),
                   desc="subnets", unit="subnet", dynamic_ncols=True)
        bar.set_postfix_str(fill_text(per_bin, quotas))
    for start in range(0, len(cands), world):
        preempt.progress("subnet", plan.existing.n_records + start + 1, plan.existing.n_records + len(cands))
        mine = start + rank
        record = None
        if mine < len(cands):
            cfg = cands[mine][1]
            record = subnet_record(spec, cfg, meter.accuracy(cfg), n_classes)
        records = [r for r in backend.allgather_object(record) if r is not None]
        if is_main:
            append_records(plan.paths.jsonl, records)
        for j in range(len(records)):
            per_bin[cands[start + j][0]] += 1
            done = start + j + 1
            if is_main and (done % log_interval == 0 or done == len(cands)):
                LOG.info("%d/%d new subnet(s) measured; fill %s", done, len(cands), fill_text(per_bin, quotas))
        if bar is not None:
            bar.update(min(len(records), bar.total - bar.n))
            bar.set_postfix_str(fill_text(per_bin, quotas))
    if bar is not None:
        bar.close()
    summary = RunSummary(plan.paths, plan.existing.n_records + len(cands), len(cands), per_bin,
                         dict(quotas), plan.shortfall)
    if is_main:
        if plan.paths.pickle is not None and summary.n_records:
            n = write_reference_pickle(plan.paths.jsonl, plan.paths.pickle, spec)
            LOG.info("wrote the reference-format copy %s (%d entries)", plan.paths.pickle, n)
        LOG.info("%s: %d record(s), %d new; fill %s", plan.paths.jsonl, summary.n_records, summary.added,
                 fill_text(per_bin, quotas))
        if summary.shortfall:
            LOG.warning("incomplete: %d subnet(s) missing in bin(s) %s; raise dataset_config.max_attempts "
                        "or lower n_samples", sum(summary.shortfall.values()), sorted(summary.shortfall))
    return summary
