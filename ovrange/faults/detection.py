"""What a protection's own detector flagged during a campaign (ISO 26262: a *detected* fault).

A Checksum protection compares each checked layer's output sum with an encoded one and, on a mismatch,
recomputes, zeroes or clamps: the flag drives the correction and never reaches the model's outputs, so judging
the outputs alone cannot tell a corrected detection from a fault that did nothing. The engines therefore run such
a model with one more output, the flag (:func:`ovrange.passes.checksum.with_detector`), read it beside the judged
outputs and strip it: each trial's outcome stays what its real outputs show (masked, SDC, DUE), and
``ModelRun.flagged`` records whether the detector fired. Models without a detector record nothing (None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import openvino as ov


def detecting(model: ov.Model) -> tuple[ov.Model, int | None]:
    """``model`` with its detector's flag as an extra output, and that output's index (None: no detector)."""
    from ovrange.passes.checksum import with_detector

    found = with_detector(model)
    return (model, None) if found is None else (found, len(found.outputs) - 1)


def read_flags(outputs: Sequence[np.ndarray] | Mapping[int, np.ndarray], index: int | None) -> np.ndarray | None:
    """Per batch row: True where the detector fired (None without a detector)."""
    return None if index is None else np.asarray(outputs[index]).reshape(-1) > 0.5
