"""Activation statistics collected through the OpenVINO runtime, in f32, streaming over the calibration subset.

Min/max (global or per channel) are reduced inside the graph: a clone of the model gets, for every watched
output, ``ReduceMin``/``ReduceMax -> Result``, so only a few numbers per node travel to the host. Percentiles
need the value distribution: a second pass fills fixed-range histograms (range = the first pass's min/max) one
batch at a time, so no activation tensor is kept beyond its batch. Inference is f32: the CPU plugin here defaults
to bf16, whose rounding would give bounds the f32 model does not respect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange import data as data_mod
from ovrange.errors import ConfigError, DataError
from ovrange.graph import node_by_name, with_dynamic_batch
from ovrange.runtime import compile_model, last_line

ProgressFn = Callable[[int, int], None]
CHANNEL_AXIS = 1


@dataclass(frozen=True)
class ActivationStats:
    """Min and max of one node's output over the calibration subset: floats, or arrays ``[C]`` per channel.

    ``histogram`` (when collected) counts values in ``histogram_bins`` equal bins spanning ``[min, max]``
    (per channel: one row per channel, each spanning that channel's range).
    """

    node: str
    type: str
    min: float | np.ndarray
    max: float | np.ndarray
    samples: int
    histogram: np.ndarray | None = None


@dataclass(frozen=True)
class Statistics:
    """Statistics per watched node, plus how they were gathered."""

    nodes: dict[str, ActivationStats]
    samples: int
    batch_size: int
    precision: str
    per_channel: bool = False


def _reduce_axes(output: ov.Output, per_channel: bool) -> ov.Node:
    """Axes to reduce: all of them, or all but the channel axis (a Constant; rank must be static)."""
    rank = output.get_partial_shape().rank
    name = output.get_node().get_friendly_name()
    if rank.is_dynamic:
        raise ConfigError(f"node {name!r} has an output of dynamic rank; cannot collect statistics on it")
    if per_channel and rank.get_length() < 2:
        raise ConfigError(f"per-channel bounds need a channel axis, but {name!r} has a {rank.get_length()}-D output")
    if per_channel and output.get_partial_shape()[CHANNEL_AXIS].is_dynamic:
        raise ConfigError(f"per-channel bounds need a static channel count, but {name!r} has shape "
                          f"{output.get_partial_shape()}")
    axes = [a for a in range(rank.get_length()) if not (per_channel and a == CHANNEL_AXIS)]
    return ops.constant(np.array(axes, dtype=np.int64))


def statistics_model(model: ov.Model, node_names: Iterable[str], per_channel: bool = False,
                     raw: bool = False) -> tuple[ov.Model, list[str]]:
    """A clone of ``model`` with one output: ``[min_1..., max_1..., min_2..., max_2..., ...]`` (1-D, float32) for
    output 0 of each named node, per tensor (one value each) or per channel (C values each).

    One concatenated output instead of two per node: on small models the per-output cost of fetching results
    dominates. With ``raw``, the outputs are the watched tensors themselves (one per node), for histogram passes.
    """
    clone = model.clone()
    names = list(node_names)
    if raw:
        results = [ops.result(node_by_name(clone, name).output(0)) for name in names]
        return ov.Model(results, clone.get_parameters(), f"{model.get_friendly_name()}_values"), names
    flat = ops.constant(np.array([-1], np.int64))
    parts = []
    for name in names:
        out = node_by_name(clone, name).output(0)
        if out.get_element_type() != ov.Type.f32:
            out = ops.convert(out, ov.Type.f32).output(0)
        # Reduce in place over the tensor's own axes (flattening it first would force a layout copy), then
        # reshape the few reduced values to 1-D for the single concatenated output.
        axes = _reduce_axes(out, per_channel)
        for reduce in (ops.reduce_min, ops.reduce_max):
            parts.append(ops.reshape(reduce(out, axes, keep_dims=False), flat, special_zero=False))
    result = ops.result(ops.concat(parts, 0) if len(parts) > 1 else parts[0])
    return ov.Model([result], clone.get_parameters(), f"{model.get_friendly_name()}_stats"), names


def collect_statistics(
    model: ov.Model,
    dataset: object,
    node_names: Iterable[str],
    *,
    subset_size: int | None = 300,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    device: str = "CPU",
    progress: ProgressFn | None = None,
    per_channel: bool = False,
    histogram_bins: int | None = None,
) -> Statistics:
    """Run the calibration subset of ``dataset`` through ``model``; min/max (and histograms) of each named node."""
    if subset_size is not None and subset_size <= 0:
        raise ConfigError(f"stat_subset_size must be > 0, got {subset_size}")
    if batch_size <= 0:
        raise ConfigError(f"stat_batch_size must be > 0, got {batch_size}")
    names = list(node_names)
    samples, total = data_mod.subset(dataset, subset_size, shuffle, seed)
    if histogram_bins:
        samples = list(samples)  # two passes over the inputs (not the activations)
    passes = 2 if histogram_bins else 1
    report = (lambda done, _: progress(done, passes * total)) if progress else None
    if total == 0:
        raise DataError("the calibration dataset is empty")
    low, high, seen = _min_max_pass(model, samples, names, batch_size, device, per_channel, report)
    histograms: list[np.ndarray | None] = [None] * len(names)
    if histogram_bins:
        report2 = (lambda done, _: progress(total + done, passes * total)) if progress else None
        histograms = _histogram_pass(model, samples, names, batch_size, device, per_channel, low, high,
                                     histogram_bins, report2)
    types = {name: node_by_name(model, name).get_type_name() for name in names}
    nodes = {}
    for index, name in enumerate(names):
        lo, hi = low[index], high[index]
        if not per_channel:
            lo, hi = float(lo), float(hi)
        nodes[name] = ActivationStats(name, types[name], lo, hi, seen, histograms[index])
    return Statistics(nodes, seen, batch_size, "f32", per_channel)


def calibration_request(model: ov.Model, batch_size: int, device: str) -> ov.InferRequest:
    """An f32 infer request for ``model`` (edited in place: batch axis made dynamic when ``batch_size`` > 1)."""
    if batch_size > 1:
        try:
            with_dynamic_batch(model)
        except ValueError as exc:
            raise ConfigError(f"stat_batch_size={batch_size} needs a batchable model; reshape failed: {exc}") from exc
    return compile_model(model, device, precision="f32").create_infer_request()


def infer_batch(request: ov.InferRequest, arrays: list[np.ndarray], share_outputs: bool = False) -> tuple:
    """Outputs of one calibration batch; a batch the model cannot take becomes a one-line DataError."""
    try:
        return request.infer(arrays, share_outputs=share_outputs).to_tuple()
    except RuntimeError as exc:
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        raise DataError(f"data of shape {shapes} cannot feed the model: {last_line(exc)}") from exc


def _run_batches(model: ov.Model, request: ov.InferRequest, samples: Iterable, batch_size: int,
                 progress: ProgressFn | None):
    """Yield (outputs as a tuple of arrays, samples in batch) for each batch."""
    seen = 0
    for arrays, count in data_mod.batches(samples, model, batch_size):
        seen += count
        yield infer_batch(request, arrays, share_outputs=True), count  # consumed before the next infer
        if progress:
            progress(seen, seen)


def _min_max_pass(model, samples, names, batch_size, device, per_channel, progress):
    stats_model, _ = statistics_model(model, names, per_channel)
    request = calibration_request(stats_model, batch_size, device)
    width = [_channels(model, name) if per_channel else 1 for name in names]
    # The output is [min_1, max_1, min_2, max_2, ...]; fold it per batch with two in-place ufuncs (a mask picks the
    # max slots) - on small models per-batch host work is a visible share of the calibration time.
    is_max = np.concatenate([np.full(w, flag) for w in width for flag in (False, True)])
    folded = None
    seen = 0
    for values, count in _run_batches(model, request, samples, batch_size, progress):
        if folded is None:
            folded = values[0].astype(np.float32, copy=True)
        else:
            np.minimum(folded, values[0], out=folded, where=~is_max)
            np.maximum(folded, values[0], out=folded, where=is_max)
        seen += count
    parts = np.split(folded.astype(np.float64), np.cumsum([w for w in width for _ in range(2)])[:-1])
    low, high = parts[0::2], parts[1::2]  # float32 values (what the Clamp compares in), as float64 for JSON
    if not per_channel:
        low, high = [v[0] for v in low], [v[0] for v in high]
    return low, high, seen


def _channels(model: ov.Model, name: str) -> int:
    return node_by_name(model, name).get_output_partial_shape(0)[CHANNEL_AXIS].get_length()


def _histogram_pass(model, samples, names, batch_size, device, per_channel, low, high, bins, progress):
    stats_model, _ = statistics_model(model, names, raw=True)
    request = calibration_request(stats_model, batch_size, device)
    counts = [np.zeros((np.size(lo), bins), dtype=np.int64) for lo in low]
    for values, _ in _run_batches(model, request, samples, batch_size, progress):
        for i, tensor in enumerate(values):
            counts[i] += _histogram(tensor, low[i], high[i], bins, per_channel)
    return [c if per_channel else c[0] for c in counts]


def _histogram(tensor: np.ndarray, low, high, bins: int, per_channel: bool) -> np.ndarray:
    """Counts of ``tensor`` values in ``bins`` equal bins over [low, high] (per channel: one row per channel)."""
    if per_channel:
        channels = tensor.shape[CHANNEL_AXIS]
        values = np.moveaxis(tensor, CHANNEL_AXIS, 0).reshape(channels, -1).astype(np.float64)
        lo, hi = np.asarray(low).reshape(-1, 1), np.asarray(high).reshape(-1, 1)
    else:
        channels = 1
        values = tensor.reshape(1, -1).astype(np.float64)
        lo, hi = np.float64(low), np.float64(high)
    width = np.where(hi > lo, hi - lo, 1.0)
    index = np.clip(((values - lo) / width * bins).astype(np.int64), 0, bins - 1)
    flat = (index + np.arange(channels).reshape(-1, 1) * bins).ravel()
    return np.bincount(flat, minlength=channels * bins).reshape(channels, bins)
