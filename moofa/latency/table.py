"""Latency, SRAM and Flash models of a supernet on an Ethos-U target, fitted on Vela's figures of
compiled sample subnets (:mod:`moofa.latency.samples`), saved as JSON tables.

* latency (ms) = a sum of non-negative coefficients times terms (:data:`MS_TERMS`): MMACs, split
  into pointwise and depthwise; MB of int8 weights; MB of int8 activation traffic (bytes the
  layers read and write, :func:`moofa.efficiency.target.activation_traffic_batch`); millions of
  squeeze-excite, shortcut and input elements (:func:`moofa.efficiency.target.operator_counts_batch`);
  in a Dedicated_Sram mode, MB moved by the layers whose int8 input and output exceed the SRAM
  cache (``spill_mb``; the cache's size is the largest SRAM Vela used over the samples, which it
  fills almost completely); and a constant. The fit picks the set of terms whose leave-one-out
  error over the samples is smallest (:func:`select_terms`; docs/ethosu.md#latency-tables).
  Non-negative coefficients make the latency grow with every choice, as every term does: the
  search's limits and repairs rely on that. U55 in Shared_Sram mode streams the weights from
  Flash, U65 in Dedicated_Sram mode keeps the activations in DRAM, and depthwise convs and
  elementwise operators run far below the MAC rate: latency is not proportional to MACs.
* SRAM (bytes): the tighter of two envelopes that cover :data:`SRAM_COVERAGE` of the samples
  (a budget errs on the safe side for most subnets; the search compiles its answer and checks
  Vela's figure for the rest), named by the table's ``sram_model``
  (:mod:`moofa.efficiency.target`): ``int8_activations``: s * the int8 activations-only peak + o,
  least squares with ``o`` raised to cover the samples (the only form of version 1 tables);
  ``ethosu_activations``: the activations as the Ethos-U program holds them (NHCWB16 channels,
  int8 shortcuts held through their block) plus the overhead that covers the
  samples (``s`` = 1; with the arena sized to that peak, docs/ethosu.md#the-sram-arena, the
  overhead is 0). ``int32_shortcuts`` (shortcuts held as int32) is read in tables
  fitted on samples lowered with ExecuTorch's default (docs/ethosu.md#residual-adds-and-sram).
  In a ``Dedicated_Sram`` memory mode (U65) the SRAM is a cache of fixed size and the prediction
  is the largest SRAM Vela used over the samples.
* Flash (bytes) = f * parameters + g (least squares, non-negative).

Every figure a table predicts is a prediction of Vela's compile-time estimate, itself not a
measurement on silicon.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from moofa.efficiency import flops_batch
from moofa.efficiency.flops import params_batch
from moofa.efficiency.layout import resolve
from moofa.efficiency.target import (
    activation_traffic_batch,
    ethosu_activation_bytes_batch,
    int8_activation_bytes_batch,
    int32_shortcut_bytes_batch,
    operator_counts_batch,
)
from moofa.errors import MoofaInputError
from moofa.io import write_json
from moofa.models.spec import ModelSpec, SubnetConfig, get_model_spec

TABLE_VERSION = 3  # 3: ms over named terms; 2: sram_model (a version 1 table fits SRAM on the int8 peak)
N_CLASSES = 1000
# the analytic peak (bytes, int64 (N,)) each SRAM model predicts from
SRAM_PEAKS = {"int8_activations": int8_activation_bytes_batch, "ethosu_activations": ethosu_activation_bytes_batch,
              "int32_shortcuts": int32_shortcut_bytes_batch}
# the SRAM models a new fit chooses between (int32_shortcuts: read in older tables only)
FITTED_SRAM_MODELS = ("int8_activations", "ethosu_activations")
# The latency terms a table may weigh (units: MMACs, 1e6 bytes, 1e6 elements); "c" is the constant (ms).
MS_TERMS = ("mmacs", "pw_mmacs", "dw_mmacs", "weights_mb", "traffic_mb", "spill_mb", "se_m", "shortcut_m",
            "pixels_m")
# The terms of a version 1 or 2 table, whose ms coefficients are named a, b, d and c.
_V2_TERMS = {"a": "mmacs", "b": "weights_mb", "d": "traffic_mb", "c": "c"}
# Every fit may use the version 2 design; the terms a design adds to pointwise and depthwise MMACs,
# weights and the constant are chosen among these (select_terms).
_V2_DESIGN = ("mmacs", "weights_mb", "traffic_mb", "c")
_CORE = ("pw_mmacs", "dw_mmacs", "weights_mb", "c")
_OPTIONAL = ("traffic_mb", "spill_mb", "se_m", "shortcut_m", "pixels_m")  # spill_mb: with an SRAM cache only
SAMPLES_PER_TERM = 3  # a design of t terms is tried only on at least 3 t samples
# The fraction of the fitted samples whose SRAM the prediction covers. Not all: with Vela's
# default arena, its weight buffers put a few subnets far above any activations model
# (docs/ethosu.md#latency-tables; with the sized arena nothing is above the peak).
SRAM_COVERAGE = 0.9


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares by active-set elimination (few columns): drop the most negative
    coefficient until all are non-negative."""
    cols = list(range(x.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        if (coef >= 0).all() or len(cols) == 1:
            out = np.zeros(x.shape[1])
            out[cols] = np.clip(coef, 0, None)
            return out
        cols.pop(int(np.argmin(coef)))


def features(spec: ModelSpec, configs: Sequence[Any], n_classes: int = N_CLASSES, cache_bytes: int | None = None,
             terms: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Per config, each of ``terms`` (default: all): the terms of :data:`MS_TERMS` (``mmacs`` =
    ``pw_mmacs`` + ``dw_mmacs``; ``spill_mb``, the traffic of the layers whose int8 input and
    output exceed an SRAM cache of ``cache_bytes``, only with a cache), the constant ``c`` (ones)
    and ``params`` (parameters). Only what the asked terms need is computed."""
    configs = [SubnetConfig.from_dict(c) for c in configs]
    @cache
    def count(name: str) -> np.ndarray:  # one count per call: a table weighs only some
        return operator_counts_batch(spec, configs, (name,))[name] / 1e6
    mmacs = cache(lambda: flops_batch(spec, configs, n_classes=n_classes))
    params = cache(lambda: params_batch(spec, configs, n_classes=n_classes).astype(np.float64))

    def traffic(above: int) -> np.ndarray:
        return activation_traffic_batch(spec, configs, above=above).astype(np.float64) / 1e6
    make: dict[str, Callable[[], np.ndarray]] = {
        "mmacs": mmacs, "pw_mmacs": lambda: mmacs() - count("dw_macs"),
        "dw_mmacs": lambda: count("dw_macs"), "weights_mb": lambda: params() / 1e6,
        "traffic_mb": lambda: traffic(0), "se_m": lambda: count("se_elements"),
        "shortcut_m": lambda: count("shortcut_elements"),
        "pixels_m": lambda: np.array([3 * c.image_size ** 2 for c in configs], dtype=np.float64) / 1e6,
        "c": lambda: np.ones(len(configs)), "params": params}
    if cache_bytes is not None:
        make["spill_mb"] = lambda: traffic(cache_bytes)
    return {t: make[t]() for t in (make if terms is None else terms)}


def _loo_errors(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative error of each sample's prediction by the non-negative fit on all the others."""
    keep = ~np.eye(len(y), dtype=bool)
    return np.array([abs(x[i] @ _nnls(x[keep[i]], y[keep[i]]) - y[i]) / y[i] for i in range(len(y))])


def select_terms(f: Mapping[str, np.ndarray], ms: np.ndarray) -> tuple[str, ...]:
    """The latency design (terms of :data:`MS_TERMS` and ``c``) with the smallest leave-one-out
    error (max, then mean, each to 0.01 %, then fewer terms): the version 2 design, or pointwise
    and depthwise MMACs, weights and the constant with any of the optional terms, each design
    tried only with at least :data:`SAMPLES_PER_TERM` samples per term."""
    optional = [t for t in _OPTIONAL if t in f]
    designs = [_V2_DESIGN] + [_CORE + tuple(t for j, t in enumerate(optional) if mask >> j & 1)
                              for mask in range(1 << len(optional))]
    usable = [d for d in designs if SAMPLES_PER_TERM * len(d) <= len(ms)] or [_V2_DESIGN]
    if len(usable) == 1:
        return usable[0]

    def score(d: tuple[str, ...]) -> tuple[float, float, int]:
        e = _loo_errors(np.column_stack([f[t] for t in d]), ms)
        return round(float(e.max()), 4), round(float(e.mean()), 4), len(d)
    return min(usable, key=score)


def _covering(residuals: np.ndarray, coverage: float) -> float:
    """The smallest offset at or above which lie at least ``coverage`` of ``residuals``."""
    return float(np.sort(residuals)[int(np.ceil(coverage * len(residuals))) - 1])


def _sram_fit(peaks: Mapping[str, np.ndarray], sram: np.ndarray, dedicated: bool,
              coverage: float = SRAM_COVERAGE) -> tuple[str, np.ndarray]:
    """``(sram_model, [s, o])``: of the envelopes that cover ``coverage`` of the samples' SRAM
    (bytes), the one whose largest over-estimate is the smaller (module docstring); a
    Dedicated_Sram cache: its largest use. ``peaks``: each SRAM model's peak of the samples (bytes)."""
    if dedicated:
        return "int8_activations", np.array([0.0, float(sram.max())])
    acts = peaks["int8_activations"]
    sc = _nnls(np.column_stack([acts, np.ones(len(sram))]), sram)
    sc[1] += _covering(sram - (sc[0] * acts + sc[1]), coverage)
    fits = {"int8_activations": sc,
            "ethosu_activations": np.array([1.0, _covering(sram - peaks["ethosu_activations"], coverage)])}

    def over(model: str) -> float:
        s, o = fits[model]
        return float(np.max((s * peaks[model] + o - sram) / sram))
    best = min(fits, key=over)
    return best, fits[best]


@dataclass
class LatencyTable:
    """A fitted table of one model on one target (see the module docstring); predictions of
    Vela's estimates."""

    model: str
    target: str
    system_config: str
    memory_mode: str
    ms: dict[str, float]  # ms per unit of each term of MS_TERMS it uses, and c (ms)
    sram: dict[str, float]  # s (bytes per byte of the sram_model's peak), o (bytes); s = 0 in a Dedicated_Sram mode
    flash: dict[str, float]  # f (bytes per parameter), g (bytes)
    n_classes: int = N_CLASSES
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = TABLE_VERSION
    model_configs: str | None = None  # model_configs.yaml of a model that is not built in
    sram_model: str = "int8_activations"  # the peak the SRAM prediction starts from (SRAM_PEAKS)
    cache_bytes: int | None = None  # Dedicated_Sram: the SRAM cache (bytes), the largest Vela used (spill_mb)

    def __post_init__(self) -> None:
        if self.version < 3:  # a, b, d, c: the version 2 design
            self.ms = {_V2_TERMS.get(k, k): v for k, v in self.ms.items()}
        unknown = sorted(set(self.ms) - {*MS_TERMS, "c"})
        if unknown:
            raise MoofaInputError(f"unknown latency term of the {self.model} table for {self.target} "
                                  f"(known: {', '.join(MS_TERMS)}, c)", key="ms", value=unknown[0])
        bad = [(t, v) for t, v in self.ms.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf")]
        if bad:
            raise MoofaInputError(f"a latency coefficient of the {self.model} table for {self.target} must be a "
                                  "finite number >= 0", key=f"ms.{bad[0][0]}", value=bad[0][1])
        if self.cache_bytes is not None and (isinstance(self.cache_bytes, bool)
                                             or not isinstance(self.cache_bytes, int) or self.cache_bytes <= 0):
            raise MoofaInputError("the SRAM cache must be a positive number of bytes", key="cache_bytes",
                                  value=self.cache_bytes)
        if "spill_mb" in self.ms and self.cache_bytes is None:
            raise MoofaInputError(f"the {self.model} table for {self.target} weighs spill_mb without a cache_bytes",
                                  key="cache_bytes", value=None)
        if self.sram_model not in SRAM_PEAKS:
            raise MoofaInputError(f"unknown SRAM model of the {self.model} table for {self.target} "
                                  f"(known: {', '.join(SRAM_PEAKS)})", key="sram_model",
                                  value=self.sram_model)

    def _spec(self) -> ModelSpec:
        return get_model_spec(self.model, self.model_configs)

    def predict_ms_batch(self, configs: Sequence[Any], spec: ModelSpec | None = None) -> np.ndarray:
        """Predicted inference time (ms, Vela's estimate) of each config."""
        f = features(spec or self._spec(), configs, self.n_classes, self.cache_bytes, self.ms)
        return sum((v * f[t] for t, v in self.ms.items()), np.zeros(len(configs)))

    def predict_sram_batch(self, configs: Sequence[Any], spec: ModelSpec | None = None) -> np.ndarray:
        """Predicted SRAM (bytes) of each config: s * the sram_model's peak + o."""
        acts = SRAM_PEAKS[self.sram_model](spec or self._spec(), configs).astype(np.float64)
        return np.ceil(self.sram["s"] * acts + self.sram["o"]).astype(np.int64)

    def predict_flash_batch(self, configs: Sequence[Any], spec: ModelSpec | None = None) -> np.ndarray:
        """Predicted Flash (bytes) of each config."""
        f = features(spec or self._spec(), configs, self.n_classes, terms=("params",))
        return np.ceil(self.flash["f"] * f["params"] + self.flash["g"]).astype(np.int64)

    def predict_ms(self, config: Mapping[str, Any] | SubnetConfig) -> float:
        """Predicted inference time (ms) of ``config`` (``{"ks", "e", "d", "image_size"}``)."""
        spec, cfg = resolve(self._spec(), config)
        return float(self.predict_ms_batch([cfg], spec)[0])

    def predict_sram_bytes(self, config: Mapping[str, Any] | SubnetConfig) -> int:
        """Predicted SRAM (bytes) of ``config``."""
        spec, cfg = resolve(self._spec(), config)
        return int(self.predict_sram_batch([cfg], spec)[0])

    def predict_flash_bytes(self, config: Mapping[str, Any] | SubnetConfig) -> int:
        """Predicted Flash (bytes) of ``config``."""
        spec, cfg = resolve(self._spec(), config)
        return int(self.predict_flash_batch([cfg], spec)[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyTable":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


def fit_table(model: str, target: str, samples: Sequence[Mapping[str, Any]],
              provenance: Mapping[str, Any] | None = None, n_classes: int = N_CLASSES,
              model_configs: str | None = None) -> LatencyTable:
    """Fit a table on compiled samples (each ``{"config": SubnetConfig, "figures": Vela's}``)."""
    if len(samples) < 4:
        raise MoofaInputError(f"{model} on {target}: {len(samples)} compiled samples, a fit needs at least 4",
                              key="--samples", value=len(samples))
    spec = get_model_spec(model, model_configs)
    sram = np.array([s["figures"]["sram_bytes"] for s in samples], dtype=np.float64)
    dedicated = "Dedicated_Sram" in samples[0]["figures"]["memory_mode"]
    cache = int(sram.max()) if dedicated else None  # the cache Vela fills (module docstring)
    f = features(spec, [s["config"] for s in samples], n_classes, cache)
    ms = np.array([s["figures"]["inference_ms"] for s in samples])
    terms = select_terms(f, ms)
    design = np.column_stack([f[t] for t in terms])
    coef = _nnls(design, ms)
    pred = design @ coef
    rel = np.abs(pred - ms) / ms
    configs = [SubnetConfig.from_dict(s["config"]) for s in samples]
    peaks = {m: SRAM_PEAKS[m](spec, configs).astype(np.float64) for m in FITTED_SRAM_MODELS}
    sram_model, sc = _sram_fit(peaks, sram, dedicated)
    acts = peaks[sram_model]
    sram_pred = np.ceil(sc[0] * acts + sc[1])
    flash = np.array([s["figures"]["flash_bytes"] for s in samples], dtype=np.float64)
    fc = _nnls(np.column_stack([f["params"], np.ones(len(flash))]), flash)
    first = samples[0]["figures"]
    prov = {**(provenance or {}), "n_samples": len(samples),
            "samples": [s.get("folder", "") and Path(s["folder"]).name for s in samples],
            "fit_error": {"ms_max_rel": float(rel.max()), "ms_mean_rel": float(rel.mean()),
                          "ms_loo_max_rel": float(_loo_errors(design, ms).max()),
                          "sram_max_rel": float(np.max(np.abs(sram_pred - sram) / sram)),
                          "sram_under": int(np.sum(sram_pred < sram)),
                          "flash_max_rel": float(np.max(np.abs(fc[0] * f["params"] + fc[1] - flash)
                                                        / np.maximum(flash, 1)))},
            "vela_version": first["vela_version"], "sram_coverage": SRAM_COVERAGE,
            # Vela's SRAM minus the SRAM model's peak over the samples (bytes)
            "sram_overhead_bytes": {"min": int(np.min(sram - acts)), "mean": float(np.mean(sram - acts)),
                                    "max": int(np.max(sram - acts))}}
    return LatencyTable(model, target, first["system_config"], first["memory_mode"],
                        {t: float(v) for t, v in zip(terms, coef)},
                        {"s": float(sc[0]), "o": float(sc[1])},
                        {"f": float(fc[0]), "g": float(fc[1])}, n_classes, prov, TABLE_VERSION, model_configs,
                        sram_model, cache)


def table_name(model: str, target: str) -> str:
    return f"{model}_{target}.json"


def shipped_tables() -> list[str]:
    """``model_target`` names of the tables shipped in the package."""
    folder = resources.files("moofa.latency") / "tables"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")) if folder.is_dir() else []


def load_table(model: str, target: str, path: str | Path | None = None) -> LatencyTable:
    """The table of ``model`` on ``target``: the file ``path`` or the one shipped in the package;
    MoofaInputError naming the shipped tables when there is none."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MoofaInputError("latency table not found", file=p)
        try:
            return LatencyTable.from_dict(json.loads(p.read_text()))
        except MoofaInputError as err:  # name the file the bad value is in
            raise MoofaInputError(err.reason, file=p, key=err.key, value=err.value) from None
    res = resources.files("moofa.latency") / "tables" / table_name(model, target)
    if not res.is_file():
        raise MoofaInputError(f"no shipped latency table for {model} on {target} (shipped: "
                              f"{', '.join(shipped_tables()) or 'none'}; build one with python -m moofa.latency build)",
                              key="search_config.target", value=target)
    return LatencyTable.from_dict(json.loads(res.read_text()))
