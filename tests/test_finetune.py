"""Fine-tuning a found subnet (issue 14): ``train.py --step finetune --subnet``, on a tiny trained
network, end to end through the real command line: outputs, reload, resume after SIGKILL, moving
stale results aside, bad input, and 2 processes under torchrun and horovodrun."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny import PYTHON, ROOT, free_port, make_tiny_project

from moofa.cli.common import run_cli
from moofa.cli.train import main as train_main
from moofa.config import FINETUNE_DEFAULTS, last_task_args, load_config, task_args
from moofa.data import DataProvider
from moofa.efficiency import flops, measure_peak_memory, peak_memory
from moofa.measurement.evaluate import evaluate, evaluate_subnet
from moofa.models.space import SearchSpace
from moofa.models.spec import SubnetConfig, get_model_spec
from moofa.models.subnet_file import export_subnet, load_exported
from moofa.records import DeployRecord
from moofa.run import Run

# 1 warmup + 3 epochs; a learning rate high enough that the weights really move on the tiny data
FT = {"n_epochs": 3, "base_lr": 0.01, "warmup_epochs": 1, "warmup_lr": 0.001}


def _digest(state_dict) -> str:
    h = hashlib.sha256()
    for name, t in state_dict.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ft_cmd(project, subnet: Path, config: Path | None = None) -> list[str]:
    return [PYTHON, str(ROOT / "train.py"), "--config", str(config or project.config_path), "--model_config_path",
            str(project.model_config_path), "--step", "finetune", "--subnet", str(subnet)]


def _short_config(project, folder: Path) -> Path:
    """The project's config with a one-epoch fine-tuning (the module's config stays as it is)."""
    raw = yaml.safe_load(project.config_path.read_text())
    raw["args_per_task"]["finetune"] = {"n_epochs": 1, "base_lr": 0.01, "warmup_epochs": 0, "warmup_lr": 0.0}
    path = folder / "short.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A trained tiny network (its teacher doubles as the supernet checkpoint), a search result
    folder written like the search does (info.json + exported subnet), and one fine-tuning of the
    export."""
    root = tmp_path_factory.mktemp("finetune")
    teacher = root / "run" / "teacher" / "checkpoint" / "model_best.pth.tar"
    project = make_tiny_project(root, args={"checkpoint": str(teacher), "synthetic": {"difficulty": 0.1}},
                                args_per_task={"teacher": {"n_epochs": 2}, "finetune": dict(FT)})
    project.call("train.py", "--step", "teacher")
    cfg = load_config(project.config_path, project.model_config_path)
    spec = get_model_spec("TINY", project.model_config_path)
    drawn = SearchSpace(spec).sample(random.Random(3))
    arch = SubnetConfig(drawn.ks, drawn.e, drawn.d, 32)
    args = last_task_args(cfg)
    provider = DataProvider(args, spec.image_sizes)
    supernet = Run(cfg).supernet(args, provider.n_classes, load=True)
    measured = evaluate_subnet(supernet, arch, provider, split="test")
    folder = root / "search" / "constraint_12345"
    export_subnet(supernet, arch, folder / "subnet.pth.tar", with_onnx=False)
    (folder / "info.json").write_text(json.dumps({
        "predicted_accuracy": 0.5, "real_accuracy": measured.top1, "peak_memory": peak_memory(spec, arch),
        "config": arch.to_dict(), "flops": flops(spec, arch, 4), "model": "TINY", "constraint": 12345}))
    run = project.call("train.py", "--step", "finetune", "--subnet", str(folder / "subnet.pth.tar"))
    return project, cfg, spec, arch, folder, measured, run


