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

``fitness: reference`` keeps the reference's behaviour: fitness = ``p(x)``, no data needed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moofa.models.spec import ModelSpec, SubnetConfig
from moofa.predictor.dataset import PredictorDataset
from moofa.efficiency import peak_memory_batch
from moofa.efficiency.limits import fits_batch

FITNESS_MODES = ("robust", "reference")
OUTSIDE_PENALTY = 1.0  # fitness units (fraction = 100 pp) per gene beyond the trust radius
CACHE_SIZE = 500_000   # scored networks kept (about 100 bytes each); cleared when full


@dataclass(frozen=True)
class FitnessSettings:
    """``search_config`` keys of the robust fitness (accuracy units: percentage points)."""

    fitness: str = "robust"
    trust_radius: float = 4.0             # genes from the nearest measured subnet
    pessimism: float = 0.5                # standard deviations subtracted
    neighbours: int = 5                   # measured subnets used for calibration
    distance_uncertainty_pp: float = 0.15  # pp of uncertainty per gene of distance
    bound_margin_pp: float = 0.5          # pp above the best measured accuracy a prediction may reach

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
    def from_config(cls, search_config: Mapping[str, Any]) -> FitnessSettings:
        return cls(**{k: search_config[k] for k in cls.KEYS if k in search_config})

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
        a = torch.as_tensor(feats[:, :self.n_dim], dtype=torch.float32)
        # distance in genes = |a xor m| / 2 over the one-hot vectors
        dist = (a.sum(dim=1, keepdim=True) + self._norm[None, :] - 2.0 * (a @ self._onehot.T)) / 2.0
        k = min(s.neighbours, self._onehot.shape[0])
        d_k, idx = torch.topk(dist, k, dim=1, largest=False, sorted=True)
        d_k, idx = d_k.double().numpy().clip(min=0.0), idx.numpy()
        w = 1.0 / (1.0 + d_k)
        r = self.residuals[idx]
        mean = raw + (w * r).sum(axis=1) / w.sum(axis=1)
        s_local = np.sqrt((w * r * r).sum(axis=1) / w.sum(axis=1))
        d0 = d_k[:, 0]
        std = np.sqrt(s_members ** 2 + s_local ** 2 + (s.distance_uncertainty_pp / 100.0 * d0) ** 2)
        mean = np.minimum(mean, self.cap)
        fit = mean - s.pessimism * std - OUTSIDE_PENALTY * np.maximum(0.0, d0 - s.trust_radius)
        measured = d0 < 0.25
        if measured.any():
            hit = self.accuracies[idx[measured, 0]]
            mean[measured] = fit[measured] = hit
            std[measured] = 0.0
        return Estimates(fit, mean, std, raw, d0, measured)

    def describe(self) -> dict[str, Any]:
        """What info.json records about the fitness."""
        out: dict[str, Any] = self.settings.to_dict()
        out["measured_subnets"] = len(self.configs)
        out["best_measured_accuracy"] = float(self.accuracies.max()) if self.has_data else None
        out["cap"] = self.cap if self.has_data else None
        return out
