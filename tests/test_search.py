"""Search and evaluation (issue 6): evolutionary search quality and feasibility, reproducibility,
infeasible constraints, eval/search outputs end to end (1 and 2 processes), export, tables."""
from __future__ import annotations

import csv
import functools
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REFERENCE, needs_reference
from tiny import make_tiny_project

from moofa.config import last_task_args, load_config
from moofa.distributed import SingleBackend
from moofa.efficiency import count_params, flops, memory_bounds, peak_memory, peak_memory_batch
from moofa.errors import CheckpointError, InfeasibleConstraintError
from moofa.models import build_supernet
from moofa.models.layers import count_parameters
from moofa.models.space import SearchSpace
from moofa.models.spec import SubnetConfig, get_model_spec
from moofa.models.subnet_file import load_exported, onnx_available
from moofa.predictor import AccuracyPredictor
from moofa.search.evolution import (
    EvolutionFinder,
    SearchSettings,
    check_constraints,
    random_search_baseline,
    single_thread,
)

OFA_PREDICTOR = REFERENCE / "ofa_imagenet_acc_predictor.pth.tar"
TABLE_CONSTRAINTS = [325_000, 350_000, 400_000, 450_000, 500_000, 600_000, 700_000, 800_000]
TEST_GENERATIONS = 100  # the full 500 are timed in benchmarks/bench_search.py
TINY_CONSTRAINTS = [9000, 16000]


def _random_predictor(model, seed: int = 0, **kw) -> AccuracyPredictor:
    torch.manual_seed(seed)
    return AccuracyPredictor(model, hidden_size=32, n_layers=2, base_acc=0.5, **kw).eval()


# ----------------------------------------------------------------------------- search quality
@needs_reference
def test_ofa_search_fits_and_beats_10000_random_subnets():
    pred = AccuracyPredictor.load(OFA_PREDICTOR, "OFA", device="cpu")
    finder = EvolutionFinder("OFA", pred.predict, SearchSettings(population_size=100,
                                                                 generations=TEST_GENERATIONS))
    with single_thread():
        for c in TABLE_CONSTRAINTS:
            res = finder.search(c)
            best = res.best
            assert best.peak <= c and peak_memory("OFA", best.config) == best.peak
            assert best.accuracy == pytest.approx(float(pred.predict([best.config])[0]), abs=1e-6)
            assert res.history == sorted(res.history) and res.history[-1] == best.accuracy
            assert res.n_scored == 100 * (TEST_GENERATIONS + 1)
            base = random_search_baseline("OFA", pred.predict, c, 10_000, np.random.default_rng(c))
            assert base.peak <= c
            assert best.accuracy >= base.accuracy, (c, best.accuracy, base.accuracy)


