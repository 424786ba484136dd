"""Balanced predictor-dataset creation (create_moofa_predictor_dataset.py, docs/design.md#protocols, issue 5
acceptance 4): bins, quotas, the memory-aware sampler, the fixed evaluation subset, 1 and 2
processes, kill and resume, bad input."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import PYTHON, ROOT, make_tiny_project

from moofa.cli.common import run_cli
from moofa.cli.create_dataset import main as create_main
from moofa.config import DatasetSettings
from moofa.efficiency import flops, memory_bounds, peak_memory, sample_feasible
from moofa.errors import MoofaInputError
from moofa.measurement.meter import eval_subset_indices
from moofa.models import build_supernet
from moofa.models.spec import SubnetConfig, get_model_spec, load_model_configs
from moofa.predictor.create import write_reference_pickle
from moofa.predictor.dataset import append_records, make_record, read_dataset
from moofa.predictor.plan import (
    apportion,
    bin_quotas,
    bin_rng,
    draw_bin,
    interleave,
    memory_bins,
    output_paths,
    plan_run,
    read_existing,
)

SCRIPT = "create_moofa_predictor_dataset.py"
N_SAMPLES = 10
EVAL_IMAGES = 20  # of the 40 synthetic test images: every second one


# ------------------------------------------------------------------------------------------------
# Pure parts


def test_apportion_is_exact_and_balanced() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(2000, [1] * 15) == [134] * 5 + [133] * 10  # the reference's 2000 over 15 bins
    assert apportion(7, [1, 0, 1]) == [4, 0, 3]
    for total in range(40):
        shares = apportion(total, [1.0] * 7)
        assert sum(shares) == total and max(shares) - min(shares) <= 1
    with pytest.raises(ValueError, match="apportion"):
        apportion(3, [0, 0])


@pytest.mark.parametrize("model, sizes, reachable", [
    # docs/design.md#protocols: the non-empty bins of the shipped datasets (250k..800k, 15 bins) and their sizes
    ("MOOFA_V3", (128, 160, 192, 224), list(range(1, 13))),
    ("OFA", (128, 160, 192), [0, 1, 2, 4, 6, 7, 9, 12, 13, 14]),
    ("CompOFA", (128, 160, 192), [0, 2, 4, 6, 7, 9, 13, 14]),
])
def test_reachable_bins_match_the_shipped_datasets(model: str, sizes: tuple, reachable: list[int]) -> None:
    spec = dataclasses.replace(get_model_spec(model), image_sizes=sizes)
    bins = memory_bins(spec, 250000, 800000, 15)
    assert [b.index for b in bins if b.reachable] == reachable
    quotas = bin_quotas(bins, 2000)
    assert sum(quotas.values()) == 2000 and list(quotas) == reachable


def test_memory_bins_edges_and_bounds() -> None:
    spec = get_model_spec("MOOFA_V3")
    bins = memory_bins(spec, 250000, 800000, 15)
    assert bins[0].low == 250000 and bins[-1].high == 800000
    assert math.isclose(bins[1].low - bins[0].low, 550000 / 15)
    lo, hi = memory_bounds(spec)  # 299,520 and 696,192 (docs/design.md#memory-model)
    for b in bins:
        if b.high <= lo or b.low > hi:
            assert not b.reachable
    assert bins[1].contains(lo) and bins[12].contains(hi)


def test_sampler_chunks_give_one_sequence() -> None:
    """draw_bin relies on sample_feasible consuming its generator sample by sample."""
    spec = get_model_spec("MOOFA_V3")
    a = sample_feasible(spec, 400000, bin_rng(3, 2), n=6, lower=370000)
    rng = bin_rng(3, 2)
    b = [sample_feasible(spec, 400000, rng, n=1, lower=370000)[0] for _ in range(6)]
    assert a == b


@pytest.mark.parametrize("model", ["MOOFA_V3", "OFA", "CompOFA"])
def test_draw_bin_fills_the_bin_with_unique_subnets(model: str) -> None:
    spec = get_model_spec(model)
    bins = memory_bins(spec, 250000, 800000, 15)
    b = next(x for x in bins if x.reachable)
    draw = draw_bin(spec, b, quota=30, have=0, existing=set(), seed=0, budget=10000)
    assert draw.missing == 0 and len(draw.configs) == 30
    assert len({c.canonical(spec) for c in draw.configs}) == 30
    for c in draw.configs:
        c.validate(spec, check_image_size=True)
        assert b.contains(peak_memory(spec, c))
    # the same sequence, minus what exists, and a budget that runs out
    existing = {c.canonical(spec) for c in draw.configs[:10]}
    again = draw_bin(spec, b, quota=30, have=10, existing=existing, seed=0, budget=10000)
    assert again.configs == draw.configs[10:]
    short = draw_bin(spec, b, quota=30, have=0, existing=set(), seed=0, budget=12)
    assert short.attempts == 12 and short.missing >= 18


def test_interleave_keeps_fill_level() -> None:
    spec = get_model_spec("MOOFA_V3")
    cfgs = [spec.min_config(128)] * 6
    from moofa.predictor.plan import BinDraw
    draws = [BinDraw(1, cfgs[:3], 3, 9, 0), BinDraw(4, cfgs[:2], 2, 9, 0)]
    order = [i for i, _ in interleave(draws, {4: 1}, {1: 3, 4: 3})]
    assert order == [1, 1, 4, 1, 4]


def test_eval_subset_is_an_even_stride() -> None:
    assert eval_subset_indices(10, 4) == [0, 2, 5, 7]
    assert eval_subset_indices(40, 20) == list(range(0, 40, 2))
    assert eval_subset_indices(5, None) == eval_subset_indices(5, 9) == [0, 1, 2, 3, 4]
    labels = np.repeat(np.arange(10), 50)  # an ImageFolder sorted by class
    counts = Counter(labels[eval_subset_indices(500, 100)].tolist())
    assert set(counts.values()) == {10}


def test_output_paths(tmp_path: Path) -> None:
    assert output_paths(tmp_path / "d.jsonl").pickle is None
    p = output_paths(tmp_path / "d.pkl")
    assert p.jsonl == tmp_path / "d.jsonl" and p.pickle == tmp_path / "d.pkl"
    with pytest.raises(MoofaInputError, match="dataset_config.output"):
        output_paths(tmp_path / "d.csv")
    (tmp_path / "ref.pkl").mkdir()
    with pytest.raises(MoofaInputError, match="folder"):
        output_paths(tmp_path / "ref.pkl")
    (tmp_path / "foreign.pkl").write_bytes(b"x")
    with pytest.raises(MoofaInputError, match="not written by this script"):
        output_paths(tmp_path / "foreign.pkl")


def _dc(output: Path, **kw) -> DatasetSettings:
    dc = dict(n_samples=24, min_memory=250000, max_memory=800000, n_bins=15, seed=5,
              max_attempts=100000, save_interval=10, eval_images=None, output=str(output))
    dc.update(kw)
    return DatasetSettings.from_mapping(dc)


def test_resumed_plan_continues_the_same_candidates(tmp_path: Path) -> None:
    """A restart (any prefix written, plus a torn line) proposes exactly the rest of the list."""
    spec = get_model_spec("MOOFA_V3")
    out = tmp_path / "d.jsonl"
    full = plan_run(spec, _dc(out))
    assert len(full.candidates) == 24 and sum(full.quotas.values()) == 24
    done = full.candidates[:9]
    append_records(out, [make_record(c, 0.5, peak_memory(spec, c), None, spec.name) for _, c in done], model=spec)
    with open(out, "a") as fh:
        fh.write('{"ks": [3, 5')  # a kill during an append
    resumed = plan_run(spec, _dc(out))
    assert resumed.existing.repaired_bytes == len('{"ks": [3, 5')
    assert resumed.existing.n_records == 9
    assert resumed.candidates == full.candidates[9:]
    ex = read_existing(out, spec, full.bins)
    assert sum(ex.per_bin.values()) == 9 and ex.outside == 0


def test_attempt_budget_leaves_a_reported_shortfall(tmp_path: Path, caplog) -> None:
    from moofa.predictor.plan import log_plan

    spec = get_model_spec("MOOFA_V3")
    plan = plan_run(spec, _dc(tmp_path / "d.jsonl", max_attempts=12))  # one draw per bin, 2 needed
    assert sum(d.attempts for d in plan.draws) == 12
    assert len(plan.candidates) == 12 and sum(plan.shortfall.values()) == 12
    with caplog.at_level("WARNING", logger="moofa.create_dataset"):
        log_plan(plan, 1)
    assert caplog.text.count("it will stay 1 short") == 12


def test_reference_pickle_copy_reads_back(tmp_path: Path) -> None:
    spec = get_model_spec("OFA")
    rng = np.random.default_rng(0)
    cfgs = sample_feasible(spec, 600000, rng, n=5)
    jsonl = tmp_path / "d.jsonl"
    append_records(jsonl, [make_record(c, 0.1 * i, peak_memory(spec, c), flops(spec, c), "OFA")
                           for i, c in enumerate(cfgs)], model=spec)
    assert write_reference_pickle(jsonl, tmp_path / "d.pkl", spec) == 5
    back = read_dataset(tmp_path / "d.pkl", spec)  # restricted unpickler; features checked
    assert back.configs == cfgs
    assert np.allclose(back.accuracies, [0.1 * i for i in range(5)])
    assert back.peak_memory.tolist() == [peak_memory(spec, c) for c in cfgs]
    with open(tmp_path / "d.pkl", "rb") as fh:
        assert sorted(pickle.load(fh)) == ["accuracies", "configs", "efficiencies", "features"]


# ------------------------------------------------------------------------------------------------
# End to end on the tiny supernet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny project with a random-init checkpoint and bins around the TINY bounds, so that the
    first and last bins are unreachable."""
    root = tmp_path_factory.mktemp("create_dataset")
    project = make_tiny_project(root)
    spec = load_model_configs(project.model_config_path)["TINY"]
    lo, hi = memory_bounds(spec)
    width = math.ceil((hi - lo + 1) / 4)
    dc = dict(n_samples=N_SAMPLES, min_memory=lo - width, max_memory=lo + 5 * width, n_bins=6,
              eval_images=EVAL_IMAGES, seed=1, save_interval=3)
    project.config = {**project.config, "dataset_config": {**project.config["dataset_config"], **dc}}
    project.config["args"] = {**project.config["args"], "bn_calib_images": 32}
    project.write()
    torch.manual_seed(0)
    net = build_supernet(spec, n_classes=4)
    ckpt = Path(project.config["args"]["checkpoint"])
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict()}, ckpt)
    bins = memory_bins(spec, dc["min_memory"], dc["max_memory"], dc["n_bins"])
    return dataclasses.make_dataclass("Tiny", ["project", "spec", "bins"])(project, spec, bins)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def single_run(tiny):
    out = tiny.project.root / "single.jsonl"
    tiny.project.write(dataset_config={"output": str(out)})
    proc = tiny.project.call(SCRIPT)
    return proc, _records(out)


