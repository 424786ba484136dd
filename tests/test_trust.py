"""Runs that never go silently wrong (issue 12): no overwritten results, no stale resume, no
traceback on bad files, locks on shared outputs. One test per defect; each failed before the fix."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny import make_tiny_project

from moofa.cli.common import run_cli
from moofa.cli.create_dataset import main as create_main
from moofa.cli.eval_and_search import main as search_main
from moofa.cli.train import main as train_main
from moofa.cli.train_predictor import main as predictor_main
from moofa.config import last_task_args, load_config
from moofa.data import DataProvider, candidate_sizes, ensure_dataset
from moofa.distributed import SingleBackend
from moofa.errors import CheckpointError, MoofaInputError
from moofa.fingerprint import Inputs, file_fingerprint
from moofa.io import atomic_path, clean_stale_temps
from moofa.lock import LOCK_NAME, OutputLock
from moofa.models import build_supernet
from moofa.models.space import SearchSpace
from moofa.models.spec import get_model_spec
from moofa.models.supernet import load_checkpoint_file
from moofa.predictor import AccuracyPredictor
from moofa.predictor.dataset import PredictorDataset, make_record
from moofa.predictor.training import PredictorRecipe, min_records, train_predictor
from moofa.training.trainer import resolution_note

CONSTRAINTS = [9000, 16000]
TINY_DATASET = {"n_samples": 2, "n_bins": 1, "eval_images": 8, "min_memory": 1000, "max_memory": 40000}


def _cli(main, project, *args: str, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = run_cli(main, ["--config", str(project.config_path), "--model_config_path",
                        str(project.model_config_path), *args])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    return rc, err


def _random_predictor(spec, seed: int = 0, path: Path | None = None) -> AccuracyPredictor:
    torch.manual_seed(seed)
    pred = AccuracyPredictor(spec, hidden_size=16, n_layers=2, n_members=1)
    if path is not None:
        pred.save(path)
    return pred


def _with_checkpoint(project, seed: int = 0) -> Path:
    spec = get_model_spec("TINY", project.model_config_path)
    torch.manual_seed(seed)
    ckpt = Path(project.config["args"]["checkpoint"])
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": build_supernet(spec, n_classes=4).state_dict()}, ckpt)
    return ckpt


def _one_error(rc: int, err: list[str], *needles: str) -> str:
    assert rc == 2, err
    assert err and err[-1].startswith("error:"), err
    assert "Traceback" not in "\n".join(err)
    for n in needles:
        assert n in err[-1], (n, err[-1])
    return err[-1]


# ---------------------------------------------------------------------- 1. data loss
def test_eval_teacher_and_supernet_never_write_the_same_files(tmp_path):
    project = make_tiny_project(tmp_path, subnet_config={"name": "same", "draw_graphs": False},
                                args={"base_batch_size": 8})
    spec = get_model_spec("TINY", project.model_config_path)
    ckpt = _with_checkpoint(project)
    teacher = Path(project.config["args"]["teacher_path"]) / "checkpoint" / "model_best.pth.tar"
    teacher.parent.mkdir(parents=True)
    torch.manual_seed(5)
    torch.save({"state_dict": build_supernet(spec, n_classes=4).build_teacher().state_dict()}, teacher)
    from moofa.run import Run
    from moofa.workflows.eval_mode import run_eval

    run = Run.load(project.config_path, project.model_config_path)
    sup = run_eval(run, SingleBackend("cpu"), "supernet")
    sup_file = run.eval_dir("supernet") / "info.json"
    before = sup_file.read_bytes()
    tea = run_eval(run, SingleBackend("cpu"), "teacher")
    tea_file = run.eval_dir("teacher") / "info.json"
    assert sup_file != tea_file and sup_file.read_bytes() == before  # not overwritten
    assert json.loads(tea_file.read_text())["network"] == "teacher" == tea.network
    assert json.loads(sup_file.read_text())["checkpoint"] == str(ckpt) == sup.checkpoint


# ------------------------------------------------------------------- 2. stale results
def _search_project(tmp_path, **search):
    project = make_tiny_project(tmp_path, search_config=dict(
        constraints=CONSTRAINTS, evaluate=False, export=False, res_dir=str(tmp_path / "search"), **search))
    spec = get_model_spec("TINY", project.model_config_path)
    _random_predictor(spec, 0, Path(project.config["search_config"]["acc_predictor_checkpoint"]))
    return project, spec


def test_search_with_a_retrained_predictor_is_not_served_old_answers(tmp_path, capsys):
    project, spec = _search_project(tmp_path)
    rc, _ = _cli(search_main, project, "--mode", "search", capsys=capsys)
    assert rc == 0
    info = tmp_path / "search" / f"constraint_{CONSTRAINTS[0]}" / "info.json"
    first = json.loads(info.read_text())
    # the same path, other weights (another training run): same size, other content
    path = Path(project.config["search_config"]["acc_predictor_checkpoint"])
    size = path.stat().st_size
    _random_predictor(spec, 1, path)
    assert path.stat().st_size == size
    rc, err = _cli(search_main, project, "--mode", "search", capsys=capsys)
    line = _one_error(rc, err, "predictor", "sha256", "--overwrite", str(info))
    assert info.read_text() == json.dumps(first, indent=2) + "\n"  # untouched
    rc, _ = _cli(search_main, project, "--mode", "search", "--overwrite", capsys=capsys)
    again = json.loads(info.read_text())
    assert rc == 0 and again["fingerprint"]["predictor"] != first["fingerprint"]["predictor"]
    assert again["predicted_accuracy"] != first["predicted_accuracy"], line
    # a copy elsewhere with the same bytes is the same predictor (content, not path)
    copy = tmp_path / "elsewhere.pth.tar"
    copy.write_bytes(path.read_bytes())
    project.write(search_config=dict(acc_predictor_checkpoint=str(copy)))
    rc, err = _cli(search_main, project, "--mode", "search", capsys=capsys)
    assert rc == 0 and json.loads(info.read_text()) == again


def _change_val_in_place(project, keep: int) -> Path:
    """Keep ``keep`` val/ images per class of the project's data (the marker counts updated: an
    in-place change of the folder that the dataset's own check does not see)."""
    root = Path(project.config["args"]["data_path"])
    for cls in sorted((root / "val").iterdir()):
        for img in sorted(cls.iterdir())[keep:]:
            img.unlink()
    marker = json.loads((root / ".moofa_dataset.json").read_text())
    marker["counts"]["val"] = keep * len(list((root / "val").iterdir()))
    (root / ".moofa_dataset.json").write_text(json.dumps(marker))
    return root


