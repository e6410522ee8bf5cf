"""Range restriction after activations (Ranger: Chen, Li, Pattabiraman, DSN 2021, Algorithm 1, with the refinements
of its Section V): the steps shared by the Ranger pass (every option, :mod:`ovrange.passes.ranger`) and POT's
RangeSupervision (a preset, :mod:`ovrange.passes.range_supervision`).

- Every supported activation is restricted to its bound (observed max, or a percentile; global or per channel of
  the target's feature axis); bounded activations (Tanh, Sigmoid, HSigmoid, HardSigmoid) use their inherent range.
- The bound is carried through the value-preserving ops that follow: MaxPool and AvgPool (values stay within the
  input's range), Reshape/Squeeze/Unsqueeze/Transpose (values only move), and a Concat whose inputs are all
  bounded gets the union of their bounds. A fault in one of these ops is then caught too (the paper's example:
  a fault in MaxPool after a protected ReLU).
- Existing Clamps (ReLU6) are activations like the others (their guard's bound is the observed range intersected
  with the Clamp's own) and feed the propagation; ``tighten_clamps`` guards them even when ``activations`` leaves
  Clamp out.
- The last ``skip_last`` activations can be left unprotected, as the paper left the last layer.
- Correction: ``clamp`` to the bound (Ranger), or ``zero`` — reset out-of-bound values to 0 (the alternative the
  paper discusses in Section VI and finds harmful to accuracy).
- Non-finite values stay non-finite by default (``nonfinite``, :mod:`ovrange.passes.guards`).
- Guards are placed to fuse (:mod:`ovrange.passes.placement`): one whose input is already guarded through pooling or
  data movement is dropped, one after a MaxPool moves before it; the plan's report records each.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov

from ovrange.bounds import Bound, derive_bound, inherent_bound
from ovrange.errors import ConfigError
from ovrange.graph import node_ids
from ovrange.params import Param, one_of
from ovrange.passes import PassResult, Selection
from ovrange.passes.guards import CLAMP_SUFFIX, NONFINITE_PARAM, ZERO_SUFFIX, clamp_guard, insert_guards, zero_guard
from ovrange.passes.placement import describe, place
from ovrange.stats import StatRequest, Statistics
from ovrange.targets import (ACTIVATIONS, Target, check_activations, find_targets, outputs_by_id, require,
                             select as select_targets)

# Ops whose output values lie within the range of their (first) input; True = the channel axis is preserved.
PASSTHROUGH = {"MaxPool": True, "AvgPool": True, "Reshape": False, "Squeeze": False, "Unsqueeze": False,
               "Transpose": False}

PARAMS: dict[str, Param] = {
    "bound": Param(str, "max", one_of("max", "percentile"), "how a bound is read from the statistics"),
    "percentile": Param(float, 99.99, lambda p: None if 0 < p <= 100 else "must be in (0, 100]",
                        "upper bound = p-th percentile, lower = (100-p)-th (bound: percentile)"),
    "per_channel": Param(bool, False, None, "one bound per channel (the feature axis) instead of one per tensor"),
    "correction": Param(str, "clamp", one_of("clamp", "zero"), "clamp to the bound, or reset to 0"),
    "propagate": Param(bool, True, None, "carry bounds through pooling, reshape-like ops and Concat"),
    "inherent_bounds": Param(bool, True, None,
                             "use (-1,1)/(0,1) for Tanh/Sigmoid/HSigmoid/HardSigmoid without statistics"),
    "tighten_clamps": Param(bool, False, None, "guard existing Clamps (ReLU6) even when activations leaves Clamp out"),
    "skip_last": Param(int, 0, lambda n: None if n >= 0 else "must be >= 0", "leave the last N activations alone"),
    "histogram_bins": Param(int, 2048, lambda n: None if 16 <= n <= 1 << 20 else "must be from 16 to 1048576 (the "
                            "limit)", "bins of percentile "
                            "histograms (the percentile is exact to one bin width)"),
    "activations": Param(list, list(ACTIVATIONS), None, "activation op types to protect"),
    "nonfinite": NONFINITE_PARAM,
}


def check_params(params: dict[str, Any]) -> str | None:
    return check_activations(params["activations"])


# ---------------------------------------------------------------------------------------------------------------
# The four steps


def select(model: ov.Model, params: dict[str, Any]) -> Selection:
    """Activations to bound, existing Clamps, and the pass-through/Concat ops bounds propagate through."""
    every = find_targets(model)
    activations = require(select_targets(every, ops=params["activations"]), model,
                          f"supported activations ({', '.join(params['activations'])})")
    if params["skip_last"]:
        activations = activations[: max(0, len(activations) - params["skip_last"])]
    outputs = outputs_by_id(model)
    clamps = {t.id: _clamp_range(outputs[t.id].get_node()) for t in select_targets(every, ops=("Clamp",))}
    facts = {"clamps": clamps, "flow": _flow(model) if params["propagate"] else [],
             "all": {t.id: t for t in every}, "graph": describe(model)}
    if params["tighten_clamps"]:
        activations += [t for t in every if t.id in clamps and t not in activations]
    flat = [t for t in activations if params["per_channel"] and t.feature_axis is None]
    if flat:
        raise ConfigError(f"per-channel bounds need a channel axis, but {flat[0].id!r} has a "
                          f"{flat[0].rank}-D output")
    return Selection(activations, facts)


def requests(selection: Selection, params: dict[str, Any]) -> list[StatRequest]:
    wanted = []
    for target in _measured(selection, params):
        axis = _axis(target, params)
        wanted.append(StatRequest(target.id, "minmax", axis))
        if params["bound"] == "percentile" and params["percentile"] < 100:
            wanted.append(StatRequest(target.id, "histogram", axis, params["histogram_bins"]))
    return wanted


def plan(selection: Selection, stats: Statistics | None, params: dict[str, Any]
         ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Bounds per target id (pure): observed or inherent, tightened Clamps, then propagation."""
    bounds: dict[str, Bound] = {}
    measured = {t.id for t in _measured(selection, params)}
    for target in selection.targets:
        if target.id not in measured:
            bounds[target.id] = inherent_bound(target.id, target.op, target.name)
            continue
        axis = _axis(target, params)
        percentile = params["percentile"] if params["bound"] == "percentile" else 100.0
        histogram = stats.values.get(StatRequest(target.id, "histogram", axis, params["histogram_bins"]))
        bounds[target.id] = derive_bound(target.id, target.op, stats[StatRequest(target.id, "minmax", axis)],
                                         stats.samples, histogram=histogram, percentile=percentile,
                                         axis=axis, name=target.name)
    clamps = {key: Bound(key, "Clamp", low, high, 0, "existing") for key, (low, high) in
              selection.facts["clamps"].items()}
    for key, clamp in clamps.items():
        if key in bounds:  # tightened: never wider than the Clamp that is already there
            bounds[key] = _intersect(bounds[key], clamp)
    guarded = dict(bounds)
    if selection.facts["flow"]:
        guarded.update(propagate(selection.facts["flow"], {**clamps, **bounds}, selection.facts["all"]))
    planned = {key: bound.to_json() for key, bound in guarded.items()}
    if "graph" not in selection.facts:
        return planned, {}
    placed, record = place(planned, selection.facts["graph"])
    return placed, ({"placement": record} if record else {})


