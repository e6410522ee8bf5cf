"""Interleaved A/B timing and paired-ratio statistics (these machines are noisy).

Every round runs each contender once, in alternating order, so slow phases of the machine hit all of them; the
result is the median of per-round ratios with a distribution-free confidence interval for that median.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedRatio:
    """Median of per-round ratios ``b / a`` with a ~95% interval (order statistics of the ratios)."""

    median: float
    low: float
    high: float
    rounds: int

    def __str__(self) -> str:
        return f"{self.median:.3f}x (95% CI {self.low:.3f}-{self.high:.3f}, {self.rounds} paired rounds)"


def interleaved(contenders: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender, measured in ``rounds`` rounds with alternating order (A B, B A, ...)."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(a: list[float], b: list[float]) -> PairedRatio:
    """Median of ``b[i] / a[i]`` with the binomial order-statistic 95% interval of the median."""
    ratios = np.sort(np.asarray(b, dtype=np.float64) / np.asarray(a, dtype=np.float64))
    n = len(ratios)
    if n == 0:
        raise ValueError("no rounds")
    k = max(0, int(math.floor(n / 2 - 0.98 * math.sqrt(n))))  # 1.96 * sqrt(n) / 2
    return PairedRatio(float(np.median(ratios)), float(ratios[k]), float(ratios[min(n - 1, n - 1 - k)]), n)
