"""Predictor datasets: JSON Lines files (ours, docs/design.md#run-layout) and the reference pickle.

JSON Lines: one subnet a line, e.g.::

    {"ks": [...20], "e": [...20], "d": [...5], "image_size": 160, "accuracy": 0.7124,
     "peak_memory": 305280, "flops": 422.1}

``ks``, ``e``, ``d``, ``image_size`` and ``accuracy`` (a fraction in [0, 1]) are required;
``peak_memory`` (elements), ``flops`` (MMACs) and ``model`` (the model name, checked when present)
are optional; ``peak_memory`` and ``flops`` must be finite and > 0 (training checks them against
the exact values of the config and uses those). Other keys are an error. The file is append-only
(:func:`append_records`), so a run resumes by appending and files merge by concatenation; a line
torn by a kill can be dropped with :func:`repair_tail`.

Reference pickle: ``{"configs": [dict], "accuracies": [float], "features": [ndarray],
"efficiencies": [float]}`` as parallel flat lists (the merged file) or as dicts keyed by memory bin
(a per-GPU file, docs/design.md#protocols; flattened in ascending bin order). It is read by a restricted unpickler
that admits builtins and numpy arrays only.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from moofa.errors import MoofaInputError
from moofa.models.spec import ModelSpec, SubnetConfig, get_model_spec
from moofa.predictor.encoder import ArchEncoder

REQUIRED_KEYS = ("ks", "e", "d", "image_size", "accuracy")
OPTIONAL_KEYS = ("peak_memory", "flops", "model", "source")
PICKLE_KEYS = ("configs", "accuracies", "features", "efficiencies")


@dataclass
class PredictorDataset:
    """Subnets with measured accuracy. ``accuracies`` are fractions; ``peak_memory`` (elements)
    and ``flops`` (MMACs) are float arrays with NaN where a file did not give the value."""

    model: str
    configs: list[SubnetConfig]
    accuracies: np.ndarray
    peak_memory: np.ndarray
    flops: np.ndarray
    source: str = ""
    features: "np.ndarray | None" = field(default=None, repr=False)  # stored one-hot (pickle)

    def __len__(self) -> int:
        return len(self.configs)

    def subset(self, idx: "Sequence[int] | np.ndarray") -> "PredictorDataset":
        """The entries at ``idx``, in that order."""
        rows = np.asarray(idx, dtype=np.int64)
        return PredictorDataset(self.model, [self.configs[i] for i in rows], self.accuracies[rows],
                                self.peak_memory[rows], self.flops[rows], self.source,
                                None if self.features is None else self.features[rows])

    def deduplicated(self, spec: ModelSpec) -> tuple["PredictorDataset", int]:
        """The dataset without repeated subnets (same network: inactive blocks ignored, same
        resolution), keeping each one's first record, and how many records were removed.
        Repeats would sit on both sides of a train/test split and inflate the test metrics."""
        seen: set = set()
        keep = []
        for i, c in enumerate(self.configs):
            key = c.canonical(spec)
            if key not in seen:
                seen.add(key)
                keep.append(i)
        return (self if len(keep) == len(self) else self.subset(keep)), len(self) - len(keep)

    def known(self) -> dict[str, np.ndarray]:
        """Efficiency columns by extra-feature name (NaN = not in the file)."""
        return {"peak_memory": self.peak_memory, "flops": self.flops}

    def records(self) -> list[dict[str, Any]]:
        """One JSON Lines record per entry (missing efficiency values left out)."""
        out = []
        for i, c in enumerate(self.configs):
            out.append(make_record(c, float(self.accuracies[i]), _opt(self.peak_memory[i]),
                                   _opt(self.flops[i]), self.model))
        return out


def _opt(v: float) -> "float | None":
    return None if not math.isfinite(float(v)) else float(v)


# ---------------------------------------------------------------------------------- records
def make_record(config: "SubnetConfig | Mapping[str, Any]", accuracy: float,
                peak_memory: "float | None" = None, flops: "float | None" = None,
                model: "str | None" = None) -> dict[str, Any]:
    """A dataset record: the config, the accuracy (fraction) and, when known, peak memory
    (elements, written as int) and FLOPs (MMACs)."""
    rec: dict[str, Any] = {}
    if model is not None:
        rec["model"] = model
    rec.update(SubnetConfig.from_dict(config).to_dict())
    rec["accuracy"] = float(accuracy)
    if peak_memory is not None:
        rec["peak_memory"] = int(round(float(peak_memory)))
    if flops is not None:
        rec["flops"] = float(flops)
    return rec


def _number(rec: Mapping[str, Any], key: str) -> float:
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{key}: must be a finite number, got {v!r}")
    return float(v)


def parse_record(rec: Any, spec: ModelSpec) -> tuple[SubnetConfig, float, float, float]:
    """Validate one record for ``spec``: (config, accuracy, peak_memory, flops) with NaN for a
    missing optional value. ValueError names the field and value."""
    if not isinstance(rec, Mapping):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: "
                         f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in rec:
            raise ValueError(f"missing field {key!r}")
    if "model" in rec and rec["model"] != spec.name:
        raise ValueError(f"model: {rec['model']!r} does not match the model {spec.name!r}")
    for key, types, what in (("ks", (int,), "integers"), ("e", (int, float), "numbers"),
                             ("d", (int,), "integers")):
        v = rec[key]
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, types)
                                          for x in v):
            raise ValueError(f"{key}: must be a list of {what}, got {v!r}")
    if isinstance(rec["image_size"], bool) or not isinstance(rec["image_size"], int):
        raise ValueError(f"image_size: must be an integer, got {rec['image_size']!r}")
    cfg = SubnetConfig.from_dict(rec).validate(spec, check_image_size=True)
    acc = _number(rec, "accuracy")
    if not 0.0 <= acc <= 1.0:
        raise ValueError(f"accuracy: must be a fraction in [0, 1], got {rec['accuracy']!r}")
    vals = []
    for key in ("peak_memory", "flops"):
        if key in rec and rec[key] is not None:
            x = _number(rec, key)
            if x <= 0:
                raise ValueError(f"{key}: must be > 0, got {rec[key]!r}")
            vals.append(x)
        else:
            vals.append(float("nan"))
    return cfg, acc, vals[0], vals[1]


# ---------------------------------------------------------------------------------- JSON Lines
def append_records(path: "str | Path", records: Iterable[Mapping[str, Any]],
                   model: "str | ModelSpec | None" = None,
                   model_configs: "str | Path | None" = None) -> int:
    """Append records as JSON Lines (one write, then flush + fsync); returns how many.

    With ``model`` each record is validated first (nothing is written if one is bad:
    :class:`MoofaInputError` naming the record index). Parent folders are created.
    """
    path = Path(path)
    spec = get_model_spec(model, model_configs) if model is not None else None
    lines = []
    for i, rec in enumerate(records):
        if spec is not None:
            try:
                parse_record(rec, spec)
            except ValueError as err:
                raise MoofaInputError(f"record {i}: {err}", file=path) from None
        lines.append(json.dumps(dict(rec), separators=(", ", ": ")) + "\n")
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())
    return len(lines)


def repair_tail(path: "str | Path") -> int:
    """Drop a last line that a kill left without its newline (a torn append). Returns the number
    of bytes removed (0 when the file is intact or absent)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, io.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        block = 65536
        pos = size
        keep = 0
        while pos > 0:  # bounded: walks back at most the file size
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return size - keep