def test_finetune_writes_its_folder_and_the_export_reproduces_it(searched):
    project, cfg, spec, arch, folder, measured, run = searched
    out = folder / "finetuned"
    info = json.loads((out / "info.json").read_text())
    # the subnet as given, measured before any training, is what the search measured
    assert info["test_top1_before"] == pytest.approx(measured.top1, abs=1.01 / measured.n_images)
    assert info["n_test_images"] == measured.n_images == 40
    assert info["epochs"] == 4 and info["source_kind"] == "export" and info["config"] == arch.to_dict()
    assert "test split" in info["test_images"] and info["accuracy_source"] == "measured"
    # the export reloads alone and reproduces the reported test top-1
    net = load_exported(out / "subnet.pth.tar")
    assert net.subnet_config == arch
    provider = DataProvider(task_args(cfg, "finetune"), [arch.image_size])
    assert evaluate(net, provider.test_loader(arch.image_size)).top1 == info["test_top1_after"]
    # fine-tuning changed the weights
    before = torch.load(folder / "subnet.pth.tar", weights_only=True)["state_dict"]
    after = torch.load(out / "subnet.pth.tar", weights_only=True)["state_dict"]
    assert before.keys() == after.keys()
    assert max((before[k].float() - after[k].float()).abs().max().item() for k in before) > 1e-3
    # peak memory and MMACs: the analytic model, and the forward hooks on the reloaded network
    assert info["peak_memory"] == peak_memory(spec, arch) == measure_peak_memory(net, arch.image_size)[0]
    assert info["flops"] == pytest.approx(flops(spec, arch, 4), rel=1e-12)
    # one validation per epoch on the held-out training images, logged; the teacher distilled
    log = [json.loads(line) for line in (out / "logs" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4] and all("val_acc" in r for r in log)
    assert info["valid_top1_after"] == log[-1]["val_acc"] and info["n_valid_images"] == 40
    assert info["teacher"].endswith("model_best.pth.tar") and info["recipe"]["kd_ratio"] == 1.0
    assert (out / "resolved_config.json").is_file() and (out / "inputs.json").is_file()
    assert "before, " in run.stdout and "after fine-tuning" in run.stdout
    # the same command again trains nothing
    again = project.call("train.py", "--step", "finetune", "--subnet", str(folder / "subnet.pth.tar"))
    assert "already complete" in again.stderr


@pytest.mark.parametrize("kill_after", [1, 2])
def test_killed_finetune_resumes_to_the_same_weights(searched, tmp_path, kill_after):
    """SIGKILL after ``kill_after`` validated epochs (of 4); the resumed launch, whose first
    validation builds the BN-calibration batches again, ends on the same weights bit for bit."""
    project, _, _, _, folder, _, _ = searched
    other = tmp_path / "copy"
    other.mkdir()
    shutil.copy(folder / "subnet.pth.tar", other / "subnet.pth.tar")
    log = other / "finetuned" / "logs" / "log.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_ft_cmd(project, other / "subnet.pth.tar"), cwd=project.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # generous: a loaded 2-core machine runs this 10x slower than idle
    while (time.time() < deadline and proc.poll() is None
           and not (log.is_file() and len(log.read_text().splitlines()) >= kill_after)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(log.read_text().splitlines())
    assert kill_after <= done < 4 and not (other / "finetuned" / "info.json").exists()
    assert "val_acc" in json.loads(log.read_text().splitlines()[done - 1])
    r = project.call("train.py", "--step", "finetune", "--subnet", str(other / "subnet.pth.tar"))
    assert "Resumed finetune from" in r.stderr and f"at epoch {done}" in r.stderr
    ref = torch.load(folder / "finetuned" / "subnet.pth.tar", weights_only=True)["state_dict"]
    got = torch.load(other / "finetuned" / "subnet.pth.tar", weights_only=True)["state_dict"]
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    a, b = (json.loads((p / "finetuned" / "info.json").read_text()) for p in (folder, other))
    assert (a["test_top1_before"], a["test_top1_after"]) == (b["test_top1_before"], b["test_top1_after"])


def test_constraint_folder_form_and_changed_inputs(searched, tmp_path):
    """``--subnet <folder>`` cuts the folder's arch from args.checkpoint; a result of other inputs
    in finetuned/ is moved aside, not served."""
    project, _, _, arch, folder, measured, _ = searched
    g = tmp_path / "constraint_12345"
    shutil.copytree(folder, g)
    old = json.loads((g / "finetuned" / "info.json").read_text())
    config = _short_config(project, tmp_path)
    r = subprocess.run(_ft_cmd(project, g, config), cwd=project.root, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "moved it to" in r.stderr
    assert json.loads((g / "finetuned.previous-1" / "info.json").read_text()) == old
    info = json.loads((g / "finetuned" / "info.json").read_text())
    assert info["source_kind"] == "constraint_folder" and info["config"] == arch.to_dict()
    assert info["fingerprint"] != old["fingerprint"]
    assert info["test_top1_before"] == pytest.approx(measured.top1, abs=1.01 / measured.n_images)
    assert load_exported(g / "finetuned" / "subnet.pth.tar").subnet_config == arch


@pytest.mark.parametrize("case,expect", [
    ("no_subnet", "--subnet"),
    ("subnet_elsewhere", "--subnet"),
    ("phase", "--phase"),
    ("missing", "no-such-folder"),
    ("not_a_result", "info.json"),
    ("not_an_export", "not a moofa subnet export"),
])
def test_finetune_bad_input_exits_2_with_one_error_line(tmp_path, capsys, case, expect) -> None:
    project = make_tiny_project(tmp_path)
    junk = tmp_path / "junk.pth.tar"
    torch.save({"state_dict": {}}, junk)
    (tmp_path / "empty").mkdir()
    argv = {"no_subnet": ["--step", "finetune"],
            "subnet_elsewhere": ["--step", "teacher", "--subnet", str(junk)],
            "phase": ["--step", "finetune", "--phase", "1", "--subnet", str(junk)],
            "missing": ["--step", "finetune", "--subnet", str(tmp_path / "no-such-folder")],
            "not_a_result": ["--step", "finetune", "--subnet", str(tmp_path / "empty")],
            "not_an_export": ["--step", "finetune", "--subnet", str(junk)]}[case]
    rc = run_cli(train_main, ["--config", str(project.config_path), "--model_config_path",
                              str(project.model_config_path), *argv])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert rc == 2 and err[-1].startswith("error:") and expect in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_finetune_config_entry(tmp_path):
    project = make_tiny_project(tmp_path)
    cfg = load_config(project.config_path)
    assert "finetune" not in cfg["args_per_task"]  # absent unless written
    a = task_args(cfg, "finetune")
    assert {k: a[k] for k in FINETUNE_DEFAULTS} == FINETUNE_DEFAULTS == {
        "n_epochs": 25, "base_lr": 2.5e-4, "warmup_epochs": 0, "warmup_lr": 2.5e-5, "dynamic_batch_size": 1}
    # a partial entry keeps the other defaults, may override args, and is never the "last entry"
    apt = dict(copy.deepcopy(project.config["args_per_task"]), finetune={"n_epochs": 2, "kd_ratio": 0.5})
    cfg = load_config(project.write(args_per_task=apt))
    a = task_args(cfg, "finetune")
    assert (a["n_epochs"], a["base_lr"], a["kd_ratio"]) == (2, 2.5e-4, 0.5)
    assert last_task_args(cfg)["n_epochs"] == cfg["args_per_task"]["expand_2"]["n_epochs"]
    assert last_task_args(cfg)["kd_ratio"] == 1.0
    raw = yaml.safe_load(project.config_path.read_text())
    raw["args_per_task"]["finetune"]["n_epochs"] = 0
    project.config_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match=r"args_per_task\.finetune\.n_epochs"):
        load_config(project.config_path)


# ---------------------------------------------------------------------------- two processes
def _launch(launcher: str) -> list[str]:
    if launcher == "torchrun":
        return [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    return [str(Path(PYTHON).parent / "horovodrun"), "-np", "2", "--gloo", PYTHON]


@pytest.fixture(scope="module")
def two_process_results():
    """Rank 0's weight digest per launcher, filled by the two-process tests."""
    return {}


@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["torchrun", "horovod"])
def test_two_processes_finetune_to_identical_weights(searched, two_process_results, tmp_path, launcher):
    if launcher == "horovod":
        pytest.importorskip("horovod.torch", reason="Horovod is built by `make test` (scripts/install_horovod.sh)")
    project, _, _, _, folder, _, _ = searched
    config = _short_config(project, tmp_path)
    shutil.copy(folder / "subnet.pth.tar", tmp_path / "subnet.pth.tar")
    out = tmp_path / "ranks"
    worker = ROOT / "tests" / "dist_scripts" / "train_worker.py"
    cmd = [*_launch(launcher), str(worker), str(config), str(project.model_config_path), "finetune",
           str(tmp_path / "subnet.pth.tar"), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    assert [(x["rank"], x["size"]) for x in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["weights"] == ranks[1]["weights"]   # parameters and BN buffers, bit for bit
    assert ranks[0]["sampled"] == ranks[1]["sampled"] == []  # a static subnet: nothing sampled
    saved = torch.load(tmp_path / "finetuned" / "subnet.pth.tar", weights_only=True)["state_dict"]
    assert _digest(saved) == ranks[0]["weights"]
    info = json.loads((tmp_path / "finetuned" / "info.json").read_text())
    assert info["world_size"] == 2 and info["epochs"] == 1
    two_process_results[launcher] = ranks[0]["weights"]
    if len(two_process_results) == 2:  # both launchers: the same result on the same seed
        assert two_process_results["torchrun"] == two_process_results["horovod"]


def test_deploy_accepts_the_result_folder_fine_tuning_accepts(tmp_path, capsys, monkeypatch):
    """Issue 22 item 8: ``python -m moofa.deploy --subnet <constraint folder>`` deploys the
    folder's subnet.pth.tar (one resolver with fine-tuning's --subnet)."""
    from tiny import make_tiny_project

    import moofa.cli.deploy as deploy_main
    from moofa.run import SubnetSource
    from moofa.workflows.finetune import SubnetSource as FinetuneSource

    project = make_tiny_project(tmp_path)
    folder = tmp_path / "search" / "constraint_12345"
    folder.mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps({"config": {"ks": [3], "e": [2], "d": [1],
                                                             "image_size": 32}}))
    seen = []

    def fake_deploy(subnet, cfg, out, progress=True, targets=None):
        seen.append(Path(subnet))
        assert targets is None  # no --target: deploy.targets of the config
        return DeployRecord(int8_accuracy=0.5, fp32_accuracy=0.5, n_images=40, pte_bytes=1,
                            runtime_memory_bytes=1, analytic_peak_memory=1, analytic_unit="elements")

    monkeypatch.setattr(deploy_main, "deploy_exported", fake_deploy)
    monkeypatch.setattr(deploy_main, "require_executorch", lambda: None)
    argv = ["--subnet", str(folder), "--config", str(project.config_path),
            "--output", str(tmp_path / "o"), "--no-progress"]
    assert run_cli(deploy_main.main, argv) == 2  # the folder holds no subnet.pth.tar yet
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {folder}: --subnet: holds no exported subnet.pth.tar "
                   "(search_config.export lists subnet by default)"]
    (folder / "subnet.pth.tar").write_bytes(b"exported")
    assert run_cli(deploy_main.main, argv) == 0
    assert seen == [folder / "subnet.pth.tar"]
    assert run_cli(deploy_main.main, [*argv[:1], str(folder / "subnet.pth.tar"), *argv[2:]]) == 0
    assert seen[-1] == folder / "subnet.pth.tar"
    assert FinetuneSource is SubnetSource and SubnetSource.resolve(folder).kind == "constraint_folder"
def test_sigterm_stops_finetune_cleanly_and_it_resumes_to_the_same_weights(searched, tmp_path):
    """Issue 22: SIGTERM in epoch 2 of 4: exit 143, one ``stopped by SIGTERM at epoch 2/4
    (finetune)`` line, the lock beside finetuned/ released; the same command ends with the
    uninterrupted fine-tuning's weights."""
    from tiny import stopped_at

    project, _, _, _, folder, _, _ = searched
    other = tmp_path / "term"
    other.mkdir()
    shutil.copy(folder / "subnet.pth.tar", other / "subnet.pth.tar")
    log = other / "finetuned" / "logs" / "log.jsonl"
    cmd = ("train.py", "--step", "finetune", "--subnet", str(other / "subnet.pth.tar"))
    stopped = project.signal_when(*cmd, when=lambda: log.is_file() and len(log.read_text().splitlines()) >= 1)
    assert stopped is not None, "the run ended before its SIGTERM"
    assert stopped_at(stopped) in ("epoch 2/4 (finetune)", "epoch 1/4 (finetune)")
    assert not (other / ".moofa-finetune.lock").exists() and not (other / "finetuned" / "info.json").exists()
    r = project.call(*cmd)
    assert "Resumed finetune from" in r.stderr
    ref = torch.load(folder / "finetuned" / "subnet.pth.tar", weights_only=True)["state_dict"]
    got = torch.load(other / "finetuned" / "subnet.pth.tar", weights_only=True)["state_dict"]
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
