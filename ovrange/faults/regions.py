"""Text regions of a binarized detection map, as DBNet's post-processing sees them, in numpy only.

DBNet (PP-OCR det) binarizes its probability map at 0.3, takes each connected region (8-connectivity, as
``cv2.findContours``) and drops regions whose box has a side under 3 pixels (``min_size``). The ``regions`` SDC
criterion compares those regions: a fault is an SDC when a region appears, vanishes, merges or splits, or when a
region's bounding box moves by more than N pixels on any side. Pixels that flip at the edge of a line without
moving its box, and specks smaller than DBNet keeps, are not.
"""

from __future__ import annotations

import numpy as np

MIN_SIZE = 3  # DBNet/rapidocr: boxes with a side under 3 pixels are dropped


def labels(mask: np.ndarray) -> np.ndarray:
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


def boxes(mask: np.ndarray) -> np.ndarray:
    """``[k, 4]`` int (top, left, bottom, right) of the regions DBNet keeps, sorted."""
    lab = labels(mask)
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


def changed(golden: np.ndarray, faulty: np.ndarray, tolerance: float) -> bool:
    """Whether the kept regions of two binarized maps differ: count, or any box side by more than ``tolerance``."""
    a, b = boxes(golden), boxes(faulty)
    return len(a) != len(b) or bool(len(a) and np.abs(a - b).max() > tolerance)