def read_jsonl(path: "str | Path", model: "str | ModelSpec",
               model_configs: "str | Path | None" = None) -> PredictorDataset:
    """Read a JSON Lines dataset; a bad line raises :class:`MoofaInputError` naming the file,
    the line number (1-based) and the field."""
    path = Path(path)
    spec = get_model_spec(model, model_configs)
    configs, acc, peak, flops = [], [], [], []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as err:
        raise MoofaInputError(f"cannot read dataset ({err.strerror})", file=path) from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise MoofaInputError(f"line {lineno}: invalid JSON ({err.msg})", file=path) from None
            try:
                c, a, p, f = parse_record(rec, spec)
            except ValueError as err:
                raise MoofaInputError(f"line {lineno}: {err}", file=path) from None
            configs.append(c)
            acc.append(a)
            peak.append(p)
            flops.append(f)
    if not configs:
        raise MoofaInputError("dataset is empty", file=path)
    return PredictorDataset(spec.name, configs, np.array(acc), np.array(peak), np.array(flops),
                            str(path))


# ------------------------------------------------------------------------------------- pickle
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float",
                               "complex", "str", "bytes", "bytearray", "bool")]
    + [("collections", "OrderedDict")]
    + [(f"numpy{core}.multiarray", n) for core in (".core", "._core")
       for n in ("_reconstruct", "scalar")]
    + [(f"numpy{core}.numeric", "_frombuffer") for core in (".core", "._core")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [("numpy.dtypes", n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                      "BoolDType", "Float16DType", "Int16DType", "Int8DType",
                                      "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType")]
)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only plain builtins and numpy arrays/scalars/dtypes; any other
    global raises :class:`pickle.UnpicklingError` naming ``module.name``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only builtins and numpy "
                                     "arrays are allowed)")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id (only builtins and numpy arrays are "
                                     "allowed)")


def _check_plain(obj: Any, path: Path, depth: int = 0) -> None:
    """Refuse object arrays and anything that is not a plain container, number, string or
    numeric array (after unpickling; belt and braces for the restricted unpickler)."""
    if depth > 50:
        raise MoofaInputError("pickle nests too deep", file=path)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise MoofaInputError("refused numpy array of dtype", file=path, value=str(obj.dtype))
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_plain(k, path, depth + 1)
            _check_plain(v, path, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_plain(v, path, depth + 1)
    elif not (obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, np.generic))):
        raise MoofaInputError("refused object in pickle", file=path, value=type(obj).__name__)


