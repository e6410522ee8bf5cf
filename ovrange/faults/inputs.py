"""The inputs a campaign runs on: a seeded draw of dataset samples that every model handles correctly.

As in Ranger, faults are injected only on inputs the fault-free model classifies correctly (when labels exist),
so an SDC is a fault turning a right answer into a wrong one. With ``--compare`` an input must be right under
every model, so all models see the same fault list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import openvino as ov

from ovrange import data as data_mod
from ovrange.errors import DataError


class InputStore:
    """Model-ready arrays (one row each, batch axis kept) of the samples a campaign uses, by dataset index."""

    def __init__(self, dataset: data_mod.Dataset, model: ov.Model):
        self.dataset = dataset
        self.model = model
        self.rows: dict[int, list[np.ndarray]] = {}

    def load(self, indices: Sequence[int]) -> list[list[np.ndarray]]:
        missing = [int(i) for i in indices if int(i) not in self.rows]
        if missing:
            if self.dataset.has_len() and max(missing) >= len(self.dataset):
                raise DataError(f"input index {max(missing)} is outside the dataset ({len(self.dataset)} samples)")
            samples = list(self.dataset.get_inference_data(missing))
            if len(samples) != len(missing):
                raise DataError(f"the dataset yielded {len(samples)} of {len(missing)} requested samples")
            for index, sample in zip(missing, samples):
                arrays = data_mod.sample_arrays(sample, self.model)
                if arrays[0].shape[0] != 1:
                    raise DataError(f"sample {index} holds {arrays[0].shape[0]} items; a campaign needs one per sample")
                self.rows[index] = [np.ascontiguousarray(a) for a in arrays]
        return [self.rows[int(i)] for i in indices]

    def batch(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Stack samples ``indices`` into one batch per model input."""
        rows = self.load(indices)
        return [np.concatenate(column, axis=0) for column in zip(*rows)]

    def sample_shapes(self, index: int) -> list[tuple[int, ...]]:
        return [tuple(a.shape[1:]) for a in self.load([index])[0]]

    def forget(self, keep: Sequence[int]) -> None:
        keep_set = {int(i) for i in keep}
        self.rows = {i: r for i, r in self.rows.items() if i in keep_set}


def select_inputs(references: list[Callable[[list[np.ndarray]], np.ndarray]], store: InputStore,
                  labels: np.ndarray | None, top1: bool, count: int, seed: int, chunk: int
                  ) -> tuple[list[int], list[tuple[int, int]]]:
    """Draw up to ``count`` inputs in a seeded order; returns them and (checked, correct) per model.

    ``references`` give each model's fault-free judged output for a batch. With labels and a top-1 criterion an
    input must be classified correctly by every model; otherwise it must only give a finite output.
    """
    total = len(store.dataset) if store.dataset.has_len() else None
    if total is None:
        raise DataError("a fault-injection dataset must have a length (a sequence, array, .npz or folder)")
    if total == 0:
        raise DataError("the dataset is empty")
    if labels is not None and len(labels) < total:
        raise DataError(f"{len(labels)} labels for {total} samples")
    order = np.random.default_rng([seed, 1]).permutation(total)  # a stream apart from the fault plan's
    use_labels = labels is not None and top1
    chosen: list[int] = []
    checked = [[0, 0] for _ in references]
    start = 0
    while start < total and len(chosen) < count:
        # no more candidates per round than still needed: a static batch-1 model checks them one by one
        indices = order[start:start + min(chunk, count - len(chosen))].tolist()
        start += len(indices)
        arrays = store.batch(indices)
        ok = np.ones(len(indices), bool)
        for reference, stats in zip(references, checked):
            out = reference(arrays).reshape(len(indices), -1)
            good = np.isfinite(out).all(axis=1)
            if use_labels:
                good &= out.argmax(axis=1) == np.asarray(labels)[indices].reshape(-1)
            stats[0] += len(indices)
            stats[1] += int(good.sum())
            ok &= good
        chosen += [i for i, keep in zip(indices, ok) if keep]
    if not chosen:
        raise DataError("no input is handled correctly by " + ("every model" if len(references) > 1 else "the model")
                        + (" (top-1 never matches the labels)" if use_labels else " (outputs are not finite)"))
    chosen = chosen[:count]
    store.forget(chosen)
    return chosen, [tuple(c) for c in checked]
