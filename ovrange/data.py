"""Datasets: what feeds a model during calibration, evaluation and fault injection.

A *sample* is one item of a dataset after its transform: a numpy array (single-input model), a tuple/list of
arrays (inputs in order) or a dict ``{input name: array}``. An array whose rank is one less than the model input's
gets a batch axis; an array of full rank is taken as a batch already (nncf.Dataset items usually are).
The batch axis of an input is axis 0 unless the model says otherwise (:func:`ovrange.batching.input_batch_axes`:
Silero VAD's state ``[2, 1, 128]`` has it on axis 1; ``--batch-axis name:k`` sets it).

Sources: an image folder (POT's "simplified" engine: decode, resize to the model input, NCHW/NHWC, BGR order
as cv2 gave POT), ``.npy``/``.npz`` files, any Python iterable, and an ``nncf.Dataset`` (duck-typed through
``get_inference_data``, so nncf is never imported here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ovrange import text
from ovrange.arrays import read_npy, read_npz
from ovrange.errors import DataError
from ovrange.images import ImageOptions, image_reader
from ovrange.batching import input_batch_axes

INPUT_KEYS = ("x", "images", "inputs", "data")
LABEL_KEYS = ("y", "labels", "targets")


class Dataset:
    """A data source plus an optional transform, in the shape of ``nncf.Dataset``.

    ``Dataset(source, transform_fn)`` wraps any iterable; indexed access is used when the source supports it, so a
    seeded random subset does not have to read the whole source.
    """

    def __init__(self, source: Iterable[Any], transform_fn: Callable[[Any], Any] | None = None):
        self.source = source
        self.transform_fn = transform_fn

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def has_len(self) -> bool:
        return hasattr(self.source, "__len__")

    def get_inference_data(self, indices: Sequence[int] | None = None) -> Iterator[Any]:
        if indices is None:
            items: Iterable[Any] = self.source
        elif hasattr(self.source, "__getitem__"):
            items = (self.source[int(i)] for i in indices)  # type: ignore[index]
        else:
            wanted = set(int(i) for i in indices)
            chosen = {i: item for i, item in enumerate(self.source) if i in wanted}
            items = (chosen[int(i)] for i in indices if int(i) in chosen)
        for item in items:
            yield self.transform_fn(item) if self.transform_fn else item


def as_dataset(data: Any) -> Dataset:
    """Accept an ovrange.Dataset, an nncf.Dataset, a numpy array (samples along axis 0) or any iterable."""
    if isinstance(data, Dataset):
        return data
    if hasattr(data, "get_inference_data") and hasattr(data, "get_data"):  # nncf.Dataset
        return _NncfAdapter(data)
    if isinstance(data, (str, os.PathLike)):
        raise DataError("a path needs a model to decode against: use ovrange.data.load(path, model)")
    if isinstance(data, Iterable):
        return Dataset(data)
    raise DataError(f"unsupported dataset type {type(data).__name__}; pass an iterable, numpy array or nncf.Dataset")


class _NncfAdapter(Dataset):
    def __init__(self, nncf_dataset: Any):
        super().__init__(nncf_dataset)

    def __len__(self) -> int:
        length = self.source.get_length()
        if length is None:
            raise TypeError("nncf.Dataset without length")
        return int(length)

    def has_len(self) -> bool:
        return self.source.get_length() is not None

    def get_inference_data(self, indices: Sequence[int] | None = None) -> Iterator[Any]:
        return iter(self.source.get_inference_data(None if indices is None else [int(i) for i in indices]))


@dataclass(frozen=True)
class LabelledData:
    """A dataset read from a path, with labels when the source has them (``y``/``labels`` in an .npz)."""

    dataset: Dataset
    labels: np.ndarray | None
    source: str


def select_indices(total: int, subset_size: int | None, shuffle: bool = False, seed: int = 0) -> np.ndarray:
    """POT's subset rule: the first ``subset_size`` samples, or a seeded random subset when ``shuffle``."""
    size = total if subset_size is None else min(subset_size, total)
    if shuffle:
        return np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    return np.arange(size)


def subset(data: Any, subset_size: int | None, shuffle: bool = False, seed: int = 0) -> tuple[Iterator[Any], int]:
    """Iterate over the calibration subset of ``data``; returns the iterator and its length."""
    dataset = as_dataset(data)
    if dataset.has_len():
        indices = select_indices(len(dataset), subset_size, shuffle, seed)
        return dataset.get_inference_data(indices), len(indices)
    items = list(dataset.get_inference_data())
    indices = select_indices(len(items), subset_size, shuffle, seed)
    return (items[i] for i in indices), len(indices)


# ---------------------------------------------------------------------------------------------------------------
# Samples -> model inputs


