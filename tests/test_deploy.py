"""int8 deployment with ExecuTorch (issue 11): a found subnet of a small trained supernet becomes
int8 and fp32 programs through the search's ``executorch`` export; the int8 program runs in
``executorch.runtime``, agrees with the quantised PyTorch model and stays within 3 pp of fp32.

Lowering is slow (tens of seconds per program on a busy 2-core machine), so one module fixture
deploys one tiny subnet once and the tests read its outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import make_tiny_project

from moofa.cli.common import run_cli
from moofa.config import last_task_args, load_config
from moofa.deploy import DEPLOY_NAME, FP32_NAME, INT8_NAME, calibration_batches, executorch_available
from moofa.deploy.ethosu import XNNPACK
from moofa.distributed import SingleBackend
from moofa.efficiency import MemoryOptions, peak_memory, sample_feasible
from moofa.fingerprint import Inputs
from moofa.models import build_supernet
from moofa.models.spec import SubnetConfig, get_model_spec
from moofa.models.subnet_file import load_exported

pytestmark = pytest.mark.skipif(not executorch_available(),
                                reason="the deploy extra is not installed (pip install -e '.[deploy]')")
CONSTRAINT = 8000  # elements: only 32-px subnets of TINY fit (6,272..11,808 there; 48 px starts at 13,952)
CALIB = 64


def _train(spec, provider, constraint: int, epochs: int = 20) -> torch.nn.Module:
    """A few epochs of the supernet on random subnets within the budget (a small trained
    supernet: every subnet the search may pick has learnt the task)."""
    torch.manual_seed(0)
    net = build_supernet(spec, n_classes=provider.n_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    configs = sample_feasible(spec, constraint, 0, 64, image_size=32)
    step = 0
    for epoch in range(epochs):
        for images, labels in provider.train_loader(epoch):
            net.set_subnet(configs[step % len(configs)])
            step += 1
            loss = F.cross_entropy(net(F.interpolate(images, size=32)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from moofa.data import DataProvider, ensure_dataset
    from moofa.predictor import AccuracyPredictor
    from moofa.run import Run
    from moofa.workflows.sweep import run_search

    root = tmp_path_factory.mktemp("deploy")
    project = make_tiny_project(root, args=dict(synthetic=dict(val_per_class=50)))  # 200 test images
    spec = get_model_spec("TINY", project.model_config_path)
    args = last_task_args(load_config(project.config_path))
    ensure_dataset(args)
    provider = DataProvider(args, [32], 0, 1)
    net = _train(spec, provider, CONSTRAINT)
    Path(args["checkpoint"]).parent.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict()}, args["checkpoint"])
    torch.manual_seed(0)
    AccuracyPredictor(spec, hidden_size=16, n_layers=2, base_acc=0.5).eval().save(
        project.config["search_config"]["acc_predictor_checkpoint"])
    project.write(search_config=dict(constraints=[CONSTRAINT], population_size=4, generations=1,
                                     export=["subnet", "executorch"]),
                  deploy=dict(calibration_images=CALIB))
    cfg = load_config(project.config_path, project.model_config_path)
    infos = run_search(Run(cfg), SingleBackend("cpu"))
    out = root / "search" / f"constraint_{CONSTRAINT}"
    return project, spec, cfg, infos[0], out, provider


def test_search_export_writes_programs_and_measured_int8_top1(deployed):
    project, spec, cfg, info, out, _ = deployed
    dep = json.loads((out / DEPLOY_NAME).read_text())
    for key in ("int8_accuracy", "fp32_accuracy", "n_images", "pte_bytes", "runtime_memory_bytes"):
        assert key in dep and dep[key] is not None, key
    assert dep["n_images"] == info.n_images == 200  # the images of real_accuracy: all of val/
    assert dep["fp32_accuracy"] == info.real_accuracy  # the exported network in PyTorch
    assert info.int8_accuracy == info.deploy["int8_accuracy"] == dep["int8_accuracy"]
    assert dep["pte_bytes"] == (out / INT8_NAME).stat().st_size > 0
    assert dep["fp32_pte_bytes"] == (out / FP32_NAME).stat().st_size > 0
    assert dep["runtime_memory_bytes"] > 0 and dep["fp32_runtime_memory_bytes"] > 0
    # the whole int8 network is one XNNPACK call: no fp32 pooling between delegate calls
    assert dep["int8_delegate_calls"] == 1 and dep["int8_undelegated_ops"] == {}, dep["int8_undelegated_ops"]
    cfg_sub = SubnetConfig.from_dict(info.config)
    assert dep["analytic_peak_memory"] == info.peak_memory == peak_memory(spec, cfg_sub) <= CONSTRAINT
    assert dep["analytic_activations_elements"] == peak_memory(spec, cfg_sub, MemoryOptions(count_weights=False))
    assert dep["calibration_images"] == CALIB and {INT8_NAME, FP32_NAME, DEPLOY_NAME} <= set(info.export)
    md = (project.root / "search" / "summary.md").read_text()
    assert "int8 ExecuTorch programs" in md and f"{100 * dep['int8_accuracy']:.2f}" in md
    assert f"{dep['pte_bytes']:,}" in md


def test_int8_program_runs_in_the_runtime_agrees_with_pt2e_and_stays_within_3pp(deployed):
    from executorch.runtime import Runtime

    from moofa.deploy.programs import quantize

    _, spec, _, info, out, provider = deployed
    dep = json.loads((out / DEPLOY_NAME).read_text())
    buffer = (out / INT8_NAME).read_bytes()
    program = Runtime.get().load_program(buffer)  # kept alive while its method runs
    method = program.load_method("forward")
    fp32 = load_exported(out / "subnet.pth.tar")
    r = fp32.subnet_config.image_size
    quantized, _ = quantize(fp32, r, calibration_batches(provider, r, CALIB))  # the same recipe, again
    hits = hits_pt2e = 0
    diffs, margins, agree, scales = [], [], [], []
    with torch.no_grad():
        for images, labels in provider.test_loader(r):
            for x, y in zip(images.split(1), labels):
                got = method.execute([x.contiguous()])[0]
                want = quantized(x)
                hits += int(int(got.argmax(1)) == int(y))
                hits_pt2e += int(int(want.argmax(1)) == int(y))
                diffs.append(float((got - want).abs().max()))
                top2 = want[0].topk(2).values
                margins.append(float(top2[0] - top2[1]))
                scales.append(float(want.abs().max()))
                agree.append(int(got.argmax(1)) == int(want.argmax(1)))
    n = len(diffs)
    assert n == dep["n_images"] and hits / n == dep["int8_accuracy"]
    # XNNPACK's integer kernels round differently from PT2E's simulated q/dq graph, so logits
    # differ by a few quantisation steps: near-ties may flip (most of this small network's test
    # logits are within 1 % of each other), decisive predictions agree, and so does the accuracy
    scale = max(scales)  # the largest |logit|
    diffs_t = torch.tensor(diffs)
    decisive = [a for a, m in zip(agree, margins) if m > 0.05 * scale]
    assert len(decisive) >= 20 and sum(decisive) / len(decisive) >= 0.95, (len(decisive), sum(decisive))
    assert float(diffs_t.median()) <= 0.05 * scale and float(diffs_t.max()) <= 0.5 * scale, (diffs_t.median(), scale)
    assert abs(hits - hits_pt2e) / n <= 0.02, (hits, hits_pt2e)
    assert abs(dep["int8_accuracy"] - dep["fp32_accuracy"]) <= 0.03
    assert dep["fp32_accuracy"] > 0.5  # trained: well above the 4-class chance


def test_fp32_program_equals_pytorch(deployed):
    from executorch.runtime import Runtime

    _, _, _, _, out, _ = deployed
    net = load_exported(out / "subnet.pth.tar")
    r = net.subnet_config.image_size
    buffer = (out / FP32_NAME).read_bytes()
    program = Runtime.get().load_program(buffer)
    method = program.load_method("forward")
    x = torch.randn(1, 3, r, r, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(method.execute([x])[0], net(x), rtol=1e-4, atol=1e-5)


def test_deploy_command_reuses_the_programs_of_the_same_subnet(deployed, capsys):
    from moofa.cli.deploy import main

    project, _, _, _, out, _ = deployed
    before = (out / DEPLOY_NAME).stat().st_mtime_ns
    argv = ["--subnet", str(out / "subnet.pth.tar"), "--config", str(project.config_path),
            "--model_config_path", str(project.model_config_path), "--output", str(out), "--no-progress"]
    assert run_cli(main, argv) == 0
    assert "int8 top-1" in capsys.readouterr().out
    assert (out / DEPLOY_NAME).stat().st_mtime_ns == before  # quantised once per subnet


def test_missing_extra_and_bad_subnet_give_one_error_line(deployed, capsys, monkeypatch, tmp_path):
    import moofa.deploy.programs as programs
    from moofa.cli.deploy import main

    project, _, _, _, out, _ = deployed
    argv = ["--subnet", str(tmp_path / "missing.pth.tar"), "--config", str(project.config_path),
            "--output", str(tmp_path / "o")]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.pth.tar" in err[0]
    monkeypatch.setattr(programs, "executorch_available", lambda: False)
    argv[1] = str(out / "subnet.pth.tar")
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[deploy]'" in err[0]
    assert not (tmp_path / "o").exists()


def test_another_budget_with_the_same_subnet_file_copies_the_programs(deployed, tmp_path, monkeypatch):
    import shutil

    import moofa.deploy as deploy

    _, _, cfg, _, out, _ = deployed
    other = tmp_path / "constraint_9000"
    other.mkdir()
    shutil.copy(out / "subnet.pth.tar", other / "subnet.pth.tar")

    def no_lowering(*args, **kwargs):
        raise AssertionError("the programs of the same subnet file were lowered again")

    monkeypatch.setattr(deploy, "int8_program", no_lowering)
    monkeypatch.setattr(deploy, "fp32_program", no_lowering)
    dep = deploy.deploy_exported(other / "subnet.pth.tar", cfg, other, progress=False, reuse_from=[out])
    assert dep.to_dict() == json.loads((out / DEPLOY_NAME).read_text()) == json.loads((other / DEPLOY_NAME).read_text())
    for name in (INT8_NAME, FP32_NAME):
        assert (other / name).read_bytes() == (out / name).read_bytes()
    # the programs of another subnet file are not served
    other_file = Inputs.of(dict(dep.fingerprint, subnet_sha256="0" * 64))
    assert deploy._reuse(out, other_file, [XNNPACK]) is None  # noqa: SLF001
    assert deploy._reuse(out, Inputs.of(dep.fingerprint), [XNNPACK]) == dep  # noqa: SLF001
