"""The 90 % interval of predicted accuracies (issue 19): calibrated coverage on synthetic data with
a known truth, measured subnets, info.json's ``predicted_interval`` and the summaries."""
from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest
import torch
from tiny import make_tiny_project

from moofa.distributed import SingleBackend
from moofa.efficiency import peak_memory_batch
from moofa.models.space import SearchSpace
from moofa.models.spec import get_model_spec
from moofa.predictor import AccuracyPredictor
from moofa.predictor.create import subnet_record
from moofa.predictor.dataset import PredictorDataset, append_records
from moofa.search.results import format_prediction, read_series, summary_csv, summary_markdown
from moofa.search.robust import INTERVAL_LEVEL, FitnessSettings, RobustFitness, conformal_quantile

NOISE = 0.004  # sd (fraction) of the true accuracy around the predictor's output


def _predictor(spec, seed: int = 0) -> AccuracyPredictor:
    torch.manual_seed(seed)
    return AccuracyPredictor(spec, hidden_size=32, n_layers=2, base_acc=0.7).eval()


def _truth(pred: AccuracyPredictor, cfgs: list, rng: np.random.Generator) -> np.ndarray:
    """The known truth: the predictor's output plus independent noise of sd NOISE."""
    return pred.predict(cfgs) + rng.normal(0.0, NOISE, len(cfgs))


def _dataset(cfgs: list, acc: np.ndarray) -> PredictorDataset:
    return PredictorDataset("OFA", cfgs, acc, peak_memory_batch("OFA", cfgs).astype(float),
                            np.full(len(cfgs), np.nan))


def test_conformal_quantile_rank_and_too_few_scores():
    scores = np.arange(1.0, 20.0)  # 19 scores: rank ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.9) == 18.0
    assert math.isinf(conformal_quantile(np.arange(1.0, 9.0), 0.9))  # 8 scores: rank 9 > 8


def test_interval_has_the_requested_coverage_where_the_truth_is_known():
    space = SearchSpace(get_model_spec("OFA"))
    rng_cfg, rng = random.Random(0), np.random.default_rng(0)
    pred = _predictor("OFA")
    calib = [space.sample(rng_cfg) for _ in range(300)]
    held_out = [space.sample(rng_cfg) for _ in range(1500)]
    fit = RobustFitness(pred, _dataset(calib, _truth(pred, calib, rng)), FitnessSettings())
    y = _truth(pred, held_out, rng)
    iv = fit.interval(held_out)
    mean = fit(held_out).mean
    assert (iv[:, 0] <= mean).all() and (mean <= iv[:, 1]).all()
    coverage = float(((iv[:, 0] <= y) & (y <= iv[:, 1])).mean())
    assert abs(coverage - INTERVAL_LEVEL) <= 0.04, coverage
    # calibrated, not merely wide: close to the oracle width 2 x 1.645 sd (the calibrated mean
    # adds the neighbours' noise, normalising by their local spread some more)
    oracle = 2 * 1.645 * NOISE
    width = float((iv[:, 1] - iv[:, 0]).mean())
    assert 0.95 * oracle <= width <= 1.5 * oracle, (width, oracle)
    # the width grows beyond the calibration's typical distance to the data
    cal = fit.interval_calibration
    d = fit(held_out).distance
    beyond = d > cal.reference_distance
    assert beyond.any()
    half = (iv[:, 1] - iv[:, 0]) / 2
    floor = cal.quantile * fit.settings.distance_uncertainty_pp / 100 * (d - cal.reference_distance)
    assert (half[beyond] >= floor[beyond] - 1e-12).all()


def test_a_wrong_noise_level_in_the_calibration_data_shows_as_wrong_coverage():
    """The coverage comes from the calibration data: calibrated on data 3x less noisy than the
    held-out truth, the interval covers far less than 90 % (the test above could fail)."""
    space = SearchSpace(get_model_spec("OFA"))
    rng_cfg, rng = random.Random(1), np.random.default_rng(1)
    pred = _predictor("OFA", seed=1)
    calib = [space.sample(rng_cfg) for _ in range(300)]
    held_out = [space.sample(rng_cfg) for _ in range(1000)]
    quiet = pred.predict(calib) + rng.normal(0.0, NOISE / 3, len(calib))
    fit = RobustFitness(pred, _dataset(calib, quiet), FitnessSettings())
    y = _truth(pred, held_out, rng)
    iv = fit.interval(held_out)
    assert float(((iv[:, 0] <= y) & (y <= iv[:, 1])).mean()) < 0.6


def test_measured_subnets_give_their_measurement_and_no_data_gives_no_interval():
    space = SearchSpace(get_model_spec("OFA"))
    rng_cfg = random.Random(2)
    pred = _predictor("OFA")
    cfgs = [space.sample(rng_cfg) for _ in range(40)]
    acc = _truth(pred, cfgs, np.random.default_rng(2))
    fit = RobustFitness(pred, _dataset(cfgs, acc), FitnessSettings())
    assert np.array_equal(fit.interval(cfgs[:4]), np.stack([acc[:4], acc[:4]], axis=1))
    assert fit.interval_of(cfgs[0]) == [float(acc[0])] * 2
    assert fit.describe()["interval"]["calibration_subnets"] == 40
    assert RobustFitness(pred, None).interval(cfgs) is None
    reference = RobustFitness(pred, _dataset(cfgs, acc), FitnessSettings(fitness="reference"))
    assert reference.interval(cfgs) is None and reference.describe()["interval"] is None
    few = RobustFitness(pred, _dataset(cfgs[:5], acc[:5]), FitnessSettings())  # too few for 90 %
    assert np.array_equal(few.interval(cfgs[10:12]), [[0.0, 1.0], [0.0, 1.0]])