def apply(model: ov.Model, plan: Any) -> PassResult:
    """Insert a guard after every target of the plan (Clamp, per-channel Minimum/Maximum, or zeroing Select), with
    its non-finite policy (a plan saved without one: ``bound``, the guard alone)."""
    zero = plan.params.get("correction") == "zero"
    modified = insert_guards(model, plan.bounds, zero_guard if zero else clamp_guard,
                             ZERO_SUFFIX if zero else CLAMP_SUFFIX, plan.params.get("nonfinite", "bound"))
    return PassResult(model, modified)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _measured(selection: Selection, params: dict[str, Any]) -> list[Target]:
    """Targets whose bound comes from statistics (not from an inherent range)."""
    inherent = params["inherent_bounds"]
    return [t for t in selection.targets
            if not (inherent and t.id not in selection.facts["clamps"] and inherent_bound(t.id, t.op))]


def _axis(target: Target, params: dict[str, Any]) -> int | None:
    return target.feature_axis if params["per_channel"] else None


def _clamp_range(node: ov.Node) -> tuple[float, float]:
    attrs = node.get_attributes()
    return float(attrs["min"]), float(attrs["max"])


def _flow(model: ov.Model) -> list[dict[str, Any]]:
    """Pass-through ops and Concats in topological order, with the target ids of their data inputs (pure data)."""
    ids = {node.get_name(): node_id for node_id, node in node_ids(model)}
    flow = []
    for node_id, node in node_ids(model):
        kind = node.get_type_name()
        if kind not in PASSTHROUGH and kind != "Concat":
            continue
        values = node.input_values() if kind == "Concat" else [node.input_value(0)]
        sources = [ids[v.get_node().get_name()] if v.get_index() == 0 else None for v in values]
        rank = node.get_output_partial_shape(0).rank
        entry = {"id": node_id, "op": kind, "name": node.get_friendly_name(), "sources": sources}
        if kind == "AvgPool":
            entry["pads_zeros"] = _pads_average_zeros(node)
        if kind == "Concat":
            entry["axis"] = node.get_attributes()["axis"] % rank.get_length() if rank.is_static else None
        flow.append(entry)
    return flow


