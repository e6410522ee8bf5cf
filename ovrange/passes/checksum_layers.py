"""Which layers Checksum encodes, and the tolerances of their checks: shared by Checksum and by the checks that gate
GradientSuppression (the graph builders are in :mod:`ovrange.passes.checksum_graph`).

Layers are chosen among the targets (:func:`ovrange.targets.find_targets`): the :data:`~ovrange.targets.PLAIN_LINEAR`
outputs whose weight is a constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov

from ovrange.errors import DataError, ModelError
from ovrange.graph import constant_weight
from ovrange.passes.checksum_graph import Layer, Residual, nodes_of
from ovrange.stats import StatRequest, Statistics
from ovrange.targets import PLAIN_LINEAR, Target, find_targets

CHECK_DEFAULTS = {"tolerance": "absolute", "margin": 16.0}  # Checksum's defaults, used by the gating checks


def why_not_encodable(mac: ov.Node) -> str | None:
    """None when ``mac`` can carry a checksum, else the reason."""
    kind = mac.get_type_name()
    if kind not in PLAIN_LINEAR:
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


def _bias(mac: ov.Node, axis: int, ids: dict[str, str]) -> str | None:
    """The id of a single consumer ``Add`` of a constant bias along the feature ``axis``, if there is one."""
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
    padded = [1] * (rank - len(shape)) + shape
    if len(padded) != rank or any(d != 1 for i, d in enumerate(padded) if i != axis):
        return None
    return ids[add.get_name()]


def find_layers(model: ov.Model, names: list[str] | None = None) -> tuple[list[Layer], dict[str, str]]:
    """The encodable layers (all, or the ``names`` asked for) and the skipped ones with the reason.

    A layer asked for by name that cannot be encoded is a ModelError: the user asked for protection it cannot get.
    """
    wanted = set(names or [])
    nodes = nodes_of(model)
    ids = {node.get_name(): key for key, node in nodes.items()}
    candidates: list[Target] = [t for t in find_targets(model) if t.port == 0
                                and (t.id in wanted if wanted else t.op in PLAIN_LINEAR)]
    layers, skipped = [], {}
    for target in candidates:
        mac = nodes[target.node]
        reason = why_not_encodable(mac)
        if reason:
            if wanted:
                raise ModelError(f"Checksum cannot encode layer {target.id!r}: {reason}")
            skipped[target.id] = reason
            continue
        kind = "matmul" if mac.get_type_name() == "MatMul" else "conv"
        layers.append(Layer(target.id, kind, _bias(mac, target.feature_axis, ids)))
    missing = wanted - {layer.name for layer in layers}
    if missing:
        raise ModelError(f"Checksum: no layer named {sorted(missing)[0]!r} in the model")
    if not layers:
        raise ModelError(f"model {model.get_friendly_name()!r} has no MatMul/Convolution with constant weights "
                         "for Checksum to encode")
    return layers, skipped


def layer_requests(layers: list[Layer]) -> list[StatRequest]:
    """Per layer: the largest clean residual, the largest residual / sum |y|, and the output range."""
    return [request for layer in layers for request in (
        StatRequest(layer.checked, derive=Residual(layer)), StatRequest(layer.checked, derive=Residual(layer, True)),
        StatRequest(layer.checked))]


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
