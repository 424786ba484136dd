"""Vela's SRAM of full-size Ethos-U programs against moofa's analytic memory models (issue 20).

    python benchmarks/bench_ethosu_sram.py [--models OFA MOOFA_V3] [--n 20] [--workers 1]
        [--cache .cache/ethosu] [--targets ethos-u55-128 ethos-u65-256]

Compiles samples ``0 .. n-1`` of each model (random subnets, resolution drawn uniformly, random
seeded weights, 1000 classes; the cache of ``python -m moofa.latency build``, so compiled samples
are shared and a killed run continues), then compares Vela's ``sram_memory_used`` with two
analytic peaks (bytes): the int8 activations-only peak
(``MemoryOptions(count_weights=False, bytes_per_element=1)``) and the Ethos-U activations peak
(NHCWB16 channels, int8 shortcuts held through their block;
:func:`moofa.efficiency.target.ethosu_activation_bytes`). For each it prints the overhead (Vela
minus the peak), the ratio, and the error of the peak plus a fixed overhead (the mean over the
samples); then the error of the shipped latency table's SRAM fit. Goal: within 2 %. Vela's
figures are compile-time estimates.
"""
from __future__ import annotations

import numpy as np
from ethosu_args import sample_parser

from moofa.efficiency.target import ethosu_activation_bytes_batch, int8_activation_bytes_batch
from moofa.latency.samples import load_sample, run_jobs, sample_jobs
from moofa.models.spec import get_model_spec


def main() -> None:
    a = sample_parser(__doc__.split("\n\n")[0], n=20).parse_args()
    for model in a.models:
        spec = get_model_spec(model)
        jobs = sample_jobs(model, a.targets, a.cache, a.n)
        if not a.no_compile:
            run_jobs(jobs, a.workers)
        for t in a.targets:
            got = [s for j in jobs if (s := load_sample(j.folder, t)) is not None]
            if not got:
                continue
            vela = np.array([s["figures"]["sram_bytes"] for s in got], dtype=np.float64)
            configs = [s["config"] for s in got]
            line = (f"{model:9s} {t:14s} n={len(got):3d}  "
                    f"Vela SRAM {vela.min() / 1024:7.1f}..{vela.max() / 1024:7.1f} KiB")
            for name, peak in (("int8 activations", int8_activation_bytes_batch(spec, configs)),
                               ("Ethos-U activations", ethosu_activation_bytes_batch(spec, configs))):
                acts = peak.astype(np.float64)
                over = vela - acts
                err = np.abs(acts + over.mean() - vela) / vela
                line += (f"\n    {name:19s} overhead {over.min():+10,.0f}..{over.max():+10,.0f} B  ratio "
                         f"{np.min(vela / acts):.4f}..{np.max(vela / acts):.4f}  |err| of peak + mean overhead: "
                         f"max {100 * err.max():5.2f} % mean {100 * err.mean():5.2f} %")
            try:
                from moofa.latency import load_table

                table = load_table(model, t)
                pred = table.predict_sram_batch([s["config"] for s in got], spec).astype(np.float64)
                rel = (pred - vela) / vela
                line += (f"\n    shipped table ({table.sram_model}): max {100 * np.max(np.abs(rel)):5.2f} % "
                         f"mean {100 * np.mean(np.abs(rel)):5.2f} % (under Vela in {int(np.sum(rel < 0))})")
            except Exception as err:  # noqa: BLE001 - no shipped table yet
                line += f"\n    shipped table: {err}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
