"""The main job end to end (issue 7): ``python -m moofa.demo --quick`` produces every output of the
pipeline, and every command of the ImageNet recipe (docs/imagenet.md) is runnable as written."""
from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from moofa import demo
from moofa.cli import demo as demo_cli
from moofa.cli.common import ArgParser, run_cli
from moofa.config import load_config, search_constraints, task_args
from moofa.data.datasets import ensure_dataset
from moofa.docs import BEGIN, END, config_reference_markdown
from moofa.efficiency import flops, memory_bounds, peak_memory
from moofa.models.spec import get_model_spec
from moofa.models.subnet_file import load_exported
from moofa.search.results import constraint_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_DOC = ROOT / "docs" / "config.md"      # the generated config reference
RECIPE_DOC = ROOT / "docs" / "imagenet.md"    # the ImageNet recipe
PHASES = ("kernel_1", "depth_1", "depth_2", "expand_1", "expand_2")


def _env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")


# ------------------------------------------------------------------------------- the demo itself
@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One ``--quick`` demo run (both models) through the real command line, then a second run
    that must reuse every stage; the folder of an independent second run is ``out.parent / "again"``."""
    out = tmp_path_factory.mktemp("demo") / "run"

    def launch(folder: Path, timeout: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "moofa.demo", "--quick", "--out", str(folder)]
        done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        return done

    first = launch(out, 900)
    summary1 = json.loads((out / demo.SUMMARY_NAME).read_text())
    launch(out, 300)
    summary2 = json.loads((out / demo.SUMMARY_NAME).read_text())
    launch(out.parent / "again", 900)
    cfgs = {label: load_config(out / "configs" / f"demo_{label}.yaml", demo.MODEL_CONFIGS) for label in demo.LABELS}
    return out, cfgs, summary1, summary2, first.stdout + first.stderr


# keys whose values are wall-clock times or moments, not results
_TIMING = re.compile(r"(seconds|_time|_ms_per_image|finished|started|^time$|^date$)")


def _results_only(obj, folder: Path, key: str = ""):
    """A JSON value without timings, and with the run folder's path replaced by ``<out>``. Digests
    are left out too: the images' identity hashes their files' mtimes (when each run wrote its
    dataset), a predictor checkpoint records its dataset's path, and fine-tuning's ``fingerprint``
    is one digest of its inputs, paths included (the weights are compared byte for byte instead)."""
    if isinstance(obj, dict):
        digest = {"sha256", "size"} if "sha256" in obj else set()  # a file's identity: {path, size, sha256}
        return {k: _results_only(v, folder, k) for k, v in obj.items()
                if not _TIMING.search(k) and k not in digest and not (k == "fingerprint" and isinstance(v, str))}
    if isinstance(obj, list):
        return [_results_only(v, folder, key) for v in obj]
    if isinstance(obj, str):
        return obj.replace(str(folder.resolve()), "<out>").replace(str(folder), "<out>")
    return obj


@pytest.mark.slow
def test_two_quick_demos_give_identical_numbers(quick_demo):
    """Two runs of the same command into two folders: every info.json and demo_summary.json holds
    the same numbers (times and paths aside)."""
    out = quick_demo[0]
    again = out.parent / "again"
    files = sorted(p.relative_to(out) for p in out.rglob("*.json") if p.name in ("info.json", demo.SUMMARY_NAME))
    assert len(files) >= 12 and Path(demo.SUMMARY_NAME) in files
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.json")
                           if p.name in ("info.json", demo.SUMMARY_NAME))
    for rel in files:
        a = _results_only(json.loads((out / rel).read_text()), out)
        b = _results_only(json.loads((again / rel).read_text()), again)
        if rel.name == demo.SUMMARY_NAME:  # the first run folder was also resumed once (stage status)
            a.pop("stages"), b.pop("stages")
        assert a == b, rel
    weights = sorted(p.relative_to(out) for p in out.rglob("*.pth.tar") if "predictor" not in p.parts)
    assert len(weights) >= 2 * (2 + len(PHASES))  # teacher, phases, exported subnets
    for rel in weights:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    summary = json.loads((out / demo.SUMMARY_NAME).read_text())
    env = summary["environment"]
    assert env["torch"] == torch.__version__ and env["threads_per_stage"] >= 1 and env["cpu"]


@pytest.mark.slow
def test_quick_demo_writes_every_output(quick_demo):
    out, cfgs, summary, _, log = quick_demo
    assert summary["ok"] and summary["failures"] == []
    ran = {(s["label"], s["stage"]) for s in summary["stages"] if s["status"] == "ran"}
    for label, cfg in cfgs.items():
        args = cfg["args"]
        assert Path(args["data_path"]).resolve().is_relative_to(out.resolve())  # paths moved under --out
        assert (Path(args["teacher_path"]) / "checkpoint" / "model_best.pth.tar").is_file()
        for phase in PHASES:
            ckpt = Path(args["path"]) / "checkpoint" / f"checkpoint-{phase}.pth.tar"
            assert ckpt.is_file(), ckpt
            assert "state_dict" in torch.load(ckpt, map_location="cpu", weights_only=True)
        assert {(label, s) for s in ("teacher", "teacher_eval", *PHASES, "dataset", "predictor", "search",
                                     "finetune")} <= ran
        assert (out / label / "logs" / "teacher.log").is_file()

        # predictor dataset: the requested number of records, each peak and MMACs recomputed
        spec = get_model_spec(args["model"], demo.MODEL_CONFIGS)
        records = [json.loads(line) for line in Path(cfg["dataset_config"]["output"]).read_text().splitlines()]
        infos = [json.loads((constraint_dir(cfg["search_config"]["res_dir"], c) / "info.json").read_text())
                 for c in search_constraints(cfg)]
        new = [row for info in infos for row in info["rerank"] if row["newly_measured"]]
        # the dataset's subnets, then the search's re-ranking measurements (appended for the next round)
        assert len(records) == cfg["dataset_config"]["n_samples"] + len(new)
        assert [r["accuracy"] for r in records[len(records) - len(new):]] == \
            [row["selection_accuracy"] for row in new]
        for info in infos:  # selection on held-out training images, the report on the test images
            assert info["images"]["selection_accuracy"]["split"] == "selection"
            assert info["images"]["real_accuracy"]["split"] == "test"
            assert info["baseline"] is None or 0.0 <= info["baseline"]["real_accuracy"] <= 1.0
        for r in records:
            assert 0.0 <= r["accuracy"] <= 1.0
            assert r["peak_memory"] == peak_memory(spec, r)
        # predictor + scatter plot; test metrics stored in the checkpoint
        assert demo.scatter_path(cfg).stat().st_size > 0
        assert "test_kendall_tau" in demo.predictor_metrics(cfg)

        # one result folder per budget, with info.json, plots and the exported subnet
        constraints = search_constraints(cfg)
        assert len(constraints) == 4
        res = Path(cfg["search_config"]["res_dir"])
        assert sorted(p.name for p in res.glob("constraint_*")) == sorted(f"constraint_{c}" for c in constraints)
        for c in constraints:
            folder = res / f"constraint_{c}"
            info = json.loads((folder / "info.json").read_text())
            assert info["peak_memory"] == peak_memory(spec, info["config"]) <= c
            assert info["flops"] == pytest.approx(flops(spec, info["config"], n_classes=4), rel=1e-9)
            assert 0.0 <= info["real_accuracy"] <= 1.0
            assert (folder / "memory_histogram.png").is_file()
            assert len(list(folder.glob("*.png"))) >= 2  # histogram + architecture diagram

        # the tightest budget's subnet, fine-tuned: export + info.json with before/after test top-1
        tight = res / f"constraint_{min(constraints)}"
        ft = json.loads((tight / "finetuned" / "info.json").read_text())
        searched = json.loads((tight / "info.json").read_text())
        assert ft["test_top1_before"] == pytest.approx(searched["real_accuracy"], abs=1.01 / searched["n_images"])
        assert ft["config"] == searched["config"] and ft["epochs"] == 1 and ft["n_test_images"] == searched["n_images"]
        assert load_exported(tight / "finetuned" / "subnet.pth.tar").subnet_config.to_dict() == ft["config"]

    # the comparison: both models, every budget, and the plots
    table = (out / "summary" / "summary.md").read_text()
    assert "| Constraint | MOOFA | OFA |" in table
    for c in search_constraints(cfgs["MOOFA"]):
        assert f"< {c // 1000}k" in table
    for name in ("accuracy_vs_constraint.png", "memory_histograms.png", "summary.csv"):
        assert (out / "summary" / name).stat().st_size > 0
    rows = summary["checks"]["budgets"]
    assert len(rows) == 8 and all(r["ok"] and r["peak_memory"] <= r["constraint"] for r in rows)
    ft_rows = summary["checks"]["finetune"]
    assert [(r["label"], r["constraint"]) for r in ft_rows] == [("MOOFA", 20000), ("OFA", 20000)]
    assert all(0.0 <= r["before"] <= 1.0 and 0.0 <= r["after"] <= 1.0 for r in ft_rows)
    assert "before ->" in log and "1 fine-tuning epoch(s)" in log
    assert "Per-stage times" in log and "Best subnet per peak-memory budget" in log


@pytest.mark.slow
def test_quick_demo_rerun_reuses_every_stage(quick_demo):
    _, _, first, second, _ = quick_demo
    by_stage = {(s["label"], s["stage"]): s["status"] for s in second["stages"]}
    assert all(status == "reused" for (label, _), status in by_stage.items() if label != "summary"), by_stage
    assert by_stage[("summary", "summary")] == "ran"
    assert second["ok"] and second["checks"]["budgets"] == first["checks"]["budgets"]


def test_quick_and_full_runs_do_not_mix(tmp_path, capsys):
    (tmp_path / demo.STATE_NAME).write_text(json.dumps({"mode": "quick"}))
    assert run_cli(demo_cli.main, ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "quick demo run" in err and len(err.splitlines()) == 1
    assert run_cli(demo_cli.main, ["--out", str(tmp_path), "--models", "NAS"]) == 2
    assert "invalid choice: 'NAS'" in capsys.readouterr().err


def test_demo_configs_budgets_fit_both_models(tmp_path):
    """The shipped demo configs load, their paths move under --out, and every budget lies inside
    both demo models' exact peak-memory range (so each model has a subnet for it and not every
    subnet fits it)."""
    paths = demo.write_demo_configs(tmp_path, demo.LABELS, quick=False)
    cfgs = {label: load_config(p, demo.MODEL_CONFIGS) for label, p in paths.items()}
    budgets = {label: search_constraints(cfg) for label, cfg in cfgs.items()}
    assert budgets["MOOFA"] == budgets["OFA"] == [20000, 25000, 30000, 35000]
    for label, cfg in cfgs.items():
        assert cfg["args"]["path"].startswith(str(tmp_path.resolve()))
        spec = get_model_spec(cfg["args"]["model"], demo.MODEL_CONFIGS)
        lo, hi = memory_bounds(spec)
        assert all(lo <= c < hi for c in budgets[label]), (label, lo, hi)
        dc = cfg["dataset_config"]
        assert dc["min_memory"] <= lo and hi < dc["max_memory"]   # the bins cover every reachable peak
    # the OFA peak grows with the resolution, MOOFA's is nearly flat (what the scaling preserves)
    ofa, moofa = (get_model_spec(n, demo.MODEL_CONFIGS) for n in ("OFA_DEMO", "MOOFA_V3_DEMO"))
    assert memory_bounds(ofa, 32) == (9880, 17712) and memory_bounds(ofa, 56) == (25280, 49392)
    assert memory_bounds(moofa, 32) == (18720, 37344) and memory_bounds(moofa, 56) == (18944, 37344)


# Vela's figures of a demo subnet compiled for ethos-u55-128, as deploy.json stores them (the
# MOOFA 20k answer of a demo run; an Ethos-U compile takes ~1.5 min, too long for the suite).
_U55 = {"target": "ethos-u55-128", "system_config": "Ethos_U55_High_End_Embedded", "memory_mode": "Shared_Sram",
        "sram_bytes": 21984, "flash_bytes": 504896, "cycles": 597870, "inference_ms": 1.19574, "macs": 2574128,
        "vela_version": "5.1.0", "delegate_calls": 1, "pte_bytes": 520368, "estimate": "Vela",
        "tosa_int8_accuracy": 283 / 360, "tosa_n_images": 360}


def _stored_results(tmp_path: Path, targets: dict[int, dict | None]) -> tuple[object, Path]:
    """The shipped MOOFA demo config under ``tmp_path`` and a search result per budget whose
    deployed budgets hold ``targets[c]`` as ``info["deploy"]["targets"]`` (None: no Ethos-U entry)."""
    path = demo.write_demo_configs(tmp_path, ["MOOFA"], quick=False)["MOOFA"]
    cfg = load_config(path, demo.MODEL_CONFIGS)
    spec = get_model_spec(cfg["args"]["model"], demo.MODEL_CONFIGS)
    arch = {"ks": [3] * 20, "e": [2] * 20, "d": [2] * 5, "image_size": 32}   # the smallest subnet
    for c in search_constraints(cfg):
        info = {"model": spec.name, "constraint": c, "config": arch, "peak_memory": int(peak_memory(spec, arch)),
                "flops": 1.5, "real_accuracy": 0.8, "n_images": 360, "predicted_accuracy": 0.8}
        if c in targets:
            info["deploy"] = {"int8_accuracy": 0.8, "fp32_accuracy": 0.8, "n_images": 360, "pte_bytes": 500000}
            if targets[c] is not None:
                info["deploy"]["targets"] = {"ethos-u55-128": targets[c]}
        folder = constraint_dir(cfg["search_config"]["res_dir"], c)
        folder.mkdir(parents=True)
        (folder / "info.json").write_text(json.dumps(info))
    return cfg, Path(cfg["search_config"]["res_dir"])


def test_demo_checks_and_report_show_the_ethosu_table(tmp_path):
    """The full demo compiles the tightest and the loosest budget's answer for ethos-u55-128: its
    checks read Vela's figures from info.json, its report prints them as Vela's estimates, and
    summary.md's Ethos-U table must be there (from stored results: compiling is too slow here)."""
    from moofa.demo.checks import collect_checks, ethosu_targets
    from moofa.demo.report import report_text
    from moofa.search.results import read_series, summary_markdown

    cfg, res = _stored_results(tmp_path, {20000: _U55, 35000: dict(_U55, sram_bytes=30720, inference_ms=2.5)})
    assert ethosu_targets(cfg) == ["ethos-u55-128"] and cfg["search_config"]["deploy_constraints"] == [20000, 35000]
    checks = collect_checks({"MOOFA": cfg})
    table = summary_markdown([read_series(res, "MOOFA")])
    assert "## ethos-u55-128: Vela's estimates of the found subnets" in table
    assert "| < 20k | 21.5 / 493.1 / 1.196 |" in table and "| < 35k | 30.0 / 493.1 / 2.500 |" in table
    assert "| < 25k | - |" in table   # only the deployed budgets are compiled
    checks.check_summary(table, {"MOOFA": cfg})
    assert checks.target_tables == {"ethos-u55-128": True}
    rows = {r["constraint"]: r for r in checks.budgets}
    assert rows[20000]["targets"]["ethos-u55-128"]["sram_bytes"] == 21984 and rows[25000]["targets"] == {}
    assert all(r["ok"] for r in rows.values()) and checks.failures(quick=True) == []
    text = report_text(tmp_path, ["MOOFA"], {"MOOFA": cfg}, [], checks, [], 0.0, 1.0, table)
    assert ("ethos-u55-128 program: SRAM 21.5 KiB, Flash 493.1 KiB, 1.196 ms, 1 delegate call(s) (Vela's "
            "estimates for Ethos_U55_High_End_Embedded, not measured on silicon); int8 top-1 78.61 %") in text
    assert text.count("ethos-u55-128 program:") == 2 and table in text

    # a program split into several delegate calls, a budget left uncompiled, a summary without the table
    cfg, _ = _stored_results(tmp_path / "bad", {20000: None, 35000: dict(_U55, delegate_calls=3)})
    checks = collect_checks({"MOOFA": cfg})
    checks.check_summary("# Best subnet per peak-memory constraint\n", {"MOOFA": cfg})
    failures = checks.failures(quick=True)
    assert len(failures) == 3, failures
    assert "budget 20,000: no ethos-u55-128 program" in failures[0]
    assert "budget 35,000: the ethos-u55-128 program is 3 delegate calls, not one" in failures[1]
    assert failures[2] == "summary.md has no ethos-u55-128 table (Vela's estimates of the deployed subnets)"