def test_search_after_the_images_changed_is_not_served_old_accuracies(tmp_path, capsys, caplog):
    project = make_tiny_project(tmp_path, search_config=dict(
        constraints=CONSTRAINTS[:1], evaluate=True, rerank_top_k=0, export=False))
    spec = get_model_spec("TINY", project.model_config_path)
    _random_predictor(spec, 0, Path(project.config["search_config"]["acc_predictor_checkpoint"]))
    link = tmp_path / "data_link"  # data_path through a symlink: the path never changes
    link.symlink_to(ensure_dataset(last_task_args(load_config(project.config_path))))
    project.config["args"]["data_path"] = str(link)
    project.write()
    _with_checkpoint(project)
    rc, _ = _cli(search_main, project, "--mode", "search", capsys=capsys)
    info = tmp_path / "search" / f"constraint_{CONSTRAINTS[0]}" / "info.json"
    first = info.read_text()
    assert rc == 0 and json.loads(first)["n_images"] == 40
    _change_val_in_place(project, keep=5)
    rc, err = _cli(search_main, project, "--mode", "search", capsys=capsys)
    _one_error(rc, err, str(info), "data.images.val.files 40 -> 20", "--overwrite")
    assert info.read_text() == first
    rc, _ = _cli(search_main, project, "--mode", "search", "--overwrite", capsys=capsys)
    again = json.loads(info.read_text())
    images = again["fingerprint"]["data"]["images"]
    assert rc == 0 and again["n_images"] == 20
    assert images["val"]["files"] == 20 and images["train"]["files"] == 160
    assert images != json.loads(first)["fingerprint"]["data"]["images"]
    # a result written before images were fingerprinted is reused, with a warning
    del again["fingerprint"]["data"]["images"]
    info.write_text(json.dumps(again, indent=2) + "\n")
    with caplog.at_level(logging.WARNING):
        rc, _ = _cli(search_main, project, "--mode", "search", capsys=capsys)
    assert rc == 0 and json.loads(info.read_text()) == again
    assert f"{info} records no image list" in caplog.text


