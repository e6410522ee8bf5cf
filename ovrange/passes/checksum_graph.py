"""The graph side of Checksum: encoded sums, residuals, the pass test and the corrections (see checksum.py).

Layers are named by target id (:func:`ovrange.graph.node_ids`); every builder takes ``nodes``, the id -> node map
of the model it edits (built once per pass: :func:`nodes_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.graph import constant_values, constant_weight, move_names, node_ids
from ovrange.targets import feature_axis

SUFFIX = "/checksum"
TINY = 1e-30  # keeps the calibration ratio finite for an all-zero row


@dataclass(frozen=True)
class Layer:
    """One checked layer: the MAC node's id, its kind (``matmul`` / ``conv``), the id of its constant bias Add
    (or None), and so the id of the output that is checked. ``whole``: a convolution checked once per sample
    (sums over channels and pixels) instead of per output pixel -- see :func:`input_weights`."""

    name: str
    kind: str
    bias: str | None
    whole: bool = False

    @property
    def checked(self) -> str:
        return self.bias or self.name


def nodes_of(model: ov.Model) -> dict[str, ov.Node]:
    """id -> node of ``model`` (build it once per pass: ids come from one topological walk)."""
    return dict(node_ids(model))


def _axis(layer: Layer, y: ov.Output) -> ov.Node:
    if layer.whole:  # channels and pixels
        return ops.constant(np.arange(1, y.get_partial_shape().rank.get_length(), dtype=np.int64))
    return ops.constant(np.array([feature_axis(y)], np.int64))  # the layer's output channels


def auto_pad(mac: ov.Node) -> str:
    return str(mac.get_auto_pad()).lower().rsplit(".", 1)[-1].replace("notset", "explicit")


def wholly_encodable(mac: ov.Node) -> bool:
    """A convolution whose input and output have static channels and pixels and explicit (or no) padding: its
    checksum over a whole sample is a constant-weighted sum of its input (:func:`input_weights`)."""
    shapes = (mac.input_value(0).get_partial_shape(), mac.output(0).get_partial_shape())
    return (mac.get_type_name() == "Convolution" and auto_pad(mac) in ("explicit", "valid")
            and all(s.rank.is_static and all(d.is_static for d in list(s)[1:]) for s in shapes))


def input_weights(mac: ov.Node) -> np.ndarray:
    """``M`` with ``sum over channels and pixels of conv(x, W) = sum(x * M)``: each input value times the summed
    kernel taps that read it, over every output pixel (float64). One multiply and one reduction of the input
    replace the single-output-channel convolution, a slow kernel case on CPU."""
    kernel = constant_values(constant_weight(mac)).astype(np.float64).sum(axis=0)  # [C, k1, k2, ...]
    in_shape = [d.get_length() for d in list(mac.input_value(0).get_partial_shape())[2:]]
    out_shape = [d.get_length() for d in list(mac.output(0).get_partial_shape())[2:]]
    valid = auto_pad(mac) == "valid"
    pads = [0] * len(in_shape) if valid else list(mac.get_pads_begin())
    weights = np.zeros((kernel.shape[0], *in_shape))
    for tap in np.ndindex(*kernel.shape[1:]):
        index = []
        for axis, (k, size) in enumerate(zip(tap, in_shape)):
            read = np.arange(out_shape[axis]) * mac.get_strides()[axis] - pads[axis] + k * mac.get_dilations()[axis]
            index.append(read[(read >= 0) & (read < size)])
        weights[(slice(None), *np.ix_(*index))] += kernel[(slice(None), *tap)].reshape(-1, *[1] * len(in_shape))
    return weights


def encoded_sum(mac: ov.Node, x: ov.Output, name: str, whole: bool = False) -> ov.Node:
    """C_R without the bias: ``x (W 1)`` (a ``[K, 1]`` MatMul) or ``conv(x, sum_o W[o])`` (``whole``:
    ``sum(x * M)``), from weights summed in float64 once."""
    if whole:
        axes = ops.constant(np.arange(1, x.get_partial_shape().rank.get_length(), dtype=np.int64))
        return ops.reduce_sum(ops.multiply(x, ops.constant(input_weights(mac)[None].astype(np.float32))), axes,
                              keep_dims=True, name=name)
    weights = constant_values(constant_weight(mac)).astype(np.float64)
    if mac.get_type_name() == "MatMul":
        # x (W 1) as a [K, 1] MatMul: one FullyConnected kernel (its bias Add fused) instead of a Multiply and a
        # ReduceSum; with two inference threads on the ViT the check costs about half (docs/checksum.md).
        row = weights.sum(axis=0 if mac.get_transpose_b() else 1).astype(np.float32)
        return ops.matmul(x, ops.constant(row[:, None]), False, False, name=name)
    kernel = weights.sum(axis=0, keepdims=True).astype(np.float32)
    return ops.convolution(x, ops.constant(kernel), mac.get_strides(), mac.get_pads_begin(), mac.get_pads_end(),
                           mac.get_dilations(), auto_pad(mac), name=name)


def bias_values(nodes: Mapping[str, ov.Node], layer: Layer) -> np.ndarray | None:
    if layer.bias is None:
        return None
    add, layer_out = nodes[layer.bias], nodes[layer.name].output(0)
    return constant_values(add.input_value(1) if add.input_value(0) == layer_out else add.input_value(0))


def residual(nodes: Mapping[str, ov.Node], layer: Layer, y: ov.Output, name: str) -> ov.Node:
    """``|C_L - C_R|`` per row / pixel (the feature axis kept, size 1), or per sample (``layer.whole``)."""
    mac = nodes[layer.name]
    bias = bias_values(nodes, layer)
    total = 0.0 if bias is None else float(bias.astype(np.float64).sum())
    if layer.whole:  # the bias is added at every output pixel
        total *= float(np.prod([d.get_length() for d in list(mac.output(0).get_partial_shape())[2:]]))
    left = ops.reduce_sum(y, _axis(layer, y), keep_dims=True, name=name + "/C_L")
    right = ops.add(encoded_sum(mac, mac.input_value(0), name + "/encode", layer.whole),
                    ops.constant(np.float32(total)), name=name + "/C_R")
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
        res = residual(nodes_of(model), self.layer, y, name)
        if not self.ratio:
            return res.output(0)
        return ops.divide(res, ops.maximum(magnitude(self.layer, y, name), ops.constant(np.float32(TINY)))).output(0)


def excess(nodes: Mapping[str, ov.Node], layer: Layer, y: ov.Output, check: dict[str, Any], name: str) -> ov.Node:
    """``residual - tolerance``: <= 0 exactly where the check passes (IEEE subtraction keeps the order), NaN or
    positive where it fails (NaN/Inf outputs make the residual NaN/Inf)."""
    res = residual(nodes, layer, y, name)
    tol = ops.constant(np.float32(check["tolerance"]))
    if check["mode"] == "absolute":
        return ops.subtract(res, tol, name=name + "/excess")
    res = ops.select(ops.is_finite(res), res, ops.constant(np.float32(np.nan)))
    return ops.subtract(res, ops.multiply(magnitude(layer, y, name), tol), name=name + "/excess")


def pass_node(nodes: Mapping[str, ov.Node], layer: Layer, y: ov.Output, check: dict[str, Any],
              name: str) -> ov.Node:
    """True where the check passes (False for NaN)."""
    return ops.less_equal(excess(nodes, layer, y, check, name), ops.constant(np.float32(0.0)), name=name + "/pass")


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


def settled(value: ov.Output, like: ov.Output) -> ov.Node:
    """``value`` (an ``If`` output inside the graph) broadcast to the shape of ``like``, which it has: an identity.

    The CPU plugin (OpenVINO 2026.4 on AVX2, e.g. AMD EPYC) hands the consumers of a dynamic-batch ``If`` stale
    memory on the first inference at a batch larger than any before, when an Eltwise and a layout Reorder follow
    the ``If`` (repro/if_dynamic_batch.py). A node that copies the tensor right after the ``If`` avoids it (this
    Broadcast; a full Slice too); a Reshape or a Multiply by 1 does not (the plugin drops them).
    """
    return ops.broadcast(value, ops.shape_of(like), name=value.get_node().get_friendly_name() + "/settled")


def corrected(nodes: Mapping[str, ov.Node], layer: Layer, check: dict[str, Any], correction: str, branch: str,
              y: ov.Output) -> ov.Node:
    """The node that replaces ``y`` (the checked output) for its consumers."""
    name = layer.checked + SUFFIX
    mac = nodes[layer.name]
    ok = pass_node(nodes, layer, y, check, name)
    bias = bias_values(nodes, layer)
    if correction == "recompute" and branch == "if":
        return settled(if_else(all_passed(ok, name + "/all").output(0), [y], [mac.input_value(0)],
                               lambda xs: [layer_copy(mac, bias, xs[0], name).output(0)], name).output(0), y)
    if correction == "recompute":
        fixed = layer_copy(mac, bias, mac.input_value(0), name)
    elif correction == "zero":
        fixed = ops.constant(np.float32(0.0))
    else:
        fixed = ops.clamp(y, float(check["low"]), float(check["high"]), name=name + "/clamp")
    return ops.select(ok, y, fixed, name=name + "/select")


def all_checks_pass(nodes: Mapping[str, ov.Node], checks: dict[str, dict[str, Any]], name: str) -> ov.Node:
    """One flag for the whole model: every layer's excess flattened per sample, concatenated, compared with 0
    once and reduced once (few small kernels: at batch 1 their count, not their size, is the cost)."""
    flat = ops.constant(np.array([0, -1], np.int64))
    parts = [ops.reshape(excess(nodes, layer_of(check), nodes[checked].output(0), check, checked + SUFFIX), flat,
                         True) for checked, check in checks.items()]
    joined = ops.concat(parts, 1) if len(parts) > 1 else parts[0]
    return all_passed(ops.less_equal(joined, ops.constant(np.float32(0.0))), name + "/all")


def recompute_model(original: ov.Model, model: ov.Model, checks: dict[str, dict[str, Any]]) -> ov.Node:
    """One ``If`` on the outputs of ``model`` (edited): all checks pass -> the outputs; else a clean copy of
    ``original`` re-runs the inference from the inputs (only the outputs are passed through). Returns the If."""
    condition = all_checks_pass(nodes_of(model), checks, original.get_friendly_name() + SUFFIX)
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
        result.input(0).replace_source_output(branch.output(k))  # only the Result: the checks read the layer output
        move_names(source, branch.output(k))
    return branch


def gate(nodes: Mapping[str, ov.Node], check: dict[str, Any], out: ov.Output, make, mode: str,
         also: ov.Output | None = None) -> ov.Node:
    """``make(out)`` (a correction of an activation output) applied only where ``check`` (or the detector ``also``,
    True where fine, broadcast against it) fails: per row / pixel with ``select`` (both computed, always), or for
    the whole batch inside an ``If`` run only when a check failed."""
    layer = layer_of(check)
    y = nodes[layer.checked].output(0)
    ok = pass_node(nodes, layer, y, check, layer.checked + SUFFIX + "/gate")
    if also is not None:
        ok = ops.logical_and(ok, also)
    if mode == "select":
        return ops.select(ok, out, make(out))
    return settled(if_else(all_passed(ok).output(0), [out], [out], lambda xs: [make(xs[0]).output(0)],
                           layer.checked + SUFFIX + "/gate").output(0), out)


def layer_of(check: dict[str, Any]) -> Layer:
    return Layer(check["layer"], check["kind"], check["bias"], bool(check.get("whole", False)))