def test_search_writes_predicted_interval_and_the_summaries_show_it(tmp_path):
    project = make_tiny_project(tmp_path, search_config=dict(
        constraints=[9000, 16000], evaluate=False, export=False, res_dir=str(tmp_path / "search")))
    spec = get_model_spec("TINY", project.model_config_path)
    pred = _predictor(spec)
    pred.save(project.config["search_config"]["acc_predictor_checkpoint"])
    space, rng = SearchSpace(spec), random.Random(0)
    cfgs = [space.sample(rng) for _ in range(40)]
    acc = _truth(pred, cfgs, np.random.default_rng(0))
    append_records(project.config["search_config"]["acc_dataset_path"],
                   [subnet_record(spec, c, float(a), 4) for c, a in zip(cfgs, acc)])
    from moofa.run import Run
    from moofa.workflows.sweep import run_search
    infos = run_search(Run.load(project.config_path, project.model_config_path), SingleBackend("cpu"))
    for info in infos:
        lo, hi = info.predicted_interval
        assert 0 <= lo <= info.predicted_accuracy <= hi <= 1
        assert (lo == hi) == info.predicted_source.startswith("measured")
        assert info.fitness["interval"]["level"] == INTERVAL_LEVEL
        on_disk = json.loads((tmp_path / "search" / f"constraint_{info.constraint}" / "info.json").read_text())
        assert on_disk["predicted_interval"] == [lo, hi]
    md = (tmp_path / "search" / "summary.md").read_text()
    for info in infos:
        cell = format_prediction(info.predicted_accuracy, info.predicted_interval, info.predicted_source)
        assert f"| {cell} |" in md
    rows = list(csv.DictReader((tmp_path / "search" / "summary.csv").open()))
    assert [float(r["TINY predicted_interval_low_percent"]) for r in rows] == \
        [round(100 * i.predicted_interval[0], 2) for i in infos]


def _info(c: int, pred: float, **extra) -> dict:
    return {"predicted_accuracy": pred, "real_accuracy": None, "peak_memory": c - 1000, "flops": 200.0,
            "model": "OFA", "constraint": c, **extra}


def test_summaries_read_results_with_and_without_an_interval(tmp_path):
    old = _info(325000, 0.7131, predicted_std=0.0064, predicted_source="predicted: ...")
    new = _info(450000, 0.75, predicted_std=0.0068, predicted_source="predicted: ...",
                predicted_interval=[0.7412, 0.7588])
    measured = _info(800000, 0.7607, predicted_std=0.0, predicted_source="measured: ...",
                     predicted_interval=[0.7607, 0.7607])
    for info in (old, new, measured):
        d = tmp_path / f"constraint_{info['constraint']}"
        d.mkdir()
        (d / "info.json").write_text(json.dumps(info))
    run = read_series(tmp_path)
    assert [r.predicted_interval for r in run.rows] == [None, (0.7412, 0.7588), (0.7607, 0.7607)]
    md = summary_markdown([run])
    assert "| < 325k | 71.31 ± 0.64 | 71.31 % (predicted) |" in md  # the old columns kept
    assert "| < 450k | 75.00 ± 0.68 | 75.00 % [74.12, 75.88] (predicted) |" in md
    assert "| < 800k | 76.07 ± 0.00 | 76.07 % (measured) |" in md
    rows = list(csv.DictReader(summary_csv([run]).splitlines()))
    assert rows[0]["OFA predicted_top1_percent"] == "71.31" and rows[0]["OFA predicted_interval_low_percent"] == ""
    assert (rows[1]["OFA predicted_interval_low_percent"], rows[1]["OFA predicted_interval_high_percent"]) == \
        ("74.12", "75.88")
    bad = dict(new, predicted_interval=[0.76, 0.74])
    (tmp_path / "constraint_450000" / "info.json").write_text(json.dumps(bad))
    from moofa.errors import MoofaInputError
    with pytest.raises(MoofaInputError, match="low above high"):
        read_series(tmp_path)


def test_sweep_log_line_shows_the_interval(caplog):
    from moofa.records import SearchInfo
    from moofa.workflows.sweep import _log_result
    info = _info(325000, 0.7131, predicted_std=0.0064, predicted_source="predicted: ...",
                 predicted_interval=[0.7010, 0.7200], search_seconds=1.0)
    with caplog.at_level("INFO", logger="moofa.workflows.sweep"):
        _log_result(SearchInfo.from_dict(info))
    assert "top-1 71.31 % [70.10, 72.00] (predicted), sd 0.64 pp" in caplog.text
