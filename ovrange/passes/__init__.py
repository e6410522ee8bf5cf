"""Protection algorithms, one module per protection.

Each module defines ``PARAMS`` (its config parameters beyond POT's common ones, see ``ovrange.config``), may define
``check_params(params) -> str | None`` for invalid combinations, and ``run(model, dataset, config, *, device,
progress) -> PassResult``. ``ovrange.protect`` finds them through ``ovrange.config.ALGORITHMS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openvino as ov


@dataclass
class PassResult:
    """A protected clone of the model plus what to record about each protected node (JSON-ready dicts)."""

    model: ov.Model
    nodes: dict[str, dict[str, Any]]
    samples: int
    precision: str = "f32"
    extra: dict[str, Any] = field(default_factory=dict)  # algorithm-specific report fields (e.g. errors measured)