def test_dataset_and_evaluation_record_their_images(tmp_path, capsys, caplog):
    project = make_tiny_project(tmp_path, dataset_config=TINY_DATASET, subnet_config={"draw_graphs": False},
                                args={"bn_calib_images": 16, "bn_calib_batch_size": 16})
    _with_checkpoint(project)
    out = Path(project.config["search_config"]["acc_dataset_path"])
    rc, _ = _cli(create_main, project, capsys=capsys)
    assert rc == 0 and len(out.read_text().splitlines()) == 2
    before = out.read_text()
    root = Path(project.config["args"]["data_path"])
    moved = sorted((root / "val").rglob("*.png"))[0]
    moved.write_bytes(sorted((root / "train").rglob("*.png"))[-1].read_bytes())  # same count, other image
    rc, err = _cli(create_main, project, capsys=capsys)
    _one_error(rc, err, str(out), "data.images.val.sha256", "--overwrite")
    assert out.read_text() == before
    side = out.with_name(out.stem + ".recipe.json")
    recipe = json.loads(side.read_text())
    assert recipe["fingerprint"]["data"]["images"]["val"]["files"] == 40
    legacy = json.loads(side.read_text())  # written before images were fingerprinted: kept, warned
    del legacy["fingerprint"]["data"]["images"]
    side.write_text(json.dumps(legacy))
    with caplog.at_level(logging.WARNING):
        rc, _ = _cli(create_main, project, capsys=capsys)
    assert rc == 0 and f"{side} records no image list" in caplog.text and out.read_text() == before
    rc, err = _cli(search_main, project, "--mode", "eval", "--model", "supernet", capsys=capsys)
    evaluated = json.loads((tmp_path / "results" / "subnet" / "info.json").read_text())
    assert rc == 0 and evaluated["n_images"] == 40
    assert evaluated["data"]["images"]["val"]["files"] == 40
    assert evaluated["data"]["images"]["val"] != recipe["fingerprint"]["data"]["images"]["val"]


def test_results_of_two_models_in_one_folder_are_an_error(tmp_path, capsys):
    mixed = tmp_path / "MIXED"
    for c, model in ((9000, "MOOFA_V1"), (16000, "OFA")):
        (mixed / f"constraint_{c}").mkdir(parents=True)
        (mixed / f"constraint_{c}" / "info.json").write_text(json.dumps(
            {"model": model, "constraint": c, "peak_memory": c - 1, "flops": 1.0,
             "predicted_accuracy": 0.5, "real_accuracy": None}))
    capsys.readouterr()
    rc = run_cli(search_main, ["--mode", "summary", "--results", str(mixed)])
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    _one_error(rc, err, str(mixed), "2 models (MOOFA_V1, OFA)")
    assert not (mixed / "summary.csv").exists()


