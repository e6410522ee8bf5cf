"""Protection algorithms, one module per protection, all with the same four steps (see docs/architecture.md).

A protection module defines:

- ``PARAMS`` (its parameters beyond POT's common ones, :mod:`ovrange.params`) and optionally
  ``check_params(params) -> str | None`` for invalid combinations;
- ``select(model, params) -> Selection``: which targets it guards, plus graph facts its plan needs (pure data);
- ``requests(selection, params) -> list[StatRequest]``: the statistics it needs (may be empty);
- ``plan(selection, stats, params) -> (guards, report)``: pure numpy/JSON, the content of ``bounds.json``;
- ``apply(model, plan) -> PassResult``: graph rewriting only, on the model it is given (a clone), recording every
  node it inserts with :func:`ovrange.graph.record_inserted`;
- optionally ``measure(original, protected, dataset, params, *, device, progress) -> dict``: what the protection
  changed on the calibration data (reported, never needed to apply the plan).

Protections register by name in :mod:`ovrange.algorithms` (``ALGORITHMS`` and :func:`algorithm` here are its
protection half); a module is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openvino as ov

from ovrange.algorithms import PROTECTIONS as ALGORITHMS, protection as algorithm
from ovrange.targets import Target

__all__ = ["ALGORITHMS", "algorithm", "Selection", "PassResult"]


@dataclass(frozen=True)
class Selection:
    """What a pass guards (targets, in topological order) and the graph facts its plan needs (pure data)."""

    targets: list[Target]
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassResult:
    """The rewritten model and whether anything changed (a pass with nothing to do reports ``modified=False``)."""

    model: ov.Model
    modified: bool
