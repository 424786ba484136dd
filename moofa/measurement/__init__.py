"""Measuring a network: top-1 on images after BN re-calibration (:mod:`moofa.measurement.evaluate`),
the analytic report of a subnet (peak memory, histogram, MMACs, parameters) and its diagrams."""