def sample_arrays(sample: Any, model: ov.Model, axes: Sequence[int] | None = None) -> list[np.ndarray]:
    """Arrange one sample as a list of arrays in model-input order, each with its batch axis (``axes``, default
    :func:`ovrange.batching.input_batch_axes`)."""
    inputs = model.inputs
    if isinstance(sample, dict):
        arrays = []
        for index, port in enumerate(inputs):
            key = next((name for name in port.get_names() if name in sample), None)
            if key is None and index in sample:
                key = index
            if key is None:
                raise DataError(f"sample has no value for model input {port.get_any_name()!r}; keys: {list(sample)}")
            arrays.append(np.asarray(sample[key]))
    elif isinstance(sample, (tuple, list)):
        arrays = [np.asarray(a) for a in sample]
    else:
        arrays = [np.asarray(sample)]
    if len(arrays) != len(inputs):
        raise DataError(f"sample has {len(arrays)} array(s) but the model has {len(inputs)} input(s)")
    axes = input_batch_axes(model) if axes is None else axes
    return [_with_batch_axis(array, port, axis) for array, port, axis in zip(arrays, inputs, axes)]


def _with_batch_axis(array: np.ndarray, port: ov.Output, axis: int = 0) -> np.ndarray:
    shape = port.get_partial_shape()
    if shape.rank.is_static and array.ndim == shape.rank.get_length() - 1:
        array = np.expand_dims(array, axis)
    array = _as_input_type(array, port)
    check_fits(array, port, batch_axis=axis)
    return array


def _as_input_type(array: np.ndarray, port: ov.Output) -> np.ndarray:
    """``array`` in the input's element type, refusing what cannot feed it exactly.

    Non-finite values are refused rather than skipped: one +Inf pixel would make every calibrated bound infinite (a
    silent no-op guard) and NaN data gives [0, 0] bounds; a float fed to an integer input would be truncated.
    """
    name, want = port.get_any_name(), port.get_element_type()
    if array.dtype.kind not in "biuf":
        raise DataError(f"data of dtype {array.dtype} cannot feed model input {name!r} ({want}): numbers only")
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(f"{bad} non-finite value(s) (NaN/Inf) in data for input {name!r}: repair or drop them")
    if want.is_real():
        return array.astype(np.float32) if want == ov.Type.f32 and array.dtype != np.float32 else array
    target = np.dtype(want.to_dtype())
    if array.dtype == target:
        return array
    if target.kind in "iu":
        info = np.iinfo(target)
        if array.dtype.kind == "f" and array.size and not np.array_equal(array, np.round(array)):
            raise DataError(f"data of dtype {array.dtype} has fractional values but model input {name!r} takes "
                            f"{want} integers (they would be truncated)")
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise DataError(f"data values {array.min()}..{array.max()} do not fit model input {name!r} ({want})")
    return array.astype(target)


def check_fits(array: np.ndarray, port: ov.Output, batch_free: bool = True, batch_axis: int = 0) -> None:
    """Raise DataError when ``array`` cannot feed ``port`` (rank or a static dimension differs; the batch axis may
    differ when ``batch_free``)."""
    shape = port.get_partial_shape()
    name = port.get_any_name()
    if shape.rank.is_dynamic:
        return
    if array.ndim != shape.rank.get_length():
        raise DataError(f"data of shape {tuple(array.shape)} does not fit model input {name!r} of shape {shape}")
    for axis, (have, want) in enumerate(zip(array.shape, shape)):
        if axis == batch_axis and batch_free:
            continue
        if want.is_static and have != want.get_length():
            raise DataError(f"data of shape {tuple(array.shape)} does not fit model input {name!r} of shape {shape}")


def batches(samples: Iterable[Any], model: ov.Model, batch_size: int) -> Iterator[tuple[list[np.ndarray], int]]:
    """Group samples into batches of ``batch_size`` (the last may be smaller), stacked on each input's batch axis;
    yields (arrays, n_samples)."""
    axes = input_batch_axes(model)
    pending: list[list[np.ndarray]] = []
    count = 0
    for position, sample in enumerate(samples):
        try:
            arrays = sample_arrays(sample, model, axes)
        except DataError as exc:
            raise DataError(f"sample {position} (counting from 0, in the order read): {exc}") from exc
        pending.append(arrays)
        count += arrays[0].shape[axes[0]] if arrays[0].ndim else 1
        if count >= batch_size:
            yield _concat(pending, axes), count
            pending, count = [], 0
    if pending:
        yield _concat(pending, axes), count


def _concat(parts: list[list[np.ndarray]], axes: Sequence[int]) -> list[np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(column, axis=axis) for column, axis in zip(zip(*parts), axes)]


def batch_first(dataset: Dataset, model: ov.Model) -> Dataset:
    """``dataset`` as :func:`ovrange.batching.batch_first` of ``model`` takes it: each sample's arrays with their
    batch axis moved to axis 0 (``dataset`` itself when every input has it there already)."""
    axes = input_batch_axes(model)
    if not any(axes):
        return dataset
    return Dataset(_Indexed(dataset), lambda sample: tuple(
        np.moveaxis(array, axis, 0) for array, axis in zip(sample_arrays(sample, model, axes), axes)))


