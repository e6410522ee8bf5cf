"""Running a model over a labelled dataset: predictions and top-1 accuracy (f32 by default)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import openvino as ov

from ovrange import data as data_mod
from ovrange.errors import DataError
from ovrange.graph import with_dynamic_batch
from ovrange.runtime import compile_model, last_line

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
    """Output 0 of ``model`` for every sample of ``dataset`` (first ``limit`` samples), concatenated on axis 0."""
    runnable = model
    if batch_size > 1:
        try:
            runnable = with_dynamic_batch(model.clone())
        except ValueError:
            batch_size = 1  # a model that cannot be re-batched still runs one sample at a time
    request = compile_model(runnable, device, precision=precision).create_infer_request()
    samples, total = data_mod.subset(dataset, limit)
    outputs, done = [], 0
    for arrays, count in data_mod.batches(samples, model, batch_size):
        try:
            outputs.append(request.infer(arrays)[0].copy())
        except RuntimeError as exc:
            raise DataError(f"data cannot feed the model: {last_line(exc)}") from exc
        done += count
        if progress:
            progress(done, total)
    return np.concatenate(outputs, axis=0)


def top1(logits: np.ndarray) -> np.ndarray:
    """Class index per sample for classifier outputs ``[N, classes]`` (extra unit axes are squeezed)."""
    flat = logits.reshape(logits.shape[0], -1)
    return flat.argmax(axis=1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> Accuracy:
    labels = np.asarray(labels).reshape(-1)[: len(predictions)]
    return Accuracy(int((predictions == labels).sum()), int(len(labels)))
