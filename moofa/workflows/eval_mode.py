"""``eval_and_search.py --mode eval`` (docs/design.md#protocols, fixed per
docs/design.md#departures-from-the-reference).

``--model supernet``: the supernet from ``args.checkpoint`` in the subnet of ``subnet_config``
(null ks/e/d lists = the largest values; ``random_sample: true`` draws one arch with a
``random.Random(args.manual_seed)`` and uses it everywhere), BN re-calibrated at
``subnet_config.image_size``, evaluated on the test set.

``--model teacher``: the static largest subnet with the teacher's weights from
``<args.teacher_path>/checkpoint/model_best.pth.tar`` (the file progressive shrinking distils
from; the reference's eval read ``checkpoint.pth.tar``, docs/design.md#departures-from-the-reference),
BN re-calibrated and evaluated at ``subnet_config.image_size``.

Accuracy counts are all-reduced over ranks; forward time is synchronised after warm-up. Rank 0
always writes ``info.json`` (the arch dict actually evaluated, not the YAML, and under ``data`` the
images it was measured on: :func:`moofa.data.folder.data_fingerprint`) and, with
``draw_graphs``, the memory histogram and architecture plots, into
``<subnet_config.res_dir>/<subnet_config.name>/`` for the supernet and
``<subnet_config.res_dir>/<subnet_config.name>_teacher/`` for the teacher, so that the two never
overwrite each other (:meth:`moofa.run.Run.eval_dir`). The folder is checked writable before the model
is loaded.
"""
from __future__ import annotations

import logging
import random
from typing import Any

from moofa.config import RunConfig
from moofa.data import DataProvider
from moofa.data.folder import data_fingerprint
from moofa.efficiency import MemoryOptions
from moofa.io import check_writable
from moofa.measurement.evaluate import evaluate, evaluate_subnet
from moofa.measurement.report import draw_subnet_plots, subnet_report, units
from moofa.models.bn_calibration import set_running_statistics
from moofa.models.space import SearchSpace
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.records import EvalInfo
from moofa.run import INFO_NAME, Run
from moofa.stats import Accuracy, per_image_record

log = logging.getLogger(__name__)


def eval_subnet_config(cfg: RunConfig, spec: ModelSpec) -> SubnetConfig:
    """The arch evaluated by ``--model supernet``: subnet_config's lists (nulls = max), or with
    ``random_sample`` one random arch (seeded by ``args.manual_seed``) at subnet_config.image_size."""
    sc = cfg.subnet_config
    r = int(sc.image_size)
    if sc.random_sample:
        drawn = SearchSpace(spec).sample(random.Random(int(cfg.args.manual_seed)))
        return SubnetConfig(drawn.ks, drawn.e, drawn.d, r)
    full = spec.max_config(r)
    return SubnetConfig.from_dict({k: sc[k] if sc[k] is not None else list(getattr(full, k))
                                   for k in ("ks", "e", "d")}, image_size=r).validate(spec)


def run_eval(run: Run, backend: Any, which: str = "supernet") -> EvalInfo:
    """Evaluate the supernet's configured subnet or the teacher; returns the info record (every
    rank); rank 0 writes it."""
    if which not in ("supernet", "teacher"):
        raise ValueError(f"which: expected 'supernet' or 'teacher', got {which!r}")
    cfg, args = run.cfg, run.args()
    spec = run.spec(args)
    sc = cfg.subnet_config
    out = run.eval_dir(which)
    if backend.is_main:
        check_writable(out, "subnet_config.res_dir")
    provider = DataProvider(args, spec.image_sizes, backend.rank, backend.size)
    n = provider.n_classes
    if which == "supernet":
        arch = eval_subnet_config(cfg, spec)
        supernet = run.supernet(args, n, load=True).to(backend.device)
        res = evaluate_subnet(supernet, arch, provider, backend, split="test", time_forward=True)
        source = str(args.checkpoint)
    else:
        arch = spec.max_config(int(sc.image_size))
        source = str(run.teacher_file(args))
        teacher = run.teacher(args, n).to(backend.device)
        set_running_statistics(teacher, provider.calibration_batches(arch.image_size))
        res = evaluate(teacher, provider.test_loader(arch.image_size), backend, time_forward=True)
    options = MemoryOptions.from_config(cfg, n)
    report = subnet_report(spec, arch, n, options)
    info = EvalInfo(
        accuracy=res.top1, top5=res.top5, loss=res.loss, n_images=res.n_images,
        accuracy_interval=list(Accuracy.of(res.top1, res.n_images).interval),
        per_image=per_image_record(res.per_image("accuracy", f"the test split {provider.root / 'val'}")),
        peak_memory=report.peak_memory, memory_history=report.memory_history,
        flops=report.flops, params=report.params,
        avg_forward_time=res.avg_forward_time, config=arch.to_dict(), model=spec.name,
        network=which, checkpoint=source, random_sample=bool(sc.random_sample),
        memory_model=options.to_dict(), units=units(options),
        data=data_fingerprint(args, {"train": provider.train_folder, "val": provider.test_folder}))
    if backend.is_main:
        if sc.draw_graphs:
            draw_subnet_plots(spec, arch, out, report, n, accuracy=res.top1)
        info.write(out / INFO_NAME)
        log.info("%s %s R=%d: top-1 %.2f%% top-5 %.2f%% on %s images, peak %s " + options.unit + ", %.1f MMACs, "
                 "%.2f ms/batch; wrote %s", spec.name, which, arch.image_size, 100 * res.top1,
                 100 * res.top5, f"{res.n_images:,}", f"{report.peak_memory:,}", report.flops,
                 1e3 * res.avg_forward_time, out / INFO_NAME)
    backend.barrier()
    return info
