"""Uncertainty of measured accuracies (docs/statistics.md).

A top-1 measured on ``n`` images is a binomial proportion: it is reported with its Wilson 95 %
interval (:func:`wilson_interval`). Two accuracies measured on the *same* images are compared per
image (paired): :func:`paired_difference` gives the difference of the two fractions and a seeded
paired-bootstrap 95 % interval, and a verdict that is "worse" or "better" only when the interval
excludes 0. Per-image outcomes are stored as packed bit arrays (:func:`pack_bits`) wherever a later
comparison needs them. Everything here is a fraction unless the name says ``pp`` (percentage
points).
"""
from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

CONFIDENCE = 0.95     # every interval in reports and checks
BOOTSTRAP_DRAWS = 20_000
BOOTSTRAP_SEED = 0    # the same outcomes always give the same interval
BETTER, WORSE, NO_DIFFERENCE = "significantly better", "significantly worse", "no significant difference"


def _z(confidence: float) -> float:
    """Two-sided standard-normal quantile (1.96 for 95 %), by bisection on erf (no scipy)."""
    lo, hi, target = 0.0, 10.0, confidence
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid / math.sqrt(2)) < target else (lo, mid)
    return (lo + hi) / 2


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (fractions); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_p_at_least(k: int, n: int, p0: float) -> float:
    """Exact one-sided p-value P(X >= k) for X ~ Binomial(n, p0) (log-space sum)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p0 <= 0.0:
        return 0.0
    if p0 >= 1.0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p0) + (n - i) * math.log1p(-p0) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


@dataclass(frozen=True)
class Accuracy:
    """A measured top-1: ``correct`` of ``n_images`` images, with its Wilson interval."""

    correct: int
    n_images: int

    @classmethod
    def of(cls, fraction: float, n_images: int) -> "Accuracy":
        """From a stored fraction (rounded back to a count of images)."""
        return cls(int(round(fraction * n_images)), int(n_images))

    @property
    def value(self) -> float:
        return self.correct / self.n_images if self.n_images else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n_images)

    def text(self) -> str:
        """``85.28 % [81.3, 88.5] (n=360)``."""
        lo, hi = self.interval
        return f"{100 * self.value:.2f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n={self.n_images:,})"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "interval": list(self.interval), "n_images": self.n_images,
                "confidence": CONFIDENCE, "method": "Wilson score interval"}


@dataclass(frozen=True)
class Comparison:
    """``a - b`` for two accuracies on the same images: the difference (fraction), its paired
    95 % interval, the number of images, the images only one of them got right, and a verdict."""

    difference: float
    interval: tuple[float, float]
    n_images: int
    only_a: int = 0
    only_b: int = 0
    method: str = "paired bootstrap over images"

    @property
    def verdict(self) -> str:
        lo, hi = self.interval
        return WORSE if hi < 0 else BETTER if lo > 0 else NO_DIFFERENCE

    @property
    def significantly_worse(self) -> bool:
        return self.interval[1] < 0

    def text(self) -> str:
        """``+0.28 pp [-1.9, +2.5]``."""
        lo, hi = self.interval
        return f"{100 * self.difference:+.2f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Comparison":
        """The comparison :meth:`to_dict` stored (info.json, deploy.json, demo_summary.json)."""
        return cls(float(d["difference"]), (float(d["interval"][0]), float(d["interval"][1])),
                   int(d["n_images"]), int(d.get("only_a_correct", 0)), int(d.get("only_b_correct", 0)))

    @classmethod
    def read(cls, stored: object) -> Comparison | None:
        """The comparison a file stores under some key (any JSON value), None when it stores none."""
        return cls.from_dict(stored) if isinstance(stored, Mapping) and stored else None

    def to_dict(self) -> dict[str, Any]:
        return {"difference": self.difference, "interval": list(self.interval), "n_images": self.n_images,
                "only_a_correct": self.only_a, "only_b_correct": self.only_b, "verdict": self.verdict,
                "confidence": CONFIDENCE, "method": self.method, "unit": "fraction"}


def paired_difference(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray,
                      confidence: float = CONFIDENCE, draws: int = BOOTSTRAP_DRAWS,
                      seed: int = BOOTSTRAP_SEED) -> Comparison:
    """Top-1 of ``a`` minus top-1 of ``b``, both per-image outcomes on the same images in the same
    order, with a seeded paired-bootstrap percentile interval.

    Resampling images with replacement only moves the counts of the three kinds of image (only
    ``a`` right, only ``b`` right, both or neither), so the bootstrap draws those counts from a
    multinomial: exactly the image bootstrap, at a cost independent of the number of images.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired outcomes need the same images: shapes {a.shape} and {b.shape}")
    n = int(a.size)
    if n == 0:
        raise ValueError("paired outcomes of zero images")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [only_a / n, only_b / n, (n - only_a - only_b) / n], size=draws)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    return Comparison((only_a - only_b) / n, (float(lo), float(hi)), n, only_a, only_b)


