"""Latency, SRAM and Flash models of a supernet on an Ethos-U target, fitted on Vela's figures of
compiled sample subnets (:mod:`moofa.latency.samples`), saved as JSON tables.

* latency (ms) = a * MMACs + b * MB of int8 weights + d * MB of int8 activation traffic (bytes
  the layers read and write, :func:`moofa.efficiency.target.activation_traffic_batch`) + c, least
  squares with non-negative coefficients (so it grows with every choice, as MACs, parameters and
  traffic do: the search's limits and repairs rely on that). U55 in Shared_Sram mode streams the
  weights from Flash, and U65 in Dedicated_Sram mode keeps the activations in DRAM, which is why
  latency is not proportional to MACs alone.
* SRAM (bytes): the tighter of two upper envelopes of the samples (so a budget errs on the safe
  side), named by the table's ``sram_model`` (:mod:`moofa.efficiency.target`):
  ``int8_activations``: s * the int8 activations-only peak + o, least squares with ``o`` raised by
  the largest residual (the only form of version 1 tables); ``int32_shortcuts``: the int8 peak
  with every block's shortcut held as int32 plus the largest overhead
  (``s`` = 1). The first is tighter where Vela folds most shortcuts' rescales (OFA), the second
  where it does not (MOOFA_V3). In a ``Dedicated_Sram`` memory mode (U65) the SRAM is a cache of
  fixed size and the prediction is the largest SRAM Vela used over the samples.
* Flash (bytes) = f * parameters + g (least squares, non-negative).

Every figure a table predicts is a prediction of Vela's compile-time estimate, itself not a
measurement on silicon.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from moofa.efficiency import flops_batch
from moofa.efficiency.flops import params_batch
from moofa.efficiency.layout import resolve
from moofa.efficiency.target import activation_traffic_batch, ethosu_activation_bytes_batch, int8_activation_bytes_batch
from moofa.errors import MoofaInputError
from moofa.io import write_json
from moofa.models.spec import ModelSpec, SubnetConfig, get_model_spec

TABLE_VERSION = 2  # 2: sram_model; a version 1 table fits SRAM on the plain int8 activations peak
N_CLASSES = 1000
# the analytic peak (bytes, int64 (N,)) each SRAM model predicts from
SRAM_PEAKS = {"int8_activations": int8_activation_bytes_batch, "int32_shortcuts": ethosu_activation_bytes_batch}



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


def features(spec: ModelSpec, configs: Sequence[Any], n_classes: int = N_CLASSES) -> dict[str, np.ndarray]:
    """Per config: ``mmacs`` (MMACs), ``weights_mb`` (int8 weights, 1e6 bytes), ``params``
    (parameters) and ``traffic_mb`` (int8 activations read and written, 1e6 bytes)."""
    configs = [SubnetConfig.from_dict(c) for c in configs]
    params = params_batch(spec, configs, n_classes=n_classes).astype(np.float64)
    return {"mmacs": flops_batch(spec, configs, n_classes=n_classes), "weights_mb": params / 1e6,
            "params": params, "traffic_mb": activation_traffic_batch(spec, configs).astype(np.float64) / 1e6}


def _sram_fit(peaks: Mapping[str, np.ndarray], sram: np.ndarray, dedicated: bool) -> tuple[str, np.ndarray]:
    """``(sram_model, [s, o])``: the upper envelope of the samples' SRAM (bytes) whose largest
    over-estimate is the smaller (module docstring); a Dedicated_Sram cache: its largest use.
    ``peaks``: each SRAM model's peak of the samples (bytes)."""
    if dedicated:
        return "int8_activations", np.array([0.0, float(sram.max())])
    acts = peaks["int8_activations"]
    sc = _nnls(np.column_stack([acts, np.ones(len(sram))]), sram)
    sc[1] += float(np.max(sram - (sc[0] * acts + sc[1])))
    fits = {"int8_activations": sc,
            "int32_shortcuts": np.array([1.0, float(np.max(sram - peaks["int32_shortcuts"]))])}

    def over(model: str) -> float:
        s, o = fits[model]
        return float(np.max((s * peaks[model] + o - sram) / sram))
    best = min(fits, key=over)
    return best, fits[best]


