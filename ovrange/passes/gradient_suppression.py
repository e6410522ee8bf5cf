"""GradientSuppression (Amarnath, Mejri, Ma, Chatterjee: *Error Resilient Deep Neural Networks using Neuron
Gradient Statistics*): zero the neurons whose difference to their neighbour is anomalous.

For each protected activation output ``y`` and a circularly ordered neuron axis, the "gradient" of neuron ``i`` is
``d[i] = y[i] - y[i-1]`` (the paper's length-3 kernel ``[-1, 1, 0]``, cross-correlated). Its mean and standard
deviation over the calibration set are gathered with Welford's algorithm (per-batch moments reduced inside the
graph, merged on the host with Chan's parallel formula). The protected graph computes ``d`` again and zeroes
neuron ``i`` when ``d[i]`` is anomalous and ``d[i-1]`` is not: a single faulty neuron ``j`` makes both ``d[j]``
and ``d[j+1]`` anomalous, and the first of that group is the gradient of the faulty value with respect to its
clean neighbour. A difference is anomalous when ``not |d - mean| <= T``, so NaN counts as anomalous.

Inserted after activation ``A`` (all named ``A/gradient_suppression...``; ``previous`` is a circular shift by one,
``Concat(x[-1:], x[:-1])``)::

    y -> previous -> Subtract -> [Subtract mean] -> Abs -> LessEqual(T) -> LogicalNot ------> LogicalAnd -> Select
    |                                                           '-> previous (of "normal") ---'          |
    '---------------------------------------------------------------------------------------------------------'

The paper triggers suppression only when a separate detector flags an error (to save hardware work). By default
it is always on here; ``gate: select`` / ``gate: if`` gate it with the Checksum of the MAC layer feeding the
activation (:func:`ovrange.passes.checksum_gate.gate`), per row/pixel or for the batch inside an ``If``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange import data as data_mod
from ovrange.config import AlgorithmConfig, Param, one_of
from ovrange.errors import DataError, ModelError
from ovrange.graph import insert_after, node_by_name
from ovrange.passes import PassResult, checksum_gate, range_supervision
from ovrange.passes.range_supervision import EXTENDED_ACTIVATIONS, require_targets
from ovrange.stats import CHANNEL_AXIS, calibration_request, infer_batch

SUFFIX = "/gradient_suppression"
# Last-bit differences between the statistics run and the protected model's kernels (other batch size, other
# kernel choice) must not make a calibration value look anomalous: the threshold is widened by this factor.
THRESHOLD_SLACK = 1e-5


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


PARAMS: dict[str, Param] = {
    "activations": Param(list, list(EXTENDED_ACTIVATIONS), None, "activation op types whose outputs are protected"),
    "axis": Param(str, "channel", one_of("channel", "width"),
                  "neighbours along the channel axis (1: the same pixel of neighbouring feature maps, the paper's "
                  "neighbouring neurons) or the last axis (neighbouring pixels of a row); the same axis for 2-D "
                  "outputs"),
    "granularity": Param(str, "layer", one_of("layer", "channel"),
                         "one mean/std/threshold per layer (the paper) or one per channel (axis 1)"),
    "threshold": Param(str, "max", one_of("max", "sigma"),
                       "max: T = margin * max |d - mean| seen on the calibration set (clean calibration outputs "
                       "unchanged for margin >= 1); sigma: T = k * std (the paper's t-test form)"),
    "margin": Param(float, 1.0, _positive, "multiplier of the largest observed deviation (threshold: max)"),
    "k": Param(float, 6.0, _positive, "number of standard deviations (threshold: sigma)"),
    "gate": Param(str, "none", one_of("none", "select", "if"),
                  "seed 003's gating: suppress only where the Checksum of the MAC layer feeding the activation "
                  "fails (select: per row/pixel, both paths computed; if: the suppression runs only when a check "
                  "failed); none: always on"),
}


def check_params(params: dict[str, Any]) -> str | None:
    problem = range_supervision.check_params(params)  # the activation list
    if problem:
        return problem
    if params["threshold"] == "max" and params["k"] != PARAMS["k"].default:
        return "k applies to threshold 'sigma'; with threshold 'max' set margin instead"
    if params["threshold"] == "sigma" and params["margin"] != PARAMS["margin"].default:
        return "margin applies to threshold 'max'; with threshold 'sigma' set k instead"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Statistics


@dataclass
class RunningMoments:
    """Count, mean, sum of squared deviations (M2), min and max, merged batch by batch (Welford / Chan).

    Arrays have one entry per group (one for a layer, one per channel); arithmetic is float64.
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls, groups: int) -> "RunningMoments":
        zeros = np.zeros(groups, np.float64)
        return cls(zeros.copy(), zeros.copy(), zeros.copy(), np.full(groups, np.inf), np.full(groups, -np.inf))

    def merge(self, count, mean, m2, low, high) -> None:
        """Chan et al.'s pairwise update with a batch's (count, mean, M2, min, max); a count of 1 is Welford's step."""
        count, mean, m2 = (np.asarray(v, np.float64).reshape(-1) for v in (count, mean, m2))
        total = self.count + count
        delta = mean - self.mean
        safe = np.where(total > 0, total, 1.0)
        self.mean = self.mean + delta * count / safe
        self.m2 = self.m2 + m2 + delta * delta * self.count * count / safe
        self.count = total
        self.low = np.minimum(self.low, np.asarray(low, np.float64).reshape(-1))
        self.high = np.maximum(self.high, np.asarray(high, np.float64).reshape(-1))

    def push(self, values: np.ndarray) -> None:
        """Welford's update, one value at a time (reference implementation; groups are the trailing axis)."""
        for row in np.asarray(values, np.float64).reshape(-1, len(self.count)):
            self.merge(np.ones_like(row), row, np.zeros_like(row), row, row)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation."""
        return np.sqrt(self.m2 / np.where(self.count > 0, self.count, 1.0))


def neighbour_axis(output: ov.Output, axis: str) -> int:
    rank = output.get_partial_shape().rank.get_length()
    return CHANNEL_AXIS if axis == "channel" else rank - 1


def previous(output: ov.Output, axis: int, name: str | None = None) -> ov.Node:
    """``x[i-1]`` along ``axis``, circularly: ``Concat(x[-1:], x[:-1])``.

    The same as ``Roll(x, 1, axis)``, which the CPU plugin runs with a reference kernel about twice as slow as
    Slice + Concat.
    """
    def part(start: int, stop: int, suffix: str) -> ov.Node:
        return ops.slice(output, ops.constant(np.array([start], np.int64)), ops.constant(np.array([stop], np.int64)),
                         ops.constant(np.array([1], np.int64)), ops.constant(np.array([axis], np.int64)),
                         name=None if name is None else name + suffix)

    return ops.concat([part(-1, np.iinfo(np.int64).max, "/last"), part(0, -1, "/head")], axis, name=name)


def differences(output: ov.Output, axis: int, name: str | None = None) -> ov.Node:
    """``d[i] = y[i] - y[i-1]`` along ``axis``, circularly (the paper's kernel ``[-1, 1, 0]``)."""
    before = previous(output, axis, None if name is None else name + "/previous")
    return ops.subtract(output, before, name=None if name is None else name + "/difference")


def moments_model(model: ov.Model, targets: dict[str, int], per_channel: bool) -> ov.Model:
    """A clone whose outputs are, per target: batch mean, M2, min, max of the differences, and their shape."""
    clone = model.clone()
    results = []
    for name, axis in targets.items():
        out = node_by_name(clone, name).output(0)
        diff = differences(out, axis)
        rank = out.get_partial_shape().rank.get_length()
        reduce = ops.constant(np.array([a for a in range(rank) if not (per_channel and a == CHANNEL_AXIS)], np.int64))
        mean = ops.reduce_mean(diff, reduce, keep_dims=True)
        centred = ops.subtract(diff, mean)
        m2 = ops.reduce_sum(ops.multiply(centred, centred), reduce, keep_dims=False)
        results += [ops.squeeze(mean, reduce), m2, ops.reduce_min(diff, reduce, keep_dims=False),
                    ops.reduce_max(diff, reduce, keep_dims=False), ops.shape_of(diff)]
    return ov.Model([ops.result(r) for r in results], clone.get_parameters(), f"{model.get_friendly_name()}_moments")


def collect_moments(model: ov.Model, dataset: Any, targets: dict[str, int], config: AlgorithmConfig, *,
                    per_channel: bool, device: str, progress=None) -> tuple[dict[str, RunningMoments], int]:
    """Stream the calibration subset through the moments model (f32); only reductions reach the host."""
    stats_model = moments_model(model, targets, per_channel)
    request = calibration_request(stats_model, config.batch_size, device)
    samples, total = data_mod.subset(dataset, config.subset_size, config.shuffle, config.seed)
    if total == 0:
        raise DataError("the calibration dataset is empty")
    moments: dict[str, RunningMoments] = {}
    seen = 0
    for arrays, count in data_mod.batches(samples, model, config.batch_size):
        values = infer_batch(request, arrays)
        for index, name in enumerate(targets):
            mean, m2, low, high, shape = values[5 * index: 5 * index + 5]
            groups = int(shape[CHANNEL_AXIS]) if per_channel else 1
            if name not in moments:
                moments[name] = RunningMoments.empty(groups)
            n = np.full(groups, np.prod(shape, dtype=np.float64) / groups)
            moments[name].merge(n, mean, m2, low, high)
        seen += count
        if progress:
            progress(min(seen, total), total)
    return moments, seen


# ---------------------------------------------------------------------------------------------------------------
# Thresholds and the rewrite


@dataclass(frozen=True)
class Rule:
    """What the protected graph tests for one activation: ``|d - centre| <= threshold`` along ``axis``."""

    axis: int
    centre: np.ndarray  # float32, one per group; all zero when the mean is zero by construction
    threshold: np.ndarray  # float32, one per group


def zero_mean_by_construction(axis: int, per_channel: bool) -> bool:
    """Circular differences sum to zero along their axis, so any mean over that whole axis is exactly 0.

    Only per-channel statistics of channel-axis differences (one group per channel pair) have a real mean.
    """
    return not (per_channel and axis == CHANNEL_AXIS)


def make_rule(moments: RunningMoments, axis: int, params: dict[str, Any]) -> Rule:
    per_channel = params["granularity"] == "channel"
    f32 = np.float32
    if zero_mean_by_construction(axis, per_channel):
        centre = np.zeros_like(moments.mean, dtype=f32)
    else:
        centre = moments.mean.astype(f32)
    if params["threshold"] == "max":
        # In f32, as the graph computes |d - centre|: every calibration d then passes the test.
        deviation = np.maximum(moments.high.astype(f32) - centre, centre - moments.low.astype(f32))
        threshold = np.maximum(deviation * f32(params["margin"]), deviation if params["margin"] >= 1 else 0)
        threshold = threshold * f32(1 + THRESHOLD_SLACK)
    else:
        threshold = (moments.std * params["k"]).astype(f32)
    return Rule(axis, centre, threshold.astype(f32))


def _broadcast(values: np.ndarray, like: ov.Output) -> ov.Output:
    """A scalar, or a ``[1, C, 1, ...]`` constant for per-channel values, in the element type of ``like``."""
    if values.size == 1:
        node = ops.constant(np.float32(values.reshape(-1)[0]))
    else:
        shape = [1] * like.get_partial_shape().rank.get_length()
        shape[CHANNEL_AXIS] = values.size
        node = ops.constant(values.astype(np.float32).reshape(shape))
    return node.output(0) if like.get_element_type() == ov.Type.f32 else ops.convert_like(node, like).output(0)


def suppression_node(output: ov.Output, rule: Rule, name: str) -> ov.Node:
    """The ops that zero neuron i when d[i] is anomalous and d[i-1] is not; returns the final Select."""
    diff = differences(output, rule.axis, name)
    if np.any(rule.centre != 0):
        diff = ops.subtract(diff, _broadcast(rule.centre, output), name=name + "/centred")
    deviation = ops.abs(diff, name=name + "/deviation")
    normal = ops.less_equal(deviation, _broadcast(rule.threshold, output), name=name + "/normal")  # NaN -> False
    anomalous = ops.logical_not(normal, name=name + "/anomalous")
    previous_normal = previous(normal.output(0), rule.axis, name + "/previous_normal")
    first = ops.logical_and(anomalous, previous_normal, name=name + "/first_anomalous")
    return ops.select(first, _broadcast(np.zeros(1), output), output, name=name)


def eligible_targets(model: ov.Model, names: list[str], axis: str) -> tuple[dict[str, int], dict[str, str]]:
    """Targets with their neighbour axis, and the skipped ones with the reason (model outputs: the last layer)."""
    chosen: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name in names:
        out = node_by_name(model, name).output(0)
        shape = out.get_partial_shape()
        if any(target.get_node().get_type_name() == "Result" for target in out.get_target_inputs()):
            skipped[name] = "model output (the last layer is not protected)"
        elif shape.rank.is_dynamic or shape.rank.get_length() < 2:
            skipped[name] = f"needs a rank >= 2 output, has {shape}"
        elif shape[neighbour_axis(out, axis)].is_static and shape[neighbour_axis(out, axis)].get_length() < 2:
            skipped[name] = f"neighbour axis of {shape} has a single neuron"
        else:
            chosen[name] = neighbour_axis(out, axis)
    return chosen, skipped


def run(model: ov.Model, dataset: Any, config: AlgorithmConfig, *, device: str, progress=None) -> PassResult:
    """Neighbour-difference statistics of every eligible activation -> one suppression block each."""
    p = config.params
    targets, skipped = eligible_targets(model, require_targets(model, p["activations"]), p["axis"])
    if not targets:
        raise ModelError(f"model {model.get_friendly_name()!r} has no activation GradientSuppression can protect: "
                         + "; ".join(f"{name}: {why}" for name, why in skipped.items()))
    per_channel = p["granularity"] == "channel"
    moments, samples = collect_moments(model, dataset, targets, config, per_channel=per_channel, device=device,
                                       progress=progress)
    clone = model.clone()
    nodes: dict[str, dict[str, Any]] = {}
    gates = {} if p["gate"] == "none" else checksum_gate.detection_gates(model, dataset, config, list(targets),
                                                                     device=device)
    for name, axis in targets.items():
        rule = make_rule(moments[name], axis, p)
        node = node_by_name(clone, name)
        make = lambda out, r=rule, n=name: suppression_node(out, r, n + SUFFIX)  # noqa: E731
        insert_after(node.output(0), make if name not in gates else
                     lambda out, m=make, g=gates[name]: checksum_gate.gate(clone, g, out, m, p["gate"]))
        nodes[name] = _describe(node.get_type_name(), moments[name], rule)
    clone.validate_nodes_and_infer_types()
    extra = {"zeroed_neuron": "i where d[i] = y[i] - y[i-1] is anomalous and d[i-1] is not",
             "skipped": skipped, "gated": sorted(gates), "ungated": sorted(set(targets) - set(gates))}
    return PassResult(clone, nodes, samples, "f32", extra)


def _describe(op_type: str, moments: RunningMoments, rule: Rule) -> dict[str, Any]:
    def value(array: np.ndarray):
        array = np.asarray(array, np.float64)
        return float(array[0]) if array.size == 1 else [float(v) for v in array]

    return {"type": op_type, "axis": rule.axis, "count": int(moments.count.sum()), "mean": value(moments.mean),
            "std": value(moments.std), "min_difference": value(moments.low), "max_difference": value(moments.high),
            "centre": value(rule.centre), "threshold": value(rule.threshold)}
