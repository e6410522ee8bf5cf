"""What an engine returns for a shard: per trial, the outcome (masked, SDC or DUE, judged by :mod:`ovrange.compare`
against the fault-free output of the same compiled model), the faulty top-1 and the relative deviation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ovrange.compare import Judge


@dataclass(frozen=True)
class Outcomes:
    """What a shard produced: per trial index, the outcome code, faulty top-1 and relative deviation, and whether
    the model's own detector fired (None: a model without one, :mod:`ovrange.faults.detection`)."""

    trials: np.ndarray
    codes: np.ndarray
    top1: np.ndarray
    deviation: np.ndarray
    flagged: np.ndarray | None = None

    @classmethod
    def concat(cls, parts: list[Outcomes]) -> Outcomes:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0, np.float32))
        flagged = None if any(p.flagged is None for p in parts) else np.concatenate([p.flagged for p in parts])
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("trials", "codes", "top1", "deviation")),
                   flagged)

    @classmethod
    def judged(cls, judge: Judge, golden: dict[int, np.ndarray], inputs: np.ndarray, outputs: np.ndarray,
               trials: np.ndarray, flagged: np.ndarray | None = None) -> Outcomes:
        """Outcomes of ``trials``: faulty ``outputs`` judged against the fault-free output of each one's input
        (``flagged``: per trial, whether the model's detector fired)."""
        codes, top1, deviation = judge.classify(np.stack([golden[int(i)] for i in inputs]), outputs)
        return cls(np.asarray(trials, np.int64), codes, top1, deviation,
                   None if flagged is None else np.asarray(flagged, bool)[:len(codes)])
