"""Inserting guards: the one inserter every pass uses (:class:`Insertion`), and the range guards' ops.

Every pass inserts through an :class:`Insertion`: a node after an output (:func:`ovrange.graph.insert_after`, which
moves the tensor names), for all its consumers or some, and a record of every node added, by role (``guard``,
``check``, ``decode``, ``weight``; :func:`ovrange.graph.record_inserted`).

A range guard replaces a target's output with a corrected value: ``Clamp`` for a scalar bound (the op POT inserted, and
the one the CPU plugin fuses into Convolution/FullyConnected/MVN post-ops), ``Minimum(Maximum(x, low), high)`` with
``[1, C, 1...]`` constants for per-channel bounds (Clamp takes scalars only), or ``Select`` to reset out-of-range
values to zero (:func:`zero_guard` lets NaN through, :func:`reset_guard` resets it too). Guards are named
``<target id><suffix>`` (POT's ``<activation>/min_max_Clamp`` for an activation with a unique name) and recorded
as inserted nodes.

Non-finite values (``nonfinite``, one meaning for every range guard): the CPU plugin's Clamp, Minimum and Maximum
map NaN to the low bound and +-Inf to the bounds, fused or not (measured, tests/test_placement.py), which turns a
fault a system could detect (a NaN/Inf output: a DUE) into a plausible wrong answer (an SDC). ``keep`` (default)
lets non-finite values through unchanged, ``Select(|x| < inf, guard(x), x)``, and clamps finite ones as before: NaN
stays NaN and +-Inf stays +-Inf (Inf, not NaN: the CPU's Relu and MaxPool drop a NaN, an Inf they pass on). No form
that keeps them fuses into a convolution's post-ops (every fusable clip maps NaN and Inf to a bound): this one is one
element-wise kernel (a CPU Subgraph, which takes following element-wise ops along), where ``Select(IsFinite(x), ...)``
is two. ``bound`` is the guard alone (fused); ``zero`` maps NaN to 0 first (``Select(IsNaN)``), then +-Inf to the
bounds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.bounds import Bound
from ovrange.errors import ConfigError
from ovrange.graph import added_nodes, insert_after, node_names, record_inserted
from ovrange.params import Param, one_of
from ovrange.targets import outputs_by_id

CLAMP_SUFFIX = "/min_max_Clamp"
ZERO_SUFFIX = "/range_zero"
NONFINITE = ("keep", "bound", "zero")
NONFINITE_PARAM = Param(str, "bound", one_of(*NONFINITE),
                        "non-finite values reaching a guard: bound (the guard alone, fused: on CPU NaN becomes the "
                        "low bound, +-Inf the bounds), keep (they pass unchanged, a DUE a check can see; one kernel "
                        "per guard), zero (NaN to 0, +-Inf to the bounds)")


def nonfinite_input(x: ov.Output, nonfinite: str, name: str) -> ov.Output:
    """What the guard reads: ``x``, or with ``zero`` NaN replaced by 0."""
    if nonfinite != "zero":
        return x
    return ops.select(ops.is_nan(x), ops.constant(np.float32(0.0)), x, name=f"{name}/nan_Select").output(0)


def nonfinite_output(x: ov.Output, guarded: ov.Node, nonfinite: str, name: str) -> ov.Node:
    """The guard's last node, named ``name``: ``guarded``, or with ``keep`` ``x`` where ``x`` is NaN or +-Inf."""
    if nonfinite != "keep":
        guarded.set_friendly_name(name)
        return guarded
    guarded.set_friendly_name(name + "/bounded")
    finite = ops.less(ops.abs(x, name=name + "/Abs"), ops.constant(np.float32(np.inf)), name=name + "/finite")
    return ops.select(finite, guarded, x, name=name)


def with_nonfinite(make: "GuardFn", nonfinite: str) -> "GuardFn":
    """``make`` (a guard of this module) with the ``nonfinite`` policy around it."""
    if nonfinite not in NONFINITE:
        raise ConfigError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
    return lambda x, bound, name: nonfinite_output(x, make(nonfinite_input(x, nonfinite, name), bound, name),
                                                   nonfinite, name)


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


class Insertion:
    """The nodes one pass inserts into ``model`` (edited in place), recorded by :meth:`done`: each node added since
    the start with the role it was given, the others as ``default`` (``check``: helper ops of a guard)."""

    def __init__(self, model: ov.Model, default: str = "check"):
        self.model = model
        self.default = default
        self.roles: dict[str, str] = {}
        self.constants: dict[str, str] = {}
        self._before = node_names(model)

    def after(self, output: ov.Output, make: Callable[[ov.Output], ov.Node], consumers: list[ov.Input] | None = None,
              names: bool = True, role: str = "guard") -> ov.Node:
        """``make(output)`` inserted between ``output`` and its consumers (all, or ``consumers``); with ``names`` it
        takes over the tensor names (:func:`ovrange.graph.insert_after`)."""
        node = insert_after(output, make, consumers, names)
        self.mark(node.get_friendly_name(), role)
        return node

    def mark(self, name: str, role: str) -> None:
        """Give node ``name``, inserted by other means (a weight's decoding op, a multi-output branch), ``role``."""
        self.roles[name] = role

    def mark_constant(self, name: str, role: str) -> None:
        """Record the Constant ``name`` as ``role`` (a stored ``weight``; other Constants are not recorded)."""
        self.constants[name] = role

    def done(self) -> bool:
        """Validate the model and record the inserted nodes still in it; whether anything was inserted."""
        self.model.validate_nodes_and_infer_types()
        record_inserted(self.model, {**{n.get_friendly_name(): self.roles.get(n.get_friendly_name(), self.default)
                                        for n in added_nodes(self.model, self._before)}, **self.constants})
        return bool(self.roles or self.constants)


def insert_guards(model: ov.Model, bounds: dict[str, Bound], make: GuardFn, suffix: str,
                  nonfinite: str = "bound") -> bool:
    """Insert ``make`` after every bounded target of ``model`` (edited in place), with the ``nonfinite`` policy;
    record what was inserted."""
    if not bounds:
        return False
    make = with_nonfinite(make, nonfinite)
    outputs = outputs_by_id(model)
    insertion = Insertion(model)
    for target, bound in bounds.items():
        if target not in outputs:
            raise ConfigError(f"the plan names node {target!r}, which model {model.get_friendly_name()!r} lacks")
        name = target + suffix
        insertion.after(outputs[target], lambda out, b=bound, n=name: make(out, b, n))
    return insertion.done()
