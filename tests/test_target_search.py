"""Search under an Ethos-U chip's limits (issue 20): ``max_latency_ms`` and ``max_sram_bytes`` are
met by every candidate, child and repair (predicted by the latency table) and by the compiled
answer (Vela's figures); a compiled candidate that breaks a limit is replaced by the next one, and
an answer the compiler says does not fit is never returned."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REFERENCE, needs_reference

from moofa.config import SearchSettings, load_config
from moofa.deploy.ethosu import ARENA, LOWERING
from moofa.distributed import SingleBackend
from moofa.efficiency import sample_feasible
from moofa.efficiency.limits import Limits, check_limits, fits_batch, repair_within, sample_within
from moofa.errors import InfeasibleConstraintError, MoofaInputError
from moofa.latency import load_table
from moofa.models.spec import SubnetConfig, get_model_spec
from moofa.search.target import compile_answer, with_target_limits

OFA_PREDICTOR = REFERENCE / "ofa_imagenet_acc_predictor.pth.tar"
TARGET = "ethos-u55-128"
SC = {"target": TARGET, "max_latency_ms": 20.0, "max_sram_bytes": 700_000}


def _sc(**changes) -> SearchSettings:
    """search_config with the chip limits of SC (and ``changes``), validated as loading does."""
    return SearchSettings.from_mapping({**SC, **changes})


def _limits(sc=SC) -> Limits:
    return with_target_limits(Limits(n_classes=1000), SearchSettings.from_mapping(sc), get_model_spec("OFA"))


def test_every_sample_and_repair_meets_the_predicted_chip_limits():
    spec, table, lim = get_model_spec("OFA"), load_table("OFA", TARGET), _limits()
    drawn = sample_within(spec, lim, 0, 64)
    assert (table.predict_ms_batch(drawn, spec) <= 20.0).all()
    assert (table.predict_sram_batch(drawn, spec) <= 700_000).all()
    big = sample_feasible(spec, np.inf, 1, 32)
    assert not fits_batch(spec, big, lim).all()  # the limits bind
    for c in big:
        fixed = repair_within(spec, c, lim, 0)
        assert table.predict_ms(fixed) <= 20.0 and table.predict_sram_bytes(fixed) <= 700_000


def test_a_chip_limit_below_its_minimum_names_the_key():
    with pytest.raises(InfeasibleConstraintError, match=r"search_config.max_latency_ms.*minimum"):
        check_limits("OFA", _limits({"target": TARGET, "max_latency_ms": 1.0}))
    with pytest.raises(MoofaInputError, match=r"search_config.max_sram_bytes.*needs search_config.target"):
        with_target_limits(Limits(), SearchSettings.from_mapping({"max_sram_bytes": 10}), get_model_spec("OFA"))


def test_compiled_answer_breaking_a_limit_is_replaced_and_never_returned(monkeypatch, tmp_path):
    import moofa.deploy as deploy

    spec, lim = get_model_spec("OFA"), _limits()
    cands = sample_within(spec, lim, 0, 3)
    compiled = []

    def fake(net, spec_, cfg, calib, t, out, *a):  # Vela's figures: the first candidate is over SRAM
        compiled.append(cfg)
        sram = 800_000 if len(compiled) == 1 else 600_000
        return {"sram_bytes": sram, "flash_bytes": 1, "inference_ms": 10.0, "cycles": 1, "macs": 1, "delegate_calls": 1}

    monkeypatch.setattr(deploy, "compile_target", fake)
    sc = _sc(compile_tries=3)
    table = load_table("OFA", TARGET)
    cfg, rec = compile_answer(spec, sc, table, cands, lim, lambda c: None, lambda r: [], tmp_path)
    assert cfg == cands[1] and len(rec["tries"]) == 2 and rec["tries"][0]["broken"] == {"max_sram_bytes": 800_000}
    assert rec["compiled"]["sram_bytes"] == 600_000 and rec["predicted"]["sram_bytes"] == table.predict_sram_bytes(cfg)
    compiled.clear()
    with pytest.raises(InfeasibleConstraintError, match="none of the 1 best candidates fits"):
        compile_answer(spec, _sc(compile_tries=1), table, cands, lim, lambda c: None, lambda r: [], tmp_path)


@needs_reference
def test_search_answer_is_compiled_and_meets_the_limits(tmp_path):
    from moofa.run import Run
    from moofa.workflows.sweep import run_search

    raw = {"args": {"model": "OFA", "dataset": "imagenet"},
           "memory": {"bytes_per_element": 1, "count_weights": False},
           "search_config": {"constraints": [900_000], "evaluate": False, "population_size": 16,
                             "generations": 4, "res_dir": str(tmp_path / "s"),
                             "acc_predictor_checkpoint": str(OFA_PREDICTOR), **SC}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    load_config(tmp_path / "c.yaml")
    info = run_search(Run.load(tmp_path / "c.yaml"), SingleBackend("cpu"))[0]
    t = info.target
    cfg = SubnetConfig.from_dict(info.config)
    assert t["target"] == TARGET and t["tries"][-1]["config"] == info.config
    assert t["compiled"]["inference_ms"] <= 20.0 and t["compiled"]["sram_bytes"] <= 700_000  # Vela's
    assert t["compiled"]["delegate_calls"] == 1
    table = load_table("OFA", TARGET)
    assert t["predicted"]["inference_ms"] == pytest.approx(table.predict_ms(cfg))
    assert t["predicted"]["inference_ms"] <= 20.0
    assert "not measurements on silicon" in t["estimate"]
    for c in info.candidates:
        c = SubnetConfig.from_dict(c["config"])
        assert table.predict_ms(c) <= 20.0 and table.predict_sram_bytes(c) <= 700_000
    assert (tmp_path / "s" / "constraint_900000" / t["folder"] / f"vela_{TARGET}").is_dir()
    md = (tmp_path / "s" / "summary.md").read_text()  # Table 1's layout with Vela's figures
    c = t["compiled"]
    assert f"## {TARGET}: Vela's estimates" in md and "not measurements on silicon" in md
    assert f"{c['sram_bytes'] / 1024:,.1f} / {c['flash_bytes'] / 1024:,.1f} / {c['inference_ms']:.3f}" in md


def test_a_changed_latency_table_is_a_changed_search_input(tmp_path):
    """The table that predicts the chip's figures is an input of the sweep by content: editing
    it (or upgrading the shipped one) makes finished budgets stale instead of reusing them."""
    import json

    from moofa.config import last_task_args
    from moofa.workflows.sweep import search_inputs

    table = tmp_path / "table.json"
    table.write_text(json.dumps(load_table("OFA", TARGET).to_dict()))
    raw = {"args": {"model": "OFA", "dataset": "imagenet"},
           "search_config": {"constraints": [900_000], "evaluate": False, "res_dir": str(tmp_path / "s"),
                             "acc_predictor_checkpoint": str(tmp_path / "p.pth.tar"), **SC,
                             "latency_table": str(table)}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "p.pth.tar").write_bytes(b"a predictor file, read only by content here")

    def inputs() -> dict:
        cfg = load_config(tmp_path / "c.yaml")
        return search_inputs(cfg, get_model_spec("OFA"), last_task_args(cfg))

    first = inputs()
    assert inputs() == first and len(first["latency_table"]) == 64 and first["lowering"] == LOWERING
    assert first["arena"] == ARENA  # the answer's compiled SRAM depends on the arena Vela is given
    edited = json.loads(table.read_text())
    edited["sram"]["o"] += 1
    table.write_text(json.dumps(edited))
    assert inputs()["latency_table"] != first["latency_table"]
    raw["search_config"] = {k: v for k, v in raw["search_config"].items() if k not in (*SC, "latency_table")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert not {"latency_table", "lowering"} & set(inputs())  # a search without a target keeps its fingerprint
