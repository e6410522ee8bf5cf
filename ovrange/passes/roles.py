"""Targets by role: which tensors of a model a guard can protect, and what each one is.

A :class:`Target` is one tensor (a node output, or the value on one input edge for attention inputs) with a stable
id (friendly name, ``#k`` for the k-th repeat of that name in topological order, as fault sites are named), its
role, rank and *feature axis* (the axis per-channel bounds run along: 1 for NCHW convolution tensors, the last
axis for ``[N, T, C]`` transformer tensors and attention inputs).

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
from dataclasses import asdict, dataclass

import openvino as ov

from ovrange.graph import node_ids as ordered_ids
from ovrange.passes.placement import DATA_MOVEMENT
from ovrange.targets import ACTIVATIONS

ROLES = ("activation", "linear", "norm", "residual", "attention", "pooling", "probabilities")
LINEAR_OPS = ("MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData")
NORM_OPS = ("MVN", "NormalizeL2")
POOLING_OPS = ("MaxPool", "AvgPool")
ATTENTION_OPS = ("ScaledDotProductAttention",)
SOFTMAX_OPS = ("Softmax", "SoftMax")
AFFINE_OPS = ("Add", "Multiply", "Subtract", "Divide")


@dataclass(frozen=True)
class Target:
    """One guarded tensor. ``edge`` is ``(consumer id, input port)`` for an input-edge target, else None."""

    id: str
    node: str  # id of the node whose output 0 is (or feeds) the tensor
    op: str
    role: str
    rank: int
    axis: int | None  # feature axis; None when the rank is unknown
    channels: int | None  # static size of the feature axis, else None
    edge: tuple[str, int] | None = None
    producer: str = ""  # type of the op computing the tensor, behind a constant affine chain (a bias Add...)
    weighted: bool = False  # that op has a constant input (a linear layer's weight)

    def to_json(self) -> dict:
        return asdict(self)


def node_ids(model: ov.Model) -> dict[str, ov.Node]:
    """id -> node for every node, in topological order (:func:`ovrange.graph.node_ids`)."""
    return dict(ordered_ids(model))


def find_targets(model: ov.Model, roles: Iterable[str], activations: Iterable[str] = ACTIVATIONS,
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
    ids = node_ids(model)
    id_of = {node.get_name(): key for key, node in ids.items()}
    live = _datapath(model)
    targets: dict[str, Target] = {}

    def add(node: ov.Node, role: str, edge: tuple[ov.Node, int] | None = None) -> None:
        out = node.output(0)
        if out.get_element_type() != ov.Type.f32:
            return
        key = id_of[node.get_name()] + (f">{id_of[edge[0].get_name()]}:{edge[1]}" if edge else "")
        if key not in targets:
            rank, axis, channels = _layout(out, node, role)
            producer = _behind_affine(node, live)
            targets[key] = Target(key, id_of[node.get_name()], node.get_type_name(), role, rank, axis, channels,
                                  (id_of[edge[0].get_name()], edge[1]) if edge else None, producer.get_type_name(),
                                  _has_constant_input(producer, live))

    for node in model.get_ordered_ops():
        if node.get_name() not in live:
            continue
        kind = node.get_type_name()
        if kind in activations and "activation" in roles:
            add(_follow_affine(node, live), "activation")
        elif kind in LINEAR_OPS and "linear" in roles and _has_constant_input(node, live):
            out = _follow_affine(node, live)
            if not all(c.get_type_name() in activations for c in _consumers(out)) or "activation" not in roles:
                add(out, "linear")
        elif kind in NORM_OPS and "norm" in roles:
            add(_follow_affine(node, live), "norm")
        elif kind == "Add" and "residual" in roles and _live_inputs(node, live) == 2:
            add(node, "residual")
        elif kind in ATTENTION_OPS and "attention" in roles:
            for port in range(min(3, node.get_input_size())):
                source = node.input_value(port)
                if hoist and (producer := _through_data_movement(source, live)) is not None:
                    add(producer, "attention")  # one guard before the Reshape/Split/Squeeze covers q, k and v
                elif source.get_index() == 0:
                    add(source.get_node(), "attention", (node, port))
            if "attention_output" not in skip:
                add(node, "attention")
        elif kind in SOFTMAX_OPS:
            source = node.input_value(0)
            if "attention" in roles and source.get_index() == 0 and source.get_node().get_name() in live:
                add(source.get_node(), "attention", (node, 0))
            if "probabilities" in roles and all(c.get_type_name() == "Result" for c in _consumers(node)):
                add(node, "probabilities")
        elif kind in POOLING_OPS and "pooling" in roles:
            add(node, "pooling")
    return list(targets.values())


def _layout(out: ov.Output, node: ov.Node, role: str) -> tuple[int, int | None, int | None]:
    rank = out.get_partial_shape().rank
    if rank.is_dynamic:
        return -1, None, None
    n = rank.get_length()
    if n < 2:
        return n, None, None
    # NCHW tensors of convolution networks carry channels on axis 1; transformer tensors ([N, T, C]) and
    # attention inputs ([N, heads, T, d]) on the last axis.
    axis = 1 if n >= 4 and role != "attention" and node.get_type_name() != "MatMul" else n - 1
    dim = out.get_partial_shape()[axis]
    return n, axis, dim.get_length() if dim.is_static else None


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


def _datapath(model: ov.Model) -> set[str]:
    """Names of nodes computed from the model inputs (constant subgraphs are not datapath)."""
    live: set[str] = set()
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Parameter" or any(v.get_node().get_name() in live for v in node.input_values()):
            live.add(node.get_name())
    return live


def _live_inputs(node: ov.Node, live: set[str]) -> int:
    return sum(v.get_node().get_name() in live for v in node.input_values())


def _has_constant_input(node: ov.Node, live: set[str]) -> bool:
    return _live_inputs(node, live) < node.get_input_size()


def _consumers(node: ov.Node) -> list[ov.Node]:
    return [t.get_node() for t in node.output(0).get_target_inputs()]


def _behind_affine(node: ov.Node, live: set[str]) -> ov.Node:
    """The op that computed ``node``'s value: back through element-wise affine ops with a constant operand."""
    while node.get_type_name() in AFFINE_OPS and _live_inputs(node, live) == 1:
        node = next(v.get_node() for v in node.input_values() if v.get_node().get_name() in live)
    return node


def _follow_affine(node: ov.Node, live: set[str]) -> ov.Node:
    """The end of the element-wise affine chain after ``node`` (a bias Add, LayerNorm's Multiply + Add, PP-LCNet's
    learnable affine after an activation): single consumers with a constant other input. A guard there also sees
    faults in the affine ops, and still fuses into the producer's post-ops."""
    while True:
        users = _consumers(node)
        if len(users) != 1 or users[0].get_type_name() not in AFFINE_OPS or _live_inputs(users[0], live) != 1:
            return node
        node = users[0]