def test_every_candidate_fits_and_compofa_keeps_its_coupling():
    """All scored configs (initial, mutants, crossovers, repairs) fit the constraint, also at the
    exact minimum of MOOFA_V3 (299,520: docs/design.md#memory-model), and CompOFA candidates keep e = f(d)."""
    for model, c in (("MOOFA_V3", 299_520), ("MOOFA_V3", 400_000), ("CompOFA", 420_000)):
        spec = get_model_spec(model)
        pred = _random_predictor(model)
        seen: list[SubnetConfig] = []

        def predict(cs, pred=pred, seen=seen):
            seen.extend(cs)
            return pred.predict(cs)

        res = EvolutionFinder(model, predict, SearchSettings(population_size=20, generations=15)).search(c)
        assert len(seen) == res.n_scored == 20 * 16
        assert (peak_memory_batch(model, seen) <= c).all()
        assert res.best.accuracy == max(float(a) for a in pred.predict(seen))
        if spec.compound:
            for cfg in seen:
                assert all(cfg.e[i] == spec.compound_expand(cfg.d[i // 4]) for i in range(20))


def test_children_are_bounded_and_fall_back_to_parents_when_nothing_else_fits():
    """An efficiency model under which only the initial population fits: every child exhausts its
    draws and its repair, then becomes a copy of a parent; the search still ends."""
    pred = _random_predictor("OFA")
    initial: set = set()

    def efficiency(cs):
        if not initial:  # the first call scores the initial population
            initial.update(cs)
        return np.where([c in initial for c in cs], peak_memory_batch("OFA", cs), 10**9)

    scored: list = []

    def predict(cs):
        scored.extend(cs)
        return pred.predict(cs)

    s = SearchSettings(population_size=12, generations=4, max_tries=3)
    res = EvolutionFinder("OFA", predict, s, efficiency=efficiency).search(500_000)
    assert len(scored) == 12 * 5 and all(c in initial for c in scored)
    # children identical to a parent fit; every other one took 3 draws, a repair, a fallback
    assert res.stats.repaired == 0 and 12 <= res.stats.fallback <= 12 * 4
    assert res.stats.draws <= 3 * 12 * 4
    assert res.best.config in initial


def test_same_seed_same_result_and_constraint_seeding():
    pred = _random_predictor("OFA")
    settings = SearchSettings(population_size=20, generations=10, seed=7)
    a = EvolutionFinder("OFA", pred.predict, settings)
    b = EvolutionFinder("OFA", pred.predict, settings)
    r1, r2 = a.search(500_000), b.search(500_000)
    a.search(700_000)  # another constraint in between must not change the next result
    r3 = a.search(500_000)
    for r in (r2, r3):
        assert r.best.config == r1.best.config and r.history == r1.history
    other = EvolutionFinder("OFA", pred.predict, SearchSettings(population_size=20, generations=10,
                                                                seed=8)).search(500_000)
    assert other.history != r1.history


def test_constraint_below_minimum_is_rejected_with_the_minimum():
    lo = memory_bounds("MOOFA_V3")[0]
    assert lo == 299_520
    assert check_constraints("MOOFA_V3", [lo, 500_000]) == lo
    with pytest.raises(InfeasibleConstraintError, match="299,520"):
        check_constraints("MOOFA_V3", [lo - 1])
    with pytest.raises(InfeasibleConstraintError, match="262,912"):
        EvolutionFinder("OFA", lambda cs: np.zeros(len(cs))).search(262_911)


def test_cli_infeasible_constraint_exits_2(tmp_path, capsys):
    from tiny import script_main

    from moofa.cli.common import run_cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"args": {"model": "OFA"}, "search_config": {
        "constraints": [200_000, 400_000], "evaluate": False, "res_dir": str(tmp_path / "s"),
        "acc_predictor_checkpoint": str(tmp_path / "missing.pth.tar")}}))
    # in-process: the script's main under run_cli, as eval_and_search.py runs it
    rc = run_cli(script_main("eval_and_search.py"), ["--config", str(cfg), "--mode", "search"])
    stderr = capsys.readouterr().err
    assert rc == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "262,912" in lines[0]
    assert "200,000" in lines[0] and str(cfg) in lines[0]
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------- tiny end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny project with a random-init supernet, its teacher and a random predictor."""
    root = tmp_path_factory.mktemp("tiny_search")
    project = make_tiny_project(root)
    spec = get_model_spec("TINY", project.model_config_path)
    args = project.config["args"]
    torch.manual_seed(0)
    net = build_supernet(spec, n_classes=4)
    Path(args["checkpoint"]).parent.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict()}, args["checkpoint"])
    teacher_file = Path(args["teacher_path"]) / "checkpoint" / "model_best.pth.tar"
    teacher_file.parent.mkdir(parents=True)
    torch.save({"state_dict": net.build_teacher().state_dict()}, teacher_file)
    _random_predictor(spec).save(project.config["search_config"]["acc_predictor_checkpoint"])
    from moofa.data import ensure_dataset
    ensure_dataset(last_task_args(load_config(project.config_path)))
    return project, spec


def _write(project, tag: str, **search) -> None:
    # test batch = 4 x 2 = 8 images: 5 batches of the 40 test images, 3 timed after 2 warm-up ones
    project.write(args=dict(base_batch_size=2),
                  search_config=dict(constraints=TINY_CONSTRAINTS, res_dir=str(project.root / f"search_{tag}"),
                                     **{"append_measurements": False, **search}),
                  subnet_config=dict(res_dir=str(project.root / f"eval_{tag}"), random_sample=True))


def _read_all(project, tag: str) -> dict:
    out = {c: json.loads((project.root / f"search_{tag}" / f"constraint_{c}" / "info.json").read_text())
           for c in TINY_CONSTRAINTS}
    for key, name in (("supernet", "subnet"), ("teacher", "subnet_teacher")):
        out[key] = json.loads((project.root / f"eval_{tag}" / name / "info.json").read_text())
    return out


def _run_all(project, tag: str, nproc: int) -> dict:
    """Search with evaluation, eval of a random supernet subnet, eval of the teacher."""
    _write(project, tag)
    # one process: in this one (no torch import per run); two: under torchrun
    go = project.call if nproc == 1 else functools.partial(project.run, nproc=nproc)
    go("eval_and_search.py", "--mode", "search")
    go("eval_and_search.py", "--mode", "eval", "--model", "supernet")
    project.write(args=dict(base_batch_size=2), subnet_config=dict(  # same name: own folder
        res_dir=str(project.root / f"eval_{tag}"), random_sample=False))
    go("eval_and_search.py", "--mode", "eval", "--model", "teacher")
    return _read_all(project, tag)


SEARCH_FIELDS = {"predicted_accuracy", "real_accuracy", "peak_memory", "config", "memory_history", "flops",
                 "avg_forward_time", "model", "constraint", "params", "top5", "n_images"}
EVAL_FIELDS = {"accuracy", "top5", "peak_memory", "memory_history", "flops", "params", "avg_forward_time",
               "config"}


def _check_outputs(project, spec, tag: str, info: dict) -> None:
    n_val = 4 * 10
    for c in TINY_CONSTRAINTS:
        d, r = project.root / f"search_{tag}" / f"constraint_{c}", info[c]
        assert SEARCH_FIELDS <= set(r)
        cfg = SubnetConfig.from_dict(r["config"])
        assert r["peak_memory"] == peak_memory(spec, cfg) == max(r["memory_history"]) <= c
        assert r["flops"] == pytest.approx(flops(spec, cfg, 4)) and r["params"] == count_params(spec, cfg, 4)
        assert 0 <= r["real_accuracy"] <= r["top5"] <= 1 and r["n_images"] == n_val
        assert r["avg_forward_time"] > 0
        for name in ("memory_histogram.png", "subnet.png", "subnet.pth.tar"):
            assert (d / name).stat().st_size > 0, name
        exported = load_exported(d / "subnet.pth.tar")
        assert count_parameters(exported) == r["params"]
        # selection on the 40 held-out training images, report on the 40 test images
        assert r["images"]["real_accuracy"]["split"] == "test" and r["images"]["real_accuracy"]["n_images"] == n_val
        assert r["images"]["selection_accuracy"]["split"] == "selection"
        assert r["images"]["selection_accuracy"]["n_images"] == 40
        measured = [row["selection_accuracy"] for row in r["rerank"]]
        assert measured and r["selection_accuracy"] == max(measured)
        assert SubnetConfig.from_dict(r["config"]) in [SubnetConfig.from_dict(row["config"]) for row in r["rerank"]]
        assert r["predicted_std"] >= 0 and r["predicted_source"].startswith("predicted")
    rows = list(csv.DictReader((project.root / f"search_{tag}" / "summary.csv").open()))
    assert [int(x["constraint"]) for x in rows] == TINY_CONSTRAINTS
    assert [float(x["TINY top1_percent"]) for x in rows] == \
        [round(100 * info[c]["real_accuracy"], 2) for c in TINY_CONSTRAINTS]
    md = (project.root / f"search_{tag}" / "summary.md").read_text()
    assert "| < 9k |" in md and "| < 16k |" in md
    assert (project.root / f"search_{tag}" / "accuracy_vs_constraint.png").is_file()
    # eval supernet: the random arch drawn with manual_seed 0 is what was measured and reported
    drawn = SearchSpace(spec).sample(random.Random(0))
    arch = SubnetConfig(drawn.ks, drawn.e, drawn.d, 32)
    for key, expect in (("supernet", arch), ("teacher", spec.max_config(32))):
        r = info[key]
        assert EVAL_FIELDS <= set(r) and SubnetConfig.from_dict(r["config"]) == expect
        assert r["peak_memory"] == peak_memory(spec, expect) and r["flops"] == pytest.approx(flops(spec, expect, 4))
        assert 0 <= r["accuracy"] <= 1 and r["n_images"] == n_val
    assert (project.root / f"eval_{tag}" / "subnet" / "subnet.png").is_file()
    assert (project.root / f"eval_{tag}" / "subnet_teacher" / "memory_histogram.png").is_file()


@pytest.mark.slow
def test_tiny_search_and_eval_one_process(tiny):
    project, spec = tiny
    info = _run_all(project, "p1", nproc=1)
    _check_outputs(project, spec, "p1", info)


@pytest.mark.slow
@pytest.mark.distributed
def test_tiny_search_and_eval_two_processes_match_one(tiny):
    project, spec = tiny
    one = _read_all(project, "p1") if (project.root / "eval_p1" / "subnet_teacher").is_dir() else \
        _run_all(project, "p1", nproc=1)
    two = _run_all(project, "p2", nproc=2)
    _check_outputs(project, spec, "p2", two)
    for c in TINY_CONSTRAINTS:
        for key in ("config", "predicted_accuracy", "peak_memory", "real_accuracy", "top5", "n_images"):
            assert two[c][key] == one[c][key], (c, key)
    for key in ("supernet", "teacher"):
        for field in ("config", "accuracy", "top5", "n_images"):
            assert two[key][field] == one[key][field], (key, field)


TIMING = ("search_seconds", "avg_forward_time")


def _results(project, tag: str) -> tuple[dict, str]:
    res = project.root / f"search_{tag}"
    infos = {c: {k: v for k, v in json.loads((res / f"constraint_{c}" / "info.json").read_text()).items()
                 if k not in TIMING} for c in TINY_CONSTRAINTS}
    return infos, (res / "summary.csv").read_text()


def test_search_killed_at_three_moments_ends_equal_to_an_uninterrupted_run(tiny):
    """SIGKILL at start-up (the lock is taken), while the first constraint writes its outputs, and
    during the second constraint; the rerun completes: every info.json (timings aside) and the
    summary equal an uninterrupted run's."""
    project, _ = tiny
    _write(project, "ref", export=False)
    project.call("eval_and_search.py", "--mode", "search")
    expected = _results(project, "ref")
    _write(project, "kill", export=False)
    res = project.root / "search_kill"
    first = res / f"constraint_{TINY_CONSTRAINTS[0]}"
    moments = [lambda: (res / ".moofa.lock").is_file(), lambda: first.is_dir(),
               lambda: (first / "info.json").is_file()]
    for i, when in enumerate(moments):
        assert project.kill_when("eval_and_search.py", "--mode", "search", when=when), \
            f"run {i} ended before its kill"
    # No assertion on budget 2's info.json: on a fast machine the last SIGTERM can land after it
    # was written (while the summary is written); the stop line then names budget 2/2, as allowed.
    rerun = project.call("eval_and_search.py", "--mode", "search")
    assert "taking over the stale lock" in rerun.stderr and "already done with the same inputs" in rerun.stderr
    assert _results(project, "kill") == expected
    assert not list(res.rglob(".*.tmp*")) and not (res / ".moofa.lock").exists()


