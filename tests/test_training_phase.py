"""The trainer's launch kinds (moofa.training.phase): what each answers, without training."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import make_tiny_project

from moofa.errors import ConfigError
from moofa.run import PhaseFiles, Run
from moofa.training.phase import ElasticPhase, TeacherPhase, phase_for


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    project = make_tiny_project(tmp_path_factory.mktemp("phase"),
                                args_per_task={"expand_2": {"resort_channels": True}})
    return Run.load(project.config_path, project.model_config_path)


def test_the_step_picks_the_strategy() -> None:
    teacher = phase_for("teacher", 3)  # the teacher ignores a phase, as train.py always did
    assert isinstance(teacher, TeacherPhase) and teacher.number is None
    assert (teacher.name, teacher.launch_args()) == ("teacher", "--step teacher")
    depth = phase_for("depth", 2)
    assert isinstance(depth, ElasticPhase)
    assert (depth.name, depth.launch_args()) == ("depth_2", "--step depth --phase 2")
    with pytest.raises(ConfigError, match="--phase is required for step depth"):
        phase_for("depth", None)


def test_initial_weights_chain_from_the_teacher(run: Run) -> None:
    run_dir = Path(run.args().path)
    assert phase_for("teacher", None).init_source(run, run.args("teacher")) is None
    first = phase_for("kernel", 1).init_source(run, run.args("kernel", 1))
    assert first is not None and first.what == "teacher checkpoint"
    assert first.path == Path(run.args().teacher_path) / "checkpoint" / "model_best.pth.tar"
    assert first.producer.command(run) == f"python train.py --config {run.path} --step teacher"
    nxt = phase_for("expand", 1).init_source(run, run.args("expand", 1))
    assert nxt is not None and nxt.what == "predecessor checkpoint of expand_1"
    assert nxt.path == run_dir / "checkpoint" / "checkpoint-depth_2.pth.tar"
    assert nxt.producer.command(run).endswith("--step depth --phase 2")


def test_what_each_kind_trains_validates_and_resorts(run: Run) -> None:
    spec = run.spec(run.args("teacher"))
    teacher = phase_for("teacher", None)
    assert not teacher.elastic and not teacher.distils and teacher.validates_every_epoch
    assert teacher.constraints(spec, run.cfg.tasks_phases) is None
    assert teacher.validation_items(spec, None) == [("R32", 32, None), ("R48", 48, None)]
    expand = phase_for("expand", 2)
    assert expand.elastic and expand.distils and not expand.validates_every_epoch
    c = expand.constraints(spec, run.cfg.tasks_phases)
    assert c == {"ks": [3, 5, 7], "e": [2, 3, 4], "d": [2, 3, 4]}
    names = [name for name, _, _ in expand.validation_items(spec, c)]
    assert len(names) == 16 and "R48-D4-E4-K7-W0" in names
    assert expand.resort_stage(run.args("expand", 2), c) == 1  # three expand ratios
    assert phase_for("expand", 1).resort_stage(run.args("expand", 1), c) is None  # not configured
    assert phase_for("depth", 2).resort_stage(run.args("expand", 2), c) is None   # not an expand phase


def test_finished_is_the_final_file_or_the_teachers_last_epoch(run: Run, tmp_path: Path) -> None:
    files = PhaseFiles(tmp_path, tmp_path / "state.pth.tar", tmp_path / "best.pth.tar",
                       tmp_path / "final.pth.tar")
    teacher, kernel = phase_for("teacher", None), phase_for("kernel", 1)
    assert not teacher.finished(files, 3) and not kernel.finished(files, 3)
    torch.save({"epoch": 1}, files.state)
    assert not teacher.finished(files, 3) and teacher.finished(files, 2)
    assert not kernel.finished(files, 1)  # a phase is finished by its final weights only
    files.final.write_bytes(b"")
    assert kernel.finished(files, 3)