def _ms_design(f: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.column_stack([f["mmacs"], f["weights_mb"], f["traffic_mb"], np.ones(len(f["mmacs"]))])


@dataclass
class LatencyTable:
    """A fitted table of one model on one target (see the module docstring); predictions of
    Vela's estimates."""

    model: str
    target: str
    system_config: str
    memory_mode: str
    ms: dict[str, float]  # a (ms per MMAC), b (ms per MB of weights), d (ms per MB of activation traffic), c (ms)
    sram: dict[str, float]  # s (bytes per byte of the sram_model's peak), o (bytes); s = 0 in a Dedicated_Sram mode
    flash: dict[str, float]  # f (bytes per parameter), g (bytes)
    n_classes: int = N_CLASSES
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = TABLE_VERSION
    model_configs: str | None = None  # model_configs.yaml of a model that is not built in
    sram_model: str = "int8_activations"  # the peak the SRAM prediction starts from (SRAM_PEAKS)

    def __post_init__(self) -> None:
        if self.sram_model not in SRAM_PEAKS:
            raise MoofaInputError(f"unknown SRAM model of the {self.model} table for {self.target} "
                                  f"(known: {', '.join(SRAM_PEAKS)})", key="sram_model",
                                  value=self.sram_model)

    def _spec(self) -> ModelSpec:
        return get_model_spec(self.model, self.model_configs)

    def predict_ms_batch(self, configs: Sequence[Any], spec: ModelSpec | None = None) -> np.ndarray:
        """Predicted inference time (ms, Vela's estimate) of each config."""
        f = features(spec or self._spec(), configs, self.n_classes)
        return _ms_design(f) @ np.array([self.ms["a"], self.ms["b"], self.ms["d"], self.ms["c"]])

    def predict_sram_batch(self, configs: Sequence[Any], spec: ModelSpec | None = None) -> np.ndarray:
        """Predicted SRAM (bytes) of each config: s * the sram_model's peak + o."""
        acts = SRAM_PEAKS[self.sram_model](spec or self._spec(), configs).astype(np.float64)
        return np.ceil(self.sram["s"] * acts + self.sram["o"]).astype(np.int64)

    def predict_flash_batch(self, configs: Sequence[Any], spec: ModelSpec | None = None) -> np.ndarray:
        """Predicted Flash (bytes) of each config."""
        f = features(spec or self._spec(), configs, self.n_classes)
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
    f = features(spec, [s["config"] for s in samples], n_classes)
    ms = np.array([s["figures"]["inference_ms"] for s in samples])
    coef = _nnls(_ms_design(f), ms)
    pred = _ms_design(f) @ coef
    rel = np.abs(pred - ms) / ms
    sram = np.array([s["figures"]["sram_bytes"] for s in samples], dtype=np.float64)
    configs = [SubnetConfig.from_dict(s["config"]) for s in samples]
    peaks = {m: peak(spec, configs).astype(np.float64) for m, peak in SRAM_PEAKS.items()}
    sram_model, sc = _sram_fit(peaks, sram, "Dedicated_Sram" in samples[0]["figures"]["memory_mode"])
    acts = peaks[sram_model]
    sram_pred = np.ceil(sc[0] * acts + sc[1])
    flash = np.array([s["figures"]["flash_bytes"] for s in samples], dtype=np.float64)
    fc = _nnls(np.column_stack([f["params"], np.ones(len(flash))]), flash)
    first = samples[0]["figures"]
    prov = {**(provenance or {}), "n_samples": len(samples),
            "samples": [s.get("folder", "") and Path(s["folder"]).name for s in samples],
            "fit_error": {"ms_max_rel": float(rel.max()), "ms_mean_rel": float(rel.mean()),
                          "sram_max_rel": float(np.max(np.abs(sram_pred - sram) / sram)),
                          "flash_max_rel": float(np.max(np.abs(fc[0] * f["params"] + fc[1] - flash)
                                                        / np.maximum(flash, 1)))},
            "vela_version": first["vela_version"],
            # Vela's SRAM minus the SRAM model's peak over the samples (bytes)
            "sram_overhead_bytes": {"min": int(np.min(sram - acts)), "mean": float(np.mean(sram - acts)),
                                    "max": int(np.max(sram - acts))}}
    return LatencyTable(model, target, first["system_config"], first["memory_mode"],
                        {"a": float(coef[0]), "b": float(coef[1]), "d": float(coef[2]), "c": float(coef[3])},
                        {"s": float(sc[0]), "o": float(sc[1])},
                        {"f": float(fc[0]), "g": float(fc[1])}, n_classes, prov, TABLE_VERSION, model_configs,
                        sram_model)


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
