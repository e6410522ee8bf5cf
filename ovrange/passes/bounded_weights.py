"""BoundedWeights: store each weight as ``theta = artanh(w / s)`` and compute ``w = s * tanh(theta)`` in the graph.

A post-training form of Fuengfusin & Tamukoh, *Enhancing Neural Network Robustness Against Fault Injection Through
Non-linear Weight Transformations* (2024): there the network is trained with a saturating function applied to its
weights; here a trained model is rewritten, so the saturation level ``s`` comes from the trained weights
(``scale_margin * max |w|``, per output channel or per layer) and accuracy is kept up to the float rounding of
``s * tanh(artanh(w / s))``, which is measured and reported.

A bit flip in a stored ``theta`` can at worst push ``tanh`` to +-1, so the weight the layer sees stays within
``[-s, s]``, where an unprotected weight can become ~1e38, inf or NaN. ``theta`` is stored divided by a power of
two ``g`` so that every stored value is below 1 in magnitude: no single bit flip can then make it NaN (a value in
[1, 2) whose exponent MSB flips becomes inf or NaN, and tanh(NaN) is NaN); the graph multiplies by ``g`` first,
which is exact. Each protected layer's weight port then reads::

    Constant <layer>/bounded_theta -> [Multiply <layer>/bounded_gain (g)] -> Tanh <layer>/bounded_tanh
        -> Multiply <layer>/bounded_weight (s, Constant <layer>/bounded_scale) -> layer input 1

The CPU plugin folds this constant chain back into a weight at compile time. The ``theta`` Constant is recorded as
an inserted node of role ``weight`` and the chain as ``decode``: fault injection finds the stored weight of a layer
through that record (:func:`ovrange.graph.stored_weight`), never through these names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino import passes as ov_passes

from ovrange import data as data_mod
from ovrange.errors import DataError, ModelError
from ovrange.graph import (apply_chain, constant_values, get_rt_json, inserted_nodes, stored_copy, stored_order,
                           stored_weight, weight_chain)
from ovrange.params import Param, one_of
from ovrange.passes import PassResult, Selection
from ovrange.passes.guards import Insertion
from ovrange.plan import ProtectionPlan
from ovrange.runtime import Runner
from ovrange.targets import layer_weights, output_axes, outputs_by_id, weight_layers, weight_output
THETA_SUFFIX = "/bounded_theta"
GAIN_SUFFIX = "/bounded_gain"
TANH_SUFFIX = "/bounded_tanh"
WEIGHT_SUFFIX = "/bounded_weight"
SCALE_SUFFIX = "/bounded_scale"


def _above_one(value: float) -> str | None:
    return None if 1.0 < value <= 1e3 else "must be > 1 (artanh(1) is infinite) and <= 1000"


PARAMS: dict[str, Param] = {
    "granularity": Param(str, "channel", one_of("channel", "layer"),
                         "one saturation level s per output channel (tighter bound) or one per layer"),
    "scale_margin": Param(float, 1.05, _above_one,
                          "s = scale_margin * max |w| (per channel or layer): the largest value a faulty weight "
                          "can take, relative to the largest trained one"),
}


# ---------------------------------------------------------------------------------------------------------------
# Which layers, and their weights


def bounded_theta(model: ov.Model, layer: ov.Node) -> ov.Node | None:
    """The ``theta`` Constant behind a protected layer's weight port (None when the layer is not protected)."""
    inserted = inserted_nodes(model)
    stored = stored_weight(layer, inserted)
    if stored is None or inserted.get(stored.get_node().get_friendly_name()) != "weight":
        return None
    return stored.get_node()


# ---------------------------------------------------------------------------------------------------------------
# The transform


