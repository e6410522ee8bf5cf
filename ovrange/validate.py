"""Held-out validation of range bounds: clean outputs untouched on inputs the bounds never saw.

Bounds observed on a calibration set are the set's min/max; a deployed input that exceeds them is clipped and the
protected model answers differently from the original on clean data. ``protect`` therefore

1. holds out part of the calibration subset (:data:`DEFAULT_HOLDOUT`, seeded) and observes the bounds on the rest;
2. widens every range bound by ``margin`` times its range on both sides. By default the margin follows the guard's
   form: :data:`ZERO_MARGIN` (three ranges) where the guard sends far values to 0 (GlobalClipper's ``beyond: zero``
   and ``fold``: a flipped exponent lands at 0 however wide the bound), :data:`MARGIN` (none) where it clips to its
   bound (a wider bound there lets more faults through and clips the rest further from the clean value: docs/zoo.md);
3. runs the original model on the held-out part, watching every guarded value: a guard *fires* when a held-out
   value falls outside its bound; each firing bound is widened to cover the held-out values plus :data:`WIDEN`
   times the widened range (:func:`widen`);
4. compares the protected model with the original on the held-out part under the model's SDC criterion and
   ``linf:0.01`` on every output (:func:`agreements`), repeating 3-4 up to :data:`ROUNDS` times while they differ.

The agreement (with Wilson 95% intervals) goes into the plan's report (``bounds.json``, the model's rt_info), the
``protect`` summary and ``--json``; ``ovrange check`` fails a protected model whose held-out outputs changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov

from ovrange.compare import MASKED, Judge, SdcCriterion
from ovrange.errors import ConfigError
from ovrange.faults.metrics import wilson
from ovrange.generate import CALIBRATION_STEPS
from ovrange.runtime import is_stateful
from ovrange.stats import MinMax, StatRequest, observe

DEFAULT_HOLDOUT = 0.2  # share of the calibration subset held out
MARGIN = 0.0  # every range bound grows by this many times its range on each side (a guard clips to its bound:
# wider bounds let a fault through and clip it further from the clean value; see docs/zoo.md)
ZERO_MARGIN = 3.0  # the margin of a guard that sends far values to 0 (GlobalClipper's ``beyond: zero``): a flipped
# exponent lands at 0 however wide the bound is, so a width that covers unseen inputs costs little protection; held-out
# images exceed calibration bounds by up to 2.2 ranges on the zoo (docs/zoo.md)
FAR_TO_ZERO = ("zero", "fold")  # GlobalClipper's guard forms that land a far value at 0, not on the bound
NONNEGATIVE = ("Relu", "Clamp", "Sigmoid", "HSigmoid", "HardSigmoid", "SoftPlus")  # outputs >= 0 (Clamp: ReLU6)
WIDEN = 1.0  # a bound that fires on a held-out value: cover it, plus this many times the range
ROUNDS = 3  # widen-and-check rounds at most
LINF = "linf:0.01"  # the fixed clean-output criterion, beside the model's own
# Protections validated on held-out data: their bounds are learned range bounds. Ranger keeps the paper's bounds
# (observed max or percentile, propagated through pooling and Concat) exactly, as its reproduction requires.
WIDENED = ("RangeSupervision", "GlobalClipper")


def check_fraction(fraction: float, where: str = "holdout") -> float:
    """A held-out share in [0, 1): 0 disables the validation."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ConfigError(f"{where} must be a fraction from 0 (off) to below 1, got {fraction!r}")
    return float(fraction)


def split(total: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration indices, held-out indices) of ``total`` samples: a seeded ``fraction`` held out (at least one
    sample, at least one left to calibrate on); nothing held out when ``fraction`` is 0 or ``total`` < 2."""
    held = int(round(total * fraction)) if fraction > 0 else 0
    held = min(max(held, 1 if fraction > 0 else 0), total - 1) if total > 1 else 0
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=held, replace=False)) if held else \
        np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(total), chosen)
    return rest, chosen


# ---------------------------------------------------------------------------------------------------------------
# Bounds (pure JSON in, JSON out)


def widenable(guard: dict[str, Any]) -> bool:
    """A range bound learned from data (not stored weights, known probability bounds or inherent ranges)."""
    return ("high" in guard and "low" in guard and guard.get("role") != "weights" and guard.get("form") != "reset"
            and guard.get("method") not in ("inherent", "existing"))


def _arrays(guard: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return (np.atleast_1d(np.asarray(guard["low"], np.float64)),
            np.atleast_1d(np.asarray(guard["high"], np.float64)))


def _store(guard: dict[str, Any], low: np.ndarray, high: np.ndarray, method: str) -> dict[str, Any]:
    low, high = low.astype(np.float32).astype(np.float64), high.astype(np.float32).astype(np.float64)
    if isinstance(guard["high"], list):
        return {**guard, "low": [float(v) for v in low], "high": [float(v) for v in high], "method": method}
    return {**guard, "low": float(low[0]), "high": float(high[0]), "method": method}


def _unit(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The range a margin is measured in: the channel's own, but at least a tenth of the whole tensor's (a channel
    that was constant on calibration data has no range of its own)."""
    return np.maximum(high - low, 0.1 * (high.max() - low.min()))


