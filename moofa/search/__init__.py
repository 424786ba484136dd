"""Memory-constrained evolutionary search, the constraint sweep, results tables/plots and subnet
export (docs/design.md#search-space; docs/design.md#run-layout). Evaluation lives in :mod:`moofa.evaluation`.

Heavy parts (data, training, export) are imported by the modules that need them, so
``import moofa.search`` stays light.
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
from moofa.search.robust import Estimates, FitnessSettings, RobustFitness
from moofa.search.results import compare, read_run, write_summary

__all__ = ["Estimates", "EvolutionFinder", "FitnessSettings", "Individual", "OperatorStats",
           "RobustFitness", "SearchResult", "SearchSettings", "check_constraints", "compare",
           "monotone_answer", "random_configs", "random_search_baseline", "read_run", "search_budget",
           "search_sweep", "write_summary"]
