"""Targets by role: which tensors of a model a guard can protect, and what each one is.

:func:`targets_by_role` selects :class:`ovrange.targets.Target`s by role: a node output, or the value on one input
edge for attention inputs, with its stable id, role, rank and *feature axis* (the axis per-channel bounds run along:
1 for NCHW convolution tensors, the last axis for ``[N, T, C]`` transformer tensors and attention inputs).

Roles (Global Clipper's, Qutub et al. 2024, extended to OpenVINO's op set):

- ``activation``: Relu, Gelu, Swish, HSwish, ... (as RangeSupervision), after a constant affine that follows;
- ``linear``: MatMul / Convolution outputs, after their bias ``Add`` (any constant affine chain); skipped when every
  consumer is a guarded activation (the activation's guard sees the linear output's faults already);
- ``norm``: MVN / NormalizeL2 outputs, after the LayerNorm affine ``Multiply`` + ``Add``;
- ``residual``: ``Add`` of two computed tensors (not a bias);
- ``attention``: ScaledDotProductAttention's Q/K/V inputs (edge targets) and output; decomposed attention: the
  scores entering Softmax;
- ``pooling``: MaxPool / AvgPool outputs (a fault in the pooling op itself);
- ``probabilities``: a Softmax output the model returns (a classifier's or CTC head's probabilities): no guard
  follows it, and its range is known without calibration. Attention weights are not: a fault there reaches the
  next linear's and the residual's guards, and a guard between Softmax and MatMul would break the CPU plugin's
  attention fusion.
"""

from __future__ import annotations

from collections.abc import Iterable

import openvino as ov

from ovrange.graph import computed_nodes, node_ids
from ovrange.targets import (ACTIVATIONS, AFFINE, DATA_MOVEMENT, LAYER_NORMS, LINEAR, POOLING, SDPA, SOFTMAX, Target,
                             make_target, returned)

ROLES = ("activation", "linear", "norm", "residual", "attention", "pooling", "probabilities")  # of targets.ROLES


def targets_by_role(model: ov.Model, roles: Iterable[str], activations: Iterable[str] = ACTIVATIONS,
                    hoist: bool = True, skip: Iterable[str] = ()) -> list[Target]:
    """Every target of ``roles`` in ``model``, in topological order, each tensor once.

    ``hoist``: an SDPA input that comes through data movement only (Reshape, Transpose, Split, Squeeze...; no
    fault site lies there) is guarded at the op that computed it -- the q/k/v linear's bias Add, where the CPU
    plugin fuses the guard into the FullyConnected -- instead of on the SDPA input edge (a kernel of its own).
    ``skip``: ``attention_output`` leaves the SDPA output unguarded (its faults reach the next linear and the
    residual guard).
    """
    skip = set(skip)
    roles, activations = set(roles), set(activations)
    id_of = {node.get_name(): key for key, node in node_ids(model)}
    live = computed_nodes(model)
    targets: dict[str, Target] = {}

    def add(node: ov.Node, role: str, edge: tuple[ov.Node, int] | None = None) -> None:
        out = node.output(0)
        if out.get_element_type() != ov.Type.f32:
            return
        key = id_of[node.get_name()] + (f">{id_of[edge[0].get_name()]}:{edge[1]}" if edge else "")
        if key not in targets:
            producer = _behind_affine(node, live)
            targets[key] = make_target(key, id_of[node.get_name()], node, 0, role,
                                       (id_of[edge[0].get_name()], edge[1]) if edge else None,
                                       producer.get_type_name(), _has_constant_input(producer, live))

    for node in model.get_ordered_ops():
        if node.get_name() not in live:
            continue
        kind = node.get_type_name()
        if kind in activations and "activation" in roles:
            add(_follow_affine(node, live), "activation")
        elif kind in LINEAR and "linear" in roles and _has_constant_input(node, live):
            out = _follow_affine(node, live)
            if not all(c.get_type_name() in activations for c in _consumers(out)) or "activation" not in roles:
                add(out, "linear")
        elif kind in LAYER_NORMS and "norm" in roles:
            add(_follow_affine(node, live), "norm")
        elif kind == "Add" and "residual" in roles and _live_inputs(node, live) == 2:
            add(node, "residual")
        elif kind in SDPA and "attention" in roles:
            for port in range(min(3, node.get_input_size())):
                source = node.input_value(port)
                if hoist and (producer := _through_data_movement(source, live)) is not None:
                    add(producer, "attention")  # one guard before the Reshape/Split/Squeeze covers q, k and v
                elif source.get_index() == 0:
                    add(source.get_node(), "attention", (node, port))
            if "attention_output" not in skip:
                add(node, "attention")
        elif kind in SOFTMAX:
            source = node.input_value(0)
            if "attention" in roles and source.get_index() == 0 and source.get_node().get_name() in live:
                add(source.get_node(), "attention", (node, 0))
            if "probabilities" in roles and returned(node):
                add(node, "probabilities")
        elif kind in POOLING and "pooling" in roles:
            add(node, "pooling")
    return list(targets.values())


def _through_data_movement(source: ov.Output, live: set[str]) -> ov.Node | None:
    """The computing op behind ``source`` when only data movement lies between them (output 0), else None."""
    node, moved = source.get_node(), False
    while node.get_type_name() in DATA_MOVEMENT:
        ports = DATA_MOVEMENT[node.get_type_name()]
        if ports is None:  # Concat: several sources
            return None
        source, moved = node.input_value(ports[0]), True
        node = source.get_node()
    if not moved or source.get_index() != 0 or node.get_name() not in live or node.get_type_name() == "Parameter":
        return None
    return node


def _live_inputs(node: ov.Node, live: set[str]) -> int:
    return sum(v.get_node().get_name() in live for v in node.input_values())


def _has_constant_input(node: ov.Node, live: set[str]) -> bool:
    return _live_inputs(node, live) < node.get_input_size()


def _consumers(node: ov.Node) -> list[ov.Node]:
    return [t.get_node() for t in node.output(0).get_target_inputs()]


def _behind_affine(node: ov.Node, live: set[str]) -> ov.Node:
    """The op that computed ``node``'s value: back through element-wise affine ops with a constant operand."""
    while node.get_type_name() in AFFINE and _live_inputs(node, live) == 1:
        node = next(v.get_node() for v in node.input_values() if v.get_node().get_name() in live)
    return node


def _follow_affine(node: ov.Node, live: set[str]) -> ov.Node:
    """The end of the element-wise affine chain after ``node`` (a bias Add, LayerNorm's Multiply + Add, PP-LCNet's
    learnable affine after an activation): single consumers with a constant other input. A guard there also sees
    faults in the affine ops, and still fuses into the producer's post-ops."""
    while True:
        users = _consumers(node)
        if len(users) != 1 or users[0].get_type_name() not in AFFINE or _live_inputs(users[0], live) != 1:
            return node
        node = users[0]
