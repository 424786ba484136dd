"""Efficiency models (docs/design.md#memory-model): exact analytic peak memory (elements), a forward-hook profiler
that checks it, MACs (MMACs) and parameter counts, exact feasibility bounds with
constraint-aware sampling. The memory histogram plot is :mod:`moofa.efficiency.plots` (not
imported here: processes that do not plot need no matplotlib)."""
from moofa.efficiency.bounds import (
                                     StageChoices,
                                     count_feasible,
                                     feasible_fraction,
                                     feasible_resolutions,
                                     memory_bounds,
                                     memory_range_table,
                                     repair_config,
                                     sample_feasible,
                                     stage_choices,
)
from moofa.efficiency.flops import count_params, flops, flops_batch, macs
from moofa.efficiency.hooks import measure_peak_memory
from moofa.efficiency.memory import (
                                     DEFAULT_OPTIONS,
                                     LayerMemory,
                                     MemoryOptions,
                                     memory_histogram,
                                     memory_layers,
                                     peak_memory,
                                     peak_memory_batch,
)

__all__ = ["MemoryOptions", "DEFAULT_OPTIONS", "LayerMemory", "peak_memory", "peak_memory_batch",
           "memory_histogram", "memory_layers", "measure_peak_memory", "flops", "flops_batch", "macs",
           "count_params", "memory_bounds", "memory_range_table", "feasible_resolutions",
           "StageChoices", "stage_choices", "count_feasible", "feasible_fraction", "sample_feasible",
           "repair_config"]
