"""Evaluation of one subnet or the teacher (``eval_and_search.py --mode eval``), the analytic
report of a subnet (peak memory, histogram, MMACs, parameters) and its diagrams."""
