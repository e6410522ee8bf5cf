"""Stage 3 of protection: the :class:`ProtectionPlan` — everything a protection decided, as plain JSON.

A plan is what ``bounds.json`` holds and what a protected model's rt_info records: the algorithm, its parameters
and, per target id, what is applied there (bounds, thresholds, scales). Applying a plan needs no data, so a saved
plan re-applies to the same model with ``ovrange protect MODEL --bounds bounds.json`` and gives the same IR.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovrange.errors import ConfigError

FORMAT = "ovrange-plan/1"


@dataclass(frozen=True)
class ProtectionPlan:
    """What a protection applies. ``guards`` maps target ids (see :mod:`ovrange.targets`) to JSON-ready dicts that
    hold at least ``name`` (the friendly name) and ``type`` (the op type); the id and the type are checked when
    the plan is applied (friendly names are not unique, so the name is for people)."""

    algorithm: str
    params: dict[str, Any]
    guards: dict[str, dict[str, Any]]
    samples: int
    precision: str = "f32"
    tool_version: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        """The guards, under the key bounds.json stores them as (``nodes``)."""
        return self.guards

    @property
    def bounds(self) -> dict[str, Any]:
        """The range bounds among the guards (RangeSupervision, Ranger), as :class:`ovrange.bounds.Bound`."""
        from ovrange.bounds import Bound

        return {key: Bound.from_json({**node, "node": key}) for key, node in self.guards.items() if "high" in node}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "tool": "ovrange",
            "tool_version": self.tool_version,
            "algorithm": self.algorithm,
            "params": self.params,
            "samples": self.samples,
            "statistics_precision": self.precision,
            **({"report": self.report} if self.report else {}),
            "nodes": self.guards,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "plan") -> "ProtectionPlan":
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} is not an ovrange protection plan (expected a JSON object)")
        missing = [key for key in ("algorithm", "params", "nodes") if key not in raw]
        if missing or raw.get("tool", "ovrange") != "ovrange":
            raise ConfigError(f"{where} is not an ovrange protection plan (bounds.json); missing {missing}")
        if not isinstance(raw["nodes"], dict) or not isinstance(raw["params"], dict):
            raise ConfigError(f"{where}: 'nodes' and 'params' must be objects")
        samples = raw.get("samples", 0)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ConfigError(f"{where}: samples must be a non-negative integer, got {samples!r}")
        return cls(str(raw["algorithm"]), raw["params"], raw["nodes"], samples,
                   str(raw.get("statistics_precision", "f32")), str(raw.get("tool_version", "")),
                   raw.get("report", {}))


def _check_guard(key: str, guard: Any, where: str) -> None:
    """A guard's bounds are numbers (or equal-length lists of them), not NaN, low <= high; an axis is a
    non-negative integer (whether the model has it is checked when the plan is applied)."""
    if not isinstance(guard, dict):
        raise ConfigError(f"{where}: node {key!r} must be an object")
    axis = guard.get("axis")
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or axis < 0):
        raise ConfigError(f"{where}: node {key!r} has axis {axis!r}; an axis is a non-negative integer")
    if "high" not in guard and "low" not in guard:
        return
    low, high = guard.get("low"), guard.get("high")
    lows, highs = (value if isinstance(value, list) else [value] for value in (low, high))
    if isinstance(low, list) != isinstance(high, list) or len(lows) != len(highs) or not lows:
        raise ConfigError(f"{where}: node {key!r} needs low and high of one shape (two numbers, or two lists of "
                          "one length)")
    for a, b in zip(lows, highs):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            raise ConfigError(f"{where}: node {key!r} has a bound that is not a number ({a!r}, {b!r})")
        if math.isnan(a) or math.isnan(b):
            raise ConfigError(f"{where}: node {key!r} has a NaN bound")
        if a > b:
            raise ConfigError(f"{where}: node {key!r} has low {a} above high {b}")


def load_plan(path: str | Path) -> ProtectionPlan:
    """Read a plan from a ``bounds.json`` file; a missing or malformed file is a one-line ConfigError."""
    from ovrange.config import check_depth
    from ovrange.modelio import check_name, read_text

    path = Path(path)
    text = read_text(path, "plan file", ConfigError)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path} is nested deeper than JSON can be read") from None
    check_depth(raw, str(path))
    plan = ProtectionPlan.from_json(raw, str(path))
    check_name(plan.algorithm, f"algorithm in {path}")  # it names the result folder
    for key, guard in plan.guards.items():
        _check_guard(key, guard, str(path))
    return plan
