"""A package that works once installed (issue 19): the data files ship inside it, the packaged
files and the repository's documented copies cannot drift apart, and a plain (non-editable) install
of the wheel runs the demo and every console script from a folder outside the repository."""
from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from moofa.config import load_config
from moofa.demo import LABELS, MODEL_CONFIGS
from moofa.demo.pipeline import SCRIPT_MODULES, pipeline_stages, write_demo_configs
from moofa.models.spec import DEFAULT_MODEL_CONFIGS
from moofa.resources import resource_path

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "moofa" / "resources"

# packaged file (moofa/resources/) -> its documented copy in the repository
DOCUMENTED_COPIES: dict[str, str] = {
    "model_configs.yaml": "model_configs.yaml",
    "demo_MOOFA.yaml": "configs/demo_MOOFA.yaml",
    "demo_OFA.yaml": "configs/demo_OFA.yaml",
    "demo_model_configs.yaml": "configs/demo_model_configs.yaml",
}
CONSOLE_SCRIPTS = ("moofa-train", "moofa-create-dataset", "moofa-train-predictor", "moofa-eval-and-search",
                   "moofa-profile", "moofa-docs", "moofa-demo")


# ------------------------------------------------------------------------------------- fast checks
def test_packaged_files_and_their_documented_copies_are_identical():
    packaged = sorted(p.name for p in RESOURCES.glob("*.yaml"))
    assert packaged == sorted(DOCUMENTED_COPIES), "every packaged file has a documented copy, listed here"
    for name, copy in DOCUMENTED_COPIES.items():
        assert (ROOT / copy).read_bytes() == resource_path(name).read_bytes(), \
            f"{copy} differs from moofa/resources/{name} (the source of truth): copy one over the other"


def test_defaults_point_into_the_package():
    assert DEFAULT_MODEL_CONFIGS == RESOURCES / "model_configs.yaml" and DEFAULT_MODEL_CONFIGS.is_file()
    assert MODEL_CONFIGS == RESOURCES / "demo_model_configs.yaml" and MODEL_CONFIGS.is_file()


def test_stages_run_the_cli_modules_and_show_the_scripts(tmp_path, monkeypatch):
    """Each stage runs ``python -m <module>`` of the same interpreter, the module the shown
    top-level script wraps, and that module runs ``main`` when executed."""
    for script, module in SCRIPT_MODULES.items():
        wrapper = (ROOT / script).read_text()
        assert re.search(rf"^from {re.escape(module)} import main$", wrapper, flags=re.MULTILINE), script
        source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
        assert re.search(r'^if __name__ == "__main__":\n    raise SystemExit\(run_cli\(main\)\)$', source,
                         flags=re.MULTILINE), module
    monkeypatch.chdir(tmp_path)
    paths = write_demo_configs(Path("run"), ["MOOFA"], quick=True)
    stages = pipeline_stages("MOOFA", paths["MOOFA"], load_config(paths["MOOFA"], MODEL_CONFIGS))
    assert {s.script for s in stages} == set(SCRIPT_MODULES)
    for stage in stages:
        argv = stage.argv()
        assert argv[:3] == [sys.executable, "-m", SCRIPT_MODULES[stage.script]] and argv[3:] == stage.args
        assert stage.shown().startswith(f"python {stage.script} --config ")


# ------------------------------------------------------------------------ the installed wheel
def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return dict(env, PYTHONUNBUFFERED="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (the checkout stays clean), installed with
    ``--no-deps`` into a fresh virtual environment outside the repository; third-party packages
    (torch, ...) are borrowed from the test environment's site-packages through a ``.pth`` file.
    Returns the environment's folder."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"
    shutil.copytree(ROOT / "moofa", src / "moofa", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "wheel"),
                    str(src)], check=True, cwd=tmp, env=_clean_env(), timeout=300)
    (wheel,) = (tmp / "wheel").glob("moofa-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"moofa/resources/{n}" for n in DOCUMENTED_COPIES} <= names

    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, cwd=tmp, env=_clean_env(), timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, cwd=tmp, env=_clean_env()).stdout.strip()
    borrowed = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "_borrowed_test_env.pth").write_text("".join(f"{p}\n" for p in borrowed))
    where = subprocess.run([str(python), "-c", "import moofa, torch; print(moofa.__file__)"], check=True,
                           capture_output=True, text=True, cwd=tmp, env=_clean_env()).stdout.strip()
    assert Path(where).is_relative_to(env_dir), f"moofa imported from {where}, not the installed wheel"
    return env_dir


@pytest.mark.slow
def test_installed_console_scripts_answer_help(installed, tmp_path):
    procs = {name: subprocess.Popen([str(installed / "bin" / name), "--help"], cwd=tmp_path, env=_clean_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in CONSOLE_SCRIPTS}
    outputs = {}
    for name, proc in procs.items():
        outputs[name], _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} --help: exit {proc.returncode}\n{outputs[name][-3000:]}"
        assert outputs[name].startswith("usage: "), f"{name} --help:\n{outputs[name][-3000:]}"
    assert outputs["moofa-train"].startswith("usage: train.py ") and "--model_config_path" in outputs["moofa-train"]
    assert "--quick" in outputs["moofa-demo"]


@pytest.mark.slow
def test_installed_quick_demo_runs_outside_the_repository(installed, tmp_path):
    """``moofa-demo --quick --out demo_out`` from a folder outside the repository: every stage runs
    the installed package, the relative --out resolves against the current folder."""
    proc = subprocess.run([str(installed / "bin" / "moofa-demo"), "--quick", "--out", "demo_out"], cwd=tmp_path,
                          env=_clean_env(), capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    out = tmp_path / "demo_out"
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["ok"] is True and summary["failures"] == []
    assert summary["out"] == str(out.resolve())
    ran = [s for s in summary["stages"] if s["status"] == "ran"]
    assert len(ran) == len(summary["stages"]) > 2 * 6
    assert {s["label"] for s in ran} == {*LABELS, "summary"}
    assert all(re.match(r"python (train|eval_and_search|create_moofa_predictor_dataset|train_moofa_predictor)\.py ",
                        s["command"]) for s in ran), [s["command"] for s in ran]
    assert (out / "summary" / "summary.md").is_file() and (out / "summary" / "summary.csv").is_file()
    for label in LABELS:
        assert (out / "configs" / f"demo_{label}.yaml").is_file()
        log = (out / label / "logs" / "teacher.log").read_text()
        assert "$ python train.py --config " in log
