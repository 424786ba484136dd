"""Typed, versioned result files: the ``info.json`` of a search budget (:class:`SearchInfo`), of
``--mode eval`` (:class:`EvalInfo`) and of a fine-tuning (:class:`FinetuneInfo`), and
``deploy.json`` (:class:`DeployRecord`). Every writer and reader of these files goes through this
module (docs/results.md lists the fields, their units and the version history).

Each file carries ``schema_version`` (:data:`SCHEMA_VERSION`); a file without it is version 1
(what moofa wrote before the field existed: the same keys). A newer version than this moofa reads
is refused with one line naming the file (:class:`moofa.errors.ConfigError`, exit 2). Keys a
record does not model are kept in ``extra`` and written back unchanged, so reading and writing a
file never loses data. Nested parts stay JSON objects in the records and are read through their
types where they are used: per-image outcomes (:class:`moofa.stats.PerImage`), comparisons
(:class:`moofa.stats.Comparison`) and one compiled Ethos-U program's figures (:class:`TargetFigures`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from moofa.errors import ConfigError, MoofaInputError
from moofa.io import read_json, write_json

SCHEMA_VERSION = 2   # 2: the files carry schema_version (content otherwise as in version 1)
FIRST_VERSION = 1    # a file without schema_version
VERSION_KEY = "schema_version"


def check_version(data: Mapping[str, Any], where: str | Path) -> int:
    """The schema version of ``data`` (1 when absent); ConfigError naming ``where`` when it is not
    one this moofa reads."""
    v = data.get(VERSION_KEY, FIRST_VERSION)
    if isinstance(v, bool) or not isinstance(v, int) or not FIRST_VERSION <= v <= SCHEMA_VERSION:
        raise ConfigError(f"{VERSION_KEY} {v!r} is not supported (this moofa reads "
                          f"{FIRST_VERSION}-{SCHEMA_VERSION})", file=where)
    return v


@dataclass(frozen=True)
class TargetFigures:
    """What the reports and the chip limits use of one compiled Ethos-U program (``targets[T]`` of
    deploy.json, ``target.compiled`` of info.json): Vela's compile-time estimates (bytes, ms; not
    measurements on silicon), the delegate-call count and, when measured, the TOSA reference
    model's int8 top-1 (fraction) on ``tosa_n_images`` images."""

    sram_bytes: int
    flash_bytes: int
    inference_ms: float
    delegate_calls: int | None = None
    system_config: str | None = None
    memory_mode: str | None = None
    tosa_int8_accuracy: float | None = None
    tosa_n_images: int | None = None

    @classmethod
    def read(cls, stored: object) -> TargetFigures | None:
        """The figures of a stored program record (any JSON value); None when it holds none."""
        if not isinstance(stored, Mapping) or stored.get("sram_bytes") is None:
            return None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in names})

    def figure(self, name: str) -> float:
        """``sram_bytes``, ``flash_bytes`` or ``inference_ms`` by name (a chip limit's figure)."""
        return float(getattr(self, name))


def _defaults(cls: type) -> dict[str, Any]:
    """Each field's default value (a fresh one for ``default_factory`` fields)."""
    out = {}
    for f in fields(cls):
        out[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default
    return out


@dataclass
class Record:
    """Base of the result records: field order is the files' key order; ``extra`` holds keys
    this moofa does not model. Subclasses name their always-present keys in ``REQUIRED`` and the
    keys written only when set in ``OPTIONAL``."""

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    WHAT: ClassVar[str] = "result file"

    # modelled fields the file read lacked: not written back while still None (exact round trips)
    _absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False, kw_only=True)
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    schema_version: int = field(default=SCHEMA_VERSION, kw_only=True)

    @classmethod
    def _keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in ("_absent", "extra", VERSION_KEY)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the file (current :data:`SCHEMA_VERSION` first)."""
        out: dict[str, Any] = {VERSION_KEY: SCHEMA_VERSION}
        defaults = _defaults(type(self))
        for k in self._keys():
            v = getattr(self, k)
            if (v is None and k in self.OPTIONAL) or (k in self._absent and v == defaults[k]):
                continue
            out[k] = v
        out.update(self.extra)
        return out

    def write(self, path: str | Path) -> Path:
        """Write atomically (:func:`moofa.io.write_json`)."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path = "<record>") -> Self:
        """The record of a file's JSON object; MoofaInputError naming ``where`` when it is not
        one, ConfigError when its schema version is unknown."""
        if not isinstance(data, Mapping):
            raise MoofaInputError(f"not a {cls.WHAT}: expected a JSON object", file=where)
        version = check_version(data, where)
        for k in cls.REQUIRED:
            if k not in data:
                raise MoofaInputError(f"not a {cls.WHAT}: missing key", file=where, key=k)
        keys = cls._keys()
        known = {k: data[k] for k in keys if k in data}
        extra = {k: v for k, v in data.items() if k not in known and k != VERSION_KEY}
        return cls(**known, extra=extra, schema_version=version,
                   _absent=frozenset(k for k in keys if k not in data))

    def has(self, key: str) -> bool:
        """Whether the file read held ``key`` (always, for a record built in memory)."""
        return key not in self._absent

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """Read ``path`` (:func:`moofa.io.read_json`, then :meth:`from_dict`)."""
        return cls.from_dict(read_json(path), path)


