"""Typed, versioned result files (moofa.records): write -> read round trips, files of version 1
(no schema_version) accepted, a newer version refused with one line naming the file."""
from __future__ import annotations

import json

import pytest

from moofa.cli.common import run_cli
from moofa.cli.eval_and_search import main
from moofa.errors import ConfigError, MoofaInputError
from moofa.records import SCHEMA_VERSION, DeployRecord, EvalInfo, FinetuneInfo, SearchInfo, TargetFigures

CONFIG = {"ks": [3, 5], "e": [3, 6], "d": [2], "image_size": 32}


def _search_info(**extra) -> SearchInfo:
    return SearchInfo(predicted_accuracy=0.71, real_accuracy=0.69, peak_memory=299_000, config=CONFIG,
                      predicted_std=0.01, predicted_interval=[0.7, 0.72], images={"real_accuracy": None},
                      memory_history=[100, 299_000], flops=12.5, model="TINY", constraint=300_000,
                      n_images=40, fingerprint={"constraint": 300_000}, **extra)


@pytest.mark.parametrize("record", [
    _search_info(),
    _search_info(export=["subnet.pth.tar"], deploy={"int8_accuracy": None, "file": "deploy.json"}),
    EvalInfo(accuracy=0.5, n_images=40, config=CONFIG, network="teacher", per_image={"n_images": 40}),
    FinetuneInfo(format="moofa-finetune/1", config=CONFIG, test_top1_before=0.4, test_top1_after=0.45,
                 n_test_images=40, fingerprint="ab" * 32, export=["subnet.pth.tar"]),
    DeployRecord(int8_accuracy=0.5, fp32_accuracy=0.55, n_images=40, config=CONFIG,
                 fingerprint={"recipe": 3}, targets={"ethos-u55-128": {"sram_bytes": 1024}}),
])
def test_write_then_read_gives_the_same_record(tmp_path, record):
    path = record.write(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert next(iter(data)) == "schema_version" and data["schema_version"] == SCHEMA_VERSION == 2
    back = type(record).read(path)
    assert back == record and back.to_dict() == data
    back.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_optional_keys_are_written_only_when_set(tmp_path):
    plain = _search_info().to_dict()
    assert not {"target", "export", "deploy", "int8_accuracy"} & set(plain)
    deployed = _search_info(deploy={"file": "deploy.json"}).to_dict()
    assert deployed["int8_accuracy"] is None and list(deployed)[-2:] == ["deploy", "int8_accuracy"]
    ethos_only = DeployRecord(config=CONFIG, fingerprint={}, targets={"t": {}}).to_dict()
    assert list(ethos_only) == ["schema_version", "model", "config", "sources", "units", "calibration_images",
                                "targets", "fingerprint"]
    assert "int8_minus_fp32" not in ethos_only


def test_a_version_1_file_is_read_and_written_back_with_only_the_version_added(tmp_path):
    """A file without schema_version (what moofa wrote before it) reads as version 1; keys this
    moofa does not model are kept, and keys the file lacked are not invented."""
    old = {"predicted_accuracy": 0.7, "real_accuracy": None, "peak_memory": 1000, "config": CONFIG,
           "flops": 3.0, "model": "TINY", "constraint": 2000, "a_key_from_elsewhere": [1, 2]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    info = SearchInfo.read(tmp_path / "old.json")
    assert info.schema_version == 1 and info.peak_memory == 1000 and info.predicted_interval is None
    assert info.extra == {"a_key_from_elsewhere": [1, 2]} and not info.has("predicted_interval")
    assert info.to_dict() == {"schema_version": 2, **old}


@pytest.mark.parametrize("kind", [SearchInfo, EvalInfo, FinetuneInfo, DeployRecord])
@pytest.mark.parametrize("version", [3, 0, "2"])
def test_an_unknown_version_is_refused_with_one_line(tmp_path, kind, version):
    path = tmp_path / "info.json"
    path.write_text(json.dumps({"schema_version": version, "config": CONFIG, "accuracy": 0.5, "n_images": 1,
                                "test_top1_after": 0.5, "fingerprint": {}}))
    with pytest.raises(ConfigError) as err:
        kind.read(path)
    assert str(err.value) == f"{path}: schema_version {version!r} is not supported (this moofa reads 1-2)"


def test_a_newer_search_result_stops_the_summary_cli_with_exit_2(tmp_path, capsys):
    """eval_and_search.py --mode summary over a folder a newer moofa wrote: one line, exit 2."""
    d = tmp_path / "constraint_300000"
    d.mkdir()
    (d / "info.json").write_text(json.dumps(dict(_search_info().to_dict(), schema_version=99)))

    assert run_cli(main, ["--mode", "summary", "--results", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {d / 'info.json'}: schema_version 99 is not supported (this moofa reads 1-2)"]


def test_a_file_that_is_not_a_record_names_file_and_key(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(MoofaInputError, match=r"a.json: n_images: not a eval result: missing key"):
        EvalInfo.read(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("[1, 2]")
    with pytest.raises(MoofaInputError, match="expected a JSON object"):
        SearchInfo.read(tmp_path / "b.json")


def test_target_figures_read_what_deploy_json_stores_and_nothing_else():
    """A stored Ethos-U program record (deploy.json ``targets[T]``) reads into its typed figures;
    keys the reports do not use are left out, and a record without Vela's SRAM is no program."""
    stored = {"sram_bytes": 153_600, "flash_bytes": 612_345, "inference_ms": 4.25, "cycles": 2_125_000,
              "delegate_calls": 1, "system_config": "Ethos_U55_High_End_Embedded", "memory_mode": "Shared_Sram",
              "vela_version": "4.4.1", "compile_seconds": 61.0}
    f = TargetFigures.read(stored)
    assert f == TargetFigures(153_600, 612_345, 4.25, 1, "Ethos_U55_High_End_Embedded", "Shared_Sram")
    assert f.figure("inference_ms") == 4.25 and f.figure("sram_bytes") == 153_600.0
    assert TargetFigures.read(dict(stored, sram_bytes=None)) is None and TargetFigures.read(["x"]) is None
