"""``python -m moofa.latency build``: compile sampled subnets for Ethos-U targets and fit latency,
SRAM and Flash tables (:mod:`moofa.latency.table`).

    python -m moofa.latency build --model OFA --target ethos-u55-128 [--target ethos-u65-256]
        [--samples 20] [--start 0] [--seed 0] [--workers 1] [--cache .cache/ethosu]
        [--output DIR] [--checkpoint C] [--model_config_path P]

Each sampled subnet (samples ``start .. start+samples-1`` of ``seed``) is quantised and lowered
to TOSA once; Vela then compiles it for every target (:mod:`moofa.latency.samples`). Compiled
samples stay in ``--cache``: a killed build (even ``kill -9``) rerun with the same arguments
continues, and another ``--start`` range draws different subnets (held-out validation sets).
Writes ``DIR/<model>_<target>.json`` per target, with provenance (versions, system config,
samples, fit error, weights). Weights: ``torch.manual_seed(0)`` then the supernet's default
initialisation, unless ``--checkpoint``. Bad input: one ``error:`` line, exit status 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from moofa.cli.common import ArgParser, run_cli
from moofa.errors import CheckpointError, MoofaInputError


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m moofa.latency", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    b = sub.add_parser("build", help="compile sampled subnets and fit the tables")
    b.add_argument("--model", required=True, help="model name (e.g. OFA, MOOFA_V3)")
    b.add_argument("--target", action="append", required=True,
                   help="Ethos-U configuration, e.g. ethos-u55-128 (repeatable; the TOSA is compiled for the first)")
    b.add_argument("--samples", type=int, default=20,
                   help="sampled subnets the fit uses (a latency design of t terms needs 3 t)")
    b.add_argument("--start", type=int, default=0, help="index of the first sample")
    b.add_argument("--seed", type=int, default=0, help="sampling seed")
    b.add_argument("--workers", type=int, default=1, help="compiling processes")
    b.add_argument("--cache", default=".cache/ethosu", help="folder of compiled samples (resumable)")
    b.add_argument("--output", default=".", help="folder for <model>_<target>.json")
    b.add_argument("--checkpoint", default=None, help="supernet weights (default: seed 0, default init)")
    b.add_argument("--model_config_path", default=None, help="model_configs.yaml (default: built-in)")
    return p


def build(model: str, targets: Sequence[str], samples: int, *, start: int = 0, seed: int = 0, workers: int = 1,
          cache: str | Path = ".cache/ethosu", output: str | Path = ".", checkpoint: str | None = None,
          model_configs: str | None = None, log=print) -> list[Path]:
    """Compile the samples (resumable) and write one fitted table per target; returns the paths."""
    from moofa.deploy.ethosu import ARENA, LOWERING, check_target, default_settings, is_ethosu, require_ethosu, versions
    from moofa.latency.samples import load_sample, run_jobs, sample_jobs
    from moofa.latency.table import fit_table, table_name
    from moofa.models.spec import get_model_spec

    try:
        get_model_spec(model, model_configs)
    except ValueError as err:
        raise MoofaInputError(str(err), key="--model", value=model) from None
    targets = [check_target(t, key="--target") for t in targets]
    if any(not is_ethosu(t) for t in targets):
        raise MoofaInputError("latency tables are for Ethos-U targets", key="--target", value=targets)
    require_ethosu("--target")
    if samples < 4:
        raise MoofaInputError("a fit needs at least 4 samples", key="--samples", value=samples)
    if workers < 1:
        raise MoofaInputError("must be at least 1", key="--workers", value=workers)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CheckpointError("checkpoint not found", file=checkpoint, key="--checkpoint")
    jobs = sample_jobs(model, targets, cache, samples, seed, model_configs, checkpoint, start)
    folders = run_jobs(jobs, workers, log)
    out = []
    for t in targets:
        found = [load_sample(f, t) for f in folders]
        sc, mm = default_settings(t)
        prov = {"versions": versions(), "lowering": LOWERING, "arena": ARENA, "system_config": sc, "memory_mode": mm,
                "seed": seed,
                "sample_indices": [start, start + samples - 1],
                "weights": f"checkpoint {checkpoint}" if checkpoint else "torch.manual_seed(0), then the "
                "supernet's default initialisation (random weights)",
                "calibration": "8 seeded random-normal images per sample",
                "estimates": "Vela's compile-time estimates, not measurements on silicon"}
        table = fit_table(model, t, [s for s in found if s is not None], prov, model_configs=model_configs)
        path = table.save(Path(output) / table_name(model, t))
        e = table.provenance["fit_error"]
        terms = " + ".join(f"{v:.4g}*{term}" if term != "c" else f"{v:.4g}" for term, v in table.ms.items())
        log(f"{model} on {t}: ms = {terms} (fit error max {100 * e['ms_max_rel']:.2f} %, "
            f"mean {100 * e['ms_mean_rel']:.2f} %); SRAM = "
            f"{table.sram['s']:.4g}*{table.sram_model.replace('_', ' ')} peak + {table.sram['o']:,.0f} B (max error "
            f"{100 * e['sram_max_rel']:.2f} %); wrote {path}")
        out.append(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    build(ns.model, ns.target, ns.samples, start=ns.start, seed=ns.seed, workers=ns.workers,
          cache=ns.cache, output=ns.output, checkpoint=ns.checkpoint, model_configs=ns.model_config_path)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(run())