def test_search_killed_after_a_budget_appends_every_measurement_once(tiny):
    """Issue 22: SIGKILL once the first budget's info.json is written, then once the resumed run
    has appended its measurements; the rerun completes, and a further rerun appends nothing. The
    dataset ends line for line as after an uninterrupted sweep: the first budget's re-ranking
    measurements (re-queued from its info.json) are there exactly once."""
    project, spec = tiny
    base = project.root / "measured_append.jsonl"
    _measured_dataset(project, spec, base, seed=11)
    data = {tag: project.root / f"measured_{tag}.jsonl" for tag in ("append_ref", "append_kill")}
    for tag, path in data.items():
        shutil.copy(base, path)
        _write(project, tag, export=False, acc_dataset_path=str(path), append_measurements=True)
        if tag == "append_ref":
            project.call("eval_and_search.py", "--mode", "search")
    expected = data["append_ref"].read_text().splitlines()
    added = [json.loads(line) for line in expected[len(base.read_text().splitlines()):]]
    first = project.root / "search_append_kill" / f"constraint_{TINY_CONSTRAINTS[0]}" / "info.json"
    assert project.kill_when("eval_and_search.py", "--mode", "search", when=first.is_file)
    assert data["append_kill"].read_text() == base.read_text()  # nothing appended yet
    info = json.loads(first.read_text())
    new = [SubnetConfig.from_dict(r["config"]) for r in info["rerank"] if r["newly_measured"]]
    assert new, "the first budget measured nothing: the test would not fail"
    # the first budget's measurements are in the uninterrupted sweep's appends
    assert [SubnetConfig.from_dict(r) for r in added[:len(new)]] == new
    assert all(r["source"] == "search re-ranking" for r in added)
    size = base.stat().st_size
    project.kill_when("eval_and_search.py", "--mode", "search",  # after the append, if not ended
                      when=lambda: data["append_kill"].stat().st_size > size)
    for _ in range(2):
        project.call("eval_and_search.py", "--mode", "search")
        assert data["append_kill"].read_text().splitlines() == expected
    for c in TINY_CONSTRAINTS:  # and the same answers
        ref, got = (json.loads((project.root / f"search_{tag}" / f"constraint_{c}" / "info.json").read_text())
                    for tag in data)
        assert ((got["config"], got["real_accuracy"], got["rerank"])
                == (ref["config"], ref["real_accuracy"], ref["rerank"]))


