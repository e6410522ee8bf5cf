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
Select); ``zero`` zeroes the flagged row / pixel (seed 003's suppression); ``clamp`` clamps it to the layer's
calibrated range. A fault in the layer's *input* is consistent on both sides and is not detected: the previous
layer's check covers it. The recompute copy holds its own weights, so a memory fault in the original weights is
detected (C_R comes from the clean encoded sums) and corrected only as long as the copy is intact.

The four steps of every protection: :func:`select` (the encodable layers) -> :func:`requests` (clean residuals
and output ranges, served by the one statistics loop) -> :func:`plan` (JSON: tolerances) -> :func:`apply`.
The graph builders live in :mod:`ovrange.passes.checksum_graph`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.errors import DataError, ModelError
from ovrange.graph import added_nodes, constant_weight, insert_after, node_ids, node_names, record_inserted
from ovrange.params import Param, one_of, positive
from ovrange.passes import PassResult, Selection
from ovrange.passes.checksum_graph import (SUFFIX, Layer, Residual, corrected, layer_of, nodes_of, pass_node,
                                          recompute_model, wholly_encodable)
from ovrange.stats import StatRequest, Statistics

LAYER_TYPES = ("MatMul", "Convolution")

PARAMS: dict[str, Param] = {
    "correction": Param(str, "recompute", one_of("recompute", "zero", "clamp"),
                        "on a flagged row/pixel: recompute the layer (exact), zero it, or clamp it to the clean range"),
    "branch": Param(str, "model", one_of("model", "if", "select"),
                    "recompute: model = one If after the last layer re-runs a clean copy of the whole inference "
                    "when any check failed; if = one If per layer recomputes that layer; select = every layer "
                    "computed twice, the copy chosen by Select where a check failed"),
    "tolerance": Param(str, "absolute", one_of("absolute", "relative"),
                       "absolute: |C_L - C_R| <= tol; relative: |C_L - C_R| <= tol x sum |y| of the row/pixel"),
    "margin": Param(float, 16.0, positive, "tol = margin x the largest clean residual (or residual / sum |y|)"),
    "layers": Param(list, [], None, "ids (friendly names) of the layers to check (default: every encodable "
                                     "MatMul/Convolution with constant weights)"),
}


def check_params(params: dict[str, Any]) -> str | None:
    if params["branch"] != PARAMS["branch"].default and params["correction"] != "recompute":
        return "branch applies to correction 'recompute'"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Which layers


def why_not_encodable(mac: ov.Node) -> str | None:
    """None when ``mac`` can carry a checksum, else the reason."""
    kind = mac.get_type_name()
    if kind not in LAYER_TYPES:
        return f"{kind} is not MatMul or Convolution"
    weight = constant_weight(mac)
    if weight is None:
        return "weights are not a constant"
    rank = mac.input_value(0).get_partial_shape().rank
    if mac.get_output_element_type(0) != ov.Type.f32 or rank.is_dynamic:
        return "needs an f32 output and an input of static rank"
    if kind == "MatMul" and (mac.get_transpose_a() or len(weight.get_shape()) != 2 or rank.get_length() < 2):
        return "MatMul needs 2-D constant weights, an input of rank >= 2 and no transpose_a"
    return None


def _bias(mac: ov.Node, kind: str, ids: dict[str, str]) -> str | None:
    """The id of a single consumer ``Add`` of a constant bias along the feature axis, if there is one."""
    targets = list(mac.output(0).get_target_inputs())
    if len(targets) != 1 or targets[0].get_node().get_type_name() != "Add":
        return None
    add = targets[0].get_node()
    other = add.input_value(1 - targets[0].get_index())
    producer = other.get_node()
    if producer.get_type_name() == "Convert":
        producer = producer.input_value(0).get_node()
    if producer.get_type_name() != "Constant" or other.get_element_type() != ov.Type.f32:
        return None
    shape = list(other.get_shape())
    rank = mac.output(0).get_partial_shape().rank.get_length()
    axis = rank - 1 if kind == "matmul" else 1
    padded = [1] * (rank - len(shape)) + shape
    if len(padded) != rank or any(d != 1 for i, d in enumerate(padded) if i != axis):
        return None
    return ids[add.get_name()]


def find_layers(model: ov.Model, names: list[str] | None = None) -> tuple[list[Layer], dict[str, str]]:
    """The encodable layers (all, or the ``names`` asked for) and the skipped ones with the reason.

    A layer asked for by name that cannot be encoded is a ModelError: the user asked for protection it cannot get.
    """
    wanted = set(names or [])
    ids = {n.get_name(): key for key, n in node_ids(model)}
    layers, skipped = [], {}
    for key, mac in node_ids(model):
        if (wanted and key not in wanted) or (not wanted and mac.get_type_name() not in LAYER_TYPES):
            continue
        reason = why_not_encodable(mac)
        if reason:
            if wanted:
                raise ModelError(f"Checksum cannot encode layer {key!r}: {reason}")
            skipped[key] = reason
            continue
        kind = "matmul" if mac.get_type_name() == "MatMul" else "conv"
        layers.append(Layer(key, kind, _bias(mac, kind, ids)))
    missing = wanted - {layer.name for layer in layers}
    if missing:
        raise ModelError(f"Checksum: no layer named {sorted(missing)[0]!r} in the model")
    if not layers:
        raise ModelError(f"model {model.get_friendly_name()!r} has no MatMul/Convolution with constant weights "
                         "for Checksum to encode")
    return layers, skipped


# ---------------------------------------------------------------------------------------------------------------
# The four steps


def whole_sample(params: dict[str, Any]) -> bool:
    """Convolutions are checked once per sample where the correction acts on the whole inference or layer anyway
    (recompute by ``If``); zero, clamp and Select need the per-pixel verdict."""
    return params["correction"] == "recompute" and params["branch"] != "select"


def select(model: ov.Model, params: dict[str, Any]) -> Selection:
    layers, skipped = find_layers(model, params["layers"] or None)
    nodes = nodes_of(model)
    if whole_sample(params):
        layers = [replace(layer, whole=wholly_encodable(nodes[layer.name])) for layer in layers]
    names = {layer.checked: (nodes[layer.checked].get_friendly_name(), nodes[layer.checked].get_type_name())
             for layer in layers}
    return Selection([], {"layers": layers, "skipped": skipped, "names": names})


def layer_requests(layers: list[Layer]) -> list[StatRequest]:
    """Per layer: the largest clean residual, the largest residual / sum |y|, and the output range."""
    return [request for layer in layers for request in (
        StatRequest(layer.checked, derive=Residual(layer)), StatRequest(layer.checked, derive=Residual(layer, True)),
        StatRequest(layer.checked))]


def requests(selection: Selection, params: dict[str, Any]) -> list[StatRequest]:
    return layer_requests(selection.facts["layers"])


def make_checks(layers: list[Layer], stats: Statistics, params: dict[str, Any],
                names: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per checked output: the layer, its tolerance and clean range (JSON)."""
    f32_eps = float(np.finfo(np.float32).eps)
    mode = params["tolerance"]
    checks = {}
    for layer in layers:
        residual = float(stats[StatRequest(layer.checked, derive=Residual(layer))].high)
        ratio = float(stats[StatRequest(layer.checked, derive=Residual(layer, True))].high)
        output = stats[StatRequest(layer.checked)]
        low, high = float(output.low), float(output.high)
        if not all(np.isfinite(v) for v in (residual, ratio, low, high)):
            raise DataError(f"layer {layer.checked!r} gives non-finite outputs on clean calibration data")
        # Clean sums that agreed exactly still round on other data: a floor of a few f32 ulps (of the largest
        # clean output, for an absolute tolerance).
        floor = 4 * f32_eps * (max(abs(low), abs(high), 1.0) if mode == "absolute" else 1.0)
        tolerance = max(params["margin"] * (residual if mode == "absolute" else ratio), floor)
        name, op = names[layer.checked]
        checks[layer.checked] = {"name": name, "type": op, "layer": layer.name, "kind": layer.kind,
                                 "bias": layer.bias, "whole": layer.whole,
                                 "layer_type": "MatMul" if layer.kind == "matmul" else "Convolution",
                                 "mode": mode, "tolerance": tolerance, "clean_residual": residual,
                                 "clean_ratio": ratio, "low": low, "high": high}
    return checks


def plan(selection: Selection, stats: Statistics, params: dict[str, Any]
         ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    checks = make_checks(selection.facts["layers"], stats, params, selection.facts["names"])
    report = {"correction": params["correction"], "branch": params["branch"], "tolerance": params["tolerance"],
              "skipped": selection.facts["skipped"]}
    return checks, report


def apply(model: ov.Model, plan: Any) -> PassResult:
    """Insert the plan's checks and corrections into ``model`` (edited) and record every inserted node."""
    correction, branch = plan.params["correction"], plan.params["branch"]
    before = node_names(model)
    guards = set()
    if correction == "recompute" and branch == "model":
        recompute_model(model.clone(), model, plan.guards)
        guards = {n.get_friendly_name() for n in added_nodes(model, before) if n.get_type_name() == "If"}
    else:
        nodes = nodes_of(model)
        for checked, check in plan.guards.items():
            y = nodes[checked].output(0)
            guard = insert_after(y, lambda out, c=check: corrected(nodes, layer_of(c), c, correction, branch, out))
            guards.add(guard.get_friendly_name())
    model.validate_nodes_and_infer_types()
    record_inserted(model, {n.get_friendly_name(): "guard" if n.get_friendly_name() in guards else "check"
                            for n in added_nodes(model, before)})
    return PassResult(model, bool(plan.guards))


# ---------------------------------------------------------------------------------------------------------------
# Measuring detection


def flag_model(model: ov.Model, plan: dict[str, Any]) -> ov.Model:
    """A clone of the *unprotected* ``model`` whose outputs are, per checked layer, how many checks fail for each
    sample (``[N]`` int32): false positives on clean data, detections under faults."""
    clone = model.clone()
    nodes = nodes_of(clone)
    results = []
    for checked, check in plan["checks"].items():
        y = nodes[checked].output(0)
        failed = ops.convert(ops.logical_not(pass_node(nodes, layer_of(check), y, check, checked + SUFFIX)),
                             ov.Type.i32)
        axes = ops.constant(np.arange(1, y.get_partial_shape().rank.get_length(), dtype=np.int64))
        results.append(ops.result(ops.reduce_sum(failed, axes, keep_dims=False)))
    return ov.Model(results, clone.get_parameters(), f"{model.get_friendly_name()}_checksum_flags")


def plan_of(protected: ov.Model) -> dict[str, Any]:
    """The plan recorded in a model protected by Checksum (``ovrange.protect``)."""
    from ovrange.protect import protection_info

    info = protection_info(protected)
    if info is None or info.algorithm != "Checksum":
        raise ModelError("not a model protected by Checksum")
    return {"correction": info.params["correction"], "branch": info.params["branch"], "checks": info.nodes}