@dataclass
class SearchInfo(Record):
    """``constraint_<C>/info.json`` of a search budget. Accuracies are fractions; ``peak_memory``
    and ``constraint`` are in ``memory_unit`` (elements, or bytes under a device model);
    ``flops`` in MMACs; ``params`` a count; ``avg_forward_time`` and ``search_seconds`` in
    seconds. ``target``, ``export``, ``deploy`` and ``int8_accuracy`` are written only when set."""

    # none: the summary tables need only peak_memory and flops, a --subnet folder only the config;
    # each reader checks what it needs (Record.has)
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"target", "export", "deploy", "int8_accuracy"})
    WHAT: ClassVar[str] = "search result"

    predicted_accuracy: float | None = None
    real_accuracy: float | None = None          # test top-1, None when not measured
    peak_memory: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # SubnetConfig.to_dict()
    predicted_std: float | None = None
    predicted_source: str | None = None
    predicted_interval: list[float] | None = None  # 90 % interval [lo, hi]
    selection_accuracy: float | None = None
    images: dict[str, Any] | None = None        # which images each measured number comes from
    baseline: dict[str, Any] | None = None      # best already-measured subnet under the budget
    per_image: dict[str, Any] | None = None     # packed per-image outcomes (moofa.stats)
    answer: dict[str, Any] | None = None        # Individual.to_dict() of the answer
    candidates: list[dict[str, Any]] = field(default_factory=list)
    rerank: list[dict[str, Any]] = field(default_factory=list)
    fitness: dict[str, Any] | None = None
    distance_to_data: float | None = None
    target: dict[str, Any] | None = None        # the answer as compiled for an Ethos-U target
    memory_history: list[int] = field(default_factory=list)
    flops: float = 0.0
    avg_forward_time: float | None = None
    model: str | None = None
    constraint: int | None = None
    params: int | None = None
    top5: float | None = None
    n_images: int = 0
    search_seconds: float | None = None
    n_scored: int | None = None
    history: list[Any] = field(default_factory=list)
    operator_stats: dict[str, Any] | None = None
    memory_unit: str = "elements"
    memory_model: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None
    units: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = None
    export: list[str] | None = None             # file names written beside info.json
    deploy: dict[str, Any] | None = None        # the int8 export's figures (subset of deploy.json)
    int8_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.deploy is not None and "int8_accuracy" not in out:  # written with deploy, even None
            out["int8_accuracy"] = None
        return out

    @property
    def deploy_targets(self) -> dict[str, Any] | None:
        """Vela's figures of the answer per Ethos-U target: the deploy export's targets and the
        search's compiled answer (``target``); None when neither."""
        out: dict[str, Any] = {}
        if isinstance(self.deploy, Mapping) and isinstance(self.deploy.get("targets"), Mapping):
            out.update(self.deploy["targets"])
        t = self.target
        if isinstance(t, Mapping) and isinstance(t.get("compiled"), Mapping):
            out[t["target"]] = dict(t["compiled"], predicted=t.get("predicted"))
        return out or None