def _measured_dataset(project, spec, path: Path, seed: int = 7) -> list[SubnetConfig]:
    """12 random subnets written to ``path`` as measured 10 pp below the project's predictor."""
    from moofa.predictor import make_record
    space, rng = SearchSpace(spec), random.Random(seed)
    rows = [SubnetConfig(r.ks, r.e, r.d, 32) for r in (space.sample(rng) for _ in range(12))]
    pred = AccuracyPredictor.load(project.config["search_config"]["acc_predictor_checkpoint"], spec).predict(rows)
    path.write_text("".join(json.dumps(make_record(r, float(p) - 0.1, model=spec.name)) + "\n"
                            for r, p in zip(rows, pred)))
    return rows


def test_exported_subnet_reproduces_the_reported_top1_after_the_baseline_is_measured(tiny):
    """With measured subnets in the dataset, the best one under each budget (the baseline) is also
    measured on the test images after the answer; the exported subnet must still be the answer as
    measured (its own BN statistics), so evaluated alone it gives ``real_accuracy`` exactly."""
    from moofa.data import DataProvider
    from moofa.measurement.evaluate import evaluate
    project, spec = tiny
    data = project.root / "measured_base.jsonl"
    # measured 10 pp below the predictor: the search prefers unmeasured candidates near them
    _measured_dataset(project, spec, data)
    _write(project, "base", export=["subnet"], acc_dataset_path=str(data), rerank_top_k=0, pessimism=0.0,
           bound_margin_pp=20.0)
    project.call("eval_and_search.py", "--mode", "search")
    args = last_task_args(load_config(project.config_path))
    provider = DataProvider(args, spec.image_sizes, 0, 1)
    differs = 0
    for c in TINY_CONSTRAINTS:
        d = project.root / "search_base" / f"constraint_{c}"
        info = json.loads((d / "info.json").read_text())
        differs += info["baseline"] is not None and info["baseline"]["config"] != info["config"]
        net = load_exported(d / "subnet.pth.tar")
        alone = evaluate(net, provider.test_loader(net.subnet_config.image_size))
        assert alone.top1 == info["real_accuracy"] and alone.n_images == info["n_images"]
    assert differs, "no budget measured a baseline other than its answer: the test would not fail"


