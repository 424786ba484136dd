"""Memory-constrained evolutionary search, the constraint sweep, results tables/plots and subnet
export (SPEC 7; CONTRACT "Search results"). Evaluation lives in :mod:`moofa.evaluation`.

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
                                    random_configs,
                                    random_search_baseline,
)
from moofa.search.results import compare, read_run, write_summary

__all__ = ["EvolutionFinder", "Individual", "OperatorStats", "SearchResult", "SearchSettings",
           "check_constraints", "compare", "random_configs", "random_search_baseline", "read_run",
           "write_summary"]