class _Indexed(Sequence):
    """A dataset's samples (after its transform) as a sequence, for a dataset that wraps it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):  # type: ignore[override]
        return next(iter(self.dataset.get_inference_data([int(index)])))


# ---------------------------------------------------------------------------------------------------------------
# Paths -> datasets


def load(path: str | os.PathLike, model: ov.Model, layout: str | None = None,
         images: ImageOptions | None = None, model_path: str | os.PathLike | None = None) -> LabelledData:
    """Open an image folder, an ``.npy``/``.npz`` file or prompts (``.txt``/``.jsonl``, for the stateful language
    model read from ``model_path``) as a dataset that fits ``model``.

    Arrays hold samples along axis 0; their shape and dtype are checked here, against the model, so a mistake is
    reported with the user's own array shape. ``images`` (or just ``layout``) says how image files are decoded.
    """
    path = Path(path)
    try:
        folder = path.is_dir()
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES: Path.is_dir() only hides ENOENT & co.
        raise DataError(f"cannot read data {path}: {exc.strerror}") from None
    if not folder:
        from ovrange.modelio import check_regular_file

        check_regular_file(path, "data", DataError)  # before any open(): a FIFO would block forever
    if folder:
        return LabelledData(image_folder(path, model, images or ImageOptions(layout=layout)), None, str(path))
    if path.suffix == ".npy":
        array = read_npy(path)
        if len(model.inputs) == 1:
            check_samples(array, model.inputs[0], path.name, input_batch_axes(model)[0])
        return LabelledData(Dataset(array), None, str(path))
    if path.suffix == ".npz":
        return _load_npz(path, model)
    if text.is_text_data(path) and text.is_language_model(model):  # prompts, tokenized beside model_path
        return LabelledData(Dataset(text.load(path, model, model_path)), None, str(path))
    raise DataError(f"unsupported data file {path.name}: use an image folder, .npy or .npz (.txt/.jsonl prompts "
                    "feed language models)")


def check_samples(array: np.ndarray, port: ov.Output, what: str, batch_axis: int = 0) -> None:
    """Raise DataError, naming ``array``'s own shape, unless its samples (axis 0) can feed ``port``, whose batch
    axis is ``batch_axis``."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {array.dtype}: data must be numbers")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return
    axis = batch_axis
    per_sample = [d for k, d in enumerate(shape) if k != axis]
    sample = tuple(array.shape[1:])
    # a sample may itself be a batch (of one, on the input's batch axis)
    core = tuple(n for k, n in enumerate(sample) if k != axis) if len(sample) == len(per_sample) + 1 else sample
    if len(core) != len(per_sample) or any(d.is_static and d.get_length() != n for n, d in zip(core, per_sample)):
        wanted = "[" + ",".join(str(d) for d in per_sample) + "]"
        raise DataError(f"{what} has shape {tuple(array.shape)}: axis 0 counts samples, so one sample is {sample}, "
                        f"which does not fit model input {port.get_any_name()!r} of shape {shape} (one sample: "
                        f"{wanted})")


def _load_npz(path: Path, model: ov.Model) -> LabelledData:
    archive = read_npz(path)
    labels = next((archive[k] for k in LABEL_KEYS if k in archive), None)
    input_names = [port.get_any_name() for port in model.inputs]
    if all(name in archive for name in input_names) and len(input_names) > 1:
        columns = [archive[name] for name in input_names]
        for name, column, port, axis in zip(input_names, columns, model.inputs, input_batch_axes(model)):
            if column.ndim == 0:
                raise DataError(f"{path.name}: {name} is a scalar, not samples along axis 0")
            check_samples(column, port, f"{name} in {path.name}", axis)
        samples: Sequence[Any] = _Columns(columns)
    else:
        key = next((k for k in (*INPUT_KEYS, *input_names) if k in archive), None)
        if key is None:
            raise DataError(f"{path.name} has no input array; expected one of {', '.join(INPUT_KEYS)} (keys: "
                            f"{', '.join(archive) or 'none'})")
        samples = archive[key]
        if samples.ndim == 0:
            raise DataError(f"{path.name}: {key} is a scalar, not samples along axis 0")
        if len(model.inputs) == 1:
            check_samples(samples, model.inputs[0], f"{key} in {path.name}", input_batch_axes(model)[0])
    if len(samples) == 0:
        raise DataError(f"no samples in {path}")
    if labels is not None and (labels.ndim == 0 or len(labels) != len(samples)):
        raise DataError(f"{path.name}: {labels.size if labels.ndim == 0 else len(labels)} labels for "
                        f"{len(samples)} samples")
    return LabelledData(Dataset(samples), labels, str(path))


class _Columns(Sequence):
    """Several same-length arrays seen as one sequence of tuples (multi-input .npz)."""

    def __init__(self, columns: list[np.ndarray]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, index):  # type: ignore[override]
        return tuple(column[index] for column in self.columns)


def image_folder(path: str | os.PathLike, model: ov.Model, options: ImageOptions | str | None = None) -> Dataset:
    """Every image in ``path`` (sorted), resized to the model input and preprocessed by ``options``, float32."""
    files, decode = image_reader(path, model, options)
    return Dataset(files, decode)