def test_predictor_only_search_resumes_without_data_or_checkpoint(tmp_path):
    project = make_tiny_project(tmp_path)
    spec = get_model_spec("TINY", project.model_config_path)
    _random_predictor(spec).save(project.config["search_config"]["acc_predictor_checkpoint"])
    _write(project, "pred", evaluate=False)
    cfg = load_config(project.config_path)
    from moofa.run import Run
    from moofa.workflows.sweep import run_search
    run = Run.load(project.config_path, project.model_config_path)
    infos = run_search(run, SingleBackend("cpu"))
    assert not Path(cfg["args"]["data_path"]).exists() and not Path(cfg["args"]["checkpoint"]).exists()
    assert [i.real_accuracy for i in infos] == [None, None]
    files = [project.root / "search_pred" / f"constraint_{c}" / "info.json" for c in TINY_CONSTRAINTS]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = run_search(run, SingleBackend("cpu"))
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert [i.config for i in again] == [i.config for i in infos]
    run_search(run, SingleBackend("cpu"), overwrite=True)
    assert [f.stat().st_mtime_ns for f in files] != stamps
    md = (project.root / "search_pred" / "summary.md").read_text()
    assert md.count("* / ") == len(TINY_CONSTRAINTS)  # predicted accuracies are marked


# ---------------------------------------------------------------------------------- export
@pytest.mark.parametrize("model", ["TINY", "TINY_OFA"])
def test_exported_subnet_reloads_alone_with_the_supernet_logits(tmp_path, model):
    project = make_tiny_project(tmp_path, model=model)
    spec = get_model_spec(model, project.model_config_path)
    torch.manual_seed(1)
    net = build_supernet(spec, n_classes=4)
    for m in net.modules():  # non-trivial BN statistics, as after re-calibration
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    cfg = SearchSpace(spec).sample(random.Random(3))
    from moofa.models.subnet_file import export_subnet
    paths = export_subnet(net, cfg, tmp_path / "out" / "subnet.pth.tar")
    x = torch.randn(4, 3, cfg.image_size, cfg.image_size)
    net.eval()
    net.set_subnet(cfg)
    with torch.no_grad():
        expected = net(x)
    del net
    loaded = load_exported(paths[0])
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert loaded.subnet_config == cfg
    if onnx_available():
        from onnx.reference import ReferenceEvaluator
        assert paths[1].suffix == ".onnx"
        got = ReferenceEvaluator(str(paths[1])).run(None, {"image": x.numpy()})[0]
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    else:
        assert len(paths) == 1
    torch.save({"state_dict": {}}, tmp_path / "plain.pth.tar")
    with pytest.raises(CheckpointError, match="not a moofa subnet export"):
        load_exported(tmp_path / "plain.pth.tar")


