"""Checksum: concurrent error detection and correction on the MAC layers (algorithm-based fault tolerance).

Seed 003 detects errors in a layer's multiply-accumulate by comparing the sum of the layer's outputs (C_L) with
the same sum computed from encoded weights (C_R); ALBERTA (NVIDIA, 2024) does the same for transformer GEMMs.
For ``y = x W + b`` (MatMul, weights ``[K, N]``), summing over the N output features::

    C_L = sum_n y[..., n]            C_R = x (W 1) + sum(b)        (W 1: one extra output column)

and for a convolution, summing over output channels, ``C_R = conv(x, sum_o W[o]) + sum(b)``: one extra
single-output-channel convolution. Checks are per row (MatMul) or per output pixel (convolution). In f32 the two
sides differ by rounding, so a check passes when ``|C_L - C_R| <= tol`` (NaN and Inf fail: no extra test needed),
with ``tol`` = ``margin`` x the largest residual seen on clean calibration data (``tolerance: absolute``, the
cheapest graph), or ``|C_L - C_R| <= tol * sum_n |y|`` and finite, with ``tol`` = ``margin`` x the largest clean
ratio (``tolerance: relative``: follows each row's magnitude, three more ops per layer).

On a flag, ``correction``: ``recompute`` computes again (exact: a transient fault is not repeated) -- with
``branch: model`` (default) one ``If`` after the last layer re-runs a clean copy of the whole inference when any
check failed, so the fault-free path pays only for the checks; ``if``: one ``If`` per layer recomputes that
layer (each If copies its layer's tensor: costly on CPU); ``select``: every layer computed twice, chosen by
Select); ``zero`` zeroes the flagged row / pixel (seed 003's
suppression); ``clamp`` clamps it to the layer's calibrated range. A fault in the layer's *input* is consistent
on both sides and is not detected: the previous layer's check covers it. The recompute copy holds its own weights,
so a memory fault in the original weights is detected (C_R comes from the clean encoded sums) and corrected only
as long as the copy is intact.

The steps are pure and port onto the target/plan pipeline: :func:`find_layers` -> :func:`calibration_model` +
:func:`collect` -> :func:`make_plan` (JSON) -> :func:`apply_plan`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange import data as data_mod
from ovrange.config import AlgorithmConfig, Param, one_of
from ovrange.errors import DataError, ModelError
from ovrange.graph import constant_values, constant_weight, insert_after, node_by_name
from ovrange.passes import PassResult
from ovrange.stats import calibration_request, infer_batch

SUFFIX = "/checksum"
LAYER_TYPES = ("MatMul", "Convolution")
TINY = 1e-30  # keeps the calibration ratio finite for an all-zero row


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


PARAMS: dict[str, Param] = {
    "correction": Param(str, "recompute", one_of("recompute", "zero", "clamp"),
                        "on a flagged row/pixel: recompute the layer (exact), zero it, or clamp it to the clean range"),
    "branch": Param(str, "model", one_of("model", "if", "select"),
                    "recompute: model = one If after the last layer re-runs a clean copy of the whole inference "
                    "when any check failed; if = one If per layer recomputes that layer; select = every layer "
                    "computed twice, the copy chosen by Select where a check failed"),
    "tolerance": Param(str, "absolute", one_of("absolute", "relative"),
                       "absolute: |C_L - C_R| <= tol; relative: |C_L - C_R| <= tol x sum |y| of the row/pixel"),
    "margin": Param(float, 16.0, _positive, "tol = margin x the largest clean residual (or residual / sum |y|)"),
    "layers": Param(list, [], None, "friendly names of the layers to check (default: every encodable "
                                     "MatMul/Convolution with constant weights)"),
}


def check_params(params: dict[str, Any]) -> str | None:
    if params["branch"] != PARAMS["branch"].default and params["correction"] != "recompute":
        return "branch applies to correction 'recompute'"
    return None


@dataclass(frozen=True)
class Layer:
    """One checked layer: the MAC node, its optional constant bias Add, and the output that is checked."""

    name: str
    kind: str  # "matmul" or "conv"
    bias: str | None

    @property
    def checked(self) -> str:
        return self.bias or self.name


def why_not_encodable(node: ov.Node) -> str | None:
    """None when ``node`` can carry a checksum, else the reason."""
    kind = node.get_type_name()
    if kind not in LAYER_TYPES:
        return f"{kind} is not MatMul or Convolution"
    weight = constant_weight(node)
    if weight is None:
        return "weights are not a constant"
    rank = node.input_value(0).get_partial_shape().rank
    if node.get_output_element_type(0) != ov.Type.f32 or rank.is_dynamic:
        return "needs an f32 output and an input of static rank"
    if kind == "MatMul" and (node.get_transpose_a() or len(weight.get_shape()) != 2 or rank.get_length() < 2):
        return "MatMul needs 2-D constant weights, an input of rank >= 2 and no transpose_a"
    return None


def _bias(node: ov.Node, kind: str) -> str | None:
    """The friendly name of a single consumer ``Add`` of a constant bias along the feature axis, if there is one."""
    targets = list(node.output(0).get_target_inputs())
    if len(targets) != 1 or targets[0].get_node().get_type_name() != "Add":
        return None
    add = targets[0].get_node()
    other = add.input_value(1 - targets[0].get_index())
    if constant_weight_like(other) is None:
        return None
    shape = list(other.get_shape())
    rank = node.output(0).get_partial_shape().rank.get_length()
    axis = rank - 1 if kind == "matmul" else 1
    padded = [1] * (rank - len(shape)) + shape
    if len(padded) != rank or any(d != 1 for i, d in enumerate(padded) if i != axis):
        return None
    return add.get_friendly_name()


def constant_weight_like(output: ov.Output) -> ov.Output | None:
    producer = output.get_node()
    if producer.get_type_name() == "Convert":
        producer = producer.input_value(0).get_node()
    return output if producer.get_type_name() == "Constant" and output.get_element_type() == ov.Type.f32 else None


def find_layers(model: ov.Model, names: list[str] | None = None) -> tuple[list[Layer], dict[str, str]]:
    """The encodable layers (all, or the ``names`` asked for) and the skipped ones with the reason.

    A layer asked for by name that cannot be encoded is a ModelError: the user asked for protection it cannot get.
    """
    wanted = set(names or [])
    layers, skipped = [], {}
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        if wanted and name not in wanted:
            continue
        if not wanted and node.get_type_name() not in LAYER_TYPES:
            continue
        reason = why_not_encodable(node)
        if reason:
            if wanted:
                raise ModelError(f"Checksum cannot encode layer {name!r}: {reason}")
            skipped[name] = reason
            continue
        kind = "matmul" if node.get_type_name() == "MatMul" else "conv"
        layers.append(Layer(name, kind, _bias(node, kind)))
    missing = wanted - {layer.name for layer in layers}
    if missing:
        raise ModelError(f"Checksum: no layer named {sorted(missing)[0]!r} in the model")
    if not layers:
        raise ModelError(f"model {model.get_friendly_name()!r} has no MatMul/Convolution with constant weights "
                         "for Checksum to encode")
    return layers, skipped


# ---------------------------------------------------------------------------------------------------------------
# The check (graph builders)


def _feature_axis(layer: Layer, y: ov.Output) -> int:
    return y.get_partial_shape().rank.get_length() - 1 if layer.kind == "matmul" else 1


def encoded_sum(node: ov.Node, x: ov.Output, name: str) -> ov.Node:
    """C_R without the bias: ``x (W 1)`` or ``conv(x, sum_o W[o])``, from weights summed in float64 once."""
    weights = constant_values(constant_weight(node)).astype(np.float64)
    if node.get_type_name() == "MatMul":
        # x (W 1) as a multiply and a reduction, not a MatMul: the CPU plugin would fuse a MatMul on the same input
        # into the layer's own FullyConnected (one more output column), which made it pick a slower kernel.
        row = weights.sum(axis=0 if node.get_transpose_b() else 1).astype(np.float32)
        return ops.reduce_sum(ops.multiply(x, ops.constant(row)), ops.constant(np.array([-1], np.int64)),
                              keep_dims=True, name=name)
    kernel = weights.sum(axis=0, keepdims=True).astype(np.float32)
    return ops.convolution(x, ops.constant(kernel), node.get_strides(), node.get_pads_begin(), node.get_pads_end(),
                           node.get_dilations(), _auto_pad(node), name=name)


def _auto_pad(node: ov.Node) -> str:
    return str(node.get_auto_pad()).lower().rsplit(".", 1)[-1].replace("notset", "explicit")


def bias_sum(model: ov.Model, layer: Layer) -> float:
    if layer.bias is None:
        return 0.0
    add = node_by_name(model, layer.bias)
    layer_out = node_by_name(model, layer.name).output(0)
    other = add.input_value(1) if add.input_value(0) == layer_out else add.input_value(0)
    return float(constant_values(other).astype(np.float64).sum())


def residual(model: ov.Model, layer: Layer, y: ov.Output, name: str) -> ov.Node:
    """``|C_L - C_R|`` per row / pixel (the feature axis kept, size 1)."""
    node = node_by_name(model, layer.name)
    left = ops.reduce_sum(y, _axis(layer, y), keep_dims=True, name=name + "/C_L")
    right = ops.add(encoded_sum(node, node.input_value(0), name + "/encode"),
                    ops.constant(np.float32(bias_sum(model, layer))), name=name + "/C_R")
    return ops.abs(ops.subtract(left, right), name=name + "/residual")


def _axis(layer: Layer, y: ov.Output) -> ov.Node:
    return ops.constant(np.array([_feature_axis(layer, y)], np.int64))


def magnitude(layer: Layer, y: ov.Output, name: str) -> ov.Node:
    return ops.reduce_sum(ops.abs(y), _axis(layer, y), keep_dims=True, name=name + "/magnitude")


def pass_node(model: ov.Model, layer: Layer, y: ov.Output, check: dict[str, Any], name: str) -> ov.Node:
    """True where the check passes (NaN/Inf residuals fail)."""
    res = residual(model, layer, y, name)
    tol = ops.constant(np.float32(check["tolerance"]))
    if check["mode"] == "absolute":
        return ops.less_equal(res, tol, name=name + "/pass")  # False for NaN and +Inf
    within = ops.less_equal(res, ops.multiply(magnitude(layer, y, name), tol))
    return ops.logical_and(within, ops.is_finite(res), name=name + "/pass")


# ---------------------------------------------------------------------------------------------------------------
# Calibration -> plan


def calibration_model(model: ov.Model, layers: list[Layer]) -> ov.Model:
    """Per layer, over a batch: the largest residual, the largest residual / sum |y|, min and max of the output."""
    clone = model.clone()
    results = []
    for layer in layers:
        y = node_by_name(clone, layer.checked).output(0)
        name = layer.checked + SUFFIX
        res = residual(clone, layer, y, name)
        ratio = ops.divide(res, ops.maximum(magnitude(layer, y, name), ops.constant(np.float32(TINY))))
        every = ops.constant(np.arange(y.get_partial_shape().rank.get_length(), dtype=np.int64))
        results += [ops.reduce_max(res, every), ops.reduce_max(ratio, every), ops.reduce_min(y, every),
                    ops.reduce_max(y, every)]
    return ov.Model([ops.result(r) for r in results], clone.get_parameters(), f"{model.get_friendly_name()}_checksum")


def collect(model: ov.Model, dataset: Any, layers: list[Layer], config: AlgorithmConfig, *, device: str,
            progress=None) -> tuple[dict[str, dict[str, float]], int]:
    """Largest clean residual and ratio, and the output range, per checked layer over the calibration subset."""
    request = calibration_request(calibration_model(model, layers), config.batch_size, device)
    samples, total = data_mod.subset(dataset, config.subset_size, config.shuffle, config.seed)
    if total == 0:
        raise DataError("the calibration dataset is empty")
    stats = {layer.checked: {"residual": 0.0, "ratio": 0.0, "low": np.inf, "high": -np.inf} for layer in layers}
    seen = 0
    for arrays, count in data_mod.batches(samples, model, config.batch_size):
        values = infer_batch(request, arrays)
        for i, layer in enumerate(layers):
            found = dict(zip(("residual", "ratio", "low", "high"), (float(v) for v in values[4 * i: 4 * i + 4])))
            if not all(np.isfinite(v) for v in found.values()):
                raise DataError(f"layer {layer.checked!r} gives non-finite outputs on clean calibration data")
            entry = stats[layer.checked]
            for key, value in found.items():
                entry[key] = min(entry[key], value) if key == "low" else max(entry[key], value)
        seen += count
        if progress:
            progress(min(seen, total), total)
    return stats, seen


def make_plan(layers: list[Layer], stats: dict[str, dict[str, float]], params: dict[str, Any]) -> dict[str, Any]:
    """The JSON plan: per checked output, the layer, its tolerance and clean range, and the correction."""
    f32_eps = float(np.finfo(np.float32).eps)
    mode = params["tolerance"]
    checks = {}
    for layer in layers:
        s = stats[layer.checked]
        # Clean sums that agreed exactly still round on other data: a floor of a few f32 ulps (of the largest
        # clean output, for an absolute tolerance).
        floor = 4 * f32_eps * (max(abs(s["low"]), abs(s["high"]), 1.0) if mode == "absolute" else 1.0)
        tolerance = max(params["margin"] * s["residual" if mode == "absolute" else "ratio"], floor)
        checks[layer.checked] = {**asdict(layer), "type": "MatMul" if layer.kind == "matmul" else "Convolution",
                                 "mode": mode, "tolerance": tolerance, "clean_residual": s["residual"],
                                 "clean_ratio": s["ratio"], "low": s["low"], "high": s["high"]}
    return {"correction": params["correction"], "branch": params["branch"], "checks": checks}


# ---------------------------------------------------------------------------------------------------------------
# Apply


def _layer_copy(node: ov.Node, bias_values: np.ndarray | None, x: ov.Output, name: str) -> ov.Node:
    """A second, independent computation of the layer (and its bias) on ``x``.

    The copy multiplies by ``-W`` and negates the result: bit for bit the same value (IEEE negation is exact and
    rounding is sign-symmetric), but not an identical node, which OpenVINO would merge with the original layer
    (common-subexpression elimination) and so read the very computation the check distrusts.
    """
    weights = ops.constant(-constant_values(constant_weight(node)))
    if node.get_type_name() == "MatMul":
        out = ops.matmul(x, weights, False, node.get_transpose_b(), name=name + "/recompute")
    else:
        out = ops.convolution(x, weights, node.get_strides(), node.get_pads_begin(), node.get_pads_end(),
                              node.get_dilations(), _auto_pad(node), name=name + "/recompute")
    out = ops.negative(out, name=name + "/recompute_sign")
    return out if bias_values is None else ops.add(out, ops.constant(bias_values), name=name + "/recompute_bias")


def _bias_values(model: ov.Model, layer: Layer) -> np.ndarray | None:
    if layer.bias is None:
        return None
    add = node_by_name(model, layer.bias)
    layer_out = node_by_name(model, layer.name).output(0)
    return constant_values(add.input_value(1) if add.input_value(0) == layer_out else add.input_value(0))


def _recompute_if(ok: ov.Node, y: ov.Output, x: ov.Output, node: ov.Node, bias: np.ndarray | None,
                  name: str) -> ov.Node:
    """``If(all(ok))``: the then-branch passes ``y`` through; the else-branch recomputes the layer from ``x``."""
    every = ops.constant(np.arange(ok.get_output_partial_shape(0).rank.get_length(), dtype=np.int64))
    condition = ops.reduce_logical_and(ok, every, keep_dims=False, name=name + "/all")
    then_y = ops.parameter(y.get_partial_shape(), ov.Type.f32)
    then_body = ov.Model([ops.result(then_y)], [then_y], name + "/then")
    else_x = ops.parameter(x.get_partial_shape(), ov.Type.f32)
    else_body = ov.Model([ops.result(_layer_copy(node, bias, else_x.output(0), name))], [else_x], name + "/else")
    branch = ops.if_op(condition.output(0))
    branch.set_friendly_name(name + "/if")
    branch.set_then_body(then_body)
    branch.set_else_body(else_body)
    branch.set_input(y, then_y, None)
    branch.set_input(x, None, else_x)
    branch.set_output(then_body.get_results()[0], else_body.get_results()[0])
    branch.validate_and_infer_types()
    return branch


def corrected(model: ov.Model, layer: Layer, check: dict[str, Any], correction: str, branch: str,
              y: ov.Output) -> ov.Node:
    """The node that replaces ``y`` (the checked output) for its consumers."""
    name = layer.checked + SUFFIX
    node = node_by_name(model, layer.name)
    ok = pass_node(model, layer, y, check, name)
    if correction == "recompute" and branch == "if":
        return _recompute_if(ok, y, node.input_value(0), node, _bias_values(model, layer), name)
    if correction == "recompute":
        fixed = _layer_copy(node, _bias_values(model, layer), node.input_value(0), name)
    elif correction == "zero":
        fixed = ops.constant(np.float32(0.0))
    else:
        fixed = ops.clamp(y, float(check["low"]), float(check["high"]), name=name + "/clamp")
    return ops.select(ok, y, fixed, name=name + "/select")


def _recompute_model(model: ov.Model, clone: ov.Model, plan: dict[str, Any]) -> None:
    """One ``If`` on the model outputs: all checks pass -> the outputs; else a clean copy of ``model`` re-runs the
    inference from the inputs (only the outputs are passed through, not every layer's tensor)."""
    condition = None
    for checked, check in plan["checks"].items():
        y = node_by_name(clone, checked).output(0)
        ok = pass_node(clone, Layer(check["name"], check["kind"], check["bias"]), y, check, checked + SUFFIX)
        every = ops.constant(np.arange(y.get_partial_shape().rank.get_length(), dtype=np.int64))
        passed = ops.reduce_logical_and(ok, every, keep_dims=False, name=checked + SUFFIX + "/all")
        condition = passed if condition is None else ops.logical_and(condition, passed)
    results = list(clone.get_results())
    sources = [r.input_value(0) for r in results]
    then_params = [ops.parameter(s.get_partial_shape(), s.get_element_type()) for s in sources]
    then_body = ov.Model([ops.result(p) for p in then_params], then_params, "checksum_pass")
    spare = model.clone()
    else_body = ov.Model([ops.result(r.input_value(0)) for r in spare.get_results()], spare.get_parameters(),
                         "checksum_recompute")
    branch = ops.if_op(condition.output(0))
    branch.set_friendly_name(model.get_friendly_name() + SUFFIX + "/if")
    branch.set_then_body(then_body)
    branch.set_else_body(else_body)
    for source, param in zip(sources, then_params):
        branch.set_input(source, param, None)
    for ours, theirs in zip(clone.get_parameters(), else_body.get_parameters()):
        branch.set_input(ours.output(0), None, theirs)
    for k, (result, source) in enumerate(zip(results, sources)):
        out = branch.set_output(then_body.get_results()[k], else_body.get_results()[k])
        names = set(source.get_names())
        result.input(0).replace_source_output(out)  # only the Result: the checks still read the layer output
        if names:
            source.get_tensor().set_names(set())
            out.get_tensor().set_names(names)


def apply_plan(model: ov.Model, plan: dict[str, Any]) -> ov.Model:
    """A clone of ``model`` with the plan's checks and corrections; the model itself is not touched."""
    clone = model.clone()
    if plan["correction"] == "recompute" and plan["branch"] == "model":
        _recompute_model(model, clone, plan)
        clone.validate_nodes_and_infer_types()
        return clone
    for checked, check in plan["checks"].items():
        layer = Layer(check["name"], check["kind"], check["bias"])
        y = node_by_name(clone, checked).output(0)
        insert_after(y, lambda out, la=layer, c=check: corrected(clone, la, c, plan["correction"], plan["branch"], out))
    clone.validate_nodes_and_infer_types()
    return clone


def run(model: ov.Model, dataset: Any, config: AlgorithmConfig, *, device: str, progress=None) -> PassResult:
    """Encode every eligible layer, calibrate the tolerance on clean data, insert checks and corrections."""
    p = config.params
    layers, skipped = find_layers(model, p["layers"] or None)
    stats, samples = collect(model, dataset, layers, config, device=device, progress=progress)
    plan = make_plan(layers, stats, p)
    return PassResult(apply_plan(model, plan), dict(plan["checks"]), samples, "f32",
                      {"correction": p["correction"], "branch": p["branch"], "tolerance": p["tolerance"],
                       "skipped": skipped})
