"""Vela's SRAM of full-size Ethos-U programs against moofa's analytic memory models (issue 20).

    python benchmarks/bench_ethosu_sram.py [--models OFA MOOFA_V3] [--n 20] [--workers 1]
        [--cache .cache/ethosu] [--targets ethos-u55-128 ethos-u65-256] [--unsized]

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

The samples are compiled as moofa compiles (:data:`moofa.deploy.ethosu.ARENA`): in ``Shared_Sram``
mode Vela's arena is sized to the Ethos-U peak. With ``--unsized`` each sample's ``out.tosa`` is
also compiled with Vela's default arena (about a second each, in a temporary folder), and the
script prints what Vela then uses and the sized program's latency against it: the evidence that
the size costs no latency in Vela's estimate (docs/ethosu.md#the-sram-arena).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from ethosu_args import sample_parser

from moofa.efficiency.target import ethosu_activation_bytes_batch, int8_activation_bytes_batch
from moofa.latency.samples import load_sample, run_jobs, sample_jobs
from moofa.models.spec import get_model_spec


def unsized_line(got: list[dict], target: str, peaks: np.ndarray) -> str:
    """Vela's default arena against the sized one, on each sample's kept ``out.tosa``."""
    from moofa.deploy.ethosu import vela_compile_tosa

    with tempfile.TemporaryDirectory() as tmp:
        free = [vela_compile_tosa(Path(s["folder"]) / "out.tosa", target, Path(tmp) / str(k))
                for k, s in enumerate(got)]
    sram = np.array([f.sram_bytes for f in free], dtype=np.float64)
    ms = np.array([s["figures"]["inference_ms"] / f.inference_ms for s, f in zip(got, free)])
    return (f"\n    Vela's default arena: SRAM {np.min(sram / peaks):.4f}..{np.max(sram / peaks):.4f} x the "
            f"Ethos-U peak; sized latency / default latency {ms.min():.4f}..{ms.max():.4f} (median "
            f"{np.median(ms):.4f})")


def main() -> None:
    p = sample_parser(__doc__.split("\n\n")[0], n=20)
    p.add_argument("--unsized", action="store_true", help="also compile with Vela's default arena")
    a = p.parse_args()
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
            arenas = [s["figures"].get("arena_bytes") for s in got]
            ethosu = ethosu_activation_bytes_batch(spec, configs).astype(np.float64)
            if all(x is not None for x in arenas):
                rel = (vela - ethosu) / vela
                line += (f"\n    arena sized to the Ethos-U peak: Vela SRAM - peak {100 * rel.min():+.2f}.."
                         f"{100 * rel.max():+.2f} % (|err| max {100 * np.abs(rel).max():.2f} %, mean "
                         f"{100 * np.abs(rel).mean():.2f} %); within the arena in "
                         f"{int(np.sum(vela <= np.array(arenas)))} of {len(got)}")
                if a.unsized:
                    line += unsized_line(got, t, ethosu)
            else:
                line += "\n    arena: Vela's default (the memory mode's own size)"
            for name, peak in (("int8 activations", int8_activation_bytes_batch(spec, configs)),
                               ("Ethos-U activations", ethosu)):
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
