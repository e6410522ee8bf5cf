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
activation (:func:`ovrange.passes.checksum_graph.gate`), per row/pixel or for the batch inside an ``If``, and for a
ReLU also with seed 003's second detector, the ReLU check (:func:`relu_check`: the output must be ``max(x, 0)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.errors import ModelError
from ovrange.graph import node_ids
from ovrange.moments import RunningMoments, differences, previous
from ovrange.params import Param, one_of, positive
from ovrange.passes import PassResult, Selection
from ovrange.passes.checksum_graph import Layer, gate, nodes_of
from ovrange.passes.guards import Insertion
from ovrange.passes.checksum_layers import CHECK_DEFAULTS, find_layers, layer_requests, make_checks
from ovrange.stats import StatRequest, Statistics
from ovrange.targets import (ACTIVATIONS, Target, check_activations, find_targets, outputs_by_id, require,
                             select as select_targets)

SUFFIX = "/gradient_suppression"
# Last-bit differences between the statistics run and the protected model's kernels (other batch size, other
# kernel choice) must not make a calibration value look anomalous: the threshold is widened by this factor.
THRESHOLD_SLACK = 1e-5


PARAMS: dict[str, Param] = {
    "activations": Param(list, list(ACTIVATIONS), None, "activation op types whose outputs are protected"),
    "axis": Param(str, "channel", one_of("channel", "width"),
                  "neighbours along the channel axis (1: the same pixel of neighbouring feature maps, the paper's "
                  "neighbouring neurons) or the last axis (neighbouring pixels of a row); the same axis for 2-D "
                  "outputs"),
    "granularity": Param(str, "layer", one_of("layer", "channel"),
                         "one mean/std/threshold per layer (the paper) or one per channel (axis 1)"),
    "threshold": Param(str, "max", one_of("max", "sigma"),
                       "max: T = margin * max |d - mean| seen on the calibration set (clean calibration outputs "
                       "unchanged for margin >= 1); sigma: T = k * std (the paper's t-test form)"),
    "margin": Param(float, 1.0, positive, "multiplier of the largest observed deviation (threshold: max)"),
    "k": Param(float, 6.0, positive, "number of standard deviations (threshold: sigma)"),
    "gate": Param(str, "none", one_of("none", "select", "if"),
                  "seed 003's gating: suppress only where the Checksum of the MAC layer feeding the activation "
                  "fails, or (ReLU) the output is not max(input, 0) (select: per row/pixel, both paths "
                  "computed; if: the suppression runs only when a check failed); none: always on"),
}


def check_params(params: dict[str, Any]) -> str | None:
    problem = check_activations(params["activations"])
    if problem:
        return problem
    if params["threshold"] == "max" and params["k"] != PARAMS["k"].default:
        return "k applies to threshold 'sigma'; with threshold 'max' set margin instead"
    if params["threshold"] == "sigma" and params["margin"] != PARAMS["margin"].default:
        return "margin applies to threshold 'max'; with threshold 'sigma' set k instead"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Thresholds and the rewrite


@dataclass(frozen=True)
class Rule:
    """What the protected graph tests for one activation: ``|d - centre| <= threshold`` along ``axis``."""

    axis: int
    centre: np.ndarray  # float32, one per group; all zero when the mean is zero by construction
    threshold: np.ndarray  # float32, one per group
    group_axis: int = 1  # the axis of the groups when there is one per channel


def zero_mean_by_construction(axis: int, group_axis: int | None) -> bool:
    """Circular differences sum to zero along their axis, so any mean over that whole axis is exactly 0.

    Only per-channel statistics of channel-axis differences (one group per channel pair) have a real mean.
    """
    return group_axis is None or axis != group_axis


def make_rule(moments: RunningMoments, axis: int, params: dict[str, Any], group_axis: int | None = None) -> Rule:
    f32 = np.float32
    if zero_mean_by_construction(axis, group_axis):
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
    return Rule(axis, centre, threshold.astype(f32), 1 if group_axis is None else group_axis)