def test_demo_model_widths_are_the_reference_divided_by_4():
    from moofa.models.spec import make_divisible, moofa_widths
    specs = {n: get_model_spec(n, demo.MODEL_CONFIGS) for n in ("OFA_DEMO", "MOOFA_V3_DEMO")}
    ofa_ref = get_model_spec("OFA").table.widths
    assert specs["OFA_DEMO"].table.widths == [make_divisible(w / 4, 8) for w in ofa_ref]
    assert specs["MOOFA_V3_DEMO"].table.widths == [3] + [make_divisible(w / 4, 8) for w in moofa_widths()[1:]]
    for name, ref in (("OFA_DEMO", "OFA"), ("MOOFA_V3_DEMO", "MOOFA_V3")):
        s, r = specs[name], get_model_spec(ref)
        assert (s.model_class, s.ks_list, s.expand_list, s.depth_list) == (r.model_class, r.ks_list, r.expand_list,
                                                                            r.depth_list)
        assert list(s.image_sizes) == [x // 4 for x in r.image_sizes]


# ---------------------------------------------------------------------------------- the README
def test_config_reference_is_generated():
    text = CONFIG_DOC.read_text()
    i, j = text.index(BEGIN), text.index(END)
    assert text[i + len(BEGIN):j].strip() == config_reference_markdown().strip()
    for key in ("`args.data_path`", "`search_config.constraints`", "`dataset_config.n_bins`",
                "`predictor_config.ensemble`", "`args.synthetic.difficulty`", "`wandb.use_wandb`"):
        assert key in text


def recipe_commands(text: str) -> list[str]:
    """The command lines of the fenced ``bash`` blocks of the ImageNet recipe (docs/imagenet.md, up to
    the section on the reference's published files)."""
    section = text.split("\n## Using the reference's published files", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def split_launcher(command: str) -> tuple[str, str, list[str]]:
    """(launcher, script, script arguments) of ``horovodrun -np N python S ...``,
    ``torchrun [opts] S ...`` or ``python S ...``."""
    tokens = shlex.split(command)
    launcher = tokens[0]
    if launcher == "python":
        return launcher, tokens[1], tokens[2:]
    if launcher == "horovodrun":
        i = tokens.index("python")
        assert tokens[1:i][:1] == ["-np"], command
        return launcher, tokens[i + 1], tokens[i + 2:]
    if launcher == "torchrun":
        i = next(k for k, t in enumerate(tokens) if t.endswith(".py"))
        assert "--nproc_per_node" in tokens[1:i], command
        return launcher, tokens[i], tokens[i + 1:]
    raise AssertionError(f"unknown launcher in {command!r}")


class _Parsed(Exception):
    pass


def parse_script_args(script: str, argv: list[str], monkeypatch) -> object:
    """Parse ``argv`` with the script's own argument parser (its ``main`` up to parse_args)."""
    source = (ROOT / script).read_text()
    module = re.search(r"^from (moofa[\w.]*) import main$", source, flags=re.MULTILINE).group(1)
    original = ArgParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(ArgParser, "parse_args", parse_then_stop)
        with pytest.raises(_Parsed) as caught:
            importlib.import_module(module).main(argv)
    return caught.value.args[0]


def imagenet_like(root: Path, classes=("n01440764", "n01443537"), train=6, val=2, size=64) -> Path:
    """A tiny dataset laid out like ImageNet (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
                img[..., c % 3] = 255 - i * 10
                Image.fromarray(img).save(folder / f"{wnid}_{i}.JPEG")
    return root


def _with_data_path(config: Path, data: Path, tmp: Path, **overrides) -> Path:
    raw = yaml.safe_load(config.read_text())
    raw["args"]["data_path"] = str(data)
    for section, values in overrides.items():
        raw.setdefault(section, {})
        if isinstance(values, dict):
            raw[section] = {**(raw[section] or {}), **copy.deepcopy(values)}
        else:
            raw[section] = values
    out = tmp / config.name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def test_readme_recipe_commands_run_as_written(tmp_path, monkeypatch):
    commands = recipe_commands(RECIPE_DOC.read_text())
    data = imagenet_like(tmp_path / "imagenet")
    seen = set()
    monkeypatch.chdir(ROOT)
    for command in commands:
        launcher, script, argv = split_launcher(command)
        assert (ROOT / script).is_file(), command
        ns = parse_script_args(script, argv, monkeypatch)
        mode = getattr(ns, "mode", None)
        step = getattr(ns, "step", None)
        seen.add((launcher, script, step or mode, getattr(ns, "phase", None), getattr(ns, "model", None)))
        if step == "finetune":
            assert ns.subnet and "constraint_" in ns.subnet, command
        if mode == "summary":
            assert ns.results and ns.labels and len(ns.results) == len(ns.labels) and ns.output, command
            continue
        assert ns.config and (ROOT / ns.config).is_file(), command
        if mode == "eval":
            assert ns.model in ("supernet", "teacher"), command
        config = _with_data_path(ROOT / ns.config, data, tmp_path)
        cfg = load_config(config, ns.model_config_path or None)
        if step is not None:  # the phase must exist in the config (task_args raises otherwise)
            args = task_args(cfg, step, ns.phase)
        else:
            args = cfg["args"]
        assert args["dataset"] == "imagenet" and ensure_dataset(args) == data
    # the recipe covers every step and phase with both launchers, and the other scripts
    for launcher in ("horovodrun", "torchrun"):
        assert (launcher, "train.py", "teacher", None, None) in seen
        for phase in PHASES:
            step, p = phase.split("_")
            assert (launcher, "train.py", step, int(p), None) in seen, (launcher, phase)
        assert (launcher, "create_moofa_predictor_dataset.py", None, None, None) in seen
        assert (launcher, "eval_and_search.py", "search", None, None) in seen
        assert (launcher, "train.py", "finetune", None, None) in seen
    scripts = {s[1] for s in seen}
    assert "train_moofa_predictor.py" in scripts
    assert ("python", "eval_and_search.py", "summary", None, None) in seen


@pytest.mark.slow
def test_readme_teacher_step_launches(tmp_path):
    """The recipe's first command, with config_MOOFA.yaml pointed at a tiny ImageNet-like folder
    and shrunk to one epoch on a few images: the real MOOFA_V3 teacher trains and is saved."""
    command = next(c for c in recipe_commands(RECIPE_DOC.read_text()) if c.startswith("python train.py")
                   or ("train.py" in c and "--step teacher" in c))
    _, script, argv = split_launcher(command)
    i = argv.index("--config")
    tiny = {"n_epochs": 1, "base_lr": 0.01, "warmup_epochs": 0, "warmup_lr": 0.0, "dynamic_batch_size": 1}
    config = _with_data_path(ROOT / argv[i + 1], imagenet_like(tmp_path / "imagenet", train=4, val=2), tmp_path,
                             wandb={"use_wandb": False}, args_per_task={"teacher": tiny})
    raw = yaml.safe_load(config.read_text())
    raw["args"].update(device="cpu", base_batch_size=4, valid_size=2, bn_calib_images=4, bn_calib_batch_size=4,
                       n_worker=0)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    argv[i + 1] = str(config)
    proc = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best = tmp_path / "models" / "MOOFA" / "teacher" / "checkpoint" / "model_best.pth.tar"
    sd = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert sd["classifier.linear.weight"].shape == (1000, 392)   # ImageNet head of the real MOOFA_V3


def test_runner_reuses_finished_stages_and_reruns_what_follows(tmp_path):
    """Stage bookkeeping with real (tiny) processes: finished stages are reused; a stage whose
    output disappeared runs again and so does everything after it; a changed config reruns all;
    a failure stops the chain; CPU seconds come from the child."""
    script = tmp_path / "touch.py"
    script.write_text("import sys, pathlib\nfor p in sys.argv[1:]:\n    pathlib.Path(p).write_text('x')\n"
                      "sys.exit(3 if any(p.endswith('fail') for p in sys.argv[1:]) else 0)\n")
    config = tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    outs = [tmp_path / f"out{i}" for i in range(3)]
    stages = [demo.Stage("M", f"s{i}", str(script), [str(o)], [o]) for i, o in enumerate(outs)]

    def run(chain):
        res = demo.Runner(tmp_path, lambda msg: None, lambda: None).run_chain("M", config, chain)
        return [r.status for r in res], res

    # every stage gets the runner's fixed thread count, whatever the other chains do
    probe = tmp_path / "threads.py"
    probe.write_text("import os, sys, pathlib\npathlib.Path(sys.argv[1]).write_text(os.environ['OMP_NUM_THREADS'])\n")
    seen = tmp_path / "seen"
    demo.Runner(tmp_path, lambda msg: None, lambda: None, threads=3).run_chain(
        "P", config, [demo.Stage("P", "t", str(probe), [str(seen)], [seen])])
    assert seen.read_text() == "3"
    assert demo.pipeline.threads_per_process(2) == max(1, min(4, (os.cpu_count() or 1) // 2))

    status, res = run(stages)
    assert status == ["ran"] * 3 and all(r.returncode == 0 and r.cpu_seconds >= 0 for r in res)
    assert all(Path(r.log).read_text().count("$ python") == 1 for r in res)
    assert run(stages)[0] == ["reused"] * 3
    outs[1].unlink()
    assert run(stages)[0] == ["reused", "ran", "ran"]
    config.write_text("a: 2\n")
    assert run(stages)[0] == ["ran"] * 3
    failing = [stages[0], demo.Stage("M", "s1", str(script), [str(tmp_path / "fail")], []), stages[2]]
    config.write_text("a: 3\n")
    status, res = run(failing)
    assert status == ["ran", "failed", "not run"] and res[1].returncode == 3
