"""Checksum as a detection stage for other protections, and its checks read back from a protected model.

* :func:`detection_gates` / :func:`gate`: seed 003 runs its gradient suppression only where a MAC layer's checksum
  flagged an error; GradientSuppression's ``gate`` parameter uses these.
* :func:`flag_model`: how many checks fail per sample (false positives on clean data, detections under faults).
* :func:`plan_of`: the plan recorded in a Checksum-protected model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.config import AlgorithmConfig
from ovrange.errors import ModelError
from ovrange.graph import node_by_name
from ovrange.passes.checksum import PARAMS, SUFFIX, Layer, collect, find_layers, make_plan, pass_node


def detection_gates(model: ov.Model, dataset: Any, config: AlgorithmConfig, activations: list[str], *,
                    device: str) -> dict[str, dict[str, Any]]:
    """Checks for the MAC layers that feed ``activations`` directly (through their bias): activation name ->
    check (seed 003 runs its suppression only where such a check flagged an error). Activations fed by anything
    else get no gate."""
    layers, _ = find_layers(model)
    by_output = {layer.checked: layer for layer in layers}
    feeding = {}
    for name in activations:
        source = node_by_name(model, name).input_value(0).get_node().get_friendly_name()
        if source in by_output:
            feeding[name] = by_output[source]
    if not feeding:
        return {}
    needed = list({layer.checked: layer for layer in feeding.values()}.values())
    stats, _ = collect(model, dataset, needed, config, device=device)
    plan = make_plan(needed, stats, {**{k: v.default for k, v in PARAMS.items()}, "correction": "zero"})
    return {name: plan["checks"][layer.checked] for name, layer in feeding.items()}


def gate(model: ov.Model, check: dict[str, Any], out: ov.Output, make, mode: str) -> ov.Node:
    """``make(out)`` (a correction of an activation output) applied only where ``check`` fails: per row / pixel
    with ``select`` (both computed, always), or for the whole batch inside an ``If`` run only when a check failed."""
    layer = Layer(check["name"], check["kind"], check["bias"])
    y = node_by_name(model, layer.checked).output(0)
    ok = pass_node(model, layer, y, check, layer.checked + SUFFIX + "/gate")
    if mode == "select":
        return ops.select(ok, out, make(out))
    every = ops.constant(np.arange(ok.get_output_partial_shape(0).rank.get_length(), dtype=np.int64))
    condition = ops.reduce_logical_and(ok, every, keep_dims=False)
    then_y = ops.parameter(out.get_partial_shape(), out.get_element_type())
    else_y = ops.parameter(out.get_partial_shape(), out.get_element_type())
    then_body = ov.Model([ops.result(then_y)], [then_y], "gate_pass")
    else_body = ov.Model([ops.result(make(else_y.output(0)))], [else_y], "gate_correct")
    branch = ops.if_op(condition.output(0))
    branch.set_then_body(then_body)
    branch.set_else_body(else_body)
    branch.set_input(out, then_y, else_y)
    branch.set_output(then_body.get_results()[0], else_body.get_results()[0])
    branch.validate_and_infer_types()
    return branch


def flag_model(model: ov.Model, plan: dict[str, Any]) -> ov.Model:
    """A clone of the *unprotected* ``model`` whose outputs are, per checked layer, how many checks fail for each
    sample (``[N]`` int32): false positives on clean data, detections under faults."""
    clone = model.clone()
    results = []
    for checked, check in plan["checks"].items():
        layer = Layer(check["name"], check["kind"], check["bias"])
        y = node_by_name(clone, checked).output(0)
        failed = ops.convert(ops.logical_not(pass_node(clone, layer, y, check, checked + SUFFIX)), ov.Type.i32)
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