def _broadcast(values: np.ndarray, like: ov.Output, axis: int = 1) -> ov.Output:
    """A scalar, or a ``[1, C, 1, ...]`` constant (C along ``axis``) for per-channel values, typed like ``like``."""
    if values.size == 1:
        node = ops.constant(np.float32(values.reshape(-1)[0]))
    else:
        shape = [1] * like.get_partial_shape().rank.get_length()
        shape[axis] = values.size
        node = ops.constant(values.astype(np.float32).reshape(shape))
    return node.output(0) if like.get_element_type() == ov.Type.f32 else ops.convert_like(node, like).output(0)


def suppression_node(output: ov.Output, rule: Rule, name: str) -> ov.Node:
    """The ops that zero neuron i when d[i] is anomalous and d[i-1] is not; returns the final Select."""
    diff = differences(output, rule.axis, name)
    if np.any(rule.centre != 0):
        diff = ops.subtract(diff, _broadcast(rule.centre, output, rule.group_axis), name=name + "/centred")
    deviation = ops.abs(diff, name=name + "/deviation")
    normal = ops.less_equal(deviation, _broadcast(rule.threshold, output, rule.group_axis),
                            name=name + "/normal")  # NaN -> False
    anomalous = ops.logical_not(normal, name=name + "/anomalous")
    previous_normal = previous(normal.output(0), rule.axis, name + "/previous_normal")
    first = ops.logical_and(anomalous, previous_normal, name=name + "/first_anomalous")
    return ops.select(first, _broadcast(np.zeros(1), output), output, name=name)


def relu_check(y: ov.Output, name: str) -> ov.Node:
    """Seed 003's second detector: a ReLU's output is its input or zero. True where ``y == max(x, 0)`` exactly
    (x: the ReLU's input); a fault striking the activation *output* -- which the MAC check before it cannot see --
    fails it, and so does NaN. ``Maximum``, not a second ``Relu``: OpenVINO would merge an identical node with the
    one under test."""
    x = y.get_node().input_value(0)
    return ops.equal(y, ops.maximum(x, ops.constant(np.float32(0.0))), name=name + "/relu_check")


def neighbour_axis(target: Target, axis: str) -> int:
    """The axis whose neighbours are compared: the feature (channel) axis, or the last one (``width``)."""
    return (target.feature_axis or 1) if axis == "channel" else target.rank - 1


def eligible_targets(model: ov.Model, targets: list[Target], axis: str) -> tuple[list[Target], dict[str, str]]:
    """Targets GradientSuppression can guard, and the skipped ones with the reason (model outputs: the last layer)."""
    outputs = outputs_by_id(model)
    chosen: list[Target] = []
    skipped: dict[str, str] = {}
    for target in targets:
        out = outputs[target.id]
        shape = out.get_partial_shape()
        if any(t.get_node().get_type_name() == "Result" for t in out.get_target_inputs()):
            skipped[target.id] = "model output (the last layer is not protected)"
        elif target.rank is None or target.rank < 2:
            skipped[target.id] = f"needs a rank >= 2 output, has {shape}"
        elif shape[neighbour_axis(target, axis)].is_static and shape[neighbour_axis(target, axis)].get_length() < 2:
            skipped[target.id] = f"neighbour axis of {shape} has a single neuron"
        else:
            chosen.append(target)
    return chosen, skipped


def select(model: ov.Model, params: dict[str, Any]) -> Selection:
    activations = require(select_targets(find_targets(model), ops=params["activations"]), model,
                          f"supported activations ({', '.join(params['activations'])})")
    chosen, skipped = eligible_targets(model, activations, params["axis"])
    if not chosen:
        raise ModelError(f"model {model.get_friendly_name()!r} has no activation GradientSuppression can protect: "
                         + "; ".join(f"{name}: {why}" for name, why in skipped.items()))
    gates = {} if params["gate"] == "none" else feeding_layers(model, chosen)
    return Selection(chosen, {"skipped": skipped, "gates": gates})