def encode(w: np.ndarray, axes: tuple[int, ...], per_channel: bool, margin: float
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(theta, s, g)`` with ``w ~= s * tanh(g * theta)``, ``|theta| < 1`` (f32) and ``g`` a power of two."""
    reduce = tuple(a for a in range(w.ndim) if not (per_channel and a in axes))
    peak = np.max(np.abs(w), axis=reduce, keepdims=True) if w.size else np.zeros([1] * w.ndim, np.float32)
    scale = (peak.astype(np.float64) * margin).astype(np.float32)
    scale = np.where(scale > peak, scale, np.nextafter(peak, np.float32(np.inf)))  # |w| < s even after rounding
    scale = np.where(peak > 0, scale, np.float32(0))  # an all-zero channel stays zero whatever theta holds
    ratio = w.astype(np.float64) / np.where(scale > 0, scale, 1).astype(np.float64)
    theta = np.arctanh(ratio)
    top = float(np.max(np.abs(theta))) if theta.size else 0.0
    gain = 1.0 if top < 1 else float(2.0 ** (np.floor(np.log2(top)) + 1))
    return (theta / gain).astype(np.float32), scale.astype(np.float32), gain


def decode_chain(theta: ov.Output, scale: np.ndarray, gain: float, name: str) -> ov.Node:
    """``s * tanh(g * theta)``, with the names the fault-injection sites look for."""
    x = theta
    if gain != 1.0:
        x = ops.multiply(theta, ops.constant(np.float32(gain), name=name + GAIN_SUFFIX + "_value"),
                         name=name + GAIN_SUFFIX)
    tanh = ops.tanh(x, name=name + TANH_SUFFIX)
    return ops.multiply(tanh, ops.constant(scale, name=name + SCALE_SUFFIX), name=name + WEIGHT_SUFFIX)


def folded(theta: np.ndarray, scale: np.ndarray, gain: float) -> np.ndarray:
    """What OpenVINO's constant folding (as the CPU plugin does at compile time) makes of the chain."""
    chain = decode_chain(ops.constant(theta).output(0), scale, gain, "fold")
    model = ov.Model([ops.result(chain)], [], "fold")
    manager = ov_passes.Manager()
    manager.register_pass(ov_passes.ConstantFolding())
    manager.run_passes(model)
    return np.array(model.get_results()[0].input_value(0).get_node().get_data(), dtype=np.float32)


def reconstruction_error(w: np.ndarray, rebuilt: np.ndarray) -> dict[str, float]:
    error = np.abs(rebuilt.astype(np.float64) - w.astype(np.float64))
    nonzero = w != 0
    relative = error[nonzero] / np.abs(w[nonzero].astype(np.float64))
    return {"max_abs_error": float(error.max(initial=0.0)), "max_rel_error": float(relative.max(initial=0.0)),
            "exact_fraction": float(np.mean(error == 0)) if error.size else 1.0}


def select(model: ov.Model, params: dict[str, Any]) -> Selection:
    """Every Convolution/GroupConvolution/MatMul with a constant f32 weight, with its weights (in memory only)."""
    layers = weight_layers(model)
    if not layers:
        raise ModelError(f"model {model.get_friendly_name()!r} has no Convolution/GroupConvolution/MatMul with a "
                         "constant f32 weight; nothing to protect")
    weights, transposed = layer_weights(model, layers)
    return Selection(layers, {"weights": weights, "transpose_b": transposed})


def requests(selection: Selection, params: dict[str, Any]) -> list:
    return []  # the weights alone decide; calibration data only measures the effect (measure)


def plan(selection: Selection, stats: Any, params: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict]:
    """Per layer: the saturation level s (per output channel or per layer) and the gain g."""
    per_channel = params["granularity"] == "channel"
    guards = {}
    for target in selection.targets:
        w = selection.facts["weights"][target.id]
        axes = output_axes(target.op, w.ndim, selection.facts["transpose_b"][target.id])
        _, scale, gain = encode(w, axes, per_channel and bool(axes), params["scale_margin"])
        guards[target.id] = {"name": target.name, "type": target.op, "shape": list(w.shape),
                             "granularity": "channel" if scale.size > 1 else "layer", "gain": gain,
                             "scale": [float(v) for v in scale.reshape(-1)], "scale_shape": list(scale.shape),
                             "scale_min": float(scale.min()), "scale_max": float(scale.max()),
                             "max_abs_weight": float(np.abs(w).max(initial=0.0))}
    return guards, {"compile_time_folding": "s*tanh(g*theta) is constant; the CPU plugin folds it into the weight"}


def apply(model: ov.Model, plan: Any) -> PassResult:
    """Replace each planned layer's weight by ``s * tanh(g * theta)`` with ``theta = artanh(w / s) / g``."""
    outputs = outputs_by_id(model)
    insertion = Insertion(model, default="decode")
    for key, guard in plan.guards.items():
        node = outputs[key].get_node()
        source = weight_output(node)
        if source is None:
            raise ModelError(f"layer {key!r} has no constant f32 weight to bound")
        w = constant_values(source)
        scale = np.asarray(guard["scale"], np.float32).reshape(guard["scale_shape"])
        theta = stored_theta(source, theta_for(w, scale, float(guard["gain"])))
        name = key
        moved = stored_copy(source, name + THETA_SUFFIX, theta)  # in the weight's stored format, shape and order
        chain = decode_chain(moved, scale, float(guard["gain"]), name)
        node.input(1).replace_source_output(chain.output(0))
        insertion.mark_constant(name + THETA_SUFFIX, "weight")
    return PassResult(model, insertion.done())


FP16_BELOW_ONE = np.float16(1 - 2 ** -11)


def stored_theta(source: ov.Output, theta: np.ndarray) -> np.ndarray:
    """``theta`` (the layer's shape) as the weight behind ``source`` is stored: fp16 for an fp16 weight (kept
    below 1 in magnitude, so that no flip makes it inf or NaN), f32 otherwise, in the stored shape and element
    order (:func:`ovrange.graph.stored_order`)."""
    stored, _ = weight_chain(source)
    flat = np.empty(theta.size, np.float32)
    flat[stored_order(source)] = theta.reshape(-1)
    flat = flat.reshape(tuple(int(d) for d in stored.get_shape()))
    if stored.get_element_type() != ov.Type.f16:
        return flat
    half = flat.astype(np.float16)
    return np.where(np.abs(half) >= 1, np.copysign(FP16_BELOW_ONE, half), half).astype(np.float16)


def layer_theta(source: ov.Output, theta: np.ndarray) -> np.ndarray:
    """The values the layer's decoding reads from ``theta`` stored as :func:`stored_theta` makes it (f32)."""
    return apply_chain(stored_theta(source, theta).astype(np.float32), weight_chain(source)[1])


def theta_for(w: np.ndarray, scale: np.ndarray, gain: float) -> np.ndarray:
    """The stored values for weights ``w`` under saturation ``scale`` and gain ``gain`` (see :func:`encode`)."""
    ratio = w.astype(np.float64) / np.where(scale > 0, scale, 1).astype(np.float64)
    return (np.arctanh(ratio) / gain).astype(np.float32)


def measure(original: ov.Model, protected: ov.Model, dataset: Any, params: dict[str, Any], *, device: str,
            progress=None) -> tuple[dict[str, Any], int]:
    """Reconstruction errors of every bounded weight, and how far the outputs moved on the calibration subset."""
    outputs = outputs_by_id(original)
    errors = {}
    for key, guard in ProtectionPlan.from_json(get_rt_json(protected, "protection")).guards.items():
        w = constant_values(weight_output(outputs[key].get_node()))
        scale = np.asarray(guard["scale"], np.float32).reshape(guard["scale_shape"])
        theta = layer_theta(weight_output(outputs[key].get_node()), theta_for(w, scale, guard["gain"]))
        errors[key] = reconstruction_error(w, folded(theta, scale, guard["gain"]))
    worst = {key: max(e[key] for e in errors.values()) for key in ("max_abs_error", "max_rel_error")}
    calibration, samples = compare_outputs(original, protected, dataset, params, device=device, progress=progress)
    return {"reconstruction": {**worst, "layers": errors}, "calibration_outputs": calibration}, samples


def compare_outputs(original: ov.Model, protected: ov.Model, dataset: Any, params: dict[str, Any], *,
                    device: str, progress=None) -> tuple[dict[str, Any], int]:
    """Run the calibration subset through both models (f32) and report how far the protected outputs moved."""
    batch = params["stat_batch_size"]
    runners = [Runner(m, device=device, batch_size=batch) for m in (original, protected)]
    samples, total = data_mod.subset(dataset, params["stat_subset_size"], params["shuffle_data"], params["seed"])
    if total == 0:
        raise DataError("the calibration dataset is empty")
    n_out = len(original.outputs)
    diff, peak = np.zeros(n_out), np.zeros(n_out)
    argmax_changed, seen = 0, 0
    for arrays, count in data_mod.batches(samples, original, batch):
        a, b = (runner.infer(arrays)[:n_out] for runner in runners)
        for i, (x, y) in enumerate(zip(a, b)):
            diff[i] = max(diff[i], float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0)))
            peak[i] = max(peak[i], float(np.max(np.abs(x), initial=0.0)))
        if a[0].ndim == 2:
            argmax_changed += int(np.sum(a[0].argmax(axis=1) != b[0].argmax(axis=1)))
        seen += count
        if progress:
            progress(min(seen, total), total)
    names = [port.get_any_name() if port.get_names() else f"output{i}" for i, port in enumerate(original.outputs)]
    report = {"samples": seen, "identical": bool(np.all(diff == 0)),
              "max_abs_diff": {n: float(d) for n, d in zip(names, diff)},
              "max_rel_diff": {n: float(d / p) if p else 0.0 for n, d, p in zip(names, diff, peak)},
              "argmax_changed": argmax_changed}
    return report, seen