def test_single_process_fills_reachable_bins(tiny, single_run) -> None:
    proc, recs = single_run
    spec, bins = tiny.spec, tiny.bins
    assert not bins[0].reachable and not bins[-1].reachable  # outside memory_bounds
    assert "skipping" in proc.stderr and "b0 [" in proc.stderr and "b5 [" in proc.stderr
    assert len(recs) == N_SAMPLES
    cfgs = [SubnetConfig.from_dict(r) for r in recs]
    assert len({c.canonical(spec) for c in cfgs}) == N_SAMPLES
    per_bin = Counter()
    for r, c in zip(recs, cfgs):
        assert r["model"] == "TINY"
        assert r["peak_memory"] == peak_memory(spec, c)
        assert r["flops"] == pytest.approx(flops(spec, c, 4))
        b = [x.index for x in bins if x.contains(r["peak_memory"])]
        assert len(b) == 1 and bins[b[0]].reachable
        per_bin[b[0]] += 1
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["accuracy"] * EVAL_IMAGES == pytest.approx(round(r["accuracy"] * EVAL_IMAGES))
    reachable = [b.index for b in bins if b.reachable]
    assert set(per_bin) == set(reachable)
    counts = [per_bin[i] for i in reachable]
    assert sum(counts) == N_SAMPLES and max(counts) - min(counts) <= 1
    assert f"{N_SAMPLES} subnets ({N_SAMPLES} new), complete" in proc.stdout
    # a second run has nothing to do
    again = tiny.project.call(SCRIPT)
    assert f"{N_SAMPLES} subnets (0 new), complete" in again.stdout
    assert _records(tiny.project.root / "single.jsonl") == recs