def test_fingerprint_names_what_changed(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 100)
    fa = file_fingerprint(a)
    a.write_bytes(b"y" * 100)
    fb = file_fingerprint(a)
    diffs = Inputs.of({"predictor": fa, "epochs": 3}).differences(Inputs.of({"predictor": fb, "epochs": 5}))
    assert len(diffs) == 2 and diffs[0] == "epochs 3 -> 5"
    assert diffs[1].startswith(f"predictor ({a}): sha256 '") and "->" in diffs[1]
    assert Inputs.of({"p": fa}).differences(Inputs.of({"p": dict(fa, path="/moved/a.bin")})) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Teacher (1 epoch, one corrupt training image, a stale temp file of a killed checkpoint
    write) and kernel_1, trained in-process once."""
    root = tmp_path_factory.mktemp("trust_train")
    project = make_tiny_project(root, args={"continuous_size": True},
                                args_per_task={"teacher": {"n_epochs": 1}})
    cfg = load_config(project.config_path)
    data = ensure_dataset(last_task_args(cfg))
    bad = sorted((data / "train").rglob("*.png"))[7]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a header and then garbage
    stale = root / "run" / "teacher" / "checkpoint" / ".checkpoint.pth.k3j_x9z1.tmp.tar"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 1000)
    outs = {}
    for step in (["--step", "teacher"], ["--step", "kernel", "--phase", "1"]):
        proc = project.call("train.py", *step)
        outs[step[1]] = proc
    return project, bad, stale, outs


def test_corrupt_training_image_is_skipped_logged_and_counted(trained):
    project, bad, _, outs = trained
    assert f"skipping corrupt image {bad}" in outs["teacher"].stderr
    log = [json.loads(line) for line in (project.root / "run" / "teacher" / "logs" / "log.jsonl").open()]
    # met in training or validation, and maybe in the BN-calibration subset (once per size):
    # one file, counted and named once
    assert len(log) == 1 and log[0]["skipped_images"] == 1
    assert "skipped 1 corrupt image(s)" in outs["teacher"].stderr
    assert outs["teacher"].stderr.count(f"skipping corrupt image {bad}") == 1


def test_stale_temp_of_a_killed_checkpoint_write_is_removed(trained):
    _, _, stale, outs = trained
    assert not stale.exists() and f"removed {stale} (1,000 bytes)" in outs["teacher"].stderr


def test_continuous_size_says_it_trains_on_25_resolutions(trained):
    ref = get_model_spec("MOOFA_V3")
    assert "training on 25 resolutions 128..224" in resolution_note(ref, candidate_sizes(ref.image_sizes, True))
    assert "training on 5 resolutions 32..48" in trained[3]["kernel"].stderr


def test_finished_phase_with_another_recipe_is_not_skipped(trained, capsys):
    project, _, _, _ = trained
    kernel = ["--step", "kernel", "--phase", "1"]
    rc, _ = _cli(train_main, project, *kernel, capsys=capsys)
    assert rc == 0  # same recipe: nothing to do
    final = project.root / "run" / "checkpoint" / "checkpoint-kernel_1.pth.tar"
    stamp = final.stat().st_mtime_ns
    project.write(args_per_task={"kernel_1": {"base_lr": 0.02}})
    rc, err = _cli(train_main, project, *kernel, capsys=capsys)
    _one_error(rc, err, "kernel_1", "args.base_lr 0.01 -> 0.02", "--overwrite")
    project.write(args_per_task={"kernel_1": {"base_lr": 0.01}, "teacher": {"n_epochs": 2}})
    rc, err = _cli(train_main, project, "--step", "teacher", capsys=capsys)
    _one_error(rc, err, "teacher", "args.n_epochs 1 -> 2", "--overwrite")
    assert final.stat().st_mtime_ns == stamp
    project.write(args_per_task={"teacher": {"n_epochs": 1}})


def test_phase_whose_input_weights_changed_is_not_skipped(trained, capsys, tmp_path):
    project, _, _, _ = trained
    teacher = project.root / "run" / "teacher" / "checkpoint" / "model_best.pth.tar"
    saved = teacher.read_bytes()
    sd = load_checkpoint_file(teacher)
    sd["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in sd["state_dict"].items()}
    torch.save(sd, teacher)
    try:
        rc, err = _cli(train_main, project, "--step", "kernel", "--phase", "1", capsys=capsys)
        _one_error(rc, err, "init (", "model_best.pth.tar", "sha256")
    finally:
        teacher.write_bytes(saved)


def test_dataset_resumed_with_other_inputs_does_not_append(tmp_path, capsys):
    project = make_tiny_project(tmp_path, dataset_config=TINY_DATASET,
                                args={"bn_calib_images": 16, "bn_calib_batch_size": 16})
    ckpt = _with_checkpoint(project)
    out = Path(project.config["search_config"]["acc_dataset_path"])
    rc, _ = _cli(create_main, project, capsys=capsys)
    assert rc == 0 and len(out.read_text().splitlines()) == 2
    before = out.read_text()
    project.write(dataset_config={"eval_images": 16, "n_samples": 3})
    rc, err = _cli(create_main, project, capsys=capsys)
    _one_error(rc, err, "dataset_config.eval_images 8 -> 16", "--overwrite", str(out))
    project.write(dataset_config={"eval_images": 8, "n_samples": 3})
    _with_checkpoint(project, seed=1)  # another supernet at the same path
    rc, err = _cli(create_main, project, capsys=capsys)
    _one_error(rc, err, f"checkpoint ({ckpt}): sha256")
    assert out.read_text() == before
    rc, _ = _cli(create_main, project, "--overwrite", capsys=capsys)
    assert rc == 0 and len(out.read_text().splitlines()) == 3 and out.read_text() != before


def test_predictor_of_another_model_is_refused_or_warned(tmp_path, caplog):
    ofa = AccuracyPredictor("OFA", hidden_size=8, n_layers=1)
    ofa.save(tmp_path / "ofa.pth.tar")
    # MOOFA_V1 has OFA's lists: the encoder check alone let this through
    with pytest.raises(CheckpointError, match="trained for model 'OFA', not 'MOOFA_V1'"):
        AccuracyPredictor.load(tmp_path / "ofa.pth.tar", "MOOFA_V1")
    ofa.save(tmp_path / "ref.pth.tar", reference_format=True)  # records no model
    from moofa.run import Run
    from moofa.workflows.sweep import load_search_predictor

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"search_config": {"acc_predictor_checkpoint": str(tmp_path / "ref.pth.tar")}}))
    with caplog.at_level(logging.WARNING):
        pred = load_search_predictor(Run(load_config(tmp_path / "c.yaml")), get_model_spec("MOOFA_V3"))
    assert pred.recorded_model is None
    assert "records no model" in caplog.text and "MOOFA_V3" in caplog.text
    torch.save({"state_dict": ofa.reference_state_dict(), "model": "OFA"}, tmp_path / "named.pth.tar")
    with pytest.raises(CheckpointError, match="trained for model 'OFA'"):
        AccuracyPredictor.load(tmp_path / "named.pth.tar", "MOOFA_V3")


# ------------------------------------------------------------- 3. tracebacks instead of errors
def test_corrupt_images_in_train_and_val_are_skipped_or_fatal(tmp_path, capsys):
    project = make_tiny_project(tmp_path)
    args = last_task_args(load_config(project.config_path))
    data = ensure_dataset(args)
    train_bad = sorted((data / "train").rglob("*.png"))[3]
    train_bad.write_bytes(b"not an image at all")                 # UnidentifiedImageError
    val_bad = sorted((data / "val").rglob("*.png"))[5]
    val_bad.write_bytes(val_bad.read_bytes()[:60])                # truncated: OSError
    provider = DataProvider(args, (32, 48))
    n_test = sum(len(labels) for _, labels in provider.test_loader(32))
    assert n_test == len(provider.test_folder) - 1
    n_train = sum(len(labels) for _, labels in provider.train_loader(0))
    n_valid = sum(len(labels) for _, labels in provider.valid_loader(32))
    assert n_train + n_valid == len(provider.train_folder) - 1
    assert provider.bad_images.paths == {str(train_bad), str(val_bad)}
    assert provider.bad_images.take() == {str(train_bad), str(val_bad)} and provider.bad_images.take() == set()
    project.write(args={"corrupt_images": "error"}, args_per_task={"teacher": {"n_epochs": 1}})
    rc, err = _cli(train_main, project, "--step", "teacher", capsys=capsys)
    _one_error(rc, err, "corrupt image", "args.corrupt_images")
    assert str(train_bad) in err[-1] or str(val_bad) in err[-1]


@pytest.mark.parametrize("what", ["search", "eval", "dataset", "train"])
def test_unwritable_output_is_an_error_before_any_work(tmp_path, capsys, what):
    project, spec = _search_project(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    where = str(blocker / "out")
    if what == "search":
        project.write(search_config={"res_dir": where})
        rc, err = _cli(search_main, project, "--mode", "search", capsys=capsys)
    elif what == "eval":
        _with_checkpoint(project)
        project.write(subnet_config={"res_dir": where})
        rc, err = _cli(search_main, project, "--mode", "eval", "--model", "supernet", capsys=capsys)
    elif what == "dataset":
        _with_checkpoint(project)
        project.write(dataset_config=dict(TINY_DATASET, output=where + "/d.jsonl"))
        rc, err = _cli(create_main, project, capsys=capsys)
    else:
        project.write(args={"teacher_path": where})
        rc, err = _cli(train_main, project, "--step", "teacher", capsys=capsys)
    _one_error(rc, err, f"{blocker} is a file, not a folder")
    assert not Path(project.config["args"]["data_path"]).exists()  # no work was done


def test_predictor_dataset_too_small_for_its_splits_exits_2(tmp_path, capsys):
    project = make_tiny_project(tmp_path)
    spec = get_model_spec("TINY", project.model_config_path)
    space = SearchSpace(spec)
    import random
    rng = random.Random(0)
    data = Path(project.config["search_config"]["acc_dataset_path"])
    recipe = PredictorRecipe.from_config(project.config["predictor_config"])
    assert min_records(recipe) == 6
    for n in (1, 3, 5):
        data.write_text("".join(json.dumps(make_record(space.sample(rng), 0.5, model="TINY")) + "\n"
                                for _ in range(n)))
        capsys.readouterr()
        rc = run_cli(predictor_main, ["--config", str(project.config_path), "--model_config_path",
                      str(project.model_config_path)])
        err = capsys.readouterr().err.strip().splitlines()
        _one_error(rc, err, f"{n} distinct subnet(s) are too few", "at least 6", str(data))


# --------------------------------------------------------------------- 4. concurrent runs
def test_second_search_into_one_res_dir_stops_naming_the_first(tmp_path, capsys, caplog):
    project, _ = _search_project(tmp_path)
    res = tmp_path / "search"
    with OutputLock(res, "search"):
        code = ("import sys; from moofa.cli.common import run_cli; "
                "from moofa.cli.eval_and_search import main; sys.exit(run_cli(main, sys.argv[1:]))")
        proc = subprocess.run([sys.executable, "-c", code, "--config", str(project.config_path),
                               "--model_config_path", str(project.model_config_path), "--mode", "search"],
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
        err = proc.stderr.strip().splitlines()
        _one_error(proc.returncode, err, f"pid {os.getpid()} on host {socket.gethostname()}", str(res))
    assert not (res / LOCK_NAME).exists() and not list(res.glob("constraint_*"))
    # a lock left by a killed run (its pid is gone) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (res / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    stale = res / f"constraint_{CONSTRAINTS[0]}" / ".info.2kf8_s1q.tmp.json"
    stale.parent.mkdir()
    stale.write_text("{")
    with caplog.at_level(logging.INFO):
        rc, _ = _cli(search_main, project, "--mode", "search", capsys=capsys)
    assert rc == 0 and "taking over the stale lock" in caplog.text
    assert not (res / LOCK_NAME).exists() and not stale.exists()
    # another host's lock is never taken over
    (res / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "x"}))
    with pytest.raises(MoofaInputError, match="pid 1 on host elsewhere"):
        OutputLock(res, "search").acquire()


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"[]"])
def test_garbled_lock_is_taken_over_unless_a_live_process_holds_it(tmp_path, caplog, monkeypatch,
                                                                    content):
    """Issue 22 item 8: a lock file a kill left empty or garbled names no owner ("pid None on host
    None" before); it is taken over when no live process holds its flock."""
    import fcntl
    import time

    import moofa.lock as lock_mod
    res = tmp_path / "search"
    res.mkdir()
    path = res / LOCK_NAME
    path.write_bytes(content)
    old = time.time() - 60
    os.utime(path, (old, old))
    holder = os.open(path, os.O_RDONLY)  # a live process still holding it
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(MoofaInputError) as info:
            OutputLock(res, "search").acquire()
        assert str(info.value) == (f"{res}: another search holds the lock {path} (its file names "
                                   "no owner); wait for it to finish")
    finally:
        os.close(holder)
    with caplog.at_level(logging.WARNING, logger="moofa.lock"):
        with OutputLock(res, "search"):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"taking over the lock {path}: it names no owner" in caplog.text
    assert not path.exists()
    # a young one may still be being written: waited for, then taken over
    monkeypatch.setattr(lock_mod, "GARBLED_GRACE_S", 0.5)
    path.write_bytes(content)
    t0 = time.monotonic()
    with OutputLock(res, "search"):
        assert time.monotonic() - t0 >= 0.4 and json.loads(path.read_text())["pid"] == os.getpid()


def test_held_lock_keeps_its_flock_until_released(tmp_path):
    import fcntl
    res = tmp_path / "out"
    with OutputLock(res, "run"):
        fd = os.open(res / LOCK_NAME, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert not (res / LOCK_NAME).exists()


# ----------------------------------------------------------------------- 5. smaller things
def test_duplicate_records_are_removed_before_the_split(caplog):
    spec = get_model_spec("OFA")
    import random
    rng = random.Random(0)
    cfgs = [SearchSpace(spec).sample(rng) for _ in range(30)]
    acc = np.array([0.6 + 0.01 * (i % 7) for i in range(30)])
    dup = PredictorDataset("OFA", cfgs + cfgs[:20], np.concatenate([acc, acc[:20]]),
                           np.full(50, np.nan), np.full(50, np.nan), "dup.jsonl")
    recipe = PredictorRecipe(hidden_size=8, n_layers=1, ensemble=1, epochs=2, extra_features=False)
    with caplog.at_level(logging.WARNING):
        _, m = train_predictor(dup, spec, 0, recipe, device="cpu")
    assert m["n_train"] + m["n_test"] == 30 and m["n_test"] == 6
    assert "removed 20 duplicate record(s) of dup.jsonl" in caplog.text


def test_atomic_write_temp_files_are_recognised_and_removed(tmp_path):
    target = tmp_path / "checkpoint.pth.tar"
    with atomic_path(target) as tmp:
        left = tmp.with_name(tmp.name)  # the name a kill would leave
        tmp.write_bytes(b"x")
        kept = tmp.read_bytes()
    assert kept == b"x" and target.is_file()
    left.write_bytes(b"partial")  # as if killed during the write
    other = tmp_path / ".model_best.pth.abc.tmp.tar"
    other.write_bytes(b"y")
    assert clean_stale_temps([target]) == [left]
    assert other.exists() and target.is_file()
    assert clean_stale_temps(folders=[tmp_path]) == [other]


def test_checkpoint_path_that_is_a_folder_says_so(tmp_path, capsys):
    folder = tmp_path / "ckpt.pth.tar"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint"):
        load_checkpoint_file(folder)
    with pytest.raises(CheckpointError, match="is a folder, not a predictor checkpoint"):
        AccuracyPredictor.load(folder, "OFA")
    project = make_tiny_project(tmp_path / "p", args={"checkpoint": str(folder)})
    rc, err = _cli(create_main, project, capsys=capsys)
    _one_error(rc, err, str(folder), "is a folder", "args.checkpoint")


def test_class_mismatch_names_the_folders_and_classes(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    for split, classes in (("train", ["cat", "dog", "eel"]), ("val", ["cat", "dog", "fox"])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / c / "0.png")
    project = make_tiny_project(tmp_path, args={"dataset": "imagenet", "data_path": str(root)})
    args = last_task_args(load_config(project.config_path))
    with pytest.raises(MoofaInputError) as info:
        DataProvider(args, (32,))
    msg = str(info.value)
    assert f"{root / 'train'} has 3 class folders and {root / 'val'} has 3" in msg
    assert "only in train/: 'eel'" in msg and "only in val/: 'fox'" in msg


def test_subnet_image_size_outside_the_model_list_warns(tmp_path, caplog):
    project = make_tiny_project(tmp_path, subnet_config={"image_size": 40})
    with caplog.at_level(logging.WARNING):
        cfg = load_config(project.config_path, project.model_config_path)
    assert cfg["subnet_config"]["image_size"] == 40
    assert "subnet_config.image_size 40 is not one of TINY's resolutions [32, 48]" in caplog.text
