"""Running a model over a labelled dataset: predictions and top-1 accuracy (f32 by default)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import openvino as ov

from ovrange import data as data_mod
from ovrange.compare import classes
from ovrange.errors import DataError
from ovrange.runtime import Runner

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int

    @property
    def top1(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def predict(
    model: ov.Model,
    dataset: object,
    *,
    batch_size: int = 64,
    device: str = "CPU",
    precision: str = "f32",
    limit: int | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Output 0 of ``model`` for every sample of ``dataset`` (first ``limit`` samples), concatenated on axis 0.

    A model that cannot be re-batched still runs, one sample at a time.
    """
    runner = Runner(model, device=device, batch_size=batch_size, precision=precision, fallback=True)
    samples, total = data_mod.subset(dataset, limit)
    if total == 0:
        raise DataError("the dataset is empty")
    return runner.predict(data_mod.batches(samples, model, runner.batch_size), progress=progress, total=total)


def top1(logits: np.ndarray) -> np.ndarray:
    """Class index per sample for classifier outputs ``[N, classes]`` (extra unit axes are squeezed)."""
    flat = logits.reshape(logits.shape[0], -1)
    return flat.argmax(axis=1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> Accuracy:
    labels = np.asarray(labels).reshape(-1)[: len(predictions)]
    return Accuracy(int((predictions == labels).sum()), int(len(labels)))


def check_labels(labels: np.ndarray, output: np.ndarray) -> np.ndarray:
    """``labels`` as int64 class indices shaped like :func:`classes` of ``output``, after checking they fit it:
    one-hot, fractional or out-of-range labels would give a meaningless accuracy."""
    labels = np.asarray(labels)
    dims = [d for d in output.shape[1:] if d != 1] or [1]
    n_classes, positions = dims[-1], int(np.prod(dims[:-1], dtype=np.int64))
    if labels.dtype.kind not in "biuf" or (labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels))):
        raise DataError(f"labels must be integer class indices; got dtype {labels.dtype}"
                        + (" with fractional values" if labels.dtype.kind == "f" else ""))
    rows = labels.reshape(len(labels), -1)
    if rows.shape[1] != positions:
        hint = " (one-hot? give class indices instead)" if rows.shape[1] == n_classes else ""
        raise DataError(f"labels of shape {labels.shape} do not fit the model output of shape {output.shape[1:]} "
                        f"per sample: {positions} class index per sample expected{hint}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_classes):
        raise DataError(f"labels {int(rows.min())}..{int(rows.max())} are outside the model's {n_classes} classes")
    return rows.astype(np.int64)


def label_accuracy(output: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 accuracy of ``output`` against ``labels`` (a sequence sample counts when every position is right)."""
    expected = check_labels(labels, output)[: len(output)]
    return Accuracy(int(np.all(classes(output)[: len(expected)] == expected, axis=1).sum()), len(expected))
