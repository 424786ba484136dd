"""Validation of the shipped latency tables against whole-network compiles of subnets they were
not fitted on (issue 20).

    python benchmarks/bench_latency_tables.py [--models OFA MOOFA_V3]
        [--targets ethos-u55-128 ethos-u65-256] [--start S] [--n 30] [--workers 1] [--no-compile]

The tables (``moofa/latency/tables``) were fitted on the first samples of seed 0 (their
provenance lists them; ``--start`` defaults to the first index after them); this compiles
samples ``start .. start+n-1`` (full size, random seeded weights; the
cache of ``python -m moofa.latency build``) and compares each table's ``predict_ms`` with Vela's
``inference_ms``, and ``predict_sram_bytes`` / ``predict_flash_bytes`` with Vela's figures.
Goal: latency max error <= 8 %, mean <= 5 %. All figures are Vela's compile-time estimates.
"""
from __future__ import annotations

import numpy as np
from ethosu_args import sample_parser

from moofa.latency import load_table
from moofa.latency.samples import load_sample, run_jobs, sample_jobs
from moofa.models.spec import get_model_spec


def main() -> None:
    p = sample_parser(__doc__.split("\n\n")[0], n=30)
    p.add_argument("--start", type=int, default=None, help="default: after the fitted samples")
    a = p.parse_args()
    for model in a.models:
        spec = get_model_spec(model)
        start = a.start if a.start is not None else \
            load_table(model, a.targets[0]).provenance["sample_indices"][1] + 1
        jobs = sample_jobs(model, a.targets, a.cache, a.n, start=start)
        if not a.no_compile:
            run_jobs(jobs, a.workers)
        for t in a.targets:
            table = load_table(model, t)
            fitted = set(table.provenance.get("samples", []))
            got = [s for j in jobs if (s := load_sample(j.folder, t)) is not None]
            assert not fitted & {j.folder.rsplit("/", 1)[-1] for j in jobs}, "validation overlaps the fit"
            if not got:
                continue
            cfgs = [s["config"] for s in got]
            ms = np.array([s["figures"]["inference_ms"] for s in got])
            rel = np.abs(table.predict_ms_batch(cfgs, spec) - ms) / ms
            sram = np.array([s["figures"]["sram_bytes"] for s in got], dtype=np.float64)
            srel = (table.predict_sram_batch(cfgs, spec) - sram) / sram
            fl = np.array([s["figures"]["flash_bytes"] for s in got], dtype=np.float64)
            frel = np.abs(table.predict_flash_batch(cfgs, spec) - fl) / np.maximum(fl, 1)
            print(f"{model:9s} {t:14s} held-out n={len(got):3d}  Vela {ms.min():6.2f}..{ms.max():6.2f} ms  "
                  f"latency |err| max {100 * rel.max():5.2f} % mean {100 * rel.mean():5.2f} %  "
                  f"SRAM err {100 * srel.min():+6.2f}..{100 * srel.max():+6.2f} %  "
                  f"Flash |err| max {100 * frel.max():5.2f} %  (fit: {table.provenance['n_samples']} samples, "
                  f"max {100 * table.provenance['fit_error']['ms_max_rel']:.2f} %)", flush=True)


if __name__ == "__main__":
    main()