@dataclass
class EvalInfo(Record):
    """``<res_dir>/<name>[_teacher]/info.json`` of ``--mode eval``. ``accuracy``/``top5`` are
    fractions of ``n_images`` test images; ``peak_memory`` in the memory model's unit; ``flops``
    in MMACs; ``avg_forward_time`` in seconds per batch."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("accuracy", "n_images")
    WHAT: ClassVar[str] = "eval result"

    accuracy: float = 0.0
    top5: float | None = None
    loss: float | None = None
    n_images: int = 0
    accuracy_interval: list[float] | None = None  # Wilson 95 % interval [lo, hi]
    per_image: dict[str, Any] | None = None
    peak_memory: int | None = None
    memory_history: list[int] = field(default_factory=list)
    flops: float | None = None
    params: int | None = None
    avg_forward_time: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    network: str | None = None                  # "supernet" or "teacher"
    checkpoint: str | None = None
    random_sample: bool = False
    memory_model: dict[str, Any] | None = None
    units: dict[str, Any] | None = None
    data: dict[str, Any] | None = None          # the images measured on (data_fingerprint)


@dataclass
class FinetuneInfo(Record):
    """``finetuned/info.json`` of ``train.py --step finetune``: top-1/top-5 are fractions;
    ``peak_memory`` in elements; ``flops`` in MMACs; ``export`` written only once exported."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("config", "test_top1_after")
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"export"})
    WHAT: ClassVar[str] = "fine-tuning result"

    format: str | None = None                   # "moofa-finetune/1"
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    source_kind: str | None = None
    subnet: str | None = None
    test_top1_before: float | None = None
    test_top1_after: float = 0.0
    test_top5_before: float | None = None
    test_top5_after: float | None = None
    n_test_images: int = 0
    test_images: str | None = None
    valid_top1_before: float | None = None
    valid_top1_after: float | None = None
    n_valid_images: int = 0
    valid_images: str | None = None
    accuracy_source: str | None = None
    per_image: dict[str, Any] | None = None
    test_difference: dict[str, Any] | None = None  # after minus before, paired (Comparison.to_dict)
    peak_memory: int | None = None
    memory_history: list[int] = field(default_factory=list)
    flops: float | None = None
    params: int | None = None
    epochs: int | None = None
    n_epochs: int | None = None
    warmup_epochs: int | None = None
    recipe: dict[str, Any] | None = None
    init_lr: float | None = None
    world_size: int | None = None
    teacher: str | None = None
    logs: str | None = None
    units: dict[str, Any] | None = None
    fingerprint: str | None = None
    finished: str | None = None                 # local time, "%Y-%m-%d %H:%M:%S"
    export: list[str] | None = None


# what a search budget's info.json copies from deploy.json (its "deploy" entry)
DEPLOY_SUMMARY_KEYS = ("int8_accuracy", "fp32_accuracy", "n_images", "pte_bytes", "runtime_memory_bytes",
                       "fp32_pte_bytes", "fp32_runtime_memory_bytes", "analytic_peak_memory", "analytic_unit",
                       "analytic_activations_elements")


@dataclass
class DeployRecord(Record):
    """``deploy.json`` of :mod:`moofa.deploy`. Accuracies are fractions of ``n_images``; sizes
    in bytes; ``int8_ms_per_image`` in milliseconds; ``analytic_peak_memory`` in
    ``analytic_unit``. The XNNPACK figures are absent when only Ethos-U targets were built;
    ``targets`` (Vela's estimates per Ethos-U target) only when some were."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("config", "fingerprint")
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({
        "int8_accuracy", "fp32_accuracy", "n_images", "int8_minus_fp32", "per_image", "pte_bytes",
        "runtime_memory_bytes", "fp32_pte_bytes", "fp32_runtime_memory_bytes", "analytic_peak_memory",
        "analytic_unit", "memory", "analytic_activations_elements", "int8_ms_per_image", "checks",
        "int8_delegate_calls", "int8_undelegated_ops", "seconds", "targets"})
    WHAT: ClassVar[str] = "deploy record"

    int8_accuracy: float | None = None
    fp32_accuracy: float | None = None
    n_images: int | None = None
    int8_minus_fp32: dict[str, Any] | None = None  # Comparison.to_dict(), paired
    per_image: dict[str, Any] | None = None
    pte_bytes: int | None = None
    runtime_memory_bytes: int | None = None
    fp32_pte_bytes: int | None = None
    fp32_runtime_memory_bytes: int | None = None
    analytic_peak_memory: int | None = None
    analytic_unit: str | None = None
    memory: dict[str, Any] | None = None
    analytic_activations_elements: int | None = None
    int8_ms_per_image: float | None = None
    checks: dict[str, Any] | None = None
    int8_delegate_calls: int | None = None
    int8_undelegated_ops: Any = None
    seconds: dict[str, float] | None = None
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    units: dict[str, Any] = field(default_factory=dict)
    calibration_images: int | None = None
    targets: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The ``deploy`` entry a search budget's info.json records (figures, ``int8_minus_fp32``,
        the file name, and ``targets`` when Ethos-U programs were built)."""
        data = self.to_dict()
        out = {k: data[k] for k in DEPLOY_SUMMARY_KEYS if k in data}
        out["int8_minus_fp32"] = self.int8_minus_fp32
        out["file"] = "deploy.json"
        if self.targets:
            out["targets"] = self.targets
        return out


__all__ = ["SCHEMA_VERSION", "FIRST_VERSION", "Record", "SearchInfo", "EvalInfo", "FinetuneInfo",
           "DeployRecord", "check_version"]
