"""Memory-constrained evolutionary search, robust fitness, hardware targets and results tables/plots
(docs/design.md#search-space; docs/design.md#run-layout). The constraint sweep that runs it per
budget is :mod:`moofa.workflows.sweep`; measuring is :mod:`moofa.measurement`; the subnet file
format is :mod:`moofa.models.subnet_file`.
"""
from moofa.search.evolution import (
                                    EvolutionFinder,
                                    Individual,
                                    OperatorStats,
                                    SearchResult,
                                    SearchSettings,
                                    check_constraints,
                                    monotone_answer,
                                    random_configs,
                                    random_search_baseline,
                                    search_budget,
                                    search_sweep,
)
from moofa.search.results import compare, read_series, write_summary
from moofa.search.robust import Estimates, FitnessSettings, RobustFitness

__all__ = ["Estimates", "EvolutionFinder", "FitnessSettings", "Individual", "OperatorStats",
           "RobustFitness", "SearchResult", "SearchSettings", "check_constraints", "compare",
           "monotone_answer", "random_configs", "random_search_baseline", "read_series", "search_budget",
           "search_sweep", "write_summary"]
