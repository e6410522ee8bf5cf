"""The graph side of Checksum: encoded sums, residuals, the pass test and the corrections (see checksum.py).

Layers are named by target id (:func:`ovrange.graph.node_ids`); every builder takes the model it edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.graph import constant_values, constant_weight, node_ids

SUFFIX = "/checksum"
TINY = 1e-30  # keeps the calibration ratio finite for an all-zero row


@dataclass(frozen=True)
class Layer:
    """One checked layer: the MAC node's id, its kind (``matmul`` / ``conv``), the id of its constant bias Add
    (or None), and so the id of the output that is checked."""

    name: str
    kind: str
    bias: str | None

    @property
    def checked(self) -> str:
        return self.bias or self.name


def node(model: ov.Model, key: str) -> ov.Node:
    """The node with id ``key``."""
    return dict(node_ids(model))[key]


def feature_axis(layer: Layer, y: ov.Output) -> int:
    return y.get_partial_shape().rank.get_length() - 1 if layer.kind == "matmul" else 1


def _axis(layer: Layer, y: ov.Output) -> ov.Node:
    return ops.constant(np.array([feature_axis(layer, y)], np.int64))


def auto_pad(mac: ov.Node) -> str:
    return str(mac.get_auto_pad()).lower().rsplit(".", 1)[-1].replace("notset", "explicit")


def encoded_sum(mac: ov.Node, x: ov.Output, name: str) -> ov.Node:
    """C_R without the bias: ``x (W 1)`` or ``conv(x, sum_o W[o])``, from weights summed in float64 once."""
    weights = constant_values(constant_weight(mac)).astype(np.float64)
    if mac.get_type_name() == "MatMul":
        # x (W 1) as a multiply and a reduction, not a MatMul: the CPU plugin would fuse a MatMul on the same input
        # into the layer's own FullyConnected (one more output column), which made it pick a slower kernel.
        row = weights.sum(axis=0 if mac.get_transpose_b() else 1).astype(np.float32)
        return ops.reduce_sum(ops.multiply(x, ops.constant(row)), ops.constant(np.array([-1], np.int64)),
                              keep_dims=True, name=name)
    kernel = weights.sum(axis=0, keepdims=True).astype(np.float32)
    return ops.convolution(x, ops.constant(kernel), mac.get_strides(), mac.get_pads_begin(), mac.get_pads_end(),
                           mac.get_dilations(), auto_pad(mac), name=name)


def bias_values(model: ov.Model, layer: Layer) -> np.ndarray | None:
    if layer.bias is None:
        return None
    add, layer_out = node(model, layer.bias), node(model, layer.name).output(0)
    return constant_values(add.input_value(1) if add.input_value(0) == layer_out else add.input_value(0))


def residual(model: ov.Model, layer: Layer, y: ov.Output, name: str) -> ov.Node:
    """``|C_L - C_R|`` per row / pixel (the feature axis kept, size 1)."""
    mac = node(model, layer.name)
    bias = bias_values(model, layer)
    total = 0.0 if bias is None else float(bias.astype(np.float64).sum())
    left = ops.reduce_sum(y, _axis(layer, y), keep_dims=True, name=name + "/C_L")
    right = ops.add(encoded_sum(mac, mac.input_value(0), name + "/encode"), ops.constant(np.float32(total)),
                    name=name + "/C_R")
    return ops.abs(ops.subtract(left, right), name=name + "/residual")


def magnitude(layer: Layer, y: ov.Output, name: str) -> ov.Node:
    return ops.reduce_sum(ops.abs(y), _axis(layer, y), keep_dims=True, name=name + "/magnitude")


@dataclass(frozen=True)
class Residual:
    """The residual of a layer's check (``ratio``: divided by ``sum |y|``), as a value the statistics loop reduces
    (:class:`ovrange.stats.StatRequest` ``derive``)."""

    layer: Layer
    ratio: bool = False

    def __call__(self, model: ov.Model, y: ov.Output) -> ov.Output:
        name = self.layer.checked + SUFFIX
        res = residual(model, self.layer, y, name)
        if not self.ratio:
            return res.output(0)
        return ops.divide(res, ops.maximum(magnitude(self.layer, y, name), ops.constant(np.float32(TINY)))).output(0)


def pass_node(model: ov.Model, layer: Layer, y: ov.Output, check: dict[str, Any], name: str) -> ov.Node:
    """True where the check passes (NaN/Inf residuals fail)."""
    res = residual(model, layer, y, name)
    tol = ops.constant(np.float32(check["tolerance"]))
    if check["mode"] == "absolute":
        return ops.less_equal(res, tol, name=name + "/pass")  # False for NaN and +Inf
    within = ops.less_equal(res, ops.multiply(magnitude(layer, y, name), tol))
    return ops.logical_and(within, ops.is_finite(res), name=name + "/pass")


def all_passed(ok: ov.Node, name: str | None = None) -> ov.Node:
    every = ops.constant(np.arange(ok.get_output_partial_shape(0).rank.get_length(), dtype=np.int64))
    return ops.reduce_logical_and(ok, every, keep_dims=False, name=name)


def layer_copy(mac: ov.Node, bias: np.ndarray | None, x: ov.Output, name: str) -> ov.Node:
    """A second, independent computation of the layer (and its bias) on ``x``.

    The copy multiplies by ``-W`` and negates the result: bit for bit the same value (IEEE negation is exact and
    rounding is sign-symmetric), but not an identical node, which OpenVINO would merge with the original layer
    (common-subexpression elimination) and so read the very computation the check distrusts.
    """
    weights = ops.constant(-constant_values(constant_weight(mac)))
    if mac.get_type_name() == "MatMul":
        out = ops.matmul(x, weights, False, mac.get_transpose_b(), name=name + "/recompute")
    else:
        out = ops.convolution(x, weights, mac.get_strides(), mac.get_pads_begin(), mac.get_pads_end(),
                              mac.get_dilations(), auto_pad(mac), name=name + "/recompute")
    out = ops.negative(out, name=name + "/recompute_sign")
    return out if bias is None else ops.add(out, ops.constant(bias), name=name + "/recompute_bias")


def if_else(condition: ov.Output, passed: list[ov.Output], body_inputs: list[ov.Output], make_else,
            name: str) -> ov.Node:
    """``If(condition)``: the then-branch returns ``passed`` unchanged; the else-branch returns
    ``make_else(parameters for body_inputs)``. Outputs in the order of ``passed``."""
    then_params = [ops.parameter(v.get_partial_shape(), v.get_element_type()) for v in passed]
    then_body = ov.Model([ops.result(p) for p in then_params], then_params, name + "/then")
    else_params = [ops.parameter(v.get_partial_shape(), v.get_element_type()) for v in body_inputs]
    else_body = ov.Model([ops.result(r) for r in make_else([p.output(0) for p in else_params])], else_params,
                         name + "/else")
    branch = ops.if_op(condition)
    branch.set_friendly_name(name + "/if")
    branch.set_then_body(then_body)
    branch.set_else_body(else_body)
    for value, param in zip(passed, then_params):
        branch.set_input(value, param, None)
    for value, param in zip(body_inputs, else_params):
        branch.set_input(value, None, param)
    for k in range(len(passed)):
        branch.set_output(then_body.get_results()[k], else_body.get_results()[k])
    branch.validate_and_infer_types()
    return branch


def corrected(model: ov.Model, layer: Layer, check: dict[str, Any], correction: str, branch: str,
              y: ov.Output) -> ov.Node:
    """The node that replaces ``y`` (the checked output) for its consumers."""
    name = layer.checked + SUFFIX
    mac = node(model, layer.name)
    ok = pass_node(model, layer, y, check, name)
    bias = bias_values(model, layer)
    if correction == "recompute" and branch == "if":
        return if_else(all_passed(ok, name + "/all").output(0), [y], [mac.input_value(0)],
                       lambda xs: [layer_copy(mac, bias, xs[0], name).output(0)], name)
    if correction == "recompute":
        fixed = layer_copy(mac, bias, mac.input_value(0), name)
    elif correction == "zero":
        fixed = ops.constant(np.float32(0.0))
    else:
        fixed = ops.clamp(y, float(check["low"]), float(check["high"]), name=name + "/clamp")
    return ops.select(ok, y, fixed, name=name + "/select")


def recompute_model(original: ov.Model, model: ov.Model, checks: dict[str, dict[str, Any]]) -> None:
    """One ``If`` on the outputs of ``model`` (edited): all checks pass -> the outputs; else a clean copy of
    ``original`` re-runs the inference from the inputs (only the outputs are passed through)."""
    condition = None
    for checked, check in checks.items():
        layer = layer_of(check)
        y = node(model, checked).output(0)
        passed = all_passed(pass_node(model, layer, y, check, checked + SUFFIX), checked + SUFFIX + "/all")
        condition = passed if condition is None else ops.logical_and(condition, passed)
    results = list(model.get_results())
    sources = [r.input_value(0) for r in results]
    spare = original.clone()
    spare_outputs = [r.input_value(0) for r in spare.get_results()]

    def rerun(params: list[ov.Output]) -> list[ov.Output]:
        for ours, theirs in zip(spare.get_parameters(), params):
            for target in list(ours.output(0).get_target_inputs()):
                target.replace_source_output(theirs)
        return spare_outputs

    branch = if_else(condition.output(0), sources, [p.output(0) for p in model.get_parameters()], rerun,
                     original.get_friendly_name() + SUFFIX)
    for k, (result, source) in enumerate(zip(results, sources)):
        names = set(source.get_names())
        result.input(0).replace_source_output(branch.output(k))  # only the Result: the checks read the layer output
        if names:
            source.get_tensor().set_names(set())
            branch.output(k).get_tensor().set_names(names)


def gate(model: ov.Model, check: dict[str, Any], out: ov.Output, make, mode: str) -> ov.Node:
    """``make(out)`` (a correction of an activation output) applied only where ``check`` fails: per row / pixel
    with ``select`` (both computed, always), or for the whole batch inside an ``If`` run only when a check failed."""
    layer = layer_of(check)
    y = node(model, layer.checked).output(0)
    ok = pass_node(model, layer, y, check, layer.checked + SUFFIX + "/gate")
    if mode == "select":
        return ops.select(ok, out, make(out))
    return if_else(all_passed(ok).output(0), [out], [out], lambda xs: [make(xs[0]).output(0)],
                   layer.checked + SUFFIX + "/gate")


def layer_of(check: dict[str, Any]) -> Layer:
    return Layer(check["layer"], check["kind"], check["bias"])
