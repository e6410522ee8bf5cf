"""Outcome rates with Wilson 95% intervals, breakdowns per layer and per bit, and paired comparisons.

Wilson's score interval keeps its coverage near 0% and 100% (where SDC rates of protected models live) and never
leaves [0, 1], unlike the normal approximation; at 0 of n it gives [0, ~3.84/n].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ovrange.compare import DUE, MASKED, OUTCOMES, SDC  # noqa: F401  (the outcome codes, for the campaign's readers)

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: rounding must not invent an event
    return low, 1.0 if k == n else min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """k of n, with the rate and its Wilson 95% interval."""

    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def to_dict(self) -> dict:
        low, high = self.interval
        return {"k": self.k, "n": self.n, "rate": self.rate if self.n else None, "low": low, "high": high}

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.rate:.2%} [{low:.2%}, {high:.2%}] ({self.k}/{self.n})"


def rates(outcomes: np.ndarray) -> dict[str, Rate]:
    """Rate of each outcome class over ``outcomes`` (codes MASKED/SDC/DUE)."""
    n = int(len(outcomes))
    return {name: Rate(int(np.count_nonzero(outcomes == code)), n) for code, name in enumerate(OUTCOMES)}


def breakdown(keys: np.ndarray, outcomes: np.ndarray, code: int = SDC) -> dict[str, Rate]:
    """Rate of outcome ``code`` per distinct key (a layer name or a bit position), keys in sorted order."""
    keys = np.asarray(keys)
    result = {}
    for key in np.unique(keys):
        mask = keys == key
        result[str(key)] = Rate(int(np.count_nonzero(outcomes[mask] == code)), int(mask.sum()))
    return result


def paired(first: np.ndarray, second: np.ndarray) -> dict[str, dict[str, int]]:
    """Trial-by-trial table: how the outcome of each trial under ``first`` became its outcome under ``second``."""
    return {a: {b: int(np.count_nonzero((first == i) & (second == j))) for j, b in enumerate(OUTCOMES)}
            for i, a in enumerate(OUTCOMES)}


def reduction(before: Rate, after: Rate) -> dict[str, float | None]:
    """How many times fewer events ``after`` has: the point ratio and a conservative bound from the intervals.

    ``at_least`` divides the lower end of ``before``'s interval by the upper end of ``after``'s, so it holds even
    when ``after`` saw no event at all (then the point ratio is infinite and reported as None).
    """
    point = before.rate / after.rate if after.k else None
    b_low, _ = before.interval
    _, a_high = after.interval
    return {"ratio": point, "at_least": b_low / a_high if a_high > 0 else None}
