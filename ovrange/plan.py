"""Stage 3 of protection: the :class:`ProtectionPlan` — everything a protection decided, as plain JSON.

A plan is what ``bounds.json`` holds and what a protected model's rt_info records: the algorithm, its parameters
and, per target id, what is applied there (bounds, thresholds, scales). Applying a plan needs no data, so a saved
plan re-applies to the same model with ``ovrange protect MODEL --bounds bounds.json`` and gives the same IR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovrange.errors import ConfigError

FORMAT = "ovrange-plan/1"


@dataclass(frozen=True)
class ProtectionPlan:
    """What a protection applies. ``guards`` maps target ids (see :mod:`ovrange.targets`) to JSON-ready dicts that
    hold at least ``name`` (the friendly name) and ``type`` (the op type), checked when the plan is applied."""

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
        return cls(str(raw["algorithm"]), raw["params"], raw["nodes"], int(raw.get("samples", 0)),
                   str(raw.get("statistics_precision", "f32")), str(raw.get("tool_version", "")),
                   raw.get("report", {}))


def load_plan(path: str | Path) -> ProtectionPlan:
    """Read a plan from a ``bounds.json`` file; a missing or malformed file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"plan file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return ProtectionPlan.from_json(raw, str(path))