def propagate(flow: list[dict[str, Any]], bounds: dict[str, Bound], targets: dict[str, Target]) -> dict[str, Bound]:
    """Bounds for the pass-through ops and Concats fed by bounded nodes (Algorithm 1, lines 5-8, transitively)."""
    known = dict(bounds)
    added: dict[str, Bound] = {}
    for entry in flow:
        key, kind, name = entry["id"], entry["op"], entry["name"]
        if key in known:
            continue
        inputs = [known.get(source) if source else None for source in entry["sources"]]
        if not inputs or any(b is None for b in inputs):
            continue
        if kind == "Concat":
            new = _concat_bound(key, name, entry["axis"], inputs)
        else:
            bound = inputs[0] if PASSTHROUGH[kind] else inputs[0].scalar()
            if kind == "AvgPool" and entry["pads_zeros"]:
                bound = bound.scalar().union(Bound(key, kind, 0.0, 0.0, bound.samples), key, kind, "")
            new = Bound(key, kind, bound.low, bound.high, bound.samples, f"propagated:{inputs[0].node}",
                        bound.axis, name)
        known[key] = added[key] = new
    return added


def _concat_bound(key: str, name: str, axis: int | None, inputs: list[Bound]) -> Bound:
    method = "union:" + ",".join(b.node for b in inputs)
    if axis is not None and all(b.per_channel and b.axis == axis for b in inputs):
        low = [v for b in inputs for v in b.low]
        high = [v for b in inputs for v in b.high]
        return Bound(key, "Concat", low, high, min(b.samples for b in inputs), method, axis, name)
    merged = inputs[0].scalar()
    for other in inputs[1:]:
        merged = merged.union(other, key, "Concat", method)
    return Bound(key, "Concat", merged.low, merged.high, merged.samples, method, None, name)


def _pads_average_zeros(node: ov.Node) -> bool:
    attrs = node.get_attributes()
    padded = any(attrs.get("pads_begin", [])) or any(attrs.get("pads_end", [])) or attrs.get("auto_pad") not in (
        None, "explicit", "valid")
    return bool(padded and not attrs.get("exclude-pad", attrs.get("exclude_pad", False)))


def _intersect(bound: Bound, clamp: Bound) -> Bound:
    low = np.maximum(np.asarray(bound.low), clamp.low)
    high = np.minimum(np.asarray(bound.high), clamp.high)
    convert = (lambda a: [float(v) for v in a]) if bound.per_channel else float
    return Bound(bound.node, "Clamp", convert(low), convert(high), bound.samples, bound.method, bound.axis,
                 bound.name)
