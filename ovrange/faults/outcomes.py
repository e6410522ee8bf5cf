"""Outcome classification: a faulty output against the fault-free output of the same compiled model.

DUE: the output holds NaN or Inf (a runtime could detect it). SDC: for classifiers (output ``[N, classes]``) the
top-1 class changed, as in Ranger; for sequence outputs (``tokens``: ``[N, T, classes]``, e.g. CTC text
recognition) any position's top-1 changed, or (``text``) the greedy CTC text read from those positions changed;
otherwise the deviation passed a user-chosen threshold, relative
L-infinity (``max|y' - y| / max|y|``) or cosine distance (``1 - cos(y', y)``); for text detectors (``boxes``: a
DBNet probability map) more than N pixels of the map binarized at 0.3 flipped; ``regions``: the text regions of
that map (DBNet's boxes before unclipping) change, :mod:`ovrange.faults.regions`. Anything else is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov

from ovrange.errors import ConfigError
from ovrange.faults.metrics import DUE, MASKED, SDC
from ovrange.faults.spec import SdcCriterion

BOXES_THRESHOLD = 0.3  # DBNet's binarization threshold (PaddleOCR det_db_thresh, rapidocr's default)


@dataclass(frozen=True)
class Judge:
    """Classifies trials on model output ``output`` with ``criterion`` (never ``auto``)."""

    criterion: SdcCriterion
    output: int = 0

    @classmethod
    def for_model(cls, model: ov.Model, criterion: SdcCriterion, output: str | None = None) -> Judge:
        """Pick the judged output (by tensor name, default the first) and resolve ``auto`` from its shape."""
        index = 0
        if output is not None:
            names = [set(port.get_names()) for port in model.outputs]
            matches = [i for i, n in enumerate(names) if output in n]
            if not matches:
                known = ", ".join(sorted(n for group in names for n in group)) or "none named"
                raise ConfigError(f"model has no output named {output!r}; outputs: {known}")
            index = matches[0]
        if criterion.metric != "auto":
            return cls(criterion, index)
        shape = model.outputs[index].get_partial_shape()
        classes = shape[1] if shape.rank.is_static and shape.rank.get_length() == 2 else None
        if classes is not None and (classes.is_dynamic or classes.get_length() > 1):
            return cls(SdcCriterion("top1"), index)
        raise ConfigError(f"output {model.outputs[index].get_any_name()!r} of shape {shape} is not "
                          "[batch, classes]; choose an SDC threshold, e.g. --sdc linf:0.1 or --sdc cosine:0.01")

    def classify(self, golden: np.ndarray, faulty: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: (outcome code, faulty top-1 or -1, relative L-infinity deviation, inf when not finite)."""
        n = len(faulty)
        g = golden.reshape(n, -1).astype(np.float64)
        finite_values = np.isfinite(faulty.reshape(n, -1))
        finite = finite_values.all(axis=1)
        f = np.where(finite_values, faulty.reshape(n, -1), 0.0).astype(np.float64)
        deviation = np.abs(f - g).max(axis=1) / np.maximum(np.abs(g).max(axis=1), np.finfo(np.float32).tiny)
        deviation = np.where(finite, deviation, np.inf)
        top1 = np.full(n, -1, np.int32)
        if self.criterion.metric == "top1":
            top1 = np.where(finite, f.argmax(axis=1), -1).astype(np.int32)
            sdc = top1 != g.argmax(axis=1)
        elif self.criterion.metric in ("tokens", "text"):
            classes = golden.shape[-1]
            tokens_g = g.reshape(n, -1, classes).argmax(axis=2)
            tokens_f = f.reshape(n, -1, classes).argmax(axis=2)
            if self.criterion.metric == "tokens":
                sdc = (tokens_f != tokens_g).any(axis=1)
            else:
                blank = int(self.criterion.threshold or 0)
                sdc = np.array([not np.array_equal(ctc_text(a, blank), ctc_text(b, blank))
                                for a, b in zip(tokens_g, tokens_f)], bool).reshape(n)
        elif self.criterion.metric == "boxes":
            flipped = ((f > BOXES_THRESHOLD) != (g > BOXES_THRESHOLD)).sum(axis=1)
            sdc = flipped > self.criterion.threshold
        elif self.criterion.metric == "regions":
            sdc = _regions_changed(golden, f.reshape(faulty.shape), self.criterion.threshold)
        elif self.criterion.metric == "linf":
            sdc = deviation > self.criterion.threshold
        else:
            sdc = _cosine_distance(g, f) > self.criterion.threshold
        codes = np.where(~finite, DUE, np.where(sdc, SDC, MASKED)).astype(np.int8)
        return codes, top1, deviation.astype(np.float32)


def ctc_text(tokens: np.ndarray, blank: int = 0) -> np.ndarray:
    """Greedy CTC decoding of one sequence of per-position classes: repeats merged, then blanks dropped."""
    merged = tokens[np.diff(tokens, prepend=-1) != 0]
    return merged[merged != blank]


def _regions_changed(golden: np.ndarray, faulty: np.ndarray, tolerance: float) -> np.ndarray:
    """Per row: the text regions of the map binarized at 0.3 changed (:mod:`ovrange.faults.regions`); only rows
    with a flipped pixel are labelled."""
    from ovrange.faults.regions import changed

    n = len(faulty)
    g, f = golden.reshape(n, -1, *golden.shape[-2:]) > BOXES_THRESHOLD, faulty.reshape(n, -1, *faulty.shape[-2:]) \
        > BOXES_THRESHOLD
    return np.array([(a != b).any() and any(changed(x, y, tolerance) for x, y in zip(a, b))
                     for a, b in zip(g, f)], bool)


def _cosine_distance(g: np.ndarray, f: np.ndarray) -> np.ndarray:
    # Normalise by the max first: squares of values near the f32 limit would overflow.
    g = g / np.maximum(np.abs(g).max(axis=1, keepdims=True), 1e-300)
    f = f / np.maximum(np.abs(f).max(axis=1, keepdims=True), 1e-300)
    ng, nf = np.linalg.norm(g, axis=1), np.linalg.norm(f, axis=1)
    cos = (g * f).sum(axis=1) / np.maximum(ng * nf, 1e-300)
    cos = np.where((ng > 0) & (nf > 0), cos, np.where((ng > 0) | (nf > 0), 0.0, 1.0))  # one zero vector: unrelated
    return 1.0 - cos