def guard_margin(guard: dict[str, Any], margin: float | None = None) -> float:
    """The margin of one guard: ``margin`` when given, else :data:`ZERO_MARGIN` for a guard that sends far values
    to 0 and :data:`MARGIN` for one that clips to its bound."""
    if margin is not None:
        return margin
    return ZERO_MARGIN if guard.get("beyond") in FAR_TO_ZERO else MARGIN


def with_margin(guards: dict[str, dict[str, Any]], margin: float | None = None) -> dict[str, dict[str, Any]]:
    """Every widenable bound grown by its margin (:func:`guard_margin`) times its range on each side; the low end
    of a non-negative op's bound (ReLU, ReLU6...) only down to 0."""
    out = {}
    for key, guard in guards.items():
        grow = guard_margin(guard, margin)
        if widenable(guard) and grow > 0:
            low, high = _arrays(guard)
            unit = _unit(low, high)
            new_low, new_high = low - grow * unit, high + grow * unit
            if guard.get("type") in NONNEGATIVE:  # never negative: the margin must not let a flipped sign through
                new_low = np.where(low >= 0, np.maximum(new_low, 0), new_low)  # (and a fold there is shorter)
            guard = _store(guard, new_low, new_high, f"{guard.get('method', 'max')}+margin:{grow:g}")
        out[key] = guard
    return out


def request(guard: dict[str, Any]) -> StatRequest:
    """The statistic that shows whether ``guard`` fires: min/max of its node's values on its own axis."""
    axis = guard.get("axis") if isinstance(guard["high"], list) else None
    return StatRequest(guard["node"], "minmax", axis)


def fires(guard: dict[str, Any], seen: MinMax) -> bool:
    """Whether a value of ``seen`` falls outside ``guard``'s bound."""
    low, high = _arrays(guard)
    return bool(np.any(np.atleast_1d(seen.low) < low) or np.any(np.atleast_1d(seen.high) > high))


def widen(guard: dict[str, Any], seen: MinMax, factor: float = WIDEN) -> dict[str, Any]:
    """``guard`` widened where a held-out value fell outside it: that side moves to the value plus ``factor`` times
    the range that now covers both (per channel for per-channel bounds); sides that held stay."""
    low, high = _arrays(guard)
    seen_low, seen_high = np.atleast_1d(seen.low).astype(np.float64), np.atleast_1d(seen.high).astype(np.float64)
    union_low, union_high = np.minimum(low, seen_low), np.maximum(high, seen_high)
    unit = _unit(union_low, union_high)
    new_low = np.where(seen_low < low, seen_low - factor * unit, low)
    new_high = np.where(seen_high > high, seen_high + factor * unit, high)
    method = guard.get("method", "max")
    return _store(guard, new_low, new_high, method if "heldout" in method else f"{method}+heldout")


# ---------------------------------------------------------------------------------------------------------------
# Agreement


@dataclass(frozen=True)
class Agreement:
    """``agree`` of ``total`` held-out samples on which the protected model's outputs pass ``criterion``."""

    criterion: str
    agree: int
    total: int

    @property
    def rate(self) -> float:
        return self.agree / self.total if self.total else float("nan")

    def to_json(self) -> dict[str, Any]:
        low, high = wilson(self.agree, self.total)
        return {"criterion": self.criterion, "agree": self.agree, "total": self.total, "rate": self.rate,
                "ci95": [low, high]}


def decode_steps(sdc: str | None) -> int:
    """The greedy decode steps after each held-out prompt of a stateful language model: ``generation:N``'s N new
    tokens (the prefill gives the first), else :data:`ovrange.generate.CALIBRATION_STEPS`."""
    criterion = SdcCriterion.parse(sdc) if sdc else None
    return criterion.new_tokens - 1 if criterion and criterion.new_tokens else CALIBRATION_STEPS


