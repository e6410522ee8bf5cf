"""Detections of an object detector's raw outputs, as its application sees them, for the ``detections[:iou]`` SDC
criterion: decode the boxes, keep those above the score threshold, suppress overlaps (greedy NMS), and compare two
sets of detections by IoU.

Output layouts (found from the output shapes, per sample, batch on axis 0):

- ``anchors``: MediaPipe SSD detectors (palm_detection, pose_detection, face_detection): regressors ``[N, K]``
  (x, y, w, h offsets in input pixels, then keypoints) and scores ``[N, C]`` (logits). The anchors are generated
  from the SSD options of MediaPipe's graph configs (:data:`MEDIAPIPE_SSD`, fixed-size anchors), recognised by the
  input size and N; the score threshold is the graph's ``min_score_thresh``, NMS at IoU 0.3 as its
  ``NonMaxSuppressionCalculator``.
- ``corners``: decoded boxes ``[N, 4]`` (corners) beside scores ``[N, C]`` (probabilities), as exported SSDs give them.
- ``yolo``: one output ``[4 + C, N]`` (YOLOv8: cx, cy, w, h, class scores) or ``[N, 5 + C]`` (YOLOv5: objectness
  before the class scores); the Ultralytics prediction defaults, score 0.25 and class-wise NMS at IoU 0.7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import openvino as ov

from ovrange.errors import ConfigError

# MediaPipe SsdAnchorsCalculator options with fixed_anchor_size (input size, strides, anchors per layer at each
# location, min_score_thresh of the graph's TensorsToDetectionsCalculator).
MEDIAPIPE_SSD = {
    "palm_detection (full, lite)": (192, (8, 16, 16, 16), 2, 0.5),
    "palm_detection (256)": (256, (8, 16, 32, 32, 32), 2, 0.5),
    "pose_detection": (224, (8, 16, 32, 32, 32), 2, 0.5),
    "face_detection_short_range": (128, (8, 16, 16, 16), 2, 0.5),
    "face_detection_full_range": (192, (4,), 1, 0.6),
}
MEDIAPIPE_NMS = 0.3


@dataclass(frozen=True)
class Layout:
    """How to read detections from a model's outputs (``outputs``: model output indices, boxes first)."""

    kind: str
    outputs: tuple[int, ...]
    score: float
    nms: float
    scale: float = 1.0  # anchors: the input size the regressors are expressed in
    anchors: np.ndarray | None = field(default=None, compare=False, repr=False)  # [N, 2] centers in [0, 1]

    def decode(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One sample's detections after threshold and NMS: boxes ``[k, 4]`` (x1, y1, x2, y2) and classes ``[k]``."""
        if self.kind == "yolo":
            rows = arrays[0].reshape(arrays[0].shape[-2:]).astype(np.float64)
            if rows.shape[0] < rows.shape[1]:  # YOLOv8: [4 + C, N]
                rows = rows.T
                scores = rows[:, 4:]
            else:  # YOLOv5: [N, 5 + C], class scores times objectness
                scores = rows[:, 5:] * rows[:, 4:5]
            boxes = _corners(rows[:, :4])
        else:
            regressors, logits = (a.reshape(a.shape[-2:]).astype(np.float64) for a in arrays[:2])
            if self.kind == "anchors":
                centers = regressors[:, :2] / self.scale + self.anchors
                boxes = _corners(np.concatenate([centers, regressors[:, 2:4] / self.scale], axis=1))
                scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100.0, 100.0)))
            else:
                boxes, scores = regressors[:, :4], logits
        labels = scores.argmax(axis=1)
        best = scores[np.arange(len(scores)), labels]
        keep = np.flatnonzero(best >= self.score)
        keep = keep[nms(boxes[keep], best[keep], labels[keep], self.nms)]
        return boxes[keep], labels[keep]