def load_restricted_pickle(path: "str | Path") -> Any:
    """Unpickle ``path`` admitting only builtins and numpy arrays; MoofaInputError otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = RestrictedUnpickler(fh).load()
    except OSError as err:
        raise MoofaInputError(f"cannot read dataset ({err.strerror})", file=path) from None
    except pickle.UnpicklingError as err:
        raise MoofaInputError(str(err), file=path) from None
    except Exception as err:  # a corrupt pickle can raise almost anything
        raise MoofaInputError(f"corrupt pickle ({type(err).__name__}: {err})", file=path) from None
    _check_plain(obj, path)
    return obj


def _flatten_bins(value: Any, key: str, path: Path) -> list:
    """A flat list, or a dict keyed by bin flattened in ascending bin order (docs/design.md#protocols)."""
    if isinstance(value, Mapping):
        try:
            bins = sorted(value, key=int)
        except (TypeError, ValueError):
            raise MoofaInputError("bin keys must be integers", file=path, key=key) from None
        return [x for b in bins for x in value[b]]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise MoofaInputError("expected a list or a dict of bins", file=path, key=key,
                          value=type(value).__name__)


def read_pickle(path: "str | Path", model: "str | ModelSpec",
                model_configs: "str | Path | None" = None) -> PredictorDataset:
    """Read a reference dataset pickle for ``model``. Each config is validated and its stored
    feature must equal this model's encoding (a mismatch means the wrong model)."""
    path = Path(path)
    spec = get_model_spec(model, model_configs)
    obj = load_restricted_pickle(path)
    if not isinstance(obj, Mapping):
        raise MoofaInputError("expected a dict with keys " + ", ".join(PICKLE_KEYS), file=path,
                              value=type(obj).__name__)
    for key in ("configs", "accuracies"):
        if key not in obj:
            raise MoofaInputError("missing key", file=path, key=key)
    cols = {k: _flatten_bins(obj[k], k, path) for k in PICKLE_KEYS if k in obj}
    n = len(cols["configs"])
    for k, v in cols.items():
        if len(v) != n:
            raise MoofaInputError(f"has {len(v)} entries but configs has {n}", file=path, key=k)
    configs, acc = [], []
    for i, (c, a) in enumerate(zip(cols["configs"], cols["accuracies"])):
        try:
            if not isinstance(c, Mapping):
                raise ValueError(f"expected a dict, got {type(c).__name__}")
            cfg = SubnetConfig.from_dict(c).validate(spec, check_image_size=True)
            a = float(a)
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"accuracy must be a fraction in [0, 1], got {a!r}")
        except (ValueError, TypeError) as err:
            raise MoofaInputError(f"entry {i}: {err}", file=path, key="configs") from None
        configs.append(cfg)
        acc.append(a)
    if not configs:
        raise MoofaInputError("dataset is empty", file=path)
    peak = np.array([_efficiency(x, i, path) for i, x in enumerate(cols["efficiencies"])]) \
        if "efficiencies" in cols else np.full(n, np.nan)
    features = None
    if "features" in cols:
        features = np.stack([np.asarray(f, dtype=np.float64).reshape(-1) for f in cols["features"]])
        expected = ArchEncoder(spec).encode_batch(configs)
        if features.shape != expected.shape:
            raise MoofaInputError(f"features have {features.shape[1]} values, model "
                                  f"{spec.name!r} encodes {expected.shape[1]}", file=path,
                                  key="features")
        bad = np.flatnonzero((features != expected).any(axis=1))
        if bad.size:
            raise MoofaInputError(f"entry {bad[0]}: stored feature differs from model "
                                  f"{spec.name!r}'s encoding (dataset of another model?)",
                                  file=path, key="features")
    return PredictorDataset(spec.name, configs, np.array(acc), peak, np.full(n, np.nan),
                            str(path), features)


def _efficiency(value: Any, index: int, path: Path) -> float:
    """A pickle's stored peak memory (elements): a finite number > 0, else MoofaInputError
    naming the entry."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, (bool, str, bytes)) or not math.isfinite(x) or x <= 0:
        raise MoofaInputError(f"entry {index}: must be a finite number > 0", file=path,
                              key="efficiencies", value=value)
    return x


def read_dataset(path: "str | Path", model: "str | ModelSpec",
                 model_configs: "str | Path | None" = None) -> PredictorDataset:
    """Read a predictor dataset, dispatching on the suffix (``.jsonl`` or ``.pkl``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise MoofaInputError("dataset file not found", file=path)
    if suffix == ".jsonl":
        return read_jsonl(path, model, model_configs)
    if suffix in (".pkl", ".pickle"):
        return read_pickle(path, model, model_configs)
    raise MoofaInputError("unknown dataset format (expected a .jsonl or .pkl file)", file=path,
                          value=path.suffix)
