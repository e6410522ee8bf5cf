"""Stage 2 of protection: statistics through the OpenVINO runtime, in f32, streaming over the calibration subset.

Passes ask for what they need as :class:`StatRequest` records; :func:`collect` serves every request in **one**
calibration loop (two when histograms need a range first). Reductions run inside the graph: a clone of the model
gets, for each request, ReduceMin/ReduceMax (or moments) of the watched output, all flattened and concatenated into
one small output, so only a few numbers per node travel to the host per batch. Histograms need the values: their
tensors are extra outputs, binned on the host one batch at a time, so no activation tensor is kept beyond its batch.
Inference is f32: the CPU plugin here defaults to bf16, whose rounding would give bounds the f32 model does not keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange import data as data_mod
from ovrange import generate
from ovrange.errors import ConfigError, DataError
from ovrange.moments import RunningMoments, differences
from ovrange.runtime import Runner, is_stateful, refuse_stateful
from ovrange.targets import outputs_by_id
from ovrange.text import is_language_model

ProgressFn = Callable[[int, int], None]
KINDS = ("minmax", "histogram", "moments")


@dataclass(frozen=True)
class StatRequest:
    """One statistic of one target's values.

    ``axis``: keep this axis (per-channel statistics), or None to reduce over everything. ``kind``: ``minmax``,
    ``histogram`` (``bins`` equal bins over the observed range) or ``moments`` (count/mean/M2/min/max of the
    circular neighbour differences along ``neighbour_axis``, GradientSuppression's statistic). ``derive``: the
    statistic is of a value computed in the graph from the target's output (``derive(model, output) -> output``,
    e.g. a checksum residual); a frozen dataclass, so equal requests compare equal.
    """

    target: str
    kind: str = "minmax"
    axis: int | None = None
    bins: int = 0
    neighbour_axis: int | None = None
    derive: Callable[[ov.Model, ov.Output], ov.Output] | None = None


@dataclass(frozen=True)
class MinMax:
    low: np.ndarray  # float64 holding float32 values: one per channel, or shape () per tensor
    high: np.ndarray


@dataclass(frozen=True)
class Histogram:
    counts: np.ndarray  # [channels, bins] (one row per tensor)
    low: np.ndarray
    high: np.ndarray


@dataclass
class Statistics:
    """The result of every request, and how it was gathered."""

    values: dict[StatRequest, MinMax | Histogram | RunningMoments]
    samples: int
    batch_size: int
    precision: str = "f32"

    def __getitem__(self, request: StatRequest):
        return self.values[request]


def collect(model: ov.Model, dataset: object, requests: Iterable[StatRequest], *, subset_size: int | None = 300,
            batch_size: int = 1, shuffle: bool = False, seed: int = 0, device: str = "CPU",
            progress: ProgressFn | None = None) -> Statistics:
    """Run the calibration subset of ``dataset`` through ``model`` once (twice with histograms); serve ``requests``.

    A stateful language model runs each sample (a prompt's token ids) as a prefill followed by
    :data:`ovrange.generate.CALIBRATION_STEPS` greedy decode steps, the state reset before each sample; the
    statistics fold over every step."""
    if is_stateful(model):
        if not is_language_model(model):
            refuse_stateful(model, "protect")  # before any statistics model is built
        generate.input_roles(model)  # a language model with inputs generation cannot fill is refused in one line
        if batch_size != 1:
            raise ConfigError(f"a stateful language model is calibrated one prompt at a time; stat_batch_size must "
                              f"be 1, got {batch_size}")
    if subset_size is not None and subset_size <= 0:
        raise ConfigError(f"stat_subset_size must be > 0, got {subset_size}")
    if batch_size <= 0:
        raise ConfigError(f"stat_batch_size must be > 0, got {batch_size}")
    wanted = list(dict.fromkeys(requests))
    unknown = [r.kind for r in wanted if r.kind not in KINDS]
    if unknown:
        raise ConfigError(f"unknown statistic {unknown[0]!r}; known: {', '.join(KINDS)}")
    samples, total = data_mod.subset(dataset, subset_size, shuffle, seed)
    if total == 0:
        raise DataError("the calibration dataset is empty")
    histograms = [r for r in wanted if r.kind == "histogram"]
    ranges = [StatRequest(r.target, "minmax", r.axis, derive=r.derive) for r in histograms]
    first = list(dict.fromkeys([r for r in wanted if r.kind != "histogram"] + ranges))
    passes = 2 if histograms else 1
    if histograms:
        samples = list(samples)  # two passes over the inputs (not the activations)
    values, seen = _pass(model, samples, first, {}, batch_size, device, _scaled(progress, 0, passes, total))
    if histograms:
        more, _ = _pass(model, samples, histograms, values, batch_size, device, _scaled(progress, 1, passes, total))
        values.update(more)
    return Statistics({r: values[r] for r in wanted}, seen, batch_size, "f32")


def _scaled(progress: ProgressFn | None, index: int, passes: int, total: int) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda done, _: progress(index * total + done, passes * total)


# ---------------------------------------------------------------------------------------------------------------
# One pass: the statistics model, its single reduced output, and the host-side fold


def _pass(model: ov.Model, samples: Iterable, requests: list[StatRequest], known: dict, batch_size: int,
          device: str, progress: ProgressFn | None) -> tuple[dict, int]:
    stateful = is_stateful(model)
    stats_model, layout = statistics_model(model, requests, keep_outputs=stateful)
    runner = Runner(stats_model, device=device, batch_size=batch_size, batched_outputs=False, stateful=stateful,
                    command="protect")
    fold = _Fold(layout, known)
    seen = 0
    if stateful:
        # The model's own outputs follow the statistics: the greedy token of each step comes from its logits.
        logits = len(stats_model.outputs) - len(model.outputs)
        samples = list(samples)
        for sample in samples:
            for _, outputs in generate.steps(runner, model, sample, generate.CALIBRATION_STEPS, logits):
                fold.add(outputs)
            seen += 1
            if progress:
                progress(seen, len(samples))
        return fold.results(), seen
    for outputs, count in runner.run(data_mod.batches(samples, model, batch_size), progress):
        fold.add(outputs)
        seen += count
    return fold.results(), seen


@dataclass(frozen=True)
class _Slot:
    """Where one request's reduced values sit in the concatenated output (or which raw output holds its tensor)."""

    request: StatRequest
    start: int  # min/max: where its minima start (its maxima sit ``minima`` further on); else its first value
    sizes: tuple[int, ...]  # lengths of its parts (min / mean, m2, min, max, shape)
    raw: int | None = None  # index of the raw output (histograms)


def statistics_model(model: ov.Model, requests: list[StatRequest], keep_outputs: bool = False
                     ) -> tuple[ov.Model, list[_Slot]]:
    """A clone of ``model`` whose output 0 is one 1-D float32 vector with every request's reduced values, followed
    by one raw output per histogram request (then, with ``keep_outputs``, the model's own outputs: a language
    model's next token comes from its logits). One concatenated output instead of several per node: on small models
    the per-output cost of fetching results dominates the calibration time."""
    clone = model.clone()
    outputs = outputs_by_id(clone)
    flat = ops.constant(np.array([-1], np.int64))
    # Layout of the vector: every min/max request's minima, then their maxima in the same order, then the other
    # reductions: folding a batch is then two ufuncs over contiguous halves.
    lows, highs, others, raws = [], [], [], []
    found: list[tuple[StatRequest, tuple[int, ...], int | None]] = []
    for request in requests:
        if request.target not in outputs:
            raise ConfigError(f"no node output {request.target!r} in model {model.get_friendly_name()!r}")
        value = outputs[request.target]
        if request.derive is not None:
            value = request.derive(clone, value)
        if value.get_element_type() != ov.Type.f32:
            value = ops.convert(value, ov.Type.f32).output(0)
        if request.kind == "histogram":
            found.append((request, (), len(raws)))
            raws.append(value)
            continue
        pieces = [ops.reshape(p, flat, special_zero=False).output(0) for p in _reductions(value, request)]
        found.append((request, tuple(_static_length(p, request) for p in pieces), None))
        if request.kind == "minmax":
            lows.append(pieces[0])
            highs.append(pieces[1])
        else:
            others += pieces
    minima = sum(sizes[0] for request, sizes, _ in found if request.kind == "minmax")
    layout, low_at, other_at = [], 0, 2 * minima
    for request, sizes, raw in found:
        if request.kind == "minmax":
            layout.append(_Slot(request, low_at, sizes[:1]))
            low_at += sizes[0]
        else:
            layout.append(_Slot(request, other_at, sizes, raw))
            other_at += sum(sizes)
    parts = lows + highs + others
    results = [ops.result(ops.concat(parts, 0) if len(parts) > 1 else parts[0])] if parts else []
    results += [ops.result(r) for r in raws]
    if keep_outputs:
        results += [ops.result(r.input_value(0)) for r in clone.get_results()]
    # The sinks stay: a stateful model's statistics model must keep its ReadValue/Assign pairs.
    return ov.Model(results, clone.get_sinks(), clone.get_parameters(), f"{model.get_friendly_name()}_stats"), layout


def reduce_axes(value: ov.Output, keep: int | None, what: str) -> list[int]:
    """Axes to reduce: all of them, or all but ``keep`` (the channel axis); the rank must be static."""
    shape = value.get_partial_shape()
    if shape.rank.is_dynamic:
        raise ConfigError(f"{what} has an output of dynamic rank; cannot collect statistics on it")
    rank = shape.rank.get_length()
    if keep is None:
        return list(range(rank))
    if rank < 2:
        raise ConfigError(f"per-channel statistics need a channel axis, but {what} has a {rank}-D output")
    if shape[keep].is_dynamic:
        raise ConfigError(f"per-channel statistics need a static channel count, but {what} has shape {shape} "
                          f"(channel axis {keep})")
    return [a for a in range(rank) if a != keep % rank]


def _reductions(value: ov.Output, request: StatRequest) -> list[ov.Output]:
    axes = ops.constant(np.array(reduce_axes(value, request.axis, repr(request.target)), np.int64))
    if request.kind == "minmax":
        # Reduce in place over the tensor's own axes: flattening it first would force a layout copy.
        return [ops.reduce_min(value, axes, keep_dims=False).output(0),
                ops.reduce_max(value, axes, keep_dims=False).output(0)]
    diff = differences(value, request.neighbour_axis)
    mean = ops.reduce_mean(diff, axes, keep_dims=True)
    centred = ops.subtract(diff, mean)
    m2 = ops.reduce_sum(ops.multiply(centred, centred), axes, keep_dims=False)
    # Each dimension is exact in f32 (< 2**24), so the element count survives the single f32 output.
    shape = ops.convert(ops.shape_of(diff), ov.Type.f32)
    return [ops.squeeze(mean, axes).output(0), m2.output(0), ops.reduce_min(diff, axes, keep_dims=False).output(0),
            ops.reduce_max(diff, axes, keep_dims=False).output(0), shape.output(0)]


def _static_length(value: ov.Output, request: StatRequest) -> int:
    shape = value.get_partial_shape()
    if not shape.is_static:
        raise ConfigError(f"statistics of {request.target!r} have a dynamic size {shape}")
    return int(np.prod([int(d) for d in value.get_shape()], dtype=np.int64))


class _Fold:
    """Folds batch after batch into the running results: min/max with two in-place ufuncs over the contiguous
    halves of the vector (per-batch host work is a visible share of calibration time on small models), moments
    with Chan's merge, histograms with bincount."""

    def __init__(self, layout: list[_Slot], known: dict):
        self.layout = layout
        self.known = known
        self.minima = sum(s.sizes[0] for s in layout if s.request.kind == "minmax")
        self.reduced = any(s.request.kind != "histogram" for s in layout)  # output 0 is the reduced vector
        self.others = [s for s in layout if s.request.kind != "minmax"]
        self.vector: np.ndarray | None = None
        self.state: dict[StatRequest, RunningMoments | np.ndarray] = {}

    def add(self, outputs: tuple) -> None:
        reduced = outputs[0] if self.reduced else None
        if reduced is not None:
            if self.vector is None:
                self.vector = reduced.astype(np.float32, copy=True)
            elif self.minima:
                n = self.minima
                np.minimum(self.vector[:n], reduced[:n], out=self.vector[:n])
                np.maximum(self.vector[n:2 * n], reduced[n:2 * n], out=self.vector[n:2 * n])
        first_raw = 1 if self.reduced else 0
        for slot in self.others:
            if slot.request.kind == "moments":
                self._merge_moments(slot, reduced)
            else:
                self._add_histogram(slot, outputs[first_raw + slot.raw])

    def _merge_moments(self, slot: _Slot, reduced: np.ndarray) -> None:
        ends = np.cumsum((slot.start,) + slot.sizes)
        mean, m2, low, high, shape = (reduced[a:b] for a, b in zip(ends[:-1], ends[1:]))
        groups = len(mean)
        state = self.state.setdefault(slot.request, RunningMoments.empty(groups))
        state.merge(np.full(groups, np.prod(shape.astype(np.float64)) / groups), mean, m2, low, high)

    def _add_histogram(self, slot: _Slot, tensor: np.ndarray) -> None:
        request = slot.request
        bound = self.known[StatRequest(request.target, "minmax", request.axis, derive=request.derive)]
        counts = histogram(tensor, bound.low, bound.high, request.bins, request.axis)
        state = self.state.get(request)
        self.state[request] = counts if state is None else state + counts

    def results(self) -> dict:
        found = {}
        for slot in self.layout:
            request = slot.request
            if request.kind == "minmax":
                width, start = slot.sizes[0], slot.start
                low = self.vector[start: start + width].astype(np.float64)
                high = self.vector[self.minima + start: self.minima + start + width].astype(np.float64)
                if request.axis is None:
                    low, high = low.reshape(()), high.reshape(())
                found[request] = MinMax(low, high)
            elif request.kind == "moments":
                found[request] = self.state[request]
            else:
                bound = self.known[StatRequest(request.target, "minmax", request.axis, derive=request.derive)]
                found[request] = Histogram(self.state[request], bound.low, bound.high)
        return found


def histogram(tensor: np.ndarray, low, high, bins: int, axis: int | None) -> np.ndarray:
    """Counts of ``tensor`` values in ``bins`` equal bins over [low, high] (per channel of ``axis``: one row each)."""
    if axis is not None:
        channels = tensor.shape[axis]
        values = np.moveaxis(tensor, axis, 0).reshape(channels, -1).astype(np.float64)
        lo, hi = np.asarray(low).reshape(-1, 1), np.asarray(high).reshape(-1, 1)
    else:
        channels = 1
        values = tensor.reshape(1, -1).astype(np.float64)
        lo, hi = np.float64(low), np.float64(high)
    width = np.where(hi > lo, hi - lo, 1.0)
    index = np.clip(((values - lo) / width * bins).astype(np.int64), 0, bins - 1)
    flat = (index + np.arange(channels).reshape(-1, 1) * bins).ravel()
    return np.bincount(flat, minlength=channels * bins).reshape(channels, bins)


def observe(model: ov.Model, samples: Iterable, requests: Iterable[StatRequest], *, device: str = "CPU",
            decode_steps: int = generate.CALIBRATION_STEPS) -> tuple[dict[StatRequest, MinMax], list[np.ndarray]]:
    """Min/max ``requests`` over ``samples`` and the model's own outputs (one array per output: the per-sample
    outputs stacked on a new axis 0, so a model whose batch axis is not 0 still gives one row per sample), from one
    pass of one statistics model, one sample at a time (held-out validation: a few samples, any model).

    A stateful language model runs each sample as :func:`collect` does (the state reset, a prefill and
    ``decode_steps`` greedy decode steps); its outputs are each step's last position, ``[samples, steps, ...]``: the
    logits of the tokens a user reads."""
    wanted = list(dict.fromkeys(r for r in requests if r.kind == "minmax"))
    stateful = is_stateful(model)
    stats_model, layout = statistics_model(model, wanted, keep_outputs=True)
    runner = Runner(stats_model, device=device, batch_size=1, batched_outputs=False, stateful=stateful,
                    command="protect")
    fold = _Fold(layout, {})
    own = len(model.outputs)
    collected: list[list[np.ndarray]] = [[] for _ in range(own)]
    for steps, values in _observed(runner, model, samples, len(stats_model.outputs) - own, decode_steps):
        for outputs in steps if wanted else ():
            fold.add(outputs)
        for index, value in enumerate(values):
            collected[index].append(np.array(value, copy=True))
    found = fold.results() if wanted and fold.vector is not None else {}
    return found, [np.stack(parts) for parts in collected]


def _observed(runner: Runner, model: ov.Model, samples: Iterable, logits: int, decode_steps: int
              ) -> Iterable[tuple[list[tuple], list[np.ndarray]]]:
    """Per sample: the statistics model's outputs of each inference, and the model's own outputs (of a stateful
    model: each output's last position at every step, stacked). Views, valid until the next one."""
    own = len(model.outputs)
    if not is_stateful(model):
        for outputs, _ in runner.run(data_mod.batches(samples, model, 1)):
            yield [outputs], list(outputs[len(outputs) - own:])
        return
    for sample in samples:
        steps = [outputs for _, outputs in generate.steps(runner, model, sample, decode_steps, logits)]
        yield steps, [np.stack([np.asarray(step[i])[0, -1] for step in steps])
                      for i in range(len(steps[0]) - own, len(steps[0]))]
