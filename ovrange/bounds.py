"""Pure numpy: activation statistics -> restriction bounds.

Estimators (Ranger, Section V-A: the accuracy/resilience trade-off):

- ``max``: the observed min and max over the calibration subset (POT's RangeSupervision, and Ranger's
  conservative default: the protected model is bit-identical to the original on the calibration inputs);
- ``percentile``: the ``p``-th percentile as the upper bound and the ``(100 - p)``-th as the lower one, read
  from streaming histograms (tighter, so more protective, at some risk to clean accuracy).

Either can be per channel (one bound per channel of the target's feature axis). Bounded activations (Tanh,
Sigmoid, HSigmoid, HardSigmoid) have inherent bounds that need no statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ovrange.stats import Histogram, MinMax

# The ranges these activations cannot leave (fault-free); Ranger uses them without profiling.
INHERENT_BOUNDS: dict[str, tuple[float, float]] = {"Tanh": (-1.0, 1.0), "Sigmoid": (0.0, 1.0), "HSigmoid": (0.0, 1.0),
                                                   "HardSigmoid": (0.0, 1.0)}


@dataclass(frozen=True)
class Bound:
    """The range ``[low, high]`` enforced on target ``node`` (a target id): floats, or per-channel lists along
    ``axis``. ``name`` is the friendly name, for reports."""

    node: str
    type: str
    low: float | list[float]
    high: float | list[float]
    samples: int
    method: str = "max"
    axis: int | None = None
    name: str = ""

    @property
    def per_channel(self) -> bool:
        return isinstance(self.high, list)

    def scalar(self) -> "Bound":
        """The same bound widened to one (low, high) pair, for ops that move values across channels."""
        if not self.per_channel:
            return self
        return Bound(self.node, self.type, float(min(self.low)), float(max(self.high)), self.samples, self.method,
                     None, self.name)

    def union(self, other: "Bound", node: str, type_: str, method: str) -> "Bound":
        """The smallest scalar bound containing both (Ranger's rule for Concat)."""
        a, b = self.scalar(), other.scalar()
        return Bound(node, type_, min(a.low, b.low), max(a.high, b.high), min(a.samples, b.samples), method,
                     None, self.name)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "Bound":
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__ if key in raw})


def derive_bound(target: str, type_: str, minmax: MinMax, samples: int, *, histogram: Histogram | None = None,
                 percentile: float = 100.0, axis: int | None = None, name: str = "") -> Bound:
    """The bound of one target: its observed range (``max``), or percentiles read from ``histogram``."""
    if histogram is None or percentile >= 100.0:
        low, high, label = minmax.low, minmax.high, "max"
    else:
        low, high = histogram_percentiles(histogram.counts, histogram.low, histogram.high, percentile)
        label = f"percentile:{percentile:g}"
    return Bound(target, type_, _plain(low), _plain(high), samples, label, axis, name or target)


def _plain(value) -> float | list[float]:
    array = np.asarray(value, dtype=np.float32)
    return float(array) if array.ndim == 0 else [float(v) for v in array]


def histogram_percentiles(histogram: np.ndarray, low, high, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``(100-p)``-th and ``p``-th percentiles from equal-width histograms over ``[low, high]``.

    Conservative within a bin: the upper bound is the upper edge of the bin where the cumulative count reaches
    ``p`` percent, the lower bound the lower edge of its mirror, so the error is at most one bin width outward.
    Works row-wise for per-channel histograms (``[C, bins]``).
    """
    counts = np.atleast_2d(histogram).astype(np.float64)
    lo, hi = np.atleast_1d(np.asarray(low, np.float64)), np.atleast_1d(np.asarray(high, np.float64))
    bins = counts.shape[1]
    width = (hi - lo) / bins
    cumulative = np.cumsum(counts, axis=1)
    total = cumulative[:, -1:]
    upper_bin = np.argmax(cumulative >= total * (percentile / 100.0), axis=1)
    lower_bin = np.argmax(cumulative > total * (1.0 - percentile / 100.0), axis=1)
    upper = np.minimum(lo + (upper_bin + 1) * width, hi)
    lower = np.maximum(lo + lower_bin * width, lo)
    if np.ndim(low) == 0:
        return lower[0], upper[0]
    return lower, upper


def inherent_bound(node: str, type_: str, name: str = "") -> Bound | None:
    """The inherent bound of a bounded activation, or None."""
    if type_ not in INHERENT_BOUNDS:
        return None
    low, high = INHERENT_BOUNDS[type_]
    return Bound(node, type_, low, high, 0, "inherent", None, name or node)
