"""Latency tables (issue 20): ``python -m moofa.latency build`` on a tiny model compiles sampled
subnets, survives a SIGKILL (the rerun keeps the compiled samples) and writes a table that predicts
Vela's figures; shipped tables load and predict without the ethos-u extra."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny import ROOT, TINY_MODELS

from moofa.deploy import ethosu_available
from moofa.deploy.ethosu import ARENA, LOWERING
from moofa.efficiency.target import ethosu_activation_bytes
from moofa.latency import load_table, shipped_tables
from moofa.latency.samples import load_sample, sample_jobs
from moofa.models.spec import get_model_spec

TARGETS = ("ethos-u55-128", "ethos-u65-256")
N = 4


def _build(root: Path, mc: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "moofa.latency", "build", "--model", "TINY_OFA", "--model_config_path", str(mc),
           "--target", TARGETS[0], "--target", TARGETS[1], "--samples", str(N), "--cache", str(root / "cache"),
           "--output", str(root / "tables")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with (root / "build.log").open("w") as log:  # a file, not a pipe nobody reads while it runs
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not ethosu_available():
        pytest.skip("the ethos-u extra is not installed (pip install -e '.[ethos-u]')")
    root = tmp_path_factory.mktemp("latency")
    mc = root / "model_configs.yaml"
    mc.write_text(yaml.safe_dump(TINY_MODELS, sort_keys=False))
    jobs = sample_jobs("TINY_OFA", TARGETS, root / "cache", N, model_configs=str(mc))
    proc = _build(root, mc)
    first = Path(jobs[0].folder) / f"figures_{TARGETS[1]}.json"
    deadline = time.monotonic() + 600
    while proc.poll() is None and not first.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.kill()  # SIGKILL, mid-build
    proc.wait()
    assert killed and first.is_file()
    stamp = (Path(jobs[0].folder) / "config.json").stat().st_mtime_ns
    done_before = sum(load_sample(j.folder, TARGETS[1]) is not None for j in jobs)
    proc = _build(root, mc)
    proc.wait(timeout=900)
    out = (root / "build.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    return root, mc, jobs, stamp, done_before, out


def test_build_resumes_after_sigkill(built):
    root, _, jobs, stamp, done_before, out = built
    assert 1 <= done_before < N
    assert f"{done_before} of {N} samples already compiled" in out
    assert (Path(jobs[0].folder) / "config.json").stat().st_mtime_ns == stamp  # not compiled again
    assert all(load_sample(j.folder, t) is not None for j in jobs for t in TARGETS)
    assert not list((root / "cache" / "TINY_OFA").glob(".*.tmp"))  # the killed compile's leftovers are gone


def test_table_predicts_velas_figures_with_provenance(built):
    root, mc, jobs, _, _, _ = built
    spec = get_model_spec("TINY_OFA", mc)
    for t in TARGETS:
        table = load_table("TINY_OFA", t, root / "tables" / f"TINY_OFA_{t}.json")
        prov = table.provenance
        assert prov["versions"]["ethos-u-vela"] == "5.1.0" and prov["n_samples"] == N
        assert prov["lowering"] == LOWERING and all(json.loads((Path(j.folder) / "config.json").read_text())
                                                    ["lowering"] == LOWERING for j in jobs)
        assert prov["system_config"] == table.system_config and "manual_seed(0)" in prov["weights"]
        assert prov["arena"] == ARENA
        for j in jobs:
            s = load_sample(j.folder, t)
            f = s["figures"]
            cfg = s["config"].to_dict()
            # the arena Vela was given: the Ethos-U peak where it is the SRAM, the mode's own cache otherwise
            if "Dedicated_Sram" in table.memory_mode:
                assert f["arena_bytes"] is None
            else:
                # Vela may go past an arena its schedule does not fit: by 512 B on a tiny subnet here
                assert f["arena_bytes"] == ethosu_activation_bytes(spec, s["config"]) > 0
                assert f["sram_bytes"] <= f["arena_bytes"] + 1024, (f["sram_bytes"], f["arena_bytes"])
            # SRAM: covers 90 % of the samples (with 4 samples, all), so never below Vela's figure (in a
            # Dedicated_Sram mode, a cache: the largest use seen)
            assert f["sram_bytes"] <= table.predict_sram_bytes(cfg)
            if "Dedicated_Sram" in table.memory_mode:
                assert table.predict_sram_bytes(cfg) == max(load_sample(k.folder, t)["figures"]["sram_bytes"]
                                                            for k in jobs)
            else:
                assert table.predict_sram_bytes(cfg) <= 1.5 * f["sram_bytes"] + 4096
            assert abs(table.predict_ms(cfg) - f["inference_ms"]) <= 0.25 * f["inference_ms"]
            assert abs(table.predict_flash_bytes(cfg) - f["flash_bytes"]) <= 0.1 * max(f["flash_bytes"], 1) + 4096
        assert prov["fit_error"]["ms_max_rel"] < 0.25
    u55 = load_table("TINY_OFA", TARGETS[0], root / "tables" / f"TINY_OFA_{TARGETS[0]}.json")
    assert u55.predict_ms(spec.max_config(48)) > u55.predict_ms(spec.min_config(32))


def test_figures_of_another_arena_rule_are_compiled_again(built):
    """A sample's figures compiled under another arena rule (an older moofa: no rule recorded) are
    not served: the next build compiles them again from the kept out.tosa, without lowering anew."""
    from moofa.latency.samples import run_jobs

    _, _, jobs, _, _, _ = built
    folder = Path(jobs[1].folder)
    fig = folder / f"figures_{TARGETS[0]}.json"
    good = json.loads(fig.read_text())
    old = {k: v for k, v in good.items() if k not in ("arena", "arena_bytes")}
    fig.write_text(json.dumps({**old, "sram_bytes": 1}))
    assert load_sample(folder, TARGETS[0]) is None and load_sample(folder, TARGETS[1]) is not None
    stamp = (folder / "config.json").stat().st_mtime_ns
    lines: list[str] = []
    run_jobs([jobs[1]], 1, lines.append)
    assert lines[0].startswith("0 of 1 samples already compiled")
    assert json.loads(fig.read_text()) == good and (folder / "config.json").stat().st_mtime_ns == stamp


def test_bad_arguments_are_one_error_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, word in ((["--model", "NOPE", "--target", "ethos-u55-128"], "NOPE"),
                       (["--model", "OFA", "--target", "xnnpack"], "xnnpack"),
                       (["--model", "OFA", "--target", "ethos-u55-128", "--samples", "2"], "--samples")):
        proc = subprocess.run([sys.executable, "-m", "moofa.latency", "build", *args, "--cache", str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], \
            proc.stderr


@pytest.mark.parametrize("model", ["OFA", "MOOFA_V3"])
@pytest.mark.parametrize("target", ["ethos-u55-128", "ethos-u65-256"])
def test_shipped_tables_load_and_predict(model, target):
    assert f"{model}_{target}" in shipped_tables()
    table = load_table(model, target)
    spec = get_model_spec(model)
    small, big = spec.min_config(min(spec.image_sizes)), spec.max_config(max(spec.image_sizes))
    assert 0 < table.predict_ms(small.to_dict()) < table.predict_ms(big.to_dict())
    lo, hi = table.predict_sram_bytes(small.to_dict()), table.predict_sram_bytes(big.to_dict())
    if "Dedicated_Sram" in table.memory_mode:  # a cache of fixed size: its largest use, whatever the subnet
        assert lo == hi <= 384 * 1024 and table.sram["s"] == 0
    else:
        assert 0 < lo < hi
    e = table.provenance["fit_error"]
    assert e["ms_max_rel"] <= 0.08 and e["ms_mean_rel"] <= 0.05
    assert table.provenance["versions"]["ethos-u-vela"] == "5.1.0"
    assert table.provenance["lowering"] == LOWERING  # fitted on programs lowered as moofa lowers now
    assert table.provenance["arena"] == ARENA  # ... and compiled with the arena moofa gives Vela


def test_sram_models_of_version_1_and_2_tables(tmp_path):
    """A version 1 table (no ``sram_model``) predicts SRAM from the int8 activations peak; later
    tables may use the Ethos-U activations peak, or (fitted on ExecuTorch's default lowering) the
    peak with int32 shortcuts, plus their overhead; an unknown model is an input error."""
    from moofa.efficiency.target import ethosu_activation_bytes, int8_activation_bytes, int32_shortcut_bytes_batch
    from moofa.errors import MoofaInputError
    from moofa.latency.table import LatencyTable

    shipped = load_table("MOOFA_V3", "ethos-u55-128").to_dict()
    cfg = get_model_spec("MOOFA_V3").max_config(160)
    old = LatencyTable.from_dict({k: v for k, v in shipped.items() if k != "sram_model"}
                                 | {"version": 1, "sram": {"s": 1.25, "o": 1000.0}})
    assert old.sram_model == "int8_activations"
    assert old.predict_sram_bytes(cfg) == int(np.ceil(1.25 * int8_activation_bytes("MOOFA_V3", cfg) + 1000))
    v2 = LatencyTable.from_dict(shipped | {"sram_model": "int32_shortcuts", "sram": {"s": 1.0, "o": 36_384.0}})
    assert v2.predict_sram_bytes(cfg) == int32_shortcut_bytes_batch("MOOFA_V3", [cfg])[0] + 36_384
    new = LatencyTable.from_dict(shipped | {"sram_model": "ethosu_activations", "sram": {"s": 1.0, "o": 6_208.0}})
    assert new.predict_sram_bytes(cfg) == ethosu_activation_bytes("MOOFA_V3", cfg) + 6_208
    # max config at 160 px: the 96-channel 40x40 stage-1 depthwise entry, 24 -> 32 stored channels
    assert ethosu_activation_bytes("MOOFA_V3", cfg) == 2 * 96 * 40 * 40 + 32 * 40 * 40
    assert int32_shortcut_bytes_batch("MOOFA_V3", [cfg])[0] == 2 * 96 * 40 * 40 + 4 * 24 * 40 * 40
    with pytest.raises(MoofaInputError, match="sram_model: unknown SRAM model .*got 'fancy'"):
        LatencyTable.from_dict(shipped | {"sram_model": "fancy"})
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps(shipped | {"sram_model": "fancy"}))
    with pytest.raises(MoofaInputError) as err:
        load_table("MOOFA_V3", "ethos-u55-128", bad)
    assert str(err.value).startswith(f"{bad}: sram_model: unknown SRAM model") and len(str(err.value).splitlines()) == 1


def test_latency_terms_of_version_2_and_3_tables():
    """A version 2 table's a, b, d, c weigh MMACs, MB of weights, MB of activation traffic and a
    constant; a version 3 table names its terms; an unknown term is an input error."""
    from moofa.efficiency import flops
    from moofa.efficiency.flops import count_params
    from moofa.efficiency.target import activation_traffic_batch, operator_counts_batch
    from moofa.errors import MoofaInputError
    from moofa.latency.table import LatencyTable

    shipped = load_table("MOOFA_V3", "ethos-u55-128").to_dict()
    cfg = get_model_spec("MOOFA_V3").max_config(160)
    mmacs, mb = flops("MOOFA_V3", cfg), count_params("MOOFA_V3", cfg) / 1e6
    traffic = int(activation_traffic_batch("MOOFA_V3", [cfg])[0]) / 1e6
    v2 = LatencyTable.from_dict(shipped | {"version": 2, "ms": {"a": 0.02, "b": 1.5, "d": 0.75, "c": 0.5}})
    assert v2.predict_ms(cfg) == pytest.approx(0.02 * mmacs + 1.5 * mb + 0.75 * traffic + 0.5, rel=1e-12)
    dw = int(operator_counts_batch("MOOFA_V3", [cfg])["dw_macs"][0]) / 1e6
    v3 = LatencyTable.from_dict(shipped | {"version": 3, "ms": {"pw_mmacs": 0.01, "dw_mmacs": 0.2, "c": 1.0}})
    assert v3.predict_ms(cfg) == pytest.approx(0.01 * (mmacs - dw) + 0.2 * dw + 1.0, rel=1e-12)
    with pytest.raises(MoofaInputError, match="ms: unknown latency term .*got 'flops'"):
        LatencyTable.from_dict(shipped | {"version": 3, "ms": {"flops": 1.0}})
    for ms, key in (({"c": -1.0}, "ms.c"), ({"c": "fast"}, "ms.c"), ({"c": float("nan")}, "ms.c")):
        with pytest.raises(MoofaInputError, match=f"{key}: a latency coefficient .* finite number >= 0"):
            LatencyTable.from_dict(shipped | {"version": 3, "ms": ms})
    with pytest.raises(MoofaInputError, match="cache_bytes: the SRAM cache must be a positive"):
        LatencyTable.from_dict(shipped | {"version": 3, "ms": {"c": 1.0}, "cache_bytes": "big"})
    with pytest.raises(MoofaInputError, match="cache_bytes: .*spill_mb without"):
        LatencyTable.from_dict(shipped | {"version": 3, "ms": {"spill_mb": 1.0}, "cache_bytes": None})


def test_the_fit_selects_the_terms_that_generated_the_latency():
    """Latencies made exactly from depthwise and pointwise MMACs, weights, squeeze-excite elements
    and a constant: the fit selects those terms, recovers their coefficients and predicts other
    subnets exactly; with fewer than 3 samples per term it keeps to the smaller designs."""
    from moofa.latency.table import features, fit_table
    from moofa.models.space import SearchSpace

    spec = get_model_spec("OFA")
    rng = np.random.default_rng(5)
    configs = [SearchSpace(spec).sample(rng) for _ in range(40)]
    f = features(spec, configs)
    true = {"pw_mmacs": 0.02, "dw_mmacs": 0.15, "weights_mb": 1.5, "se_m": 3.0, "c": 0.3}
    ms = sum(v * f[t] for t, v in true.items())
    samples = [{"config": c, "figures": {"inference_ms": float(m), "sram_bytes": 100_000 + i, "flash_bytes": 1000,
                                         "memory_mode": "Shared_Sram", "system_config": "S", "vela_version": "5.1.0"}}
               for i, (c, m) in enumerate(zip(configs, ms))]
    table = fit_table("OFA", "ethos-u55-128", samples[:20])
    assert set(table.ms) == set(true) and table.version == 3
    assert all(table.ms[t] == pytest.approx(v, rel=1e-6) for t, v in true.items())
    assert table.predict_ms_batch(configs[20:], spec) == pytest.approx(ms[20:], rel=1e-9)
    assert table.provenance["fit_error"]["ms_loo_max_rel"] < 1e-9
    assert len(fit_table("OFA", "ethos-u55-128", samples[:12]).ms) == 4  # 12 samples: 4 terms at most
    # an SRAM cache (Dedicated_Sram): the layers that do not fit in it cost their traffic again
    cache = 300_000
    f = features(spec, configs, cache_bytes=cache)
    true = {"pw_mmacs": 0.01, "dw_mmacs": 0.02, "weights_mb": 0.15, "spill_mb": 0.5, "c": 0.3}
    ms = sum(v * f[t] for t, v in true.items())
    assert f["spill_mb"].min() < f["spill_mb"].max() < f["traffic_mb"].max()
    for s, m in zip(samples, ms):
        s["figures"] |= {"inference_ms": float(m), "memory_mode": "Dedicated_Sram_384KB", "sram_bytes": cache - 5}
    samples[3]["figures"]["sram_bytes"] = cache  # the cache: the largest SRAM Vela used
    table = fit_table("OFA", "ethos-u65-256", samples[:20])
    assert table.cache_bytes == cache and set(table.ms) == set(true)
    assert table.predict_ms_batch(configs[20:], spec) == pytest.approx(ms[20:], rel=1e-9)


def test_missing_table_is_an_input_error():
    from moofa.errors import MoofaInputError

    with pytest.raises(MoofaInputError, match="no shipped latency table"):
        load_table("OFA", "ethos-u85-2048")