def test_meter_matches_evaluate_subnet(tiny, single_run) -> None:
    """The strided-subset meter equals the provider's own evaluation when it covers all images."""
    from moofa.config import last_task_args, load_config
    from moofa.data import DataProvider
    from moofa.measurement.evaluate import evaluate_subnet
    from moofa.measurement.meter import SubnetMeter
    from moofa.models import load_weights

    cfg = load_config(tiny.project.config_path)
    args = last_task_args(cfg)
    provider = DataProvider(args, tiny.spec.image_sizes, 0, 1)
    net = build_supernet(tiny.spec, provider.n_classes)
    load_weights(net, args["checkpoint"])
    meter = SubnetMeter(net, provider, None)
    selection = SubnetMeter(net, provider, None, "selection")  # the held-out training images
    for r in single_run[1][:2]:
        c = SubnetConfig.from_dict(r)
        assert meter.accuracy(c) == evaluate_subnet(net, c, provider, None, split="test").top1
        assert selection.accuracy(c) == evaluate_subnet(net, c, provider, None, split="valid").top1
    # the dataset itself was measured on the selection split (the default eval_split)
    strided = SubnetMeter(net, provider, EVAL_IMAGES, "selection")
    c = SubnetConfig.from_dict(single_run[1][0])
    assert strided.accuracy(c) == single_run[1][0]["accuracy"]


