"""Latency, SRAM and Flash of subnets on Arm Ethos-U targets, predicted by tables fitted on Vela's
compile-time estimates of compiled sample subnets (``python -m moofa.latency build``).

    >>> from moofa.latency import load_table
    >>> t = load_table("OFA", "ethos-u55-128")
    >>> t.predict_ms({"ks": [...], "e": [...], "d": [...], "image_size": 160})  # ms, Vela's estimate

Tables of OFA and MOOFA_V3 on ethos-u55-128 and ethos-u65-256 ship in ``moofa/latency/tables``.
Predicting needs nothing beyond the base install; building needs the ``ethos-u`` extra.
"""
from moofa.latency.table import LatencyTable, fit_table, load_table, shipped_tables

__all__ = ["LatencyTable", "fit_table", "load_table", "shipped_tables"]
