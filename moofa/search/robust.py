"""Robust fitness: what the search believes about a subnet's accuracy, and how sure it is.

A predictor is only trustworthy near the subnets it was trained on. The search therefore scores a
candidate ``x`` (all accuracies are fractions) against the *measured* subnets of
``search_config.acc_dataset_path`` (docs/search.md explains the choice):

* ``d(x)``: distance to the nearest measured subnet, in genes: half the size of the symmetric
  difference of the one-hot encodings (a changed kernel size, expand ratio or resolution counts 1,
  a block switched on or off by a depth change counts 1).
* calibration: ``mu(x) = p(x) + sum_j w_j r_j / sum_j w_j`` over the ``neighbours`` nearest
  measured subnets ``j``, with residual ``r_j = measured_j - p(j)`` and weight
  ``w_j = 1 / (1 + d_j)``; ``p`` is the predictor (the mean of its ensemble members).
* uncertainty: ``sigma(x)^2 = s_members^2 + s_local^2 + (distance_uncertainty * d(x))^2``:
  the members' spread (0 for one MLP), the weighted RMS of the neighbours' residuals (the local
  error of the predictor) and a term growing with the distance to the data.
* bound: ``mu`` is capped at the best measured accuracy + ``bound_margin`` (the data say
  nothing about accuracies beyond that).
* fitness (what the evolution maximises): ``min(mu, cap) - pessimism * sigma`` inside the trust
  region ``d(x) <= trust_radius``; outside, one full unit (100 pp) per gene beyond it is
  subtracted, so the evolution walks back to the data and never prefers an unsupported subnet to a
  supported one.
* a measured subnet (``d = 0``) is scored by its measurement: ``mu = fitness = measured``,
  ``sigma = 0`` (repeated measurements of one subnet are averaged).

* 90 % interval (:meth:`RobustFitness.interval`, ``predicted_interval`` in info.json):
  ``mu -+ q * scale`` with ``scale^2 = s_members^2 + s_local^2 + (distance_uncertainty *
  max(0, d - d_ref))^2``; ``q`` is the split-conformal quantile of the normalised leave-one-out
  residuals of the measured subnets (each scored without itself), ``d_ref`` their median
  leave-one-out distance; a measured subnet gets ``[measured, measured]``.

``fitness: reference`` keeps the reference's behaviour: fitness = ``p(x)``, no data needed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moofa.config import SEARCH_SCHEMA, SearchSettings
from moofa.efficiency import peak_memory_batch
from moofa.efficiency.limits import fits_batch
from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.predictor.dataset import PredictorDataset

FITNESS_MODES = ("robust", "reference")
OUTSIDE_PENALTY = 1.0  # fitness units (fraction = 100 pp) per gene beyond the trust radius
CACHE_SIZE = 500_000   # scored networks kept (about 100 bytes each); cleared when full
INTERVAL_LEVEL = 0.90  # coverage (fraction) of ``predicted_interval``


@dataclass(frozen=True)
class FitnessSettings:
    """``search_config`` keys of the robust fitness (accuracy units: percentage points)."""

    # the defaults are search_config's (one table, in moofa.config)
    fitness: str = SEARCH_SCHEMA["fitness"].default
    trust_radius: float = SEARCH_SCHEMA["trust_radius"].default  # genes from the nearest measured subnet
    pessimism: float = SEARCH_SCHEMA["pessimism"].default  # standard deviations subtracted
    neighbours: int = SEARCH_SCHEMA["neighbours"].default  # measured subnets used for calibration
    # pp of uncertainty per gene of distance
    distance_uncertainty_pp: float = SEARCH_SCHEMA["distance_uncertainty_pp"].default
    # pp above the best measured accuracy a prediction may reach
    bound_margin_pp: float = SEARCH_SCHEMA["bound_margin_pp"].default

    KEYS = ("fitness", "trust_radius", "pessimism", "neighbours", "distance_uncertainty_pp",
            "bound_margin_pp")

    def __post_init__(self) -> None:
        if self.fitness not in FITNESS_MODES:
            raise ValueError(f"fitness: expected one of {FITNESS_MODES}, got {self.fitness!r}")
        if self.neighbours < 1:
            raise ValueError(f"neighbours: expected >= 1, got {self.neighbours}")
        for key in ("trust_radius", "pessimism", "distance_uncertainty_pp", "bound_margin_pp"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: expected >= 0, got {getattr(self, key)}")

    @classmethod
    def from_config(cls, search_config: SearchSettings) -> FitnessSettings:
        """The fitness keys of a validated ``search_config``."""
        return cls(fitness=search_config.fitness, trust_radius=search_config.trust_radius,
                   pessimism=search_config.pessimism, neighbours=search_config.neighbours,
                   distance_uncertainty_pp=search_config.distance_uncertainty_pp,
                   bound_margin_pp=search_config.bound_margin_pp)

    @property
    def robust(self) -> bool:
        return self.fitness == "robust"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}


@dataclass
class Estimates:
    """Per-candidate beliefs (fractions): fitness, calibrated and capped mean ``mu``, its
    uncertainty ``sigma``, the raw prediction, the gene distance to the nearest measured subnet
    (inf without data) and whether the subnet was measured."""

    fitness: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    raw: np.ndarray
    distance: np.ndarray
    measured: np.ndarray

    def row(self, i: int) -> dict[str, Any]:
        return {"fitness": float(self.fitness[i]), "mean": float(self.mean[i]),
                "std": float(self.std[i]), "raw": float(self.raw[i]),
                "distance": float(self.distance[i]), "measured": bool(self.measured[i])}


class RobustFitness:
    """Scores batches of configs (see the module docstring). ``measured`` may be None (no data:
    then only the members' spread is subtracted and nothing is bounded)."""

    def __init__(self, predictor: Any, measured: PredictorDataset | None,
                 settings: FitnessSettings | None = None, limits: Any = None) -> None:
        self.predictor = predictor
        self.limits = limits  # moofa.efficiency.limits.Limits: memory model, MMACs / parameter caps
        self.spec: ModelSpec = predictor.spec
        self.settings = settings or FitnessSettings()
        self.n_dim = predictor.encoder.n_dim
        self._cache: dict[bytes, tuple] = {}
        self.configs: list[SubnetConfig] = []
        self.accuracies = np.zeros(0)
        if measured is not None and len(measured) and self.settings.robust:
            self._set_measured(measured)

    # ------------------------------------------------------------------------------ the data
    def _set_measured(self, data: PredictorDataset) -> None:
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(data.configs):
            key = c.canonical(self.spec)
            groups.setdefault((key.ks, key.e, key.d, key.image_size), []).append(i)
        first = [idx[0] for idx in groups.values()]
        self.configs = [data.configs[i] for i in first]
        self.accuracies = np.array([float(np.mean(data.accuracies[idx])) for idx in groups.values()])
        feats = self.predictor.features(self.configs)
        self.residuals = self.accuracies - self._members(feats).mean(axis=0)
        onehot = feats[:, :self.n_dim]
        self._onehot = torch.as_tensor(onehot, dtype=torch.float32)
        self._norm = self._onehot.sum(dim=1)

        options = None if self.limits is None else self.limits.options
        self.peaks = np.asarray(peak_memory_batch(self.spec, self.configs, options=options), dtype=np.int64)
        # measured subnets over a MMACs or parameter limit are never an answer (peaks: per budget)
        self.allowed = np.ones(len(self.configs), dtype=bool) if self.limits is None else \
            fits_batch(self.spec, self.configs, self.limits.with_memory(None), self.peaks)
        self.cap = float(self.accuracies.max()) + self.settings.bound_margin_pp / 100.0

    @property
    def has_data(self) -> bool:
        return len(self.configs) > 0

    def best_measured(self, constraint: float) -> int | None:
        """Index (into ``self.configs``) of the most accurate measured subnet that fits
        ``constraint`` (in the memory model's unit) and the other limits, or None."""
        if not self.has_data:
            return None
        fit = np.flatnonzero((self.peaks <= constraint) & self.allowed)
        return None if fit.size == 0 else int(fit[np.argmax(self.accuracies[fit])])

    def measured_fitting(self, constraint: float, n: int) -> list[int]:
        """Indices of the ``n`` most accurate measured subnets that fit ``constraint``."""
        if not self.has_data:
            return []
        fit = np.flatnonzero((self.peaks <= constraint) & self.allowed)
        return [int(i) for i in fit[np.argsort(-self.accuracies[fit], kind="stable")][:n]]

    # ------------------------------------------------------------------------------- scoring
    def _members(self, feats: np.ndarray) -> np.ndarray:
        return self.predictor.predict_members(feats)

    def clear_cache(self) -> None:
        """Forget the cached scores. A sweep clears them before each budget: a float32
        prediction can differ in its last bit with the batch it was computed in, so scores
        kept from another budget would make a resumed sweep differ from an uninterrupted one."""
        self._cache.clear()

    def __call__(self, configs: Sequence[SubnetConfig]) -> Estimates:
        """Estimates of a batch; configs already scored (same one-hot encoding, i.e. the same
        network) are served from a cache (the evolution revisits many)."""
        configs = list(configs)
        onehot = self.predictor.encoder.encode_batch(configs)
        keys = [row.tobytes() for row in onehot.astype(np.uint8)]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            fresh = self._estimate([configs[i] for i in todo])
            if len(self._cache) > CACHE_SIZE:
                self._cache.clear()
            cols = (fresh.fitness, fresh.mean, fresh.std, fresh.raw, fresh.distance, fresh.measured)
            for j, i in enumerate(todo):
                self._cache[keys[i]] = tuple(c[j] for c in cols)
        rows = [self._cache[k] for k in keys]
        f, m, s, r, d, meas = (np.array(c) for c in zip(*rows)) if rows else [np.zeros(0)] * 6
        return Estimates(f.astype(np.float64), m.astype(np.float64), s.astype(np.float64),
                         r.astype(np.float64), d.astype(np.float64), meas.astype(bool))

    def _estimate(self, configs: list[SubnetConfig]) -> Estimates:
        n = len(configs)
        feats = self.predictor.features(configs)
        members = self._members(feats)
        raw = members.mean(axis=0)
        s_members = members.std(axis=0) if members.shape[0] > 1 else np.zeros(n)
        if not np.isfinite(raw).all():
            raise ValueError("predictor returned a non-finite accuracy")
        if not self.settings.robust:
            return Estimates(raw.copy(), raw.copy(), s_members, raw, np.full(n, np.inf),
                             np.zeros(n, dtype=bool))
        if not self.has_data:
            fit = raw - self.settings.pessimism * s_members
            return Estimates(fit, raw.copy(), s_members, raw, np.full(n, np.inf), np.zeros(n, dtype=bool))
        s = self.settings
        shift, s_local, d0, idx = self._neighbour_terms(self._distances(feats))
        mean = raw + shift
        std = np.sqrt(s_members ** 2 + s_local ** 2 + (s.distance_uncertainty_pp / 100.0 * d0) ** 2)
        mean = np.minimum(mean, self.cap)
        fit = mean - s.pessimism * std - OUTSIDE_PENALTY * np.maximum(0.0, d0 - s.trust_radius)
        measured = d0 < 0.25
        if measured.any():
            hit = self.accuracies[idx[measured, 0]]
            mean[measured] = fit[measured] = hit
            std[measured] = 0.0
        return Estimates(fit, mean, std, raw, d0, measured)

    def _distances(self, feats: np.ndarray) -> torch.Tensor:
        """Gene distances (n, measured) = |a xor m| / 2 over the one-hot vectors."""
        a = torch.as_tensor(feats[:, :self.n_dim], dtype=torch.float32)
        return (a.sum(dim=1, keepdim=True) + self._norm[None, :] - 2.0 * (a @ self._onehot.T)) / 2.0

    def _neighbour_terms(self, dist: torch.Tensor, available: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """From distances to the measured subnets: the calibration shift (weighted mean residual
        of the ``neighbours`` nearest, fraction), their weighted RMS residual ``s_local``
        (fraction), the distance to the nearest (genes) and the neighbours' indices.
        ``available``: how many measured subnets may be neighbours (default: all)."""
        k = min(self.settings.neighbours, dist.shape[1] if available is None else available)
        d_top, idx_top = torch.topk(dist, k, dim=1, largest=False, sorted=True)
        d_k, idx = d_top.double().numpy().clip(min=0.0), idx_top.numpy()
        w = 1.0 / (1.0 + d_k)
        r = self.residuals[idx]
        shift = (w * r).sum(axis=1) / w.sum(axis=1)
        return shift, np.sqrt((w * r * r).sum(axis=1) / w.sum(axis=1)), d_k[:, 0], idx

    # ------------------------------------------------------------------- the 90 % interval
    def _scale(self, s_members: np.ndarray, s_local: np.ndarray, d0: np.ndarray,
               reference_distance: float) -> np.ndarray:
        """The interval's scale (fraction): like ``sigma`` but its distance term only counts the
        genes beyond ``reference_distance``, the calibration's typical distance (closer than the
        held-out subnets that calibrate it, the interval is not trusted to shrink)."""
        beyond = np.maximum(0.0, d0 - reference_distance)
        return np.sqrt(s_members ** 2 + s_local ** 2 +
                       (self.settings.distance_uncertainty_pp / 100.0 * beyond) ** 2)

    @property
    def interval_calibration(self) -> IntervalCalibration | None:
        """Leave-one-out conformal calibration of the interval (computed once; None without
        data, with fewer than 2 measured subnets or under ``fitness: reference``)."""
        if not hasattr(self, "_interval_cal"):
            self._interval_cal = self._calibrate_interval() if len(self.configs) >= 2 else None
        return self._interval_cal

    def _calibrate_interval(self) -> IntervalCalibration:
        """Each measured subnet ``j`` scored as the fitness would score it if it were not measured
        (its neighbours and the cap taken from the others): normalised residual
        ``|measured_j - mu_-j| / scale_-j``; their conformal quantile at :data:`INTERVAL_LEVEL`."""
        feats = self.predictor.features(self.configs)
        members = self._members(feats)
        s_members = members.std(axis=0) if members.shape[0] > 1 else np.zeros(len(self.configs))
        dist = self._distances(feats)
        dist.fill_diagonal_(float("inf"))
        shift, s_local, d0, _ = self._neighbour_terms(dist, available=len(self.configs) - 1)
        acc = self.accuracies
        top = int(np.argmax(acc))
        cap = np.full(len(acc), float(acc.max()))
        cap[top] = float(np.max(np.delete(acc, top)))
        mu = np.minimum(acc - self.residuals + shift, cap + self.settings.bound_margin_pp / 100.0)
        ref = float(np.median(d0))
        scores = np.abs(acc - mu) / np.maximum(self._scale(s_members, s_local, d0, ref), 1e-12)
        return IntervalCalibration(INTERVAL_LEVEL, conformal_quantile(scores, INTERVAL_LEVEL), ref, len(acc))

    def interval(self, configs: Sequence[SubnetConfig]) -> np.ndarray | None:
        """The 90 % interval ``(n, 2)`` of each config's accuracy (fractions, clipped to [0, 1]):
        ``mean -+ quantile * scale`` for a prediction, ``[measured, measured]`` for a measured
        subnet (its measurement; the sampling error of that measurement is not included). None
        when there is no calibration (see :attr:`interval_calibration`)."""
        cal = self.interval_calibration
        if cal is None or not self.settings.robust:
            return None
        configs = list(configs)
        est = self(configs)
        feats = self.predictor.features(configs)
        members = self._members(feats)
        s_members = members.std(axis=0) if members.shape[0] > 1 else np.zeros(len(configs))
        _, s_local, d0, _ = self._neighbour_terms(self._distances(feats))
        half = cal.quantile * self._scale(s_members, s_local, d0, cal.reference_distance)
        half[est.measured] = 0.0
        return np.clip(np.stack([est.mean - half, est.mean + half], axis=1), 0.0, 1.0)

    def interval_of(self, config: SubnetConfig) -> list[float] | None:
        """``[lo, hi]`` of one config (fractions; :meth:`interval`), as info.json records it."""
        iv = self.interval([config])
        return None if iv is None else [float(iv[0, 0]), float(iv[0, 1])]

    def describe(self) -> dict[str, Any]:
        """What info.json records about the fitness."""
        out: dict[str, Any] = self.settings.to_dict()
        out["measured_subnets"] = len(self.configs)
        out["best_measured_accuracy"] = float(self.accuracies.max()) if self.has_data else None
        out["cap"] = self.cap if self.has_data else None
        cal = self.interval_calibration if self.settings.robust else None
        out["interval"] = None if cal is None else cal.to_dict()
        return out


@dataclass(frozen=True)
class IntervalCalibration:
    """The conformal calibration of ``predicted_interval``: its level (fraction), the quantile of
    the normalised leave-one-out residuals (interval half-width = quantile x scale; inf when too
    few subnets calibrate it), the median leave-one-out distance (genes) beyond which the
    width grows, and the number of measured subnets that calibrate it."""

    level: float
    quantile: float
    reference_distance: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "quantile": None if math.isinf(self.quantile) else self.quantile,
                "reference_distance": self.reference_distance, "calibration_subnets": self.n,
                "method": "split conformal, leave-one-out residuals of the robust fitness"}


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of ``scores``: the ``ceil((n + 1) level)``-th smallest, inf
    when that exceeds ``n`` (too few scores for the level)."""
    n = len(scores)
    rank = math.ceil((n + 1) * level)
    return math.inf if rank > n else float(np.sort(scores)[rank - 1])
