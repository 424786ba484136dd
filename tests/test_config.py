"""Config loading, validation and the progressive-shrinking helpers (docs/design.md#protocols)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moofa.cli.common import run_cli
from moofa.config import (
    REFERENCE_PHASES,
    last_task_args,
    load_config,
    phase_constraints,
    resolve_model,
    save_resolved_config,
    search_constraints,
    task_args,
    validation_subnets,
)
from moofa.errors import ConfigError
from moofa.models.spec import get_model_spec

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = REPO / "model_configs.yaml"

# A verbatim reference-style config: every docs/design.md#configuration key, the swapped constraint names, PyYAML's
# string "1e-5", continuous_size true and the reference's pickle dataset path.
REFERENCE_YAML = """\
args:
  path: models/MOOFA/
  teacher_path: models/MOOFA/teacher/
  checkpoint: models/MOOFA/checkpoint/checkpoint-expand_2.pth.tar
  model: MOOFA_V3
  dataset: imagenet
  base_batch_size: 64
  base_stage_width: proxyless
  bn_eps: 1e-5
  bn_momentum: 0.1
  continuous_size: true
  distort_color: tf
  dropout: 0.1
  dy_conv_scaling_mode: 1
  fp16_allreduce: false
  independent_distributed_sampling: false
  kd_ratio: 1.0
  kd_type: ce
  label_smoothing: 0.1
  lr_schedule_type: cosine
  manual_seed: 0
  model_init: he_fout
  momentum: 0.9
  n_worker: 12
  no_decay_keys: bn#bias
  no_nesterov: false
  not_sync_distributed_image_size: false
  opt_type: sgd
  print_frequency: 10
  resize_scale: 0.08
  valid_size: 100
  validation_frequency: 1
  weight_decay: 3.0e-5
tasks:
  - kernel
  - depth
  - expand
tasks_phases:
  kernel: 1
  depth: 2
  expand: 2
args_per_task:
  teacher:
    n_epochs: 180
    base_lr: 3.0e-2
    warmup_epochs: 0
    warmup_lr: 3.0e-3
    dynamic_batch_size: 1
  kernel_1:
    n_epochs: 120
    base_lr: 3.0e-3
    warmup_epochs: 5
    warmup_lr: 3.0e-3
    dynamic_batch_size: 1
  depth_1:
    n_epochs: 25
    base_lr: 2.5e-4
    warmup_epochs: 0
    warmup_lr: 2.5e-3
    dynamic_batch_size: 2
  depth_2:
    n_epochs: 120
    base_lr: 7.5e-4
    warmup_epochs: 5
    warmup_lr: 7.5e-5
    dynamic_batch_size: 2
  expand_1:
    n_epochs: 25
    base_lr: 2.5e-4
    warmup_epochs: 0
    warmup_lr: 2.5e-5
    dynamic_batch_size: 4
  expand_2:
    n_epochs: 120
    base_lr: 2.5e-4
    warmup_epochs: 5
    warmup_lr: 7.5e-5
    dynamic_batch_size: 4
subnet_config:
  random_sample: false
  ks: [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]
  e: [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]
  d: [4, 4, 4, 4, 4]
  image_size: 224
  res_dir: results/MOOFA/
  name: reference_subnet
  draw_graphs: true
search_config:
  N_constraint: 10
  max_constraint: 300000
  min_constraint: 800000
  res_dir: searches/MOOFA/
  acc_dataset_path: acc_predictor_datasets/adapted/MOOFA/dataset.pkl
  acc_predictor_checkpoint: acc_predictor_checkpoints/MOOFA_acc.pth.tar
wandb:
  use_wandb: true
  project_name: memory-optimized-once-for-all
