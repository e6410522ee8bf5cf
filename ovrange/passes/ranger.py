"""Ranger (Chen, Li, Pattabiraman, DSN 2021, Algorithm 1), with the refinements of its Section V.

- Every supported activation is restricted to its bound (observed max, or a percentile; global or per channel);
  bounded activations (Tanh, Sigmoid, HSigmoid) use their inherent range and need no statistics.
- The bound is carried through the value-preserving ops that follow: MaxPool and AvgPool (values stay within the
  input's range), Reshape/Squeeze/Unsqueeze/Transpose (values only move), and a Concat whose inputs are all
  bounded gets the union of their bounds. A fault in one of these ops is then caught too (the paper's example:
  a fault in MaxPool after a protected ReLU).
- Existing Clamps (ReLU6) are bounded already: they feed the propagation, and are tightened to the observed range
  only with ``tighten_clamps``.
- The last ``skip_last`` activations can be left unprotected, as the paper left the last layer.
- Correction: ``clamp`` to the bound (Ranger), or ``zero`` — reset out-of-bound values to 0 (the alternative the
  paper discusses in Section VI and finds harmful to accuracy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.bounds import Bound, derive_bounds, inherent_bound
from ovrange.config import AlgorithmConfig, Param, one_of
from ovrange.passes import PassResult
from ovrange.passes import range_supervision
from ovrange.passes.range_supervision import CLAMP_SUFFIX, EXTENDED_ACTIVATIONS, apply_clamps, require_targets
from ovrange.stats import CHANNEL_AXIS, collect_statistics

# Ops whose output values lie within the range of their (first) input; True = the channel axis is preserved.
PASSTHROUGH = {"MaxPool": True, "AvgPool": True, "Reshape": False, "Squeeze": False, "Unsqueeze": False,
               "Transpose": False}

PARAMS: dict[str, Param] = {
    "bound": Param(str, "max", one_of("max", "percentile"), "how a bound is read from the statistics"),
    "percentile": Param(float, 99.99, lambda p: None if 0 < p <= 100 else "must be in (0, 100]",
                        "upper bound = p-th percentile, lower = (100-p)-th (bound: percentile)"),
    "per_channel": Param(bool, False, None, "one bound per channel (axis 1) instead of one per tensor"),
    "correction": Param(str, "clamp", one_of("clamp", "zero"), "clamp to the bound, or reset to 0"),
    "propagate": Param(bool, True, None, "carry bounds through pooling, reshape-like ops and Concat"),
    "inherent_bounds": Param(bool, True, None, "use (-1,1)/(0,1) for Tanh/Sigmoid/HSigmoid without statistics"),
    "tighten_clamps": Param(bool, False, None, "also restrict existing Clamps (ReLU6) to their observed range"),
    "skip_last": Param(int, 0, lambda n: None if n >= 0 else "must be >= 0", "leave the last N activations alone"),
    "histogram_bins": Param(int, 2048, lambda n: None if n >= 16 else "must be >= 16", "bins of percentile "
                            "histograms (the percentile is exact to one bin width)"),
    "activations": Param(list, list(EXTENDED_ACTIVATIONS), None, "activation op types to protect"),
}


check_params = range_supervision.check_params

def run(model: ov.Model, dataset: Any, config: AlgorithmConfig, *, device: str, progress=None) -> PassResult:
    p = config.params
    targets = require_targets(model, p["activations"])
    if p["skip_last"]:
        targets = targets[: max(0, len(targets) - p["skip_last"])]
    types = {n.get_friendly_name(): n.get_type_name() for n in model.get_ops()}
    existing = _existing_clamps(model)
    bounds: dict[str, Bound] = {}
    if p["inherent_bounds"]:
        bounds = {t: b for t in targets if (b := inherent_bound(t, types[t])) is not None}
    measured = [t for t in targets if t not in bounds] + (list(existing) if p["tighten_clamps"] else [])
    samples = 0
    if measured:
        percentile = p["bound"] == "percentile" and p["percentile"] < 100
        stats = collect_statistics(model, dataset, measured, subset_size=config.subset_size,
                                   batch_size=config.batch_size, shuffle=config.shuffle, seed=config.seed,
                                   device=device, progress=progress, per_channel=p["per_channel"],
                                   histogram_bins=p["histogram_bins"] if percentile else None)
        bounds.update(derive_bounds(stats, p["bound"], p["percentile"]))
        samples = stats.samples
    for name, clamp in existing.items():
        if name in bounds:  # tightened: never wider than the Clamp that is already there
            bounds[name] = _intersect(bounds[name], clamp)
    guarded = dict(bounds)
    if p["propagate"]:
        known = {**existing, **bounds}
        guarded.update(propagate(model, known))
    make = _zero_node if p["correction"] == "zero" else _clamp_node
    protected = apply_clamps(model, guarded, CLAMP_SUFFIX if p["correction"] == "clamp" else "/range_zero", make)
    return PassResult(protected, {n: b.to_json() for n, b in guarded.items()}, samples)


def propagate(model: ov.Model, bounds: dict[str, Bound]) -> dict[str, Bound]:
    """Bounds for the pass-through ops and Concats fed by bounded nodes (Algorithm 1, lines 5-8, transitively)."""
    known = dict(bounds)
    added: dict[str, Bound] = {}
    for node in model.get_ordered_ops():
        name, kind = node.get_friendly_name(), node.get_type_name()
        if name in known:
            continue
        sources = [value for value in node.input_values()]
        if kind in PASSTHROUGH:
            source = sources[0]
            bound = known.get(source.get_node().get_friendly_name()) if source.get_index() == 0 else None
            if bound is None:
                continue
            bound = bound if PASSTHROUGH[kind] else bound.scalar()
            if kind == "AvgPool" and _pads_average_zeros(node):
                bound = bound.scalar().union(Bound(name, kind, 0.0, 0.0, bound.samples), name, kind, "")
            new = Bound(name, kind, bound.low, bound.high, bound.samples, f"propagated:{source.get_node().get_friendly_name()}")
        elif kind == "Concat":
            inputs = [known.get(v.get_node().get_friendly_name()) if v.get_index() == 0 else None for v in sources]
            if not inputs or any(b is None for b in inputs):
                continue
            new = _concat_bound(node, inputs)
        else:
            continue
        known[name] = added[name] = new
    return added


def _concat_bound(node: ov.Node, inputs: list[Bound]) -> Bound:
    name = node.get_friendly_name()
    method = "union:" + ",".join(b.node for b in inputs)
    rank = node.get_output_partial_shape(0).rank
    axis = node.get_attributes()["axis"]
    if rank.is_static and axis % rank.get_length() == CHANNEL_AXIS and all(b.per_channel for b in inputs):
        low = [v for b in inputs for v in b.low]
        high = [v for b in inputs for v in b.high]
        return Bound(name, "Concat", low, high, min(b.samples for b in inputs), method)
    merged = inputs[0].scalar()
    for other in inputs[1:]:
        merged = merged.union(other, name, "Concat", method)
    return Bound(name, "Concat", merged.low, merged.high, merged.samples, method)


def _pads_average_zeros(node: ov.Node) -> bool:
    attrs = node.get_attributes()
    padded = any(attrs.get("pads_begin", [])) or any(attrs.get("pads_end", [])) or attrs.get("auto_pad") not in (
        None, "explicit", "valid")
    return padded and not attrs.get("exclude-pad", attrs.get("exclude_pad", False))


def _existing_clamps(model: ov.Model) -> dict[str, Bound]:
    found = {}
    for node in model.get_ops():
        if node.get_type_name() == "Clamp":
            attrs = node.get_attributes()
            found[node.get_friendly_name()] = Bound(node.get_friendly_name(), "Clamp", float(attrs["min"]),
                                                    float(attrs["max"]), 0, "existing")
    return found


def _intersect(bound: Bound, clamp: Bound) -> Bound:
    low = np.maximum(np.asarray(bound.low), clamp.low)
    high = np.minimum(np.asarray(bound.high), clamp.high)
    convert = (lambda a: [float(v) for v in a]) if bound.per_channel else float
    return Bound(bound.node, "Clamp", convert(low), convert(high), bound.samples, bound.method)


def _limits(output: ov.Output, bound: Bound) -> tuple[ov.Node, ov.Node]:
    """Constants for ``bound`` that broadcast against ``output`` (per channel: shape [1, C, 1, ...])."""
    if not bound.per_channel:
        return (ops.constant(np.float32(bound.low)), ops.constant(np.float32(bound.high)))
    rank = output.get_partial_shape().rank.get_length()
    shape = [1] * rank
    shape[CHANNEL_AXIS] = len(bound.high)
    return (ops.constant(np.asarray(bound.low, np.float32).reshape(shape)),
            ops.constant(np.asarray(bound.high, np.float32).reshape(shape)))


def _clamp_node(output: ov.Output, bound: Bound) -> ov.Node:
    if not bound.per_channel:
        return ops.clamp(output, float(bound.low), float(bound.high))
    low, high = _limits(output, bound)
    source = output.get_node().get_friendly_name()
    return ops.minimum(ops.maximum(output, low, name=f"{source}/min_max_Maximum"), high)


def _zero_node(output: ov.Output, bound: Bound) -> ov.Node:
    low, high = _limits(output, bound)
    source = output.get_node().get_friendly_name()
    outside = ops.logical_or(ops.less(output, low, name=f"{source}/range_below"),
                             ops.greater(output, high, name=f"{source}/range_above"))
    return ops.select(outside, ops.constant(np.float32(0.0)), output)