def feeding_layers(model: ov.Model, targets: list[Target]) -> dict[str, Layer]:
    """Activation id -> the Checksum layer whose checked output feeds it directly (seed 003 gates suppression by
    that layer's check). Activations fed by anything else get no gate."""
    by_output = {layer.checked: layer for layer in find_layers(model)[0]}
    ids = {node.get_name(): key for key, node in node_ids(model)}
    outputs = outputs_by_id(model)
    feeding = {}
    for target in targets:
        source = ids[outputs[target.id].get_node().input_value(0).get_node().get_name()]
        if source in by_output:
            feeding[target.id] = by_output[source]
    return feeding


def _request(target: Target, params: dict[str, Any]) -> StatRequest:
    group_axis = (target.feature_axis or 1) if params["granularity"] == "channel" else None
    return StatRequest(target.id, "moments", group_axis, neighbour_axis=neighbour_axis(target, params["axis"]))


def requests(selection: Selection, params: dict[str, Any]) -> list[StatRequest]:
    """Moments of every target's neighbour differences (per layer, or per channel), and the clean residuals of
    the checks that gate them."""
    gates = list({layer.checked: layer for layer in selection.facts["gates"].values()}.values())
    return [_request(t, params) for t in selection.targets] + layer_requests(gates)


def plan(selection: Selection, stats: Statistics, params: dict[str, Any]
         ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One rule (axis, centre, threshold) per target, from its moments (pure)."""
    guards = {}
    for target in selection.targets:
        request = _request(target, params)
        moments = stats[request]
        rule = make_rule(moments, request.neighbour_axis, params, request.axis)
        guards[target.id] = _describe(target, moments, rule)
    gates = selection.facts["gates"]
    if gates:
        layers = list({layer.checked: layer for layer in gates.values()}.values())
        checks = make_checks(layers, stats, CHECK_DEFAULTS,
                             {layer.checked: ("", "") for layer in layers})
        for key, layer in gates.items():
            guards[key]["gate"] = {**checks[layer.checked], "mode_of_gate": params["gate"],
                                   "relu_check": guards[key]["type"] == "Relu"}
    report = {"zeroed_neuron": "i where d[i] = y[i] - y[i-1] is anomalous and d[i-1] is not",
              "skipped": selection.facts["skipped"], "gated": sorted(gates),
              "ungated": sorted(t.id for t in selection.targets if t.id not in gates)}
    return guards, report


def apply(model: ov.Model, plan: Any) -> PassResult:
    """Insert one suppression block after every target of the plan."""
    outputs = outputs_by_id(model)
    nodes = nodes_of(model)
    insertion = Insertion(model)
    for key, guard in plan.guards.items():
        rule = Rule(int(guard["axis"]), np.asarray(guard["centre"], np.float32).reshape(-1),
                    np.asarray(guard["threshold"], np.float32).reshape(-1), int(guard.get("group_axis", 1)))
        name = key + SUFFIX
        make = lambda out, r=rule, n=name: suppression_node(out, r, n)  # noqa: E731
        if "gate" in guard:
            make = lambda out, m=make, g=guard["gate"], n=name: gate(  # noqa: E731
                nodes, g, out, m, g["mode_of_gate"], relu_check(out, n) if g.get("relu_check") else None)
        insertion.after(outputs[key], make)
    return PassResult(model, insertion.done())


def _describe(target: Target, moments: RunningMoments, rule: Rule) -> dict[str, Any]:
    def value(array: np.ndarray):
        array = np.asarray(array, np.float64)
        return float(array[0]) if array.size == 1 else [float(v) for v in array]

    return {"name": target.name, "type": target.op, "axis": rule.axis, "group_axis": rule.group_axis,
            "count": int(moments.count.sum()), "mean": value(moments.mean), "std": value(moments.std),
            "min_difference": value(moments.low), "max_difference": value(moments.high),
            "centre": value(rule.centre), "threshold": value(rule.threshold)}
