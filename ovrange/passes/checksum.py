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

from ovrange.errors import ModelError
from ovrange.graph import get_rt_json
from ovrange.params import Param, one_of, positive
from ovrange.passes import PassResult, Selection
from ovrange.passes.checksum_graph import (SUFFIX, corrected, layer_of, nodes_of, pass_node, recompute_model,
                                          wholly_encodable)
from ovrange.passes.guards import Insertion
from ovrange.passes.checksum_layers import (CHECK_DEFAULTS, find_layers, layer_requests, make_checks,  # noqa: F401
                                           why_not_encodable)
from ovrange.plan import ProtectionPlan
from ovrange.stats import StatRequest, Statistics

PARAMS: dict[str, Param] = {
    "correction": Param(str, "recompute", one_of("recompute", "zero", "clamp"),
                        "on a flagged row/pixel: recompute the layer (exact), zero it, or clamp it to the clean range"),
    "branch": Param(str, "model", one_of("model", "if", "select"),
                    "recompute: model = one If after the last layer re-runs a clean copy of the whole inference "
                    "when any check failed; if = one If per layer recomputes that layer; select = every layer "
                    "computed twice, the copy chosen by Select where a check failed"),
    "tolerance": Param(str, CHECK_DEFAULTS["tolerance"], one_of("absolute", "relative"),
                       "absolute: |C_L - C_R| <= tol; relative: |C_L - C_R| <= tol x sum |y| of the row/pixel"),
    "margin": Param(float, CHECK_DEFAULTS["margin"], positive,
                    "tol = margin x the largest clean residual (or residual / sum |y|)"),
    "layers": Param(list, [], None, "ids (friendly names) of the layers to check (default: every encodable "
                                     "MatMul/Convolution with constant weights)"),
}


def check_params(params: dict[str, Any]) -> str | None:
    if params["branch"] != PARAMS["branch"].default and params["correction"] != "recompute":
        return "branch applies to correction 'recompute'"
    return None


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


def requests(selection: Selection, params: dict[str, Any]) -> list[StatRequest]:
    return layer_requests(selection.facts["layers"])


def plan(selection: Selection, stats: Statistics, params: dict[str, Any]
         ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    checks = make_checks(selection.facts["layers"], stats, params, selection.facts["names"])
    report = {"correction": params["correction"], "branch": params["branch"], "tolerance": params["tolerance"],
              "skipped": selection.facts["skipped"]}
    return checks, report


def apply(model: ov.Model, plan: Any) -> PassResult:
    """Insert the plan's checks and corrections into ``model`` (edited) and record every inserted node."""
    correction, branch = plan.params["correction"], plan.params["branch"]
    insertion = Insertion(model)
    if correction == "recompute" and branch == "model":
        insertion.mark(recompute_model(model.clone(), model, plan.guards).get_friendly_name(), "guard")
    else:
        nodes = nodes_of(model)
        for checked, check in plan.guards.items():
            insertion.after(nodes[checked].output(0),
                            lambda out, c=check: corrected(nodes, layer_of(c), c, correction, branch, out))
    insertion.done()
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


DETECTED = "ovrange_detected"  # the output a campaign adds to a Checksum-protected model, reads and strips


def with_detector(protected: ov.Model) -> ov.Model | None:
    """For a fault campaign: a clone of a Checksum-protected model with one more output, ``DETECTED`` (``[N]``
    f32, 1 where any of the model's checks fails for that sample, whatever the correction then does). The flag
    is computed again from the checked layers' outputs, the values the model's own checks read, so it fires
    exactly when theirs does. None for a model Checksum did not protect (or whose checked layers are gone)."""
    raw = get_rt_json(protected, "protection")
    info = None if raw is None else ProtectionPlan.from_json(raw)
    if info is None or info.algorithm != "Checksum" or not info.nodes:
        return None
    clone = protected.clone()
    nodes = nodes_of(clone)
    if any(checked not in nodes for checked in info.nodes):
        return None
    fired = None
    for checked, check in info.nodes.items():
        y = nodes[checked].output(0)
        failed = ops.logical_not(pass_node(nodes, layer_of(check), y, check, checked + SUFFIX + "/detected"))
        rank = failed.get_output_partial_shape(0).rank.get_length()
        if rank > 1:
            failed = ops.reduce_logical_or(failed, ops.constant(np.arange(1, rank, dtype=np.int64)), False)
        fired = failed if fired is None else ops.logical_or(fired, failed)
    result = ops.result(ops.convert(fired, ov.Type.f32))
    result.output(0).get_tensor().set_names({DETECTED})
    clone.add_results([result])
    return clone


def plan_of(protected: ov.Model) -> dict[str, Any]:
    """The plan recorded in a model protected by Checksum (``ovrange.protect``)."""
    raw = get_rt_json(protected, "protection")
    info = None if raw is None else ProtectionPlan.from_json(raw)
    if info is None or info.algorithm != "Checksum":
        raise ModelError("not a model protected by Checksum")
    return {"correction": info.params["correction"], "branch": info.params["branch"], "checks": info.nodes}
