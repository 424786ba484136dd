"""Device limits (issue 11): one memory model everywhere (the ``memory:`` section), MMACs and
parameter limits next to the memory budget, exact minima named in the exit-2 error."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REFERENCE, ROOT, needs_reference

from moofa.config import load_config
from moofa.distributed import SingleBackend
from moofa.efficiency import MemoryOptions, count_params, flops, memory_bounds, peak_memory
from moofa.efficiency.flops import params_batch
from moofa.efficiency.limits import (
    Limits,
    check_limits,
    fits_batch,
    minima,
    repair_within,
    sample_within,
    violations,
)
from moofa.errors import InfeasibleConstraintError
from moofa.models import MODELS, build_supernet
from moofa.models.layers import count_parameters
from moofa.models.spec import SubnetConfig, get_model_spec
from moofa.search.evolution import random_configs

OFA_PREDICTOR = REFERENCE / "ofa_imagenet_acc_predictor.pth.tar"
ACTS = MemoryOptions(bytes_per_element=1, count_weights=False)


@pytest.mark.parametrize("model", MODELS)
def test_exact_minima_are_attained_together_by_the_smallest_config(model):
    """The limits' feasibility rests on one config attaining every minimum; brute force over
    20,000 random configs never goes below the minima."""
    spec = get_model_spec(model)
    small = spec.min_config(min(spec.image_sizes))
    mins = minima(model, Limits(options=ACTS))
    assert mins["memory"] == peak_memory(model, small, ACTS) == memory_bounds(model, options=ACTS)[0]
    assert mins["mmacs"] == flops(model, small) and mins["params"] == count_params(model, small)
    a = random_configs(model, 20_000, np.random.default_rng(0))
    cfgs = [SubnetConfig(a["ks"][i], a["e"][i], a["d"][i], a["image_size"][i]) for i in range(2000)]
    assert min(flops(model, c) for c in cfgs) >= mins["mmacs"]
    assert params_batch(model, **a).min() >= mins["params"]


def test_params_limit_counts_the_exported_network_head_included():
    spec = get_model_spec("MOOFA_V3")
    net = build_supernet(spec, n_classes=10)
    cfg = SubnetConfig.from_dict({"ks": [5] * 20, "e": [3] * 20, "d": [3, 2, 4, 3, 2], "image_size": 160})
    net.set_subnet(cfg)
    n = count_parameters(net.get_active_subnet())
    assert count_params(spec, cfg, 10) == n
    assert fits_batch(spec, [cfg], Limits(max_params=n, n_classes=10))[0]
    assert not fits_batch(spec, [cfg], Limits(max_params=n - 1, n_classes=10))[0]


def test_sampling_and_repair_respect_every_limit():
    lim = Limits(memory=250_000, max_mmacs=200.0, max_params=5_500_000, options=ACTS)
    cs = sample_within("MOOFA_V3", lim, 0, 40)
    assert len(cs) == 40 and fits_batch("MOOFA_V3", cs, lim).all()
    big = get_model_spec("MOOFA_V3").max_config()
    assert set(violations("MOOFA_V3", big, lim)) == {"memory", "mmacs", "params"}
    fixed = repair_within("MOOFA_V3", big, lim, 1)
    assert violations("MOOFA_V3", fixed, lim) == {}
    assert repair_within("MOOFA_V3", fixed, lim, 2) == fixed  # a fitting config is kept


def test_infeasible_limits_name_the_limit_and_its_exact_minimum():
    with pytest.raises(InfeasibleConstraintError, match=r"search_config.max_mmacs.*78\.6838"):
        check_limits("MOOFA_V3", Limits(memory=400_000, max_mmacs=50))
    with pytest.raises(InfeasibleConstraintError, match=r"search_config.max_params.*3,988,256"):
        check_limits("MOOFA_V3", Limits(memory=400_000, max_params=3_988_255))
    check_limits("MOOFA_V3", Limits(memory=400_000, max_params=3_988_256, max_mmacs=78.68384))
    with pytest.raises(InfeasibleConstraintError, match=r"122,880 bytes"):
        check_limits("MOOFA_V3", Limits(memory=122_879, options=ACTS))


def test_memory_section_validates_and_names_its_unit(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"memory": {"bytes_per_element": 1, "count_weights": False},
                                    "search_config": {"max_mmacs": 300, "max_params": 1_000_000,
                                                      "export": ["executorch"]}}))
    cfg = load_config(path)
    opts = MemoryOptions.from_config(cfg, 10)
    assert opts == MemoryOptions(count_weights=False, n_classes=10) and opts.unit == "bytes"
    assert MemoryOptions.from_config(load_config(ROOT / "configs" / "demo_MOOFA.yaml")).unit == "elements"
    assert cfg["search_config"]["export"] == ["subnet", "executorch"]
    lim = Limits.from_config(cfg, 10)
    assert (lim.max_mmacs, lim.max_params, lim.n_classes) == (300.0, 1_000_000, 10)
    path.write_text(yaml.safe_dump({"search_config": {"constraints": [1000, 2000], "export": ["executorch"],
                                                      "deploy_constraints": [1500]}}))
    with pytest.raises(Exception, match=r"search_config.deploy_constraints: 1500 is not one of"):
        load_config(path)
    path.write_text(yaml.safe_dump({"memory": {"bytes_per_element": 3}}))
    with pytest.raises(Exception, match=r"memory.bytes_per_element.*\(got 3\)"):
        load_config(path)


def _search_config(tmp_path, **search) -> dict:
    return {"args": {"model": "OFA", "dataset": "imagenet"},
            "memory": {"bytes_per_element": 1, "count_weights": False},
            "search_config": {"constraints": [300_000, 450_000], "evaluate": False, "population_size": 20,
                              "generations": 8, "res_dir": str(tmp_path / "s"),
                              "acc_predictor_checkpoint": str(OFA_PREDICTOR), **search}}


@needs_reference
def test_predictor_only_search_in_bytes_of_activations_with_mmacs_and_params_limits(tmp_path):
    from moofa.run import Run
    from moofa.workflows.sweep import run_search

    raw = _search_config(tmp_path, max_mmacs=260.0, max_params=5_800_000)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    load_config(tmp_path / "c.yaml")  # loads: the config is valid
    spec = get_model_spec("OFA")
    infos = run_search(Run.load(tmp_path / "c.yaml"), SingleBackend("cpu"))
    for info, c in zip(infos, [300_000, 450_000]):
        sub = SubnetConfig.from_dict(info.config)
        assert info.peak_memory == peak_memory(spec, sub, ACTS) == max(info.memory_history) <= c
        assert info.memory_unit == info.units["peak_memory"] == "bytes"
        assert info.flops <= 260.0 and info.params == count_params(spec, sub) <= 5_800_000
        assert peak_memory(spec, sub) > info.peak_memory  # not the reference's count (weights too)
    md = (tmp_path / "s" / "summary.md").read_text()
    assert "memory peak (bytes)" in md


@needs_reference
@pytest.mark.parametrize("search, key, minimum", [
    ({"constraints": [200_000, 450_000]}, "search_config.constraints", "262,144 bytes"),
    ({"max_mmacs": 30.0}, "search_config.max_mmacs", "41.4762 MMACs"),
    ({"max_params": 3_000_000}, "search_config.max_params", "3,410,792"),
])
def test_cli_limit_below_its_minimum_exits_2_naming_it(tmp_path, capsys, search, key, minimum):
    from moofa.cli.common import run_cli
    from moofa.cli.eval_and_search import main

    raw = _search_config(tmp_path, **search)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert run_cli(main, ["--config", str(tmp_path / "c.yaml"), "--mode", "search"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0] and minimum in lines[0], lines
    assert str(tmp_path / "c.yaml") in lines[0] and not (tmp_path / "s").exists()


def test_dataset_bins_are_in_the_memory_models_unit():
    from moofa.efficiency import count_feasible
    from moofa.predictor.plan import memory_bins

    spec = get_model_spec("MOOFA_V3")
    lo, hi = memory_bounds(spec, options=ACTS)
    bins = memory_bins(spec, lo, hi + 1, 4, ACTS)
    assert sum(b.n_configs for b in bins) == count_feasible(spec, np.inf) > 0  # every config, once
    assert [b.n_configs for b in bins] != [b.n_configs for b in memory_bins(spec, lo, hi + 1, 4)]
