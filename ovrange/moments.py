"""Neighbour differences and their running moments (GradientSuppression's statistic), shared by the statistics
loop that measures them and the pass that guards with them.

``d[i] = y[i] - y[i-1]`` along an axis, circularly (the paper's kernel ``[-1, 1, 0]``); moments are merged batch by
batch with Welford's/Chan's formulas in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops


@dataclass
class RunningMoments:
    """Count, mean, sum of squared deviations (M2), min and max, merged batch by batch (Welford / Chan).

    Arrays have one entry per group (one for a layer, one per channel); arithmetic is float64.
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls, groups: int) -> "RunningMoments":
        zeros = np.zeros(groups, np.float64)
        return cls(zeros.copy(), zeros.copy(), zeros.copy(), np.full(groups, np.inf), np.full(groups, -np.inf))

    def merge(self, count, mean, m2, low, high) -> None:
        """Chan et al.'s pairwise update with a batch's (count, mean, M2, min, max); a count of 1 is Welford's step."""
        count, mean, m2 = (np.asarray(v, np.float64).reshape(-1) for v in (count, mean, m2))
        total = self.count + count
        delta = mean - self.mean
        safe = np.where(total > 0, total, 1.0)
        self.mean = self.mean + delta * count / safe
        self.m2 = self.m2 + m2 + delta * delta * self.count * count / safe
        self.count = total
        self.low = np.minimum(self.low, np.asarray(low, np.float64).reshape(-1))
        self.high = np.maximum(self.high, np.asarray(high, np.float64).reshape(-1))

    def push(self, values: np.ndarray) -> None:
        """Welford's update, one value at a time (reference implementation; groups are the trailing axis)."""
        for row in np.asarray(values, np.float64).reshape(-1, len(self.count)):
            self.merge(np.ones_like(row), row, np.zeros_like(row), row, row)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation."""
        return np.sqrt(self.m2 / np.where(self.count > 0, self.count, 1.0))


def previous(output: ov.Output, axis: int, name: str | None = None) -> ov.Node:
    """``x[i-1]`` along ``axis``, circularly: ``Concat(x[-1:], x[:-1])``.

    The same as ``Roll(x, 1, axis)``, which the CPU plugin runs with a reference kernel about twice as slow as
    Slice + Concat.
    """
    def part(start: int, stop: int, suffix: str) -> ov.Node:
        return ops.slice(output, ops.constant(np.array([start], np.int64)), ops.constant(np.array([stop], np.int64)),
                         ops.constant(np.array([1], np.int64)), ops.constant(np.array([axis], np.int64)),
                         name=None if name is None else name + suffix)

    return ops.concat([part(-1, np.iinfo(np.int64).max, "/last"), part(0, -1, "/head")], axis, name=name)


def differences(output: ov.Output, axis: int, name: str | None = None) -> ov.Node:
    """``d[i] = y[i] - y[i-1]`` along ``axis``, circularly (the paper's kernel ``[-1, 1, 0]``)."""
    before = previous(output, axis, None if name is None else name + "/previous")
    return ops.subtract(output, before, name=None if name is None else name + "/difference")
