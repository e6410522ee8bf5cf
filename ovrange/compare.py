"""The comparator: one output against a reference output, by an SDC criterion; agreement of two models.

Fault campaigns judge a faulty output against the fault-free output of the same compiled model; ``evaluate``,
``check`` and ``protect --eval`` judge a protected model's outputs against the original's with the same criteria.

DUE: the output holds NaN or Inf (a runtime could detect it). SDC: for classifiers (output ``[N, classes]``) the
top-1 class changed, as in Ranger; for sequence outputs (``tokens``: ``[N, T, classes]``, e.g. CTC text
recognition) any position's top-1 changed, or (``text``) the greedy CTC text read from those positions changed;
otherwise the deviation passed a user-chosen threshold, relative
L-infinity (``max|y' - y| / max|y|``, relative to the whole output's largest value), absolute L-infinity (``abs``,
in the output's units) or cosine distance (``1 - cos(y', y)``); for text detectors (``boxes``: a
DBNet probability map) more than N pixels of the map binarized at 0.3 flipped; ``regions``: the text regions of
that map (DBNet's boxes before unclipping) change (:func:`regions_changed`); for segmentation (``iou``) a mask's IoU
fell below the threshold; for object detectors (``detections``) a detection was added, lost, or moved below an IoU
(:mod:`ovrange.detections`); per output (``NAME=CRITERION,...``) any output's own criterion. Anything else is masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import openvino as ov

from ovrange.detections import Layout, detections_changed, find_layout
from ovrange.errors import ConfigError

OUTCOMES = ("masked", "sdc", "due")
MASKED, SDC, DUE = 0, 1, 2
BOXES_THRESHOLD = 0.3  # DBNet's binarization threshold (PaddleOCR det_db_thresh, rapidocr's default)
MIN_SIZE = 3  # DBNet/rapidocr: boxes with a side under 3 pixels are dropped
DETECTION_IOU = 0.5  # a detection moved below this IoU with its reference counts as changed (PASCAL VOC's match)
MASK_THRESHOLD = 0.5  # a one-channel segmentation output is a probability map: foreground above 0.5


@dataclass(frozen=True)
class SdcCriterion:
    """What counts as a silent data corruption: a top-1 change, or an output deviation above ``threshold``."""

    metric: str = "auto"
    threshold: float | None = None
    parts: tuple[tuple[str, SdcCriterion], ...] = ()  # metric "outputs": a criterion per output name

    @classmethod
    def parse(cls, spec: str) -> SdcCriterion:
        """``auto``, ``top1``, ``tokens`` (per-position top-1 over the last axis, e.g. OCR/CTC sequences),
        ``text`` / ``text:B`` (the greedy CTC text of such a sequence: repeats merged, blank class B dropped,
        default 0 as in PaddleOCR),
        ``linf:0.1`` (relative L-infinity), ``cosine:0.01`` (cosine distance) or ``boxes`` / ``boxes:N`` (a
        text detector's probability map binarized at 0.3, as DBNet does: more than N pixels flip, default 0) or
        ``regions`` / ``regions:N`` (that map's text regions change: one appears, vanishes, merges or splits, or a
        box side moves by more than N pixels, default 0), ``abs:2`` (absolute L-infinity, in the output's units),
        ``iou:0.9`` (a segmentation mask's IoU with the reference falls below 0.9), ``detections`` /
        ``detections:IOU`` (a detection is added, lost, or moves below IoU, default 0.5:
        :mod:`ovrange.detections`); per output: ``NAME=CRITERION,NAME=CRITERION`` (an SDC on any of them);
        ``generation:N`` (a stateful language model's N greedy new tokens change: :func:`generation`)."""
        text = str(spec).strip()
        if text.startswith("generation"):
            return generation(text)
        if "=" in text:
            parts = []
            for item in text.split(","):
                name, _, part = item.strip().rpartition("=")
                if not name or "=" in name:
                    raise ConfigError(f"per-output SDC criteria are NAME=CRITERION separated by commas, got {item!r}")
                parsed = cls.parse(part)
                if parsed.parts or parsed.metric == "generation":
                    raise ConfigError(f"{part!r} cannot be a per-output criterion")
                parts.append((name.strip(), parsed))
            return cls("outputs", None, tuple(parts))
        match = re.fullmatch(r"(auto|top1|tokens|text|linf|cosine|abs|iou|detections|boxes|regions)"
                             r"(?::([0-9.eE+-]+))?", text)
        if not match:
            raise ConfigError(f"unknown SDC criterion {spec!r}; use top1, tokens, text[:blank], linf:<threshold>, "
                              "cosine:<threshold>, abs:<threshold>, iou:<min>, detections[:iou], boxes[:pixels], "
                              "regions[:pixels] or NAME=CRITERION,...")
        metric, value = match[1], match[2]
        if metric in ("linf", "cosine", "abs", "iou", "detections"):
            try:
                threshold = float(value) if value is not None else (DETECTION_IOU if metric == "detections"
                                                                     else None)
            except ValueError:
                threshold = None
            if threshold is None or not threshold > 0 or metric in ("iou", "detections") and threshold > 1:
                bound = "in (0, 1]" if metric in ("iou", "detections") else "positive"
                raise ConfigError(f"SDC criterion {metric} needs a threshold {bound}, e.g. {metric}:"
                                  f"{'0.5' if bound != 'positive' else '0.1'}")
            return cls(metric, threshold)
        if metric in ("boxes", "regions", "text"):
            count = int(value) if value is not None and value.isdigit() else None
            what = "the blank class" if metric == "text" else "a pixel count"
            if value is not None and count is None:
                raise ConfigError(f"SDC criterion {metric} takes {what}, e.g. {metric}:1, got {value!r}")
            return cls(metric, float(count or 0))
        if value is not None:
            raise ConfigError(f"SDC criterion {metric} takes no threshold")
        return cls(metric)

    def __str__(self) -> str:
        if self.parts:
            return ",".join(f"{name}={part}" for name, part in self.parts)
        return self.metric if self.threshold is None else f"{self.metric}:{self.threshold:g}"

    @property
    def new_tokens(self) -> int:
        """N of ``generation:N``: the greedy tokens a language model generates after each prompt."""
        return int(self.threshold or 0) if self.metric == "generation" else 0


DEFAULT_NEW_TOKENS = 16  # ``generation`` without N


def generation(spec: str) -> SdcCriterion:
    """``generation:N`` (``generation`` alone: 16): a stateful language model's N greedy new tokens change (a
    sample is a prompt; the judged output is the last-position logits of its N steps, prefill then decode)."""
    match = re.fullmatch(r"generation(?::(\d+))?", str(spec).strip())
    if not match or (match[1] is not None and int(match[1]) < 1):
        raise ConfigError(f"SDC criterion {spec!r}: use generation:N, N >= 1 new tokens")
    return SdcCriterion("generation", float(match[1]) if match[1] else float(DEFAULT_NEW_TOKENS))


@dataclass(frozen=True)
class Judge:
    """Classifies trials on model output ``output`` with ``criterion`` (never ``auto``).

    A criterion over several outputs (``detections`` on boxes and scores, per-output criteria) judges ``outputs``
    (model output indices) as one array per sample, their flattened values side by side (:meth:`pick`)."""

    criterion: SdcCriterion
    output: int = 0
    outputs: tuple[int, ...] = ()  # every judged output, when more than ``output``
    shapes: tuple[tuple[int, ...], ...] = ()  # their per-sample shapes (static), to split a picked row
    parts: tuple[Judge, ...] = ()  # per-output criteria
    layout: Layout | None = None  # detections: how to decode them
    eos: int | None = None  # generation: the end-of-sequence token (tokens after it are never shown)

    @classmethod
    def for_model(cls, model: ov.Model, criterion: SdcCriterion, output: str | None = None) -> Judge:
        """Pick the judged output (by tensor name, default the first) and resolve ``auto`` from its shape."""
        index = 0 if output is None else output_index(model, output)
        if criterion.parts:
            if output is not None and output not in dict(criterion.parts):
                raise ConfigError(f"--sdc {criterion} names the judged outputs, not {output}: leave out "
                                  "--output-name")
            parts = tuple(cls.for_model(model, part, name) for name, part in criterion.parts)
            return cls._several(model, criterion, list(dict.fromkeys(i for p in parts for i in p.indices)), parts)
        if criterion.metric == "detections":
            layout = find_layout(model, None if output is None else index)
            return cls._several(model, criterion, list(layout.outputs), layout=layout)
        if criterion.metric != "auto":
            return cls(criterion, index)
        shape = model.outputs[index].get_partial_shape()
        classes = shape[1] if shape.rank.is_static and shape.rank.get_length() == 2 else None
        if classes is not None and (classes.is_dynamic or classes.get_length() > 1):
            return cls(SdcCriterion("top1"), index)
        raise ConfigError(f"output {model.outputs[index].get_any_name()!r} of shape {shape} is not "
                          "[batch, classes]; choose an SDC threshold, e.g. --sdc linf:0.1 or --sdc cosine:0.01")

    @classmethod
    def _several(cls, model: ov.Model, criterion: SdcCriterion, indices: list[int], parts: tuple[Judge, ...] = (),
                 layout: Layout | None = None) -> Judge:
        if len(indices) == 1:
            return cls(criterion, indices[0], parts=parts, layout=layout)
        shapes = []
        for i in indices:
            shape = model.outputs[i].get_partial_shape()
            if shape.rank.is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
                raise ConfigError(f"--sdc {criterion} judges several outputs: they need static shapes, and "
                                  f"{model.outputs[i].get_any_name()!r} is {shape} (reshape the model, e.g. --shape)")
            shapes.append(tuple(d.get_length() for d in list(shape)[1:]))
        return cls(criterion, indices[0], tuple(indices), tuple(shapes), parts, layout)

    @property
    def indices(self) -> tuple[int, ...]:
        """The model outputs this judge reads."""
        return self.outputs or (self.output,)

    def pick(self, outputs) -> np.ndarray:
        """The judged array of one inference's outputs (a list, or a dict by output index): the output itself, or
        for several outputs ``[N, total]``, each flattened per sample, side by side."""
        if len(self.indices) == 1:
            return outputs[self.output]
        return np.concatenate([np.asarray(outputs[i]).reshape(len(outputs[i]), -1) for i in self.indices], axis=1)

    def split(self, picked: np.ndarray) -> dict[int, np.ndarray]:
        """The judged outputs of a picked array, by model output index (inverse of :meth:`pick`)."""
        if len(self.indices) == 1:
            return {self.output: picked}
        n, sizes = len(picked), [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        pieces = np.split(picked.reshape(n, -1), np.cumsum(sizes)[:-1], axis=1)
        return {i: p.reshape(n, *s) for i, p, s in zip(self.indices, pieces, self.shapes)}

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
        if self.parts:
            sdc = self._parts_sdc(golden, faulty)
        elif self.criterion.metric == "top1":
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
        elif self.criterion.metric == "generation":
            tokens_g = golden.reshape(n, -1, golden.shape[-1]).argmax(axis=2)
            tokens_f = f.reshape(n, -1, golden.shape[-1]).argmax(axis=2)
            top1 = np.where(finite, tokens_f[:, 0], -1).astype(np.int32)
            sdc = np.array([not np.array_equal(shown(a, self.eos), shown(b, self.eos))
                            for a, b in zip(tokens_g, tokens_f)], bool).reshape(n)
        elif self.criterion.metric == "boxes":
            flipped = ((f > BOXES_THRESHOLD) != (g > BOXES_THRESHOLD)).sum(axis=1)
            sdc = flipped > self.criterion.threshold
        elif self.criterion.metric == "regions":
            sdc = _regions_changed(golden, f.reshape(faulty.shape), self.criterion.threshold)
        elif self.criterion.metric == "linf":
            sdc = deviation > self.criterion.threshold
        elif self.criterion.metric == "abs":
            sdc = np.abs(f - g).max(axis=1) > self.criterion.threshold
        elif self.criterion.metric == "iou":
            sdc = mask_iou(golden, f.reshape(faulty.shape)) < self.criterion.threshold
        elif self.criterion.metric == "detections":
            sdc = self._detections_sdc(golden, f.reshape(faulty.shape), finite)
        else:
            sdc = _cosine_distance(g, f) > self.criterion.threshold
        codes = np.where(~finite, DUE, np.where(sdc, SDC, MASKED)).astype(np.int8)
        return codes, top1, deviation.astype(np.float32)

    def _parts_sdc(self, golden: np.ndarray, faulty: np.ndarray) -> np.ndarray:
        """Per row: an SDC under any output's own criterion (rows with a non-finite value are DUEs anyway)."""
        g, f = self.split(golden), self.split(np.where(np.isfinite(faulty), faulty, 0))
        return np.any([part.classify(part.pick(g), part.pick(f))[0] != MASKED for part in self.parts], axis=0)

    def _detections_sdc(self, golden: np.ndarray, faulty: np.ndarray, finite: np.ndarray) -> np.ndarray:
        g, f = self.split(golden), self.split(faulty)
        rows = []
        for r in range(len(golden)):
            if not finite[r]:  # a DUE whatever its detections
                rows.append(False)
                continue
            a = self.layout.decode([g[i][r] for i in self.indices])
            b = self.layout.decode([f[i][r] for i in self.indices])
            rows.append(detections_changed(a, b, self.criterion.threshold))
        return np.array(rows, bool).reshape(len(golden))


def output_index(model: ov.Model, name: str) -> int:
    """Index of the model output with tensor name ``name``; a one-line error listing the names otherwise."""
    names = [set(port.get_names()) for port in model.outputs]
    matches = [i for i, n in enumerate(names) if name in n]
    if not matches:
        known = ", ".join(sorted(n for group in names for n in group)) or "none named"
        raise ConfigError(f"model has no output named {name!r}; outputs: {known}")
    return matches[0]


def mask_iou(golden: np.ndarray, faulty: np.ndarray) -> np.ndarray:
    """Per row: the smallest IoU, over the classes present in either, of two segmentation outputs' masks. One channel
    (``[N, H, W]``, ``[N, 1, H, W]`` or ``[N, H, W, 1]``): a probability map, foreground above 0.5; several: class
    scores, channels on axis 1 (NCHW), or on the last axis when it is the shorter (NHWC), each pixel its arg-max.
    Two empty masks agree (IoU 1)."""
    n = len(golden)
    shape = golden.shape
    channels_last = len(shape) >= 4 and shape[-1] < shape[1]
    channels = shape[-1] if channels_last else shape[1] if len(shape) >= 4 else 1
    if channels == 1:
        pairs = [(golden.reshape(n, -1) > MASK_THRESHOLD, faulty.reshape(n, -1) > MASK_THRESHOLD)]
    else:
        axis = -1 if channels_last else 1
        a, b = golden.argmax(axis=axis).reshape(n, -1), faulty.argmax(axis=axis).reshape(n, -1)
        pairs = [(a == c, b == c) for c in range(channels)]
    worst = np.ones(n)
    for a, b in pairs:
        union = (a | b).sum(axis=1)
        iou = np.where(union > 0, (a & b).sum(axis=1) / np.maximum(union, 1), 1.0)
        worst = np.minimum(worst, iou)
    return worst


def shown(tokens: np.ndarray, eos: int | None = None) -> np.ndarray:
    """The generated tokens a user sees: up to and including the first end-of-sequence token ``eos``."""
    if eos is None:
        return tokens
    end = np.flatnonzero(tokens == eos)
    return tokens[: end[0] + 1] if len(end) else tokens


def generation_outcome(golden: np.ndarray, faulty: np.ndarray, finite: bool = True, eos: int | None = None) -> int:
    """The ``generation:N`` outcome of one prompt from its greedy tokens: DUE when a logit was not finite, SDC when
    the tokens a user sees (:func:`shown`) differ, else masked."""
    if not finite:
        return DUE
    return SDC if not np.array_equal(shown(np.asarray(golden), eos), shown(np.asarray(faulty), eos)) else MASKED


def ctc_text(tokens: np.ndarray, blank: int = 0) -> np.ndarray:
    """Greedy CTC decoding of one sequence of per-position classes: repeats merged, then blanks dropped."""
    merged = tokens[np.diff(tokens, prepend=-1) != 0]
    return merged[merged != blank]


def _regions_changed(golden: np.ndarray, faulty: np.ndarray, tolerance: float) -> np.ndarray:
    """Per row: the text regions of the map binarized at 0.3 changed (:func:`regions_changed`); only rows with a
    flipped pixel are labelled."""
    n = len(faulty)
    g, f = golden.reshape(n, -1, *golden.shape[-2:]) > BOXES_THRESHOLD, faulty.reshape(n, -1, *faulty.shape[-2:]) \
        > BOXES_THRESHOLD
    return np.array([(a != b).any() and any(regions_changed(x, y, tolerance) for x, y in zip(a, b))
                     for a, b in zip(g, f)], bool)


def _cosine_distance(g: np.ndarray, f: np.ndarray) -> np.ndarray:
    # Normalise by the max first: squares of values near the f32 limit would overflow.
    g = g / np.maximum(np.abs(g).max(axis=1, keepdims=True), 1e-300)
    f = f / np.maximum(np.abs(f).max(axis=1, keepdims=True), 1e-300)
    ng, nf = np.linalg.norm(g, axis=1), np.linalg.norm(f, axis=1)
    cos = (g * f).sum(axis=1) / np.maximum(ng * nf, 1e-300)
    cos = np.where((ng > 0) & (nf > 0), cos, np.where((ng > 0) | (nf > 0), 0.0, 1.0))  # one zero vector: unrelated
    return 1.0 - cos


# Text regions of a binarized detection map, as DBNet's post-processing sees them, in numpy only. DBNet (PP-OCR
# det) binarizes its probability map at 0.3, takes each connected region (8-connectivity, as cv2.findContours) and
# drops regions whose box has a side under 3 pixels (min_size).
# The regions criterion: a region appears, vanishes, merges or splits, or a box side moves by more than N pixels;
# pixels flipping at a line's edge without moving its box, and specks smaller than DBNet keeps, are masked.


def region_labels(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a 2-D bool mask: each pixel gets the smallest flat index of its region
    (-1 off the mask). Min-propagation with pointer jumping, so long text lines converge in few sweeps."""
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        padded = np.pad(lab, 1, constant_values=big)
        low = lab.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.minimum(low, padded[dy:dy + h, dx:dx + w], out=low)
        low = np.where(mask, low, big)
        flat = low.reshape(-1)
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # jump to the label's own label (same region, smaller index)
        if np.array_equal(low, lab):
            return np.where(mask, lab, -1)
        lab = low


def text_regions(mask: np.ndarray) -> np.ndarray:
    """``[k, 4]`` int (top, left, bottom, right) of the regions DBNet keeps, sorted."""
    lab = region_labels(mask)
    ys, xs = np.nonzero(lab >= 0)
    if not len(ys):
        return np.zeros((0, 4), np.int64)
    ids = lab[ys, xs]
    order = np.argsort(ids, kind="stable")
    ids, ys, xs = ids[order], ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    found = np.stack([np.minimum.reduceat(ys, starts), np.minimum.reduceat(xs, starts),
                      np.maximum.reduceat(ys, starts), np.maximum.reduceat(xs, starts)], axis=1)
    keep = np.minimum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]) + 1 >= MIN_SIZE
    found = found[keep]
    return found[np.lexsort(found.T[::-1])]


def regions_changed(golden: np.ndarray, faulty: np.ndarray, tolerance: float) -> bool:
    """Whether the kept regions of two binarized maps differ: count, or any box side by more than ``tolerance``."""
    a, b = text_regions(golden), text_regions(faulty)
    return len(a) != len(b) or bool(len(a) and np.abs(a - b).max() > tolerance)


def classes(output: np.ndarray) -> np.ndarray:
    """Arg-max class per position, one row per sample: ``[N, 1]`` for ``[N, classes]`` (unit axes ignored, so
    ``[N, classes, 1, 1]`` too), ``[N, T]`` for sequence outputs ``[N, T, classes]``."""
    dims = [d for d in output.shape[1:] if d != 1] or [1]
    return output.reshape(len(output), -1, dims[-1]).argmax(axis=-1)


def agreement(reference: np.ndarray, other: np.ndarray, judge: Judge | None = None) -> float:
    """Share of samples on which ``other`` agrees with ``reference``: same arg-max at every position, or, with a
    :class:`Judge`, no SDC and no DUE under its criterion (as ``inject --sdc``)."""
    if judge is None:
        return float(np.mean(np.all(classes(other) == classes(reference), axis=1)))
    codes, _, _ = judge.classify(reference, other)
    return float(np.mean(codes == MASKED))
