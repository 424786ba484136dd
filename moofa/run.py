"""One run: its resolved config, the folders and files every script reads or writes, and the
factories that turn the config into a model spec, a supernet, a teacher and a class count.

Every command-line step (training, dataset creation, predictor training, eval, search) and the
demo go through :class:`Run`, so a path or a model-building rule exists once. Layout (all paths
come from the config; see ``docs/design.md#run-layout``)::

    <args.teacher_path>/checkpoint/{checkpoint,model_best}.pth.tar      teacher (resume, best)
    <args.path>/checkpoint/<step>_<phase>/{checkpoint,model_best}.pth.tar  phase resume / best
    <...>/checkpoint[/<step>_<phase>]/recipe.json                       what the launch trains from
    <args.path>/checkpoint/checkpoint-<step>_<phase>.pth.tar            phase final weights
    <run dir>/resolved_config.json, logs                                per training launch
    <dataset_config.output>                                             predictor dataset (JSONL)
    <search_config.acc_predictor_checkpoint>                            predictor checkpoint
    <subnet_config.res_dir>/<subnet_config.name>[_teacher]/info.json    eval result (supernet, teacher)
    <search_config.res_dir>/constraint_<C>/info.json, summary.*         search results
    <search_config.res_dir>/constraint_<C>/subnet.pth.tar               exported subnet (export)
    <folder of the subnet>/finetuned/                                   its fine-tuning
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from moofa.config import AnyArgs, RunConfig, TaskArgs, last_task_args, load_config, task_args
from moofa.errors import ConfigError, MoofaInputError
from moofa.models.layers import MobileNetV3
from moofa.models.spec import DEFAULT_MODEL_CONFIGS, ModelSpec
from moofa.models.supernet import Supernet, build_supernet, load_weights
from moofa.records import SearchInfo

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "checkpoint.pth.tar"   # resume state: epoch, best_acc, optimizer, RNG, state_dict
BEST_FILE = "model_best.pth.tar"    # {state_dict} of the best validation epoch
INFO_NAME = "info.json"
RECIPE_NAME = "recipe.json"         # a training launch's recorded inputs, beside its resume state
EXPORT_NAME = "subnet.pth.tar"      # an exported subnet (search_config.export, fine-tuning)
FINETUNED_NAME = "finetuned"        # fine-tuning's output folder, beside the subnet it tunes


@dataclass(frozen=True)
class SubnetSource:
    """A ``--subnet`` argument (fine-tuning, deployment): ``kind`` "export" (``path`` is an
    exported file) or "constraint_folder" (``path`` is a search result folder, ``info`` its
    info.json); ``out_dir`` is the ``finetuned/`` folder next to it."""

    kind: str
    path: Path
    out_dir: Path
    info: SearchInfo | None = None

    @classmethod
    def resolve(cls, subnet: str | Path) -> "SubnetSource":
        """Classify ``--subnet``; MoofaInputError naming it when it is neither a file nor a search
        result folder."""
        path = Path(subnet)
        if path.is_file():
            return cls("export", path, path.parent / FINETUNED_NAME)
        if path.is_dir():
            info_path = path / INFO_NAME
            if not info_path.is_file():
                raise MoofaInputError(f"not a search result folder (no {INFO_NAME}); give a constraint_<int>/ "
                                      f"folder or an exported {EXPORT_NAME}", file=path, key="--subnet")
            info = SearchInfo.read(info_path)
            if not info.has("config") or not isinstance(info.config, Mapping):
                raise MoofaInputError("has no subnet 'config'", file=info_path, key="config")
            return cls("constraint_folder", path, path / FINETUNED_NAME, info)
        raise MoofaInputError("no such file or folder", file=path, key="--subnet")

    def export_file(self) -> Path:
        """The exported subnet: the file given, or the folder's ``subnet.pth.tar``;
        MoofaInputError naming the folder when it holds none."""
        path = self.path if self.kind == "export" else self.path / EXPORT_NAME
        if not path.is_file():
            raise MoofaInputError(f"holds no exported {EXPORT_NAME} (search_config.export lists "
                                  "subnet by default)", file=self.path,
                                  key="--subnet")
        return path


def final_phase_file(path: str | Path, step: str, phase: int) -> Path:
    """``<path>/checkpoint/checkpoint-<step>_<phase>.pth.tar``: a phase's final weights."""
    return Path(path) / CHECKPOINT_DIR / f"checkpoint-{step}_{phase}.pth.tar"


