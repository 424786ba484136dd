"""Arm Ethos-U deployment (issue 20): a tiny subnet compiles for ethos-u55-128 as one delegate call
and deploy.json holds Vela's figures; an in-place SE gate (which the Arm quantiser does not
annotate) splits the program and is an ``error:`` line; Vela re-targets the kept TOSA.

One module fixture deploys one tiny subnet once (tiny models compile in seconds)."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from tiny import make_tiny_project

from moofa.cli.common import run_cli
from moofa.config import last_task_args, load_config
from moofa.deploy import DEPLOY_NAME, ethosu_available, target_program_name
from moofa.deploy.ethosu import ARENA, LOWERING
from moofa.efficiency import MemoryOptions, peak_memory
from moofa.efficiency.target import ethosu_activation_bytes
from moofa.models import build_supernet
from moofa.models.spec import get_model_spec
from moofa.models.subnet_file import export_subnet

pytestmark = pytest.mark.skipif(not ethosu_available(),
                                reason="the ethos-u extra is not installed (pip install -e '.[ethos-u]')")
TARGET = "ethos-u55-128"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from moofa.cli.deploy import main
    from moofa.data import ensure_dataset

    root = tmp_path_factory.mktemp("ethosu")
    project = make_tiny_project(root, "TINY_OFA")
    spec = get_model_spec("TINY_OFA", project.model_config_path)
    args = last_task_args(load_config(project.config_path))
    ensure_dataset(args)
    torch.manual_seed(0)
    net = build_supernet(spec, n_classes=4)
    cfg = spec.min_config(32)
    subnet = root / "subnet.pth.tar"
    export_subnet(net, cfg, subnet, with_onnx=False)
    project.write(deploy=dict(calibration_images=16, targets=["xnnpack"]))
    out = root / "out"
    argv = ["--subnet", str(subnet), "--config", str(project.config_path), "--model_config_path",
            str(project.model_config_path), "--output", str(out), "--target", TARGET, "--no-progress"]
    assert run_cli(main, argv) == 0
    return project, spec, cfg, subnet, out, argv


def test_subnet_compiles_to_one_delegate_call_with_velas_figures(deployed):
    _, spec, cfg, _, out, _ = deployed
    dep = json.loads((out / DEPLOY_NAME).read_text())
    assert "int8_accuracy" not in dep  # --target replaced deploy.targets: no XNNPACK program
    f = dep["targets"][TARGET]
    assert f["delegate_calls"] == 1 and f["system_config"] == "Ethos_U55_High_End_Embedded"
    assert f["memory_mode"] == "Shared_Sram" and f["vela_version"] == "5.1.0"
    assert (out / target_program_name(TARGET)).stat().st_size == f["pte_bytes"] > 0
    # the figures are Vela's summary, in bytes and ms
    summary = out / f"vela_{TARGET}" / "out_summary_Ethos_U55_High_End_Embedded.csv"
    row = {k.strip(): v.strip() for k, v in next(csv.DictReader(summary.open())).items()}
    assert f["sram_bytes"] == round(float(row["sram_memory_used"]) * 1024) > 0
    assert f["flash_bytes"] == round(float(row["off_chip_flash_memory_used"]) * 1024) > 0
    assert f["cycles"] == int(float(row["cycles_total"])) > 0
    assert f["inference_ms"] == pytest.approx(1e3 * float(row["inference_time"]))
    assert f["inference_ms"] == pytest.approx(f["cycles"] / 500e3, rel=1e-6)  # 500 MHz
    # per-layer cycles (--verbose-performance) sum to the total
    rows = list(csv.DictReader((out / f"vela_{TARGET}" / "out_per-layer.csv").open()))
    assert sum(int(float(r["Op Cycles"])) for r in rows) == f["cycles"]
    # SRAM holds at least the int8 activations of the analytic model's peak
    acts = peak_memory(spec, cfg, MemoryOptions(count_weights=False, bytes_per_element=1))
    assert acts <= f["sram_bytes"] <= acts + 16384
    # Vela's arena is the Ethos-U peak (channels in bricks of 16, the shortcut held as int8), and
    # Vela's whole-tensor schedule fills it: 12,288 B here, where the int8 peak is 8,192
    ethosu = ethosu_activation_bytes(spec, cfg)
    assert f["arena_bytes"] == ethosu == f["sram_bytes"] == 12288 and f["arena"] == ARENA
    assert "not measurements on silicon" in dep["sources"]["targets"]


def test_int8_top1_of_the_tosa_network_agrees_with_pt2e(deployed):
    """The lowered TOSA network run by the TOSA reference model ranks the classes as the Arm
    quantiser's PT2E model does, and deploy.json's top-1 covers every test image."""
    from moofa.data import DataProvider
    from moofa.deploy import calibration_batches
    from moofa.deploy.ethosu import quantize_for, reference_model_available, tosa_top1
    from moofa.models.subnet_file import load_exported

    if not reference_model_available():
        pytest.skip("tosa-tools without the TOSA reference model")
    project, _, cfg, subnet, out, _ = deployed
    dep = json.loads((out / DEPLOY_NAME).read_text())
    f = dep["targets"][TARGET]
    args = last_task_args(load_config(project.config_path))
    provider = DataProvider(args, [cfg.image_size], 0, 1)
    n_test = len(provider.test_folder)
    assert f["tosa_n_images"] == n_test == 40 and 0 <= f["tosa_int8_accuracy"] <= 1
    net = load_exported(subnet)
    quantized, _ = quantize_for(net, cfg.image_size, calibration_batches(provider, cfg.image_size, 16), TARGET)
    images, labels = next(iter(provider.test_loader(cfg.image_size)))
    images, labels = images[:12], labels[:12]
    got = tosa_top1(out / f"vela_{TARGET}" / "out.tosa", quantized, [(images, labels)])
    with torch.no_grad():
        want = quantized(images).argmax(1) == labels
    agree = sum(int(a == b) for a, b in zip(got["tosa_correct"], want.tolist()))
    assert agree >= 11, (got["tosa_correct"], want.tolist())


def test_vela_retargets_the_kept_tosa(deployed, tmp_path):
    from moofa.deploy.ethosu import vela_compile_tosa

    _, _, _, _, out, _ = deployed
    dep = json.loads((out / DEPLOY_NAME).read_text())
    f = dep["targets"][TARGET]
    again = vela_compile_tosa(out / f"vela_{TARGET}" / "out.tosa", TARGET, tmp_path / "a", arena=f["arena_bytes"])
    assert (again.sram_bytes, again.cycles, again.flash_bytes) == (f["sram_bytes"], f["cycles"], f["flash_bytes"])
    # Vela's default arena: it fills spare SRAM with weight buffers (13,360 B here) that its own
    # estimate does not speed up (docs/ethosu.md#the-sram-arena)
    free = vela_compile_tosa(out / f"vela_{TARGET}" / "out.tosa", TARGET, tmp_path / "c")
    assert free.arena_bytes is None and free.sram_bytes == 13360 > f["sram_bytes"] and free.cycles == f["cycles"]
    u65 = vela_compile_tosa(out / f"vela_{TARGET}" / "out.tosa", "ethos-u65-256", tmp_path / "b")
    assert u65.system_config == "Ethos_U65_High_End" and u65.macs == f["macs"]
    assert u65.inference_ms < f["inference_ms"]  # twice the MACs per cycle, faster memory


def test_reuse_and_bad_target(deployed, capsys):
    from moofa.cli.deploy import main

    _, _, _, _, out, argv = deployed
    before = (out / DEPLOY_NAME).stat().st_mtime_ns
    assert run_cli(main, argv) == 0  # same subnet, same target: reused
    assert (out / DEPLOY_NAME).stat().st_mtime_ns == before
    assert "SRAM" in capsys.readouterr().out
    # the reuse is keyed on how the program was lowered, too
    fingerprint = json.loads((out / DEPLOY_NAME).read_text())["fingerprint"]
    assert fingerprint["lowering"] == LOWERING and fingerprint["arena"] == ARENA
    bad = [*argv[:-3], "--target", "ethos-u99-1", "--no-progress"]
    assert run_cli(main, bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--target" in err[0] and "ethos-u99-1" in err[0]


def test_in_place_se_gate_splits_the_program_and_is_an_error_line(deployed, capsys, monkeypatch, tmp_path):
    """The supernet's SE gate is out of place; an in-place one leaves the gates on the CPU."""
    from torch import nn

    import moofa.deploy as deploy
    from moofa.cli.deploy import main

    _, _, _, _, _, argv = deployed
    real = deploy.deploy_network

    def in_place_gates(net, *a, **k):
        for m in net.modules():
            if isinstance(m, nn.Hardsigmoid):
                m.inplace = True
        return real(net, *a, **k)

    monkeypatch.setattr(deploy, "deploy_network", in_place_gates)
    out = tmp_path / "split"
    bad = [*argv[:argv.index("--output") + 1], str(out), "--target", TARGET, "--no-progress"]
    assert run_cli(main, bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "delegate calls, not one" in err[0] and "hardsigmoid" in err[0]
    assert not (out / DEPLOY_NAME).exists()


def test_missing_extra_gives_the_install_hint(deployed, capsys, monkeypatch):
    import moofa.deploy.ethosu as ethosu
    from moofa.cli.deploy import main

    _, _, _, _, out, argv = deployed
    monkeypatch.setattr(ethosu, "ethosu_available", lambda: False)
    assert run_cli(main, [*argv[:argv.index("--output") + 1], str(out / "x"), "--target", TARGET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[ethos-u]'" in err[0]


def test_se_gate_is_out_of_place_and_state_dict_unchanged():
    from moofa.models.layers import SEModule

    se = SEModule(16)
    assert se.fc.h_sigmoid.inplace is False
    assert sorted(se.state_dict()) == ["fc.expand.bias", "fc.expand.weight", "fc.reduce.bias", "fc.reduce.weight"]


def test_lowering_keeps_int8_shortcuts():
    """docs/ethosu.md#residual-adds-and-sram: a residual block adds its shortcut first (the traced
    ADD's first operand is the block's input), and while moofa lowers, the Arm pass manager skips
    FuseConsecutiveRescalesPass, which it runs otherwise and runs again afterwards."""
    from executorch.backends.arm._passes import FuseConsecutiveRescalesPass
    from executorch.backends.arm._passes.arm_pass_manager import ArmPassManager

    from moofa.deploy.ethosu import _compile_spec, _int8_shortcuts
    from moofa.models.layers import ResidualBlock

    block = ResidualBlock(torch.nn.Conv2d(8, 8, 1), torch.nn.Identity()).eval()
    x = torch.randn(1, 8, 4, 4)
    graph = torch.export.export(block, (x,)).graph
    (add,) = [n for n in graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert add.args[0].op == "placeholder" and add.args[1].op == "call_function"
    assert torch.equal(block(x), block.conv(x) + x)

    spec = _compile_spec(TARGET, None, None)
    assert FuseConsecutiveRescalesPass not in ArmPassManager(spec)._skip_pass_types
    with _int8_shortcuts():
        inside = ArmPassManager(spec)
    assert FuseConsecutiveRescalesPass in inside._skip_pass_types
    inside.add_pass(FuseConsecutiveRescalesPass())
    assert not any(isinstance(p, FuseConsecutiveRescalesPass) for p in inside.passes)
    after = ArmPassManager(spec)
    after.add_pass(FuseConsecutiveRescalesPass())
    assert FuseConsecutiveRescalesPass not in after._skip_pass_types and len(after.passes) == 1