# ------------------------------------------------------------------------------- per-image bits
def pack_bits(outcomes: Sequence[bool] | np.ndarray) -> str:
    """Per-image outcomes as text: base64 of the bits packed 8 to a byte (numpy's big-endian bit
    order); :func:`unpack_bits` with the number of images reverses it."""
    return base64.b64encode(np.packbits(np.asarray(outcomes, dtype=bool)).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The ``n`` per-image outcomes of :func:`pack_bits`; ValueError when the text is too short."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    bits = np.unpackbits(raw)
    if bits.size < n or bits.size > n + 7:
        raise ValueError(f"{bits.size} stored bits do not hold {n} images")
    return bits[:n].astype(bool)


@dataclass(frozen=True)
class PerImage:
    """Per-image top-1 outcomes of one or more measurements on the same ``n_images`` images:
    packed bits (:func:`pack_bits`) under a key per measurement, and which images (``images``)
    when known. Stored in files as ``{"n_images": N, "images": ..., key: bits, ...}``."""

    n_images: int
    bits: dict[str, str] = field(default_factory=dict)
    images: str | None = None

    @classmethod
    def of(cls, key: str, outcomes: Sequence[bool] | np.ndarray, images: str | None = None) -> PerImage:
        """One measurement's outcomes, in image order."""
        arr = np.asarray(outcomes, dtype=bool)
        return cls(int(arr.size), {key: pack_bits(arr)}, images)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PerImage | None:
        """The record :meth:`to_dict` stored; None when there is none (an older file)."""
        if not isinstance(d, Mapping) or not isinstance(d.get("n_images"), int):
            return None
        bits = {k: v for k, v in d.items() if k not in ("n_images", "images") and isinstance(v, str)}
        images = d.get("images")
        return cls(int(d["n_images"]), bits, images if isinstance(images, str) else None)

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, **({"images": self.images} if self.images is not None else {}),
                **self.bits}

    def outcomes(self, key: str) -> np.ndarray | None:
        """The outcomes stored under ``key``, None when that measurement is not stored."""
        return unpack_bits(self.bits[key], self.n_images) if key in self.bits else None

    def merged(self, other: PerImage | None) -> PerImage:
        """Both records' measurements; ``other`` is dropped unless it holds as many images."""
        if other is None or other.n_images != self.n_images:
            return self
        return replace(self, bits={**self.bits, **other.bits})


def per_image_record(outcomes: PerImage | None) -> dict[str, Any] | None:
    """What a record file stores for ``outcomes`` (null when none were kept)."""
    return None if outcomes is None else outcomes.to_dict()


def compare_stored(a: PerImage | None, key_a: str, b: PerImage | None, key_b: str) -> Comparison | None:
    """:func:`paired_difference` of two stored outcome arrays, None when either is missing or they
    were measured on different numbers of images (not the same images)."""
    if a is None or b is None:
        return None
    x, y = a.outcomes(key_a), b.outcomes(key_b)
    if x is None or y is None or x.size != y.size:
        return None
    if a.images is not None and b.images is not None and a.images != b.images:
        return None  # recorded as measured on other images
    return paired_difference(x, y)