def teacher_file(args: AnyArgs) -> Path:
    """``<teacher_path>/checkpoint/model_best.pth.tar``: the teacher every later step reads."""
    return Path(args.teacher_path) / CHECKPOINT_DIR / BEST_FILE


def constraint_dir(res_dir: str | Path, constraint: float) -> Path:
    """``<res_dir>/constraint_<int>`` (deterministic, one folder per constraint)."""
    return Path(res_dir) / f"constraint_{int(round(constraint))}"


def expected_n_classes(args: AnyArgs) -> int:
    """Classifier width implied by the dataset settings, without reading the data: 1000 for
    imagenet/imagenette (labels are ImageNet ids), 10 for digits, ``synthetic.n_classes``."""
    if args.dataset == "digits":
        return 10
    if args.dataset == "synthetic":
        return args.synthetic.n_classes
    return 1000


@dataclass(frozen=True)
class PhaseFiles:
    """Where one training launch reads and writes (per-phase resume state)."""

    run_dir: Path
    state: Path   # resume state: epoch, best_acc, optimizer, RNG, state_dict
    best: Path    # {state_dict} of the best validation epoch
    final: Path   # {state_dict} written when the phase ends (the next phase's input)

    @property
    def recipe(self) -> Path:
        """``recipe.json`` beside the resume state: what the phase is trained from."""
        return self.state.parent / RECIPE_NAME

    @property
    def owned(self) -> list[Path]:
        """Every file of this phase (``--overwrite`` removes them)."""
        return list(dict.fromkeys([self.state, self.best, self.final, self.recipe,
                                   self.state.parent / "latest.txt"]))