@pytest.mark.distributed
def test_two_processes_give_the_same_dataset(tiny, single_run) -> None:
    """torchrun with 2 ranks: the same subnets, in the same order, with the same accuracies;
    the .pkl output also gets the reference-format copy."""
    out = tiny.project.root / "dist.pkl"
    tiny.project.write(dataset_config={"output": str(out)})
    tiny.project.run(SCRIPT, nproc=2)
    recs = _records(out.with_suffix(".jsonl"))
    assert recs == single_run[1]
    ref = read_dataset(out, tiny.spec)
    assert [c.to_dict() for c in ref.configs] == [SubnetConfig.from_dict(r).to_dict() for r in recs]
    assert ref.accuracies.tolist() == [r["accuracy"] for r in recs]


def test_killed_run_resumes_without_loss_or_duplicates(tiny, single_run) -> None:
    out = tiny.project.root / "killed.jsonl"
    tiny.project.write(dataset_config={"output": str(out)})
    cmd = [PYTHON, str(ROOT / SCRIPT), "--config", str(tiny.project.config_path),
           "--model_config_path", str(tiny.project.model_config_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=tiny.project.root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_file() and len(out.read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    n_killed = len(_records(out))
    assert 2 <= n_killed < N_SAMPLES
    with open(out, "a") as fh:
        fh.write('{"model": "TINY", "ks": [3')  # as if killed inside an append
    rerun = tiny.project.call(SCRIPT)
    assert "partial last line" in rerun.stderr and f"resuming: {n_killed} record(s)" in rerun.stderr
    recs = _records(out)
    assert len(recs) == N_SAMPLES
    assert len({SubnetConfig.from_dict(r).canonical(tiny.spec) for r in recs}) == N_SAMPLES
    assert recs == single_run[1]  # the same subnets and accuracies as the uninterrupted run


def test_killed_at_three_moments_ends_equal_to_an_uninterrupted_run(tiny, single_run) -> None:
    """SIGKILL while planning (the lock is taken, nothing measured), after 3 and after 7 records;
    the rerun after the third kill completes the file: the same records as the uninterrupted run
    (the stale lock of each killed run is taken over)."""
    out = tiny.project.root / "killed3.jsonl"
    lock = out.parent / f".{out.name}.lock"
    tiny.project.write(dataset_config={"output": str(out)})

    def n_records() -> int:
        return len(out.read_text().splitlines()) if out.is_file() else 0

    moments = [lambda: lock.is_file(), lambda: n_records() >= 3, lambda: n_records() >= 7]
    for i, when in enumerate(moments):
        assert tiny.project.kill_when(SCRIPT, when=when), f"run {i} ended before its kill"
        assert lock.is_file()  # left behind by the kill
    assert 7 <= n_records() < N_SAMPLES
    rerun = tiny.project.call(SCRIPT)
    assert "taking over the stale lock" in rerun.stderr
    assert _records(out) == single_run[1] and not lock.exists()


# ------------------------------------------------------------------------------------------------
# Bad input: one error line, exit 2


def _cli(tiny, capsys, **dataset_config) -> tuple[int, str]:
    tiny.project.write(dataset_config=dataset_config)
    capsys.readouterr()
    rc = run_cli(create_main, ["--config", str(tiny.project.config_path),
                               "--model_config_path", str(tiny.project.model_config_path)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_bad_inputs_exit_2(tiny, capsys, tmp_path) -> None:
    rc, err = _cli(tiny, capsys, min_memory=20000, max_memory=20000)
    assert rc == 2 and err.startswith("error:") and "dataset_config.max_memory" in err
    hi = memory_bounds(tiny.spec)[1]
    rc, err = _cli(tiny, capsys, min_memory=hi + 10, max_memory=hi + 1000)
    assert rc == 2 and "no memory bin holds a subnet of TINY" in err
    (tmp_path / "dir.jsonl").mkdir()
    rc, err = _cli(tiny, capsys, output=str(tmp_path / "dir.jsonl"))
    assert rc == 2 and "folder" in err
    rc, err = _cli(tiny, capsys, output=str(tmp_path / "d.csv"))
    assert rc == 2 and "dataset_config.output" in err
    bad = tmp_path / "bad.jsonl"
    good = make_record(tiny.spec.min_config(32), 0.5, None, None, "TINY")
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "acuracy": 0.5}) + "\n")
    rc, err = _cli(tiny, capsys, output=str(bad))
    assert rc == 2 and "line 2" in err and "acuracy" in err


def test_missing_checkpoint_exits_2(tiny) -> None:
    tiny.project.write(args={"checkpoint": str(tiny.project.root / "nope.pth.tar")})
    proc = tiny.project.call(SCRIPT, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.pth.tar" in lines[0]


def test_sigterm_at_three_moments_ends_equal_to_an_uninterrupted_run(tiny, single_run) -> None:
    """Issue 22: SIGTERM while planning (the lock taken), after 3 and after 7 records. Each
    stopped run exits 143 with one ``stopped by SIGTERM at subnet k/10`` line (k: the subnet in
    flight, whose measurement is abandoned) and releases its lock; the rerun completes the file
    with the uninterrupted run's records."""
    from tiny import stopped_at

    out = tiny.project.root / "sigterm.jsonl"
    lock = out.parent / f".{out.name}.lock"
    tiny.project.write(dataset_config={"output": str(out)})

    def n_records() -> int:
        return len(out.read_text().splitlines()) if out.is_file() else 0

    for i, n in enumerate([0, 3, 7]):
        # the lock file too: the new run holds it (handler installed); a stopped run may have
        # appended more records than it was stopped at
        stopped = tiny.project.signal_when(SCRIPT, when=lambda: lock.is_file() and n_records() >= n)
        assert stopped is not None, f"run {i} ended before its SIGTERM"
        where = stopped_at(stopped)
        if n == 0:
            assert where is None
        else:  # the subnet in flight, or the one just appended
            assert where in (f"subnet {n_records() + 1}/{N_SAMPLES}", f"subnet {n_records()}/{N_SAMPLES}"), where
        assert not lock.exists() and stopped.stop_seconds < 30
    assert 7 <= n_records() < N_SAMPLES
    rerun = tiny.project.call(SCRIPT)
    assert "taking over the stale lock" not in rerun.stderr
    assert _records(out) == single_run[1] and not lock.exists()
