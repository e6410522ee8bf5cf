"""Running a model over a labelled dataset: predictions and top-1 accuracy (f32 by default)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import openvino as ov

from ovrange import data as data_mod
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
