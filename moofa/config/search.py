"""The ``search_config`` section: the constraint sweep, the evolutionary search and its exports."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from moofa.config.fields import (
    _FRACTION,
    _INT,
    _NONNEG_INT,
    _POS_INT,
    _POS_NUM,
    Field,
    _Bad,
    _bool,
    _choice,
    _list,
    _num,
    _str,
)
from moofa.config.section import Section, schema_section
from moofa.errors import ConfigError

EXPORT_FORMATS: tuple[str, ...] = ("subnet", "onnx", "executorch")


def _export_formats(v: Any) -> list[str]:
    """``search_config.export``: true = [subnet, onnx] (the ONNX file only when onnx is
    installed), false = [], or a list of EXPORT_FORMATS; onnx and executorch imply subnet."""
    if isinstance(v, bool):
        return ["subnet", "onnx"] if v else []
    if not isinstance(v, list) or any(x not in EXPORT_FORMATS for x in v):
        raise _Bad(f"must be true, false or a list of {', '.join(EXPORT_FORMATS)}")
    return [f for f in EXPORT_FORMATS if f in v or (f == "subnet" and v)]


SEARCH_SCHEMA: dict[str, Field] = {
    "N_constraint": Field(10, _POS_INT, "number of constraints of the sweep"),
    "min_constraint": Field(300000, _POS_NUM, "one end of the sweep, in the memory unit (either order)"),
    "max_constraint": Field(800000, _POS_NUM, "other end of the sweep, in the memory unit (either order)"),
    "constraint_start": Field(None, _num(0.0, lo_open=True, nullable=True), "overrides min/max_constraint"),
    "constraint_stop": Field(None, _num(0.0, lo_open=True, nullable=True), "overrides min/max_constraint"),
    "constraints": Field(None, _list(_POS_NUM, nullable=True),
                         "explicit list (memory unit: elements, or bytes with a memory: section); overrides the sweep"),
    "max_mmacs": Field(None, _num(0.0, lo_open=True, nullable=True),
                       "hard limit on MMACs of every found subnet (null = none)"),
    "max_params": Field(None, _num(1, integer=True, nullable=True),
                        "hard limit on parameters of the exported subnet, head included (Flash; null = none)"),
    "target": Field(None, _str(nullable=True),
                    "Ethos-U configuration (e.g. ethos-u55-128) whose limits below apply; the answer is "
                    "compiled for it and Vela's figures are reported (null = none)"),
    "max_latency_ms": Field(None, _num(0.0, lo_open=True, nullable=True),
                            "hard limit on the target's inference time, ms (predicted by the latency table "
                            "during the search, Vela's estimate for the answer; null = none)"),
    "max_sram_bytes": Field(None, _num(1, integer=True, nullable=True),
                            "hard limit on the target's SRAM, bytes (the latency table's prediction during "
                            "the search, Vela's figure for the answer; null = none)"),
    "max_flash_bytes": Field(None, _num(1, integer=True, nullable=True),
                             "hard limit on the target's Flash, bytes (null = none)"),
    "latency_table": Field(None, _str(nullable=True),
                           "latency table JSON of python -m moofa.latency build (null = the shipped one)"),
    "compile_tries": Field(3, _POS_INT, "candidates compiled for the target at most until one fits"),
    "population_size": Field(100, _num(2, integer=True), "evolution population"),
    "generations": Field(500, _POS_INT, "evolution generations"),
    "mutation_ratio": Field(0.5, _num(0.0, 1.0, lo_open=True), "fraction of the population mutated"),
    "parent_ratio": Field(0.25, _num(0.0, 1.0, lo_open=True), "fraction kept as parents"),
    "arch_mutate_prob": Field(0.1, _FRACTION, "per-gene mutation probability"),
    "resolution_mutate_prob": Field(0.5, _FRACTION, "resolution mutation probability"),
    "seed": Field(0, _INT, "search seed"),
    "evaluate": Field(True, _bool(), "false = predictor-only search (real_accuracy null)"),
    "res_dir": Field("searches/MOOFA/", _str(), "search output root"),
    "acc_dataset_path": Field("acc_predictor_datasets/adapted/MOOFA/dataset.jsonl", _str(),
                              "predictor dataset file (JSON Lines; reference pickle accepted)"),
    "acc_predictor_checkpoint": Field("acc_predictor_checkpoints/MOOFA_acc.pth.tar", _str(nullable=True),
                                      "predictor checkpoint (output of training, input of search)"),
    "export": Field(["subnet", "onnx"], _export_formats,
                    "true (= [subnet, onnx]), false, or a list of subnet, onnx, executorch "
                    "(int8 + fp32 .pte and deploy.json; needs the deploy extra)"),
    "deploy_constraints": Field(None, _list(_POS_NUM, nullable=True),
                                "constraints whose subnets get the executorch export (null = all)"),
    "fitness": Field("robust", _choice("robust", "reference"),
                     "robust = trust region, calibration and pessimism around the measured subnets of "
                     "acc_dataset_path (docs/search.md); reference = the raw predictor (the reference)"),
    "trust_radius": Field(4.0, _num(0.0), "robust: genes a candidate may differ from its nearest measured subnet"),
    "pessimism": Field(0.5, _num(0.0), "robust: standard deviations subtracted from the calibrated prediction"),
    "neighbours": Field(5, _POS_INT, "robust: nearest measured subnets whose residuals calibrate a prediction"),
    "distance_uncertainty_pp": Field(0.15, _num(0.0), "robust: uncertainty added per gene of distance to the data, pp"),
    "bound_margin_pp": Field(0.5, _num(0.0), "robust: predictions are capped at the best measured accuracy + this, pp"),
    "rerank_top_k": Field(10, _NONNEG_INT, "evaluate: candidates per budget measured on the selection split "
                          "(dataset_config.eval_split) to choose the answer; 0 = no re-ranking"),
    "append_measurements": Field(True, _bool(), "evaluate: append the re-ranking measurements to acc_dataset_path"),
    "max_tries": Field(10, _POS_INT, "draws of a child (from the same parents) before it is repaired"),
}


@schema_section(SEARCH_SCHEMA, "search_config")
class SearchSettings(Section):
    """``search_config``: the constraint sweep and the evolutionary search (the reference class
    defaults 100 / 500; the reference run used 20 / 20)."""

    # the keys that define one evolutionary search (recorded with each result)
    KEYS: ClassVar[tuple[str, ...]] = ("population_size", "generations", "mutation_ratio",
                                       "parent_ratio", "arch_mutate_prob",
                                       "resolution_mutate_prob", "seed", "max_tries")

    N_constraint: int
    min_constraint: float  # memory unit (elements, or bytes with a memory: section)
    max_constraint: float
    constraint_start: float | None
    constraint_stop: float | None
    constraints: list[float] | None
    max_mmacs: float | None
    max_params: int | None
    target: str | None
    max_latency_ms: float | None
    max_sram_bytes: int | None
    max_flash_bytes: int | None
    latency_table: str | None
    compile_tries: int
    population_size: int
    generations: int
    mutation_ratio: float
    parent_ratio: float
    arch_mutate_prob: float
    resolution_mutate_prob: float
    seed: int
    evaluate: bool
    res_dir: str
    acc_dataset_path: str
    acc_predictor_checkpoint: str | None
    export: list[str]
    deploy_constraints: list[float] | None
    fitness: str
    trust_radius: float  # genes
    pessimism: float  # standard deviations
    neighbours: int
    distance_uncertainty_pp: float
    bound_margin_pp: float
    rerank_top_k: int
    append_measurements: bool
    max_tries: int

    def check(self) -> None:
        if (self.constraint_start is None) != (self.constraint_stop is None):
            missing = "constraint_stop" if self.constraint_stop is None else "constraint_start"
            raise ConfigError("constraint_start and constraint_stop go together",
                              key=f"{self.WHERE}.{missing}")
        if self.n_parents < 1:
            raise ConfigError(f"keeps no parent of a population of {self.population_size}",
                              key=f"{self.WHERE}.parent_ratio", value=self.parent_ratio)
        if self.deploy_constraints is not None:
            key = f"{self.WHERE}.deploy_constraints"
            if "executorch" not in self.export:
                raise ConfigError("needs executorch in search_config.export", key=key,
                                  value=self.deploy_constraints)
            sweep = self.sweep()
            outside = [c for c in self.deploy_constraints if int(round(c)) not in sweep]
            if outside:
                raise ConfigError(f"{outside[0]:g} is not one of the search constraints {sweep}",
                                  key=key, value=self.deploy_constraints)

    @property
    def n_parents(self) -> int:
        """Parents kept per generation: round(parent_ratio x population_size) (reference)."""
        return int(round(self.parent_ratio * self.population_size))

    @property
    def n_mutants(self) -> int:
        """Mutants per generation: round(mutation_ratio x population_size) (reference)."""
        return int(round(self.mutation_ratio * self.population_size))

    @property
    def n_crossovers(self) -> int:
        """Crossover children per generation: population_size - n_mutants (reference)."""
        return self.population_size - self.n_mutants

    def to_dict(self) -> dict[str, Any]:
        """The evolution's settings (:attr:`KEYS`), as each result records them."""
        return {k: getattr(self, k) for k in self.KEYS}

    def sweep(self) -> list[int]:
        """The peak-memory constraints of the sweep (elements), ascending and distinct:
        ``constraints`` when given, else ``N_constraint`` evenly spaced values between the two
        ends (``constraint_start/stop`` or ``min/max_constraint``, in either order), rounded."""
        if self.constraints:
            return sorted({int(round(c)) for c in self.constraints})
        if self.constraint_start is not None and self.constraint_stop is not None:  # check(): both or none
            a, b = self.constraint_start, self.constraint_stop
        else:
            a, b = self.min_constraint, self.max_constraint
        values = np.linspace(min(a, b), max(a, b), int(self.N_constraint), endpoint=True)
        return sorted({int(round(float(v))) for v in values})