# ---------------------------------------------------------------------------------- tables
def _fake_run(res_dir: Path, model: str, rows: list[tuple[int, float | None, float, int, float]]) -> None:
    for c, real, pred, peak, mflops in rows:
        d = res_dir / f"constraint_{c}"
        d.mkdir(parents=True)
        (d / "info.json").write_text(json.dumps({"predicted_accuracy": pred, "real_accuracy": real,
                                                 "peak_memory": peak, "flops": mflops, "model": model,
                                                 "constraint": c}))


def test_summary_compares_runs_in_table_1_layout(tmp_path):
    # Appendix C values for two of the paper's columns
    _fake_run(tmp_path / "OFA", "OFA", [(325000, 0.7081, 0.70, 262912, 146.0), (400000, 0.7098, 0.71, 330816, 163.0)])
    _fake_run(tmp_path / "MOOFA", "MOOFA_V3", [(325000, None, 0.7213, 305280, 422.0),
                                              (700000, 0.7655, 0.76, 696192, 1007.0)])
    from moofa.cli.eval_and_search import main
    assert main(["--mode", "summary", "--results", str(tmp_path / "OFA"), str(tmp_path / "MOOFA"),
                 "--labels", "MIT OFA", "MOOFA", "--output", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "summary.md").read_text().splitlines()
    assert "| Constraint | MIT OFA | MOOFA |" in md
    assert "| < 325k | 70.81 / 262,912 / 146 | 72.13* / 305,280 / 422 |" in md
    assert "| < 400k | 70.98 / 330,816 / 163 | - |" in md
    assert "| < 700k | - | 76.55 / 696,192 / 1,007 |" in md
    rows = list(csv.DictReader((tmp_path / "cmp" / "summary.csv").open()))
    assert [r["constraint"] for r in rows] == ["325000", "400000", "700000"]
    assert rows[0]["MOOFA accuracy_source"] == "predicted" and rows[0]["MIT OFA top1_percent"] == "70.81"
    assert (tmp_path / "cmp" / "accuracy_vs_constraint.png").stat().st_size > 0


# ------------------------------------------------------------------ robust fitness (issue 10)
from moofa.predictor.dataset import PredictorDataset  # noqa: E402
from moofa.search.evolution import search_sweep  # noqa: E402
from moofa.search.robust import FitnessSettings, RobustFitness  # noqa: E402

SMALL_BUDGETS = [330_000, 420_000, 600_000]


def _measured_ofa(n: int = 60, seed: int = 0) -> PredictorDataset:
    """``n`` random OFA subnets with a made-up 'measured' accuracy that grows with the network."""
    space = SearchSpace(get_model_spec("OFA"))
    rng = random.Random(seed)
    cfgs = [space.sample(rng) for _ in range(n)]
    acc = np.array([0.5 + 0.002 * sum(c.ks[i] + c.e[i] for i in c.active_blocks(space.spec))
                    + 0.0004 * c.image_size for c in cfgs])
    return PredictorDataset("OFA", cfgs, acc, peak_memory_batch("OFA", cfgs).astype(float),
                            np.full(n, np.nan))


def _gene_distance(spec, a: SubnetConfig, b: SubnetConfig) -> float:
    """Independent count: differing (k, e) of blocks active in both, 1 per block active in only
    one, 1 for a different resolution."""
    act_a, act_b = set(a.active_blocks(spec)), set(b.active_blocks(spec))
    d = float(a.image_size != b.image_size) + len(act_a ^ act_b)
    for i in act_a & act_b:
        d += (a.ks[i] != b.ks[i]) + (a.e[i] != b.e[i])
    return d


def test_robust_fitness_distance_calibration_and_measured_subnets():
    data = _measured_ofa()
    pred = _random_predictor("OFA", n_members=3)
    fit = RobustFitness(pred, data, FitnessSettings())
    spec = get_model_spec("OFA")
    probe = [SearchSpace(get_model_spec("OFA")).sample(random.Random(99 + i)) for i in range(8)]
    est = fit(probe)
    for j, cfg in enumerate(probe):
        nearest = min(_gene_distance(spec, cfg, m) for m in data.configs)
        assert est.distance[j] == nearest
    # a measured subnet is scored by its measurement, exactly and without uncertainty
    est = fit(data.configs[:5])
    assert np.array_equal(est.mean, data.accuracies[:5]) and np.array_equal(est.fitness, data.accuracies[:5])
    assert est.measured.all() and (est.std == 0).all()
    # beyond the trust radius each extra gene costs a whole unit of fitness
    far = fit(probe)
    outside = far.distance > fit.settings.trust_radius
    assert outside.any() and (far.fitness[outside] < 0).all()
    # members' spread counts: std >= the spread of the three members
    members = pred.predict_members(pred.features(probe))
    assert (far.std >= members.std(axis=0) - 1e-12).all()
    assert (far.mean <= data.accuracies.max() + fit.settings.bound_margin_pp / 100 + 1e-12).all()
    ref = RobustFitness(pred, data, FitnessSettings(fitness="reference"))(probe)
    assert np.allclose(ref.fitness, pred.predict(probe))


def test_robust_sweep_is_monotone_bounded_and_never_below_the_measured():
    data = _measured_ofa()
    pred = _random_predictor("OFA", seed=3, n_members=2)
    fit = RobustFitness(pred, data, FitnessSettings())
    finder = EvolutionFinder("OFA", fit, SearchSettings(population_size=20, generations=15))
    rows = search_sweep(finder, SMALL_BUDGETS, top_k=5)
    preds = [ans.predicted for _, ans in rows]
    fits = [ans.accuracy for _, ans in rows]
    assert preds == sorted(preds) and fits == sorted(fits)
    for (res, ans), c in zip(rows, SMALL_BUDGETS):
        assert ans.peak == peak_memory("OFA", ans.config) <= c
        best = fit.best_measured(c)
        assert best is not None
        assert ans.accuracy >= fit.accuracies[best] and ans.predicted >= fit.accuracies[best]
        assert ans.predicted <= data.accuracies.max() + 0.005 + 1e-12
        assert ans.distance <= fit.settings.trust_radius
        assert len(res.top) <= 5 and not any(t.measured for t in res.top)
    # the reference fitness walks away from the data (what the robust one prevents)
    raw = EvolutionFinder("OFA", pred.predict, SearchSettings(population_size=20, generations=15))
    far = RobustFitness(pred, data, FitnessSettings())([raw.search(600_000).best.config])
    assert far.distance[0] > fit.settings.trust_radius


@needs_reference
def test_reference_predictor_sweep_stays_within_one_point_of_its_data():
    """Issue 10 acceptance 1 at a reduced number of generations (the full run is benchmarked)."""
    from moofa.predictor.dataset import read_dataset

    data = read_dataset(REFERENCE / "ofa_imagenet_predictor_dataset.jsonl", "OFA")
    pred = AccuracyPredictor.load(OFA_PREDICTOR, "OFA", device="cpu")
    fit = RobustFitness(pred, data, FitnessSettings())
    finder = EvolutionFinder("OFA", fit, SearchSettings(population_size=50, generations=30))
    budgets = [325_000, 450_000, 800_000]
    rows = search_sweep(finder, budgets)
    preds = [ans.predicted for _, ans in rows]
    assert preds == sorted(preds)
    assert max(preds) <= data.accuracies.max() + 0.01
    for (_, ans), c in zip(rows, budgets):
        assert ans.predicted >= fit.accuracies[fit.best_measured(c)]


def test_flops_input_uses_the_datasets_class_count(tmp_path):
    pred = _random_predictor("OFA", extra_features=("flops", "peak_memory"), n_classes=10)
    cfgs = [SearchSpace(get_model_spec("OFA")).sample(random.Random(i)) for i in range(3)]
    raw = pred.raw_extra(cfgs)
    assert np.allclose(raw[:, 0], [flops("OFA", c, 10) for c in cfgs])
    assert not np.allclose(raw[:, 0], [flops("OFA", c, 1000) for c in cfgs])
    pred.save(tmp_path / "p.pth.tar")
    back = AccuracyPredictor.load(tmp_path / "p.pth.tar", "OFA", device="cpu")
    assert back.n_classes == 10 and np.allclose(back.predict(cfgs), pred.predict(cfgs))


def test_selection_and_report_images_are_disjoint(tmp_path):
    from test_data import make_args

    from moofa.data import DataProvider
    from moofa.measurement.meter import split_images

    args = make_args(tmp_path, valid_size=12)
    p = DataProvider(args, [16])
    _, sel, what = split_images(p, "selection", 5)
    assert len(sel) == 5 and set(sel) <= set(p.valid_indices) and not set(sel) & set(p.train_indices)
    assert "selection split" in what
    view, _, _ = split_images(p, "selection", None)
    assert view(16).folder is p.train_folder  # held-out *training* images, never val/
    tview, test_idx, _ = split_images(p, "test", None)
    assert tview(16).folder is p.test_folder and test_idx == list(range(len(p.test_folder)))
    from moofa.errors import MoofaInputError
    with pytest.raises(MoofaInputError, match="valid_size"):
        split_images(DataProvider(make_args(tmp_path, valid_size=None), [16]), "selection", None)


def test_search_with_a_nan_predictor_is_one_error_line(tmp_path, capsys):
    """Issue 22 item 6: a predictor that predicts NaN ends in one error naming its checkpoint."""
    from moofa.cli.common import run_cli
    from moofa.cli.eval_and_search import main
    project = make_tiny_project(tmp_path)
    spec = get_model_spec("TINY", project.model_config_path)
    pred = _random_predictor(spec)
    with torch.no_grad():
        pred.members[0].layers[-1].weight.fill_(float("nan"))
    ck = Path(project.config["search_config"]["acc_predictor_checkpoint"])
    pred.save(ck)
    _write(project, "nan", evaluate=False)
    rc = run_cli(main, ["--config", str(project.config_path), "--mode", "search",
                        "--model_config_path", str(project.model_config_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {ck}: predictor returned a non-finite accuracy")
def test_search_sigterm_at_three_moments_ends_equal_to_an_uninterrupted_run(tiny):
    """Issue 22: SIGTERM at start-up (the lock taken), while the first budget writes its outputs
    and during the second budget. Each stopped run exits 143 with one ``stopped by SIGTERM at
    budget k/2 (constraint c)`` line and releases its lock; the rerun completes: every info.json
    (timings aside) and the summary equal an uninterrupted run's."""
    from tiny import stopped_at

    project, _ = tiny
    _write(project, "ref", export=False)
    if not (project.root / "search_ref" / "summary.csv").is_file():  # the SIGKILL test's, if it ran
        project.call("eval_and_search.py", "--mode", "search")
    expected = _results(project, "ref")
    _write(project, "term", export=False)
    res = project.root / "search_term"
    first = res / f"constraint_{TINY_CONSTRAINTS[0]}"
    budget = [f"budget {i + 1}/2 (constraint {c:,})" for i, c in enumerate(TINY_CONSTRAINTS)]
    lock = res / ".moofa.lock"
    # every moment also needs the lock file: the new run holds it (its handler installed), since a
    # stopped run may have written budget 1's outputs already (found under load)
    moments = [(lock.is_file, {None}), (lambda: lock.is_file() and first.is_dir(), {budget[0]}),
               (lambda: lock.is_file() and (first / "info.json").is_file(), set(budget))]
    for i, (when, at) in enumerate(moments):
        stopped = project.signal_when("eval_and_search.py", "--mode", "search", when=when)
        assert stopped is not None, f"run {i} ended before its SIGTERM"
        assert stopped_at(stopped) in at
        assert not lock.exists() and stopped.stop_seconds < 30
    # No assertion on budget 2's info.json: on a fast machine the last SIGTERM can land after it
    # was written (while the summary is written); the stop line then names budget 2/2, as allowed.
    rerun = project.call("eval_and_search.py", "--mode", "search")
    assert "taking over the stale lock" not in rerun.stderr and "already done with the same inputs" in rerun.stderr
    assert _results(project, "term") == expected
    assert not list(res.rglob(".*.tmp*")) and not lock.exists()