def judges(model: ov.Model, sdc: str | None) -> list[Judge]:
    """``linf:0.01`` on every output, and the model's criterion on output 0 as ``evaluate`` and ``check`` judge it:
    ``sdc``, else ``auto`` where output 0's shape resolves it (a classifier's top-1)."""
    found = [Judge(SdcCriterion.parse(LINF), index) for index in range(len(model.outputs))]
    try:
        own = Judge.for_model(model, SdcCriterion.parse(sdc or "auto"))
    except ConfigError:
        if sdc:
            raise
        return found  # auto does not apply: linf:0.01 alone
    return found + ([own] if str(own.criterion) != LINF else [])


def agreements(reference: Sequence[np.ndarray], protected: Sequence[np.ndarray], found: list[Judge]
               ) -> list[Agreement]:
    """Per criterion: samples on which every judged output agrees (no SDC, no DUE)."""
    by_criterion: dict[str, np.ndarray] = {}
    for judge in found:
        codes, _, _ = judge.classify(judge.pick(reference), judge.pick(protected))  # detections: boxes and scores
        key = str(judge.criterion)
        ok = codes == MASKED
        by_criterion[key] = by_criterion[key] & ok if key in by_criterion else ok
    return [Agreement(key, int(ok.sum()), int(ok.size)) for key, ok in by_criterion.items()]


def report(samples: int, found: list[Agreement], widened: list[str], rounds: int, margin: float) -> dict[str, Any]:
    """The ``heldout`` entry of a plan's report."""
    return {"samples": samples, "margin": margin, "widen": WIDEN, "rounds": rounds, "widened": len(widened),
            "widened_nodes": widened, "agreement": [a.to_json() for a in found],
            "changes_outputs": any(a.agree < a.total for a in found)}


def summary(entry: dict[str, Any]) -> str:
    """One line: held-out agreement per criterion with its interval, and the bounds widened."""
    parts = [f"{a['rate']:.2%} ({a['agree']}/{a['total']}, 95% CI {a['ci95'][0]:.1%}-{a['ci95'][1]:.1%}) at "
             f"{a['criterion']}" for a in entry["agreement"]]
    return (f"held-out agreement on {entry['samples']} samples: {'; '.join(parts)}; {entry['widened']} bound(s) "
            f"widened")


def warning(entry: dict[str, Any]) -> str | None:
    """The warning for a protection that still changes clean held-out outputs, or None."""
    worst = [a for a in entry.get("agreement", []) if a["agree"] < a["total"]]
    if not worst:
        return None
    a = min(worst, key=lambda x: x["rate"])
    return (f"warning: the protected model changes {a['total'] - a['agree']} of {a['total']} held-out outputs "
            f"({1 - a['rate']:.2%} at {a['criterion']}); its bounds clip clean inputs")


# ---------------------------------------------------------------------------------------------------------------
# The loop


def validate(model: ov.Model, guards: dict[str, dict[str, Any]], build: Callable[[dict], ov.Model],
             samples: Sequence[Any], *, sdc: str | None = None, widen_bounds: bool = True,
             margin: float | None = None, device: str = "CPU") -> tuple[dict[str, dict[str, Any]], ov.Model, dict[str, Any]]:
    """(final guards, the protected model ``build(guards)`` makes of them, the ``heldout`` report entry).

    With ``widen_bounds``: every range bound gets ``margin``, bounds that fire on ``samples`` are widened
    (:func:`widen`), and the check repeats while outputs differ and bounds still fire (at most :data:`ROUNDS`)."""
    guards = with_margin(guards, margin) if widen_bounds else dict(guards)
    margins = sorted({guard_margin(g, margin) for g in guards.values() if widenable(g)}) or [MARGIN]
    watched = [key for key, guard in guards.items() if widenable(guard)] if widen_bounds else []
    if sdc is None and is_stateful(model):  # a language model's user reads the tokens its held-out prompts generate
        sdc = f"generation:{CALIBRATION_STEPS + 1}"
    found_judges, steps = judges(model, sdc), decode_steps(sdc)
    seen, reference = observe(model, samples, [request(guards[key]) for key in watched], device=device,
                              decode_steps=steps)
    widened: list[str] = []
    protected, found, rounds = None, [], 0
    for round_ in range(1, ROUNDS + 1):
        firing = [key for key in watched if fires(guards[key], seen[request(guards[key])])]
        if protected is not None and not firing:
            break  # outputs still differ, but no bound clips a held-out value: widening cannot help
        for key in firing:
            guards[key] = widen(guards[key], seen[request(guards[key])], WIDEN * 2 ** (round_ - 1))
        widened += [key for key in firing if key not in widened]
        protected, rounds = build(guards), round_
        _, outputs = observe(protected, samples, [], device=device, decode_steps=steps)
        found = agreements(reference, outputs, found_judges)
        if all(a.agree == a.total for a in found):
            break
    return guards, protected, report(len(samples), found, widened, rounds, max(margins) if widen_bounds else 0.0)