@dataclass(frozen=True)
class Run:
    """A resolved run config plus its layout and factories. ``args`` arguments default to the
    last ``args_per_task`` entry merged over ``args`` (what dataset creation, eval and search
    use); training passes the args of its step."""

    cfg: RunConfig

    @classmethod
    def load(cls, config: str | Path, model_config_path: str | Path | None = None) -> "Run":
        """Load and resolve ``config`` against ``model_config_path`` (default: the repository's
        model_configs.yaml, the same for every script)."""
        return cls(load_config(config, model_config_path or DEFAULT_MODEL_CONFIGS))

    # ---------------------------------------------------------------------------- arguments
    @property
    def path(self) -> Path:
        return self.cfg.path

    def args(self, step: str | None = None, phase: int | None = None) -> TaskArgs:
        """Args of ``step``/``phase`` (:func:`moofa.config.task_args`), or of the last entry."""
        return last_task_args(self.cfg) if step is None else task_args(self.cfg, step, phase)

    def _args(self, args: AnyArgs | None) -> AnyArgs:
        return self.args() if args is None else args

    # ------------------------------------------------------------------------------- layout
    def phase_files(self, step: str, phase: int | None) -> PhaseFiles:
        """Files of one training launch (``teacher`` or ``<step>_<phase>``)."""
        args = self.args(step, phase)
        if step == "teacher":
            d = Path(args.teacher_path) / CHECKPOINT_DIR
            return PhaseFiles(Path(args.teacher_path), d / STATE_FILE, d / BEST_FILE, d / BEST_FILE)
        if phase is None:  # every step but the teacher has phases
            raise ConfigError(f"--phase is required for step {step}", key="--phase")
        d = Path(args.path) / CHECKPOINT_DIR / f"{step}_{phase}"
        return PhaseFiles(Path(args.path), d / STATE_FILE, d / BEST_FILE,
                          final_phase_file(args.path, step, phase))

    def final_file(self, step: str, phase: int) -> Path:
        return final_phase_file(self.args(step, phase).path, step, phase)

    def teacher_file(self, args: AnyArgs | None = None) -> Path:
        return teacher_file(self._args(args))

    def supernet_file(self, args: AnyArgs | None = None) -> Path | None:
        """``args.checkpoint``: the trained supernet of dataset creation, eval and search."""
        path = self._args(args).checkpoint
        return Path(path) if path else None

    @property
    def dataset_file(self) -> Path:
        # load_config fills output with acc_dataset_path; the fallback only narrows the type
        return Path(self.cfg.dataset_config.output or self.cfg.search_config.acc_dataset_path)

    @property
    def predictor_file(self) -> Path | None:
        path = self.cfg.search_config.acc_predictor_checkpoint
        return Path(path) if path else None

    def eval_dir(self, which: str = "supernet") -> Path:
        """Where ``--mode eval --model <which>`` writes: ``<res_dir>/<name>`` (supernet) or
        ``<res_dir>/<name>_teacher`` (teacher), so that the two never overwrite each other."""
        sc = self.cfg.subnet_config
        return Path(sc.res_dir) / (sc.name + ("_teacher" if which == "teacher" else ""))

    @property
    def search_dir(self) -> Path:
        return Path(self.cfg.search_config.res_dir)

    def constraint_dir(self, constraint: float) -> Path:
        return constraint_dir(self.search_dir, constraint)

    # ---------------------------------------------------------------------------- factories
    def spec(self, args: AnyArgs | None = None) -> ModelSpec:
        """The model spec of ``args.model``."""
        return self.cfg.spec_of(self._args(args).model)

    def n_classes(self, args: AnyArgs | None = None) -> int:
        return expected_n_classes(self._args(args))

    def supernet(self, args: AnyArgs | None = None, n_classes: int | None = None,
                 load: bool = False) -> Supernet:
        """A supernet with the run's dropout, BN, kernel-transform and init settings; with
        ``load`` the weights of ``args.checkpoint`` (ConfigError when none is given)."""
        a = self._args(args)
        net = build_supernet(self.spec(a), self.n_classes(a) if n_classes is None else n_classes,
                             dropout=a.dropout, bn_momentum=a.bn_momentum, bn_eps=a.bn_eps,
                             kernel_transform=a.dy_conv_scaling_mode == 1, init=a.model_init)
        if load:
            path = self.supernet_file(a)
            if path is None:
                raise ConfigError("no supernet checkpoint given (needed to evaluate subnets; set "
                                  "search_config.evaluate: false for a predictor-only search)",
                                  file=self.path, key="args.checkpoint")
            load_weights(net, path)
        return net

    def teacher(self, args: AnyArgs | None = None, n_classes: int | None = None,
                load: bool = True) -> MobileNetV3:
        """The teacher: the largest subnet as a static network, with the weights of
        :meth:`teacher_file` when ``load``."""
        a = self._args(args)
        spec = self.spec(a)
        net = MobileNetV3.build(spec, spec.max_config(), self.n_classes(a) if n_classes is None else n_classes,
                                dropout=a.dropout, bn_momentum=a.bn_momentum, bn_eps=a.bn_eps)
        if load:
            load_weights(net, self.teacher_file(a))
        return net


__all__ = ["Run", "PhaseFiles", "final_phase_file", "teacher_file", "constraint_dir",
           "expected_n_classes", "SubnetSource", "EXPORT_NAME", "FINETUNED_NAME", "INFO_NAME", "RECIPE_NAME",
           "CHECKPOINT_DIR", "STATE_FILE", "BEST_FILE"]
