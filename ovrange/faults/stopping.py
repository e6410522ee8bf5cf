"""Statistical stopping: run a campaign in rounds until every model's SDC interval is as narrow as asked.

Trials are independent draws from the fault space, so any prefix of a fault list is itself a random sample: a
round runs the trials up to a target, then the Wilson interval of each model's SDC rate (at ``confidence``) is
checked against ``margin``. Where the fault space is small (statistical fault injection, SENTRY 2026) the
interval is narrowed by the finite-population correction ``sqrt((N - n) / (N - 1))``, counting each distinct
fault once (the distinct faults of uniform draws are a uniform sample without replacement). The next round's
target is what the current rate says is needed, at most 4x the trials so far; ``trials`` stays the cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from ovrange.errors import ConfigError
from ovrange.faults.metrics import SDC, wilson

FIRST_ROUND = 2000
MIN_STEP = 400
SMALL_SPACE = 20  # a fault space under 20x the cap is "small": the finite-population correction matters


def z_value(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def half_width(k: int, n: int, z: float, population: int | None = None) -> float:
    """Half the width of the Wilson interval of k of n, with the finite-population correction if ``population``."""
    low, high = wilson(k, n, z)
    fpc = math.sqrt(max(population - n, 0) / (population - 1)) if population and population > 1 else 1.0
    return (high - low) / 2 * fpc


def needed(k: int, n: int, z: float, margin: float) -> int:
    """Trials the normal approximation says reach ``margin``, with the rate pulled off 0 (Agresti-Coull)."""
    p = (k + 2) / (n + 4)
    return math.ceil(z * z * p * (1 - p) / (margin * margin))


@dataclass
class Stopping:
    """The rule and its record: rounds run, the half-widths seen, and why the campaign stopped."""

    margin: float
    confidence: float = 0.95
    population: int | None = None  # size of the fault space when it is small, else None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.margin < 0.5:
            raise ConfigError(f"margin must be in (0, 0.5), got {self.margin}")
        self.z = z_value(self.confidence)

    def first_target(self, cap: int) -> int:
        return min(cap, FIRST_ROUND, self.population or cap)

    def widths(self, outcomes: list[np.ndarray], keys: np.ndarray) -> dict[int, float]:
        """Half-width per model over its done trials (outcome codes, -1 not run); ``keys`` identify faults."""
        found = {}
        for index, codes in enumerate(outcomes):
            done = np.nonzero(codes >= 0)[0]
            if self.population:
                _, first = np.unique(keys[done], return_index=True)
                done = done[first]
            found[index] = half_width(int(np.count_nonzero(codes[done] == SDC)), len(done), self.z, self.population)
        return found

    def next_target(self, outcomes: list[np.ndarray], keys: np.ndarray, run: int, cap: int) -> int | None:
        """Record a round; None when done (margin reached or cap hit), else the next round's trial target."""
        widths = self.widths(outcomes, keys)
        self.rounds.append({"trials": run, "half_width": [widths[i] for i in sorted(widths)]})
        if max(widths.values()) <= self.margin:
            self.reason = f"every SDC half-width <= {self.margin:g} at {self.confidence:g} confidence"
            return None
        if run >= cap:
            self.reason = f"trial cap {cap} reached before the margin {self.margin:g}"
            return None
        want = max(needed(int(np.count_nonzero(c == SDC)), int(np.count_nonzero(c >= 0)), self.z, self.margin)
                   for c in outcomes)
        return min(cap, max(run + MIN_STEP, min(4 * run, math.ceil(1.05 * want))))

    def to_dict(self) -> dict[str, Any]:
        method = "wilson" if not self.population else f"wilson, finite-population correction (N={self.population})"
        return {"margin": self.margin, "confidence": self.confidence, "method": method, "reason": self.reason,
                "trials": self.rounds[-1]["trials"] if self.rounds else 0, "rounds": self.rounds}


def fault_space(site_sizes: list[int], inputs: int, bits: int, cap: int) -> int | None:
    """Size of a single-fault space (input x element x bit) when it is small enough for the correction to count."""
    size = inputs * sum(site_sizes) * bits
    return size if size <= SMALL_SPACE * cap else None