"""

SWEEP_300K_800K = [300000, 355556, 411111, 466667, 522222, 577778, 633333, 688889, 744444, 800000]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_fill_every_key(tmp_path):
    p = write(tmp_path, "{}\n")  # an empty mapping; an empty file is an error
    cfg = load_config(p)
    assert cfg.path == p
    a = cfg["args"]
    assert (a["model"], a["dataset"], a["base_batch_size"], a["n_worker"], a["valid_size"]) == \
        ("MOOFA_V3", "imagenet", 64, 12, 100)
    assert a["bn_eps"] == 1e-5 and a["weight_decay"] == 3e-5 and a["kd_ratio"] == 1.0
    assert a["no_decay_keys"] == "bn#bias" and a["distort_color"] == "tf"
    assert a["device"] == "auto" and a["amp"] is False and a["resort_channels"] is False
    assert a["data_path"] in ("/imagenet/", "./imagenet/")
    assert (a["bn_calib_images"], a["bn_calib_batch_size"]) == (2000, 200)
    assert a["synthetic"] == {"n_classes": 10, "train_per_class": 100, "val_per_class": 20,
                              "image_size": 32, "difficulty": 0.5, "seed": 0}
    assert cfg["tasks"] == ["kernel", "depth", "expand"]
    assert cfg["tasks_phases"] == {"kernel": 1, "depth": 2, "expand": 2}
    # docs/design.md#protocols, written out independently of the module's table
    assert cfg["args_per_task"] == {
        "teacher": dict(n_epochs=180, base_lr=3e-2, warmup_epochs=0, warmup_lr=3e-3, dynamic_batch_size=1),
        "kernel_1": dict(n_epochs=120, base_lr=3e-3, warmup_epochs=5, warmup_lr=3e-3, dynamic_batch_size=1),
        "depth_1": dict(n_epochs=25, base_lr=2.5e-4, warmup_epochs=0, warmup_lr=2.5e-3, dynamic_batch_size=2),
        "depth_2": dict(n_epochs=120, base_lr=7.5e-4, warmup_epochs=5, warmup_lr=7.5e-5, dynamic_batch_size=2),
        "expand_1": dict(n_epochs=25, base_lr=2.5e-4, warmup_epochs=0, warmup_lr=2.5e-5, dynamic_batch_size=4),
        "expand_2": dict(n_epochs=120, base_lr=2.5e-4, warmup_epochs=5, warmup_lr=7.5e-5, dynamic_batch_size=4),
    }
    s = cfg["search_config"]
    assert (s["population_size"], s["generations"], s["mutation_ratio"], s["parent_ratio"],
            s["arch_mutate_prob"], s["resolution_mutate_prob"], s["evaluate"]) == (100, 500, 0.5, 0.25, 0.1, 0.5, True)
    d = cfg["dataset_config"]
    assert (d["n_samples"], d["min_memory"], d["max_memory"], d["n_bins"], d["eval_images"],
            d["max_attempts"], d["save_interval"]) == (2000, 250000, 800000, 15, 10000, 1000000, 10)
    assert d["output"] == s["acc_dataset_path"]
    assert cfg["predictor_config"]["hidden_size"] == 400 and cfg["predictor_config"]["ensemble"] == 5
    assert search_constraints(cfg) == SWEEP_300K_800K
    cfg = resolve_model(cfg, MODEL_CONFIGS)
    spec = cfg.spec
    assert cfg["subnet_config"]["ks"] == [7] * 20 and cfg["subnet_config"]["e"] == [4] * 20
    assert cfg["subnet_config"]["d"] == [4] * 5 and spec.name == "MOOFA_V3"


def test_reference_yaml_loads_unchanged(tmp_path):
    cfg = load_config(write(tmp_path, REFERENCE_YAML), MODEL_CONFIGS)
    assert cfg["args"]["bn_eps"] == 1e-5  # PyYAML reads "1e-5" as a string
    assert cfg["args"]["continuous_size"] is True
    assert search_constraints(cfg) == SWEEP_300K_800K  # swapped names: same sweep
    assert cfg["args_per_task"] == REFERENCE_PHASES
    assert cfg["dataset_config"]["output"] == "acc_predictor_datasets/adapted/MOOFA/dataset.pkl"


@pytest.mark.parametrize("name,model,checkpoint,e", [
    ("MOOFA", "MOOFA_V3", "models/MOOFA/checkpoint/checkpoint-expand_2.pth.tar", 4),
    ("MIT_OFA", "OFA", "models/MIT_OFA/ofa_mbv3_d234_e346_k357_w1.0", 6),
    ("CompOFA", "CompOFA", "models/CompOFA/model_best_compofa_simple_elastic.pth.tar", 6),
])
def test_shipped_configs(name, model, checkpoint, e):
    cfg = load_config(REPO / "configs" / f"config_{name}.yaml", MODEL_CONFIGS)
    a = cfg["args"]
    assert (a["model"], a["checkpoint"], a["continuous_size"]) == (model, checkpoint, False)
    assert cfg["subnet_config"]["e"] == [e] * 20 and cfg["subnet_config"]["ks"] == [7] * 20
    assert cfg["search_config"]["min_constraint"] == 300000
    assert cfg["search_config"]["max_constraint"] == 800000
    assert search_constraints(cfg) == SWEEP_300K_800K
    assert cfg["args_per_task"] == REFERENCE_PHASES
    assert cfg["search_config"]["acc_predictor_checkpoint"].endswith(f"{name}_acc.pth.tar")


BAD = [  # (yaml text, key that must be named, value that must be named)
    ("args:\n  bogus_key: 3\n", "args.bogus_key", "3"),
    ("argz:\n  model: OFA\n", "argz", "model"),
    ("args:\n  base_batch_size: big\n", "args.base_batch_size", "'big'"),
    ("args:\n  base_batch_size: 0\n", "args.base_batch_size", "0"),
    ("args:\n  dataset: cifar10\n", "args.dataset", "'cifar10'"),
    ("args:\n  opt_type: rmsprop\n", "args.opt_type", "'rmsprop'"),
    ("args:\n  kd_type: kl\n", "args.kd_type", "'kl'"),
    ("args:\n  lr_schedule_type: step\n", "args.lr_schedule_type", "'step'"),
    ("args:\n  distort_color: strong\n", "args.distort_color", "'strong'"),
    ("args:\n  model_init: xavier\n", "args.model_init", "'xavier'"),
    ("args:\n  base_stage_width: google\n", "args.base_stage_width", "'google'"),
    ("args:\n  dy_conv_scaling_mode: 0\n", "args.dy_conv_scaling_mode", "0"),
    ("args:\n  valid_size: 1.5\n", "args.valid_size", "1.5"),
    ("args:\n  no_nesterov: 'yes'\n", "args.no_nesterov", "'yes'"),
    ("args:\n  synthetic: {difficulty: 2}\n", "args.synthetic.difficulty", "2"),
    ("tasks: [kernel, width]\n", "tasks", "width"),
    ("tasks_phases: {depth: 0}\n", "tasks_phases.depth", "0"),
    ("args_per_task:\n  teacher: {n_epochs: 1, base_lr: 0.1}\n  kernel_x: {n_epochs: 1}\n",
     "args_per_task.kernel_x", "n_epochs"),
    ("args_per_task:\n  teacher: {n_epochs: 1, base_lr: 0.1}\n", "args_per_task.kernel_1", None),
    ("args_per_task:\n  teacher: {n_epochs: 1, base_lr: 0.1}\n  kernel: {n_epochs: 2}\n",
     "args_per_task.kernel.base_lr", None),
    ("args_per_task:\n  teacher: {n_epochs: 1, base_lr: 0.1, dropout: 2}\n", "args_per_task.teacher.dropout", "2"),
    ("search_config: {constraint_start: 300000}\n", "search_config.constraint_stop", None),
    ("search_config: {constraints: [300000, -1]}\n", "search_config.constraints", "-1"),
    ("dataset_config: {min_memory: 900000}\n", "dataset_config.max_memory", "800000"),
    ("predictor_config: {val_fraction: 0.5, test_fraction: 0.5}\n", "predictor_config.test_fraction", "0.5"),
    ("wandb: {use_wandb: 1}\n", "wandb.use_wandb", "1"),
]


def _one_line(err: ConfigError) -> str:
    msg = str(err)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("text,key,value", BAD)
def test_bad_values_name_file_key_value(tmp_path, text, key, value):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = _one_line(info.value)
    assert msg.startswith(f"{p}: {key}:"), msg
    if value is not None:
        assert value in msg, msg


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"valid keys: .*base_batch_size"):
        load_config(write(tmp_path, "args:\n  base_batchsize: 64\n"))


def test_missing_file_and_syntax_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"^{missing}: config file not found$"):
        load_config(missing)
    p = write(tmp_path, "args:\n  model: OFA\n   dataset: imagenet\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert _one_line(info.value).startswith(f"{p}: YAML syntax error at line 3")
    p = write(tmp_path, "args:\n  model: OFA\n  model: CompOFA\n", "dup.yaml")
    with pytest.raises(ConfigError, match=r"line 3.*duplicate key 'model' \(first at line 2\)"):
        load_config(p)


def test_cli_turns_config_error_into_exit_2(tmp_path, capsys):
    p = write(tmp_path, "args:\n  opt_type: rmsprop\n")
    assert run_cli(lambda argv: load_config(p), []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {p}: args.opt_type:") and "'rmsprop'" in err[0]


@pytest.mark.parametrize("text,key,value", [
    ("args: {model: MOOVA_V3}\n", "args.model", "'MOOVA_V3'"),  # the ablation configs' typo
    ("tasks_phases: {depth: 3}\nargs_per_task:\n  teacher: {n_epochs: 1, base_lr: 0.1}\n"
     "  kernel: {n_epochs: 1, base_lr: 0.1}\n  depth: {n_epochs: 1, base_lr: 0.1}\n"
     "  expand: {n_epochs: 1, base_lr: 0.1}\n", "tasks_phases.depth", "3"),
    ("subnet_config: {ks: [7, 7]}\n", "subnet_config.ks", None),
    ("subnet_config: {e: [6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6]}\n",
     "subnet_config.e[0]", "6"),
])
def test_model_dependent_errors(tmp_path, text, key, value):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p, MODEL_CONFIGS)
    msg = _one_line(info.value)
    assert msg.startswith(f"{p}: {key}:"), msg
    if value is not None:
        assert value in msg
    if key == "args.model":
        assert "MOOFA_V3" in msg and "OFA" in msg  # lists the known names


def test_task_args_merging(tmp_path):
    text = ("args: {dropout: 0.2, base_batch_size: 16}\n"
            "tasks_phases: {depth: 2, expand: 1}\n"
            "args_per_task:\n"
            "  teacher: {n_epochs: 3, base_lr: 0.1}\n"
            "  kernel_1: {n_epochs: 4, dropout: 0.0}\n"
            "  depth: {n_epochs: 5, base_lr: 0.01, dynamic_batch_size: 3}\n"
            "  depth_2: {n_epochs: 6, base_lr: 0.02}\n"
            "  expand_1: {n_epochs: 7, base_lr: 0.03}\n")
    cfg = load_config(write(tmp_path, text))
    t = task_args(cfg, "teacher")
    # teacher row of the reference table fills its missing keys
    assert (t["n_epochs"], t["base_lr"], t["warmup_epochs"], t["warmup_lr"], t["dropout"]) == (3, 0.1, 0, 3e-3, 0.2)
    k = task_args(cfg, "kernel", 1)
    assert (k["n_epochs"], k["base_lr"], k["warmup_epochs"], k["dropout"], k["base_batch_size"]) == \
        (4, 3e-3, 5, 0.0, 16)
    d1 = task_args(cfg, "depth", 1)  # falls back to the plain step name
    assert (d1["n_epochs"], d1["base_lr"], d1["warmup_epochs"], d1["warmup_lr"], d1["dynamic_batch_size"]) == \
        (5, 0.01, 0, 0.0, 3)
    d2 = task_args(cfg, "depth", 2)  # the reference row depth_2 fills the rest
    assert (d2["n_epochs"], d2["base_lr"], d2["warmup_epochs"], d2["dynamic_batch_size"]) == (6, 0.02, 5, 2)
    assert cfg["args"]["dropout"] == 0.2  # merging did not mutate the config
    assert last_task_args(cfg)["n_epochs"] == 7
    for step, phase, key in (("depth", 3, "tasks_phases.depth"), ("depth", 0, "tasks_phases.depth"),
                             ("depth", None, "tasks_phases.depth"), ("kernel", 2, "tasks_phases.kernel"),
                             ("width", 1, "tasks")):
        with pytest.raises(ConfigError) as info:
            task_args(cfg, step, phase)
        shown = "none given" if phase is None else repr(phase if key != "tasks" else step)
        assert f": {key}:" in str(info.value) and shown in str(info.value)


def test_default_task_args_and_last(tmp_path):
    cfg = load_config(write(tmp_path, "{}\n"))
    assert task_args(cfg, "depth", 2)["base_lr"] == 7.5e-4
    assert task_args(cfg, "expand", 1)["warmup_lr"] == 2.5e-5
    last = last_task_args(cfg)
    assert (last["n_epochs"], last["base_lr"], last["dynamic_batch_size"]) == (120, 2.5e-4, 4)


@pytest.mark.parametrize("section,expected", [
    ("{min_constraint: 300000, max_constraint: 800000}", SWEEP_300K_800K),
    ("{max_constraint: 430000, min_constraint: 300000, N_constraint: 6}",
     [300000, 326000, 352000, 378000, 404000, 430000]),  # docs/design.md#search-space, ablation configs
    ("{constraint_start: 430000, constraint_stop: 300000, N_constraint: 6}",
     [300000, 326000, 352000, 378000, 404000, 430000]),
    ("{constraints: [500000, 300000, 400000, 300000.4], N_constraint: 3}", [300000, 400000, 500000]),
    ("{N_constraint: 1}", [300000]),
])
def test_search_constraints(tmp_path, section, expected):
    cfg = load_config(write(tmp_path, f"search_config: {section}\n"))
    assert search_constraints(cfg) == expected


def test_save_resolved_config(tmp_path):
    cfg = load_config(write(tmp_path, REFERENCE_YAML))
    out = save_resolved_config(cfg, tmp_path / "run")
    assert out == tmp_path / "run" / "resolved_config.json"
    assert json.loads(out.read_text()) == cfg
    save_resolved_config(cfg, tmp_path / "run")  # overwrite is fine and leaves no temp file
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["resolved_config.json"]


# docs/design.md#protocols: e per model for each phase; ks always [3,5,7]; d per phase.
E_PHASES = {
    "MOOFA_V3": {"kernel_1": [4], "depth_1": [4], "depth_2": [4], "expand_1": [3, 4], "expand_2": [2, 3, 4]},
    "MOOFA_V2": {"kernel_1": [2], "depth_1": [2], "depth_2": [2], "expand_1": [1.5, 2], "expand_2": [1, 1.5, 2]},
    "MOOFA_V1": {"kernel_1": [6], "depth_1": [6], "depth_2": [6], "expand_1": [4, 6], "expand_2": [3, 4, 6]},
    "OFA": {"kernel_1": [6], "depth_1": [6], "depth_2": [6], "expand_1": [4, 6], "expand_2": [3, 4, 6]},
}
D_PHASES = {"kernel_1": [4], "depth_1": [3, 4], "depth_2": [2, 3, 4], "expand_1": [2, 3, 4], "expand_2": [2, 3, 4]}
# validation subnets: (ks, d) sets per phase and the count (e = {min, max} of the phase's e list)
VAL_KS = {"kernel_1": [3, 5, 7], "depth_1": [3, 7], "depth_2": [3, 7], "expand_1": [3, 7], "expand_2": [3, 7]}
VAL_D = {"kernel_1": [4], "depth_1": [3, 4], "depth_2": [2, 4], "expand_1": [2, 4], "expand_2": [2, 4]}
VAL_COUNT = {"kernel_1": 6, "depth_1": 8, "depth_2": 8, "expand_1": 16, "expand_2": 16}


@pytest.mark.parametrize("model", list(E_PHASES))
@pytest.mark.parametrize("phase_name", list(D_PHASES))
def test_spec_3_3_constraints_and_validation_subnets(model, phase_name):
    spec = get_model_spec(model, MODEL_CONFIGS)
    step, phase = phase_name.split("_")
    c = phase_constraints(spec, step, int(phase), {"kernel": 1, "depth": 2, "expand": 2})
    assert c == {"ks": [3, 5, 7], "e": E_PHASES[model][phase_name], "d": D_PHASES[phase_name]}
    subnets = validation_subnets(spec, step, c["ks"], c["e"], c["d"])
    e_list = E_PHASES[model][phase_name]
    e_val = [e_list[0]] if len(e_list) == 1 else [e_list[0], e_list[-1]]
    expected = [(k, e, d, r) for d in VAL_D[phase_name] for e in e_val for k in VAL_KS[phase_name]
                for r in (160, 224)]  # d-major, as the reference enumerates
    assert [(s["ks"], s["e"], s["d"], s["image_size"]) for s in subnets] == expected
    assert len(subnets) == VAL_COUNT[phase_name]
    first = subnets[0]
    assert first["name"] == f"R160-D{first['d']}-E{first['e']}-K{first['ks']}-W0"


def test_kernel_phase_index_ignored_and_phase_errors():
    spec = get_model_spec("MOOFA_V3", MODEL_CONFIGS)
    phases = {"kernel": 2, "depth": 2, "expand": 2}
    assert phase_constraints(spec, "kernel", 1, phases) == phase_constraints(spec, "kernel", 2, phases)
    with pytest.raises(ConfigError, match=r"tasks_phases.depth: phase must be in 1..2.*\(got 3\)"):
        phase_constraints(spec, "depth", 3, phases)
    with pytest.raises(ConfigError, match=r"tasks_phases.expand:.*at most 2.*\(got 3\)"):
        phase_constraints(spec, "expand", 1, {"expand": 3})


def test_honoured_and_new_keys_are_kept(tmp_path):
    text = yaml.safe_dump({"args": {"continuous_size": True, "momentum": 0.8, "no_nesterov": True,
                                    "not_sync_distributed_image_size": True, "dy_conv_scaling_mode": -1,
                                    "independent_distributed_sampling": True, "print_frequency": 3,
                                    "base_stage_width": None, "dataset": "digits", "device": "cpu",
                                    "distort_color": "None", "lr_schedule_type": None, "valid_size": 0.1}})
    a = load_config(write(tmp_path, text))["args"]
    assert (a["continuous_size"], a["momentum"], a["no_nesterov"], a["not_sync_distributed_image_size"],
            a["dy_conv_scaling_mode"], a["independent_distributed_sampling"], a["print_frequency"]) == \
        (True, 0.8, True, True, -1, True, 3)
    assert a["base_stage_width"] is None and a["distort_color"] is None and a["lr_schedule_type"] is None
    assert a["data_path"] == "./data/digits/" and a["device"] == "cpu" and a["valid_size"] == 0.1


@pytest.mark.parametrize("text", ["", "\n", "# nothing but a comment\n"])
def test_empty_config_is_an_error_naming_the_file(tmp_path, text):
    p = write(tmp_path, text, "empty.yaml")
    with pytest.raises(ConfigError, match=f"^{p}: config file is empty"):
        load_config(p)


def test_config_that_is_not_utf8_names_the_byte_offset(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("# Paramètres\nargs:\n  model: OFA\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert _one_line(info.value) == (f"{p}: not UTF-8 text: byte offset 7 (invalid continuation "
                                     "byte); save the file as UTF-8 (got b'\\xe8')")
    p.write_bytes("# Paramètres\nargs:\n  model: OFA\n".encode("utf-8"))
    assert load_config(p).args.model == "OFA"  # UTF-8 whatever the locale