def _corners(cxcywh: np.ndarray) -> np.ndarray:
    half = cxcywh[:, 2:4] / 2
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``[n, 4]`` with every box of ``b`` ``[m, 4]`` (corners, either order per axis)."""
    a = np.concatenate([np.minimum(a[:, :2], a[:, 2:]), np.maximum(a[:, :2], a[:, 2:])], axis=1)
    b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy class-wise non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    overlap = iou_matrix(boxes[order], boxes[order]) > threshold
    overlap &= labels[order][:, None] == labels[order][None, :]
    kept: list[int] = []
    alive = np.ones(len(order), bool)
    for i in range(len(order)):
        if alive[i]:
            kept.append(i)
            alive &= ~overlap[i]
    return order[np.array(kept, np.int64)]


def detections_changed(golden: tuple[np.ndarray, np.ndarray], faulty: tuple[np.ndarray, np.ndarray],
                       iou: float) -> bool:
    """A detection was added, lost, changed class, or moved below ``iou`` (one-to-one matching, best IoU first)."""
    (box_g, cls_g), (box_f, cls_f) = golden, faulty
    if len(box_g) != len(box_f):
        return True
    if not len(box_g):
        return False
    scores = np.where(cls_g[:, None] == cls_f[None, :], iou_matrix(box_g, box_f), 0.0)
    matched = 0
    while matched < len(box_g):
        i, j = np.unravel_index(np.argmax(scores), scores.shape)
        if not scores[i, j] >= iou:
            return True
        scores[i, :], scores[:, j] = -1.0, -1.0
        matched += 1
    return False


def mediapipe_anchors(size: int, strides: tuple[int, ...], per_layer: int) -> np.ndarray:
    """Anchor centers ``[N, 2]`` (x, y in [0, 1]) as MediaPipe's SsdAnchorsCalculator makes them with
    ``fixed_anchor_size``: layers of one stride share a grid, ``per_layer`` anchors per layer and location."""
    centers = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        side = math.ceil(size / strides[i])
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        grid = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)
        centers.append(np.repeat(grid, per_layer * (j - i), axis=0))
        i = j
    return np.concatenate(centers)


def find_layout(model: ov.Model, named: int | None = None) -> Layout:
    """The detection layout of ``model``'s outputs (the one holding output ``named`` when given)."""
    shapes = {i: _sample_shape(port) for i, port in enumerate(model.outputs)}
    squeezed = {i: _squeeze(s) for i, s in shapes.items() if s is not None}
    for i, box in squeezed.items():
        for j, score in squeezed.items():
            if i == j or len(box) != 2 or len(score) != 2 or box[0] != score[0] or box[1] < 4:
                continue
            if not (box[1] == 4 and score[1] != 4 or box[1] > 4 and score[1] < box[1]):
                continue
            if named is not None and named not in (i, j):
                continue
            return _pair_layout(model, (i, j), box)
    for i, dims in squeezed.items():
        if len(dims) == 2 and min(dims) >= 5 and (named is None or named == i):
            return Layout("yolo", (i,), 0.25, 0.7)
    outputs = ", ".join(f"{port.get_any_name()} {port.get_partial_shape()}" for port in model.outputs)
    raise ConfigError(f"--sdc detections needs detector outputs: boxes [N, 4+] beside scores [N, classes], or one "
                      f"YOLO output [4+classes, N]; this model has {outputs}")


def _pair_layout(model: ov.Model, outputs: tuple[int, int], box: tuple[int, ...]) -> Layout:
    size = _input_size(model)
    for size_, strides, per_layer, score in MEDIAPIPE_SSD.values():
        if size == size_ and len(mediapipe_anchors(size, strides, per_layer)) == box[0]:
            return Layout("anchors", outputs, score, MEDIAPIPE_NMS, float(size),
                          mediapipe_anchors(size, strides, per_layer))
    if box[1] == 4:
        return Layout("corners", outputs, 0.5, 0.5)
    raise ConfigError(f"--sdc detections: {box[0]} anchor regressors at input size {size} match no known anchor "
                      f"configuration (MediaPipe SSD: {', '.join(MEDIAPIPE_SSD)})")


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Leading unit axes dropped down to two axes: ``[1, N, K]`` -> ``(N, K)``, ``[N, 1]`` stays."""
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _sample_shape(port: ov.Output) -> tuple[int, ...] | None:
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
        return None
    return tuple(d.get_length() for d in list(shape)[1:])


def _input_size(model: ov.Model) -> int | None:
    shape = _sample_shape(model.inputs[0])
    if shape is None or len(shape) != 3:
        return None
    return shape[0] if shape[-1] in (1, 3, 4) else shape[-1]
