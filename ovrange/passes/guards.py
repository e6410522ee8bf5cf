"""Inserting range guards: the graph side shared by every range-restricting pass (Ranger, RangeSupervision).

A guard replaces a target's output with a corrected value: ``Clamp`` for a scalar bound (the op POT inserted, and
the one the CPU plugin fuses into Convolution/FullyConnected/MVN post-ops), ``Minimum(Maximum(x, low), high)`` with
``[1, C, 1...]`` constants for per-channel bounds (Clamp takes scalars only), or ``Select`` to reset out-of-range
values to zero (:func:`zero_guard` lets NaN through, :func:`reset_guard` resets it too). Guards are named
``<target id><suffix>`` (POT's ``<activation>/min_max_Clamp`` for an activation with a unique name) and recorded
as inserted nodes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.bounds import Bound
from ovrange.errors import ConfigError
from ovrange.graph import added_nodes, insert_after, node_names, record_inserted
from ovrange.targets import outputs_by_id

CLAMP_SUFFIX = "/min_max_Clamp"
ZERO_SUFFIX = "/range_zero"


def limits(output: ov.Output, bound: Bound) -> tuple[ov.Node, ov.Node]:
    """Constants for ``bound`` that broadcast against ``output`` (per channel: ``C`` values along ``bound.axis``)."""
    if not bound.per_channel:
        return ops.constant(np.float32(bound.low)), ops.constant(np.float32(bound.high))
    rank = output.get_partial_shape().rank.get_length()
    shape = [1] * rank
    shape[bound.axis % rank] = len(bound.high)
    return (ops.constant(np.asarray(bound.low, np.float32).reshape(shape)),
            ops.constant(np.asarray(bound.high, np.float32).reshape(shape)))


def clamp_guard(output: ov.Output, bound: Bound, name: str) -> ov.Node:
    """Restrict to the bound."""
    if not bound.per_channel:
        return ops.clamp(output, float(bound.low), float(bound.high), name=name)
    low, high = limits(output, bound)
    lower = ops.maximum(output, low, name=name.replace(CLAMP_SUFFIX, "/min_max_Maximum"))
    return ops.minimum(lower, high, name=name)


def zero_guard(output: ov.Output, bound: Bound, name: str) -> ov.Node:
    """Reset values outside the bound to 0 (Ranger's Section VI alternative)."""
    low, high = limits(output, bound)
    outside = ops.logical_or(ops.less(output, low, name=name + "/below"),
                             ops.greater(output, high, name=name + "/above"), name=name + "/outside")
    return ops.select(outside, ops.constant(np.float32(0.0)), output, name=name)


def reset_guard(output: ov.Output, bound: Bound, name: str) -> ov.Node:
    """Keep values inside the bound, reset the rest to 0 -- NaN too (both comparisons are false for NaN), where
    :func:`zero_guard` keeps Ranger's behaviour and lets NaN through (a DUE a runtime check can see)."""
    low, high = limits(output, bound)
    inside = ops.logical_and(ops.greater_equal(output, low, name=name + "/above_low"),
                             ops.less_equal(output, high, name=name + "/below_high"), name=name + "/inside")
    return ops.select(inside, output, ops.constant(np.float32(0.0)), name=name)


GuardFn = Callable[[ov.Output, Bound, str], ov.Node]


def insert_guards(model: ov.Model, bounds: dict[str, Bound], make: GuardFn, suffix: str) -> bool:
    """Insert ``make`` after every bounded target of ``model`` (edited in place); record what was inserted."""
    outputs = outputs_by_id(model)
    before = node_names(model)
    guards = set()
    for target, bound in bounds.items():
        if target not in outputs:
            raise ConfigError(f"the plan names node {target!r}, which model {model.get_friendly_name()!r} lacks")
        name = target + suffix
        guards.add(insert_after(outputs[target], lambda out, b=bound, n=name: make(out, b, n)).get_friendly_name())
    if guards:
        model.validate_nodes_and_infer_types()
        record_inserted(model, {n.get_friendly_name(): "guard" if n.get_friendly_name() in guards else "check"
                                for n in added_nodes(model, before)})
    return bool(guards)
