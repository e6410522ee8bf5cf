"""Stage 1 of protection: what could be guarded. A :class:`Target` is one node output with a stable unique id.

Ids do not depend on friendly names being unique (see :func:`ovrange.graph.node_ids`): two Relus both named
``act`` are ``act`` and ``act#2``, each with its own statistics and its own guard. Each target also carries its
*role* (what kind of value it holds) and its layout facts (rank, feature axis), so passes choose by role and
per-channel bounds know which axis holds the channels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import openvino as ov

from ovrange.errors import ModelError
from ovrange.graph import inserted_nodes, node_ids

# Activation op types (any opset version). POT protected the first seven; LeakyReLU appears in IR as PRelu.
POT_ACTIVATIONS = ("Relu", "Swish", "PRelu", "Elu", "Gelu", "Sigmoid", "Tanh")
ACTIVATIONS = (*POT_ACTIVATIONS, "HSwish", "HSigmoid", "Mish", "SoftPlus")
LINEAR = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul")
NORMS = ("MVN", "NormalizeL2", "BatchNormInference")
ATTENTION = ("ScaledDotProductAttention", "Softmax", "SoftMax")
POOLING = ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool")
MOVEMENT = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "StridedSlice", "Slice", "Split",
            "VariadicSplit", "DepthToSpace", "SpaceToDepth", "ShuffleChannels", "Gather")
# Element-wise ops through which a value keeps the layout of its input (for finding the feature axis).
_ELEMENTWISE = (*ACTIVATIONS, "Clamp", "Add", "Subtract", "Multiply", "Divide", "Convert", "FakeQuantize")
ROLES = ("activation", "linear", "bias", "norm", "residual", "attention", "pooling", "movement", "clamp", "other")


@dataclass(frozen=True)
class Target:
    """One output of one node. ``id`` is unique in the model; ``name`` is the friendly name (may repeat)."""

    id: str
    name: str
    op: str
    port: int
    role: str
    rank: int | None
    feature_axis: int | None  # the channel/feature axis: 1 for NCHW tensors, the last one for [N, T, C]
    channels: int | None  # its static length (None when dynamic or unknown)

    def to_json(self) -> dict:
        return asdict(self)


def find_targets(model: ov.Model) -> list[Target]:
    """Every f32 data output of ``model``'s own nodes (not constants, not nodes ovrange inserted), topological."""
    inserted = set(inserted_nodes(model))
    live: set[str] = set()  # runtime names of nodes computed from the model inputs
    found = []
    for node_id, node in node_ids(model):
        kind = node.get_type_name()
        inputs = [node.input_value(k).get_node() for k in range(node.get_input_size())]
        if kind == "Parameter" or any(n.get_name() in live for n in inputs):
            live.add(node.get_name())
        if node.get_name() not in live or kind in ("Parameter", "Result") or node.get_friendly_name() in inserted:
            continue
        for port, out in enumerate(node.outputs()):
            if out.get_element_type() != ov.Type.f32:
                continue
            found.append(_target(node_id if port == 0 else f"{node_id}:{port}", node, port, out, live))
    return found


def select(targets: Iterable[Target], *, ops: Iterable[str] | None = None,
           roles: Iterable[str] | None = None) -> list[Target]:
    """The targets of the given op types and/or roles, in their order."""
    wanted_ops = None if ops is None else set(ops)
    wanted_roles = None if roles is None else set(roles)
    return [t for t in targets if (wanted_ops is None or t.op in wanted_ops)
            and (wanted_roles is None or t.role in wanted_roles)]


def require(targets: list[Target], model: ov.Model, what: str) -> list[Target]:
    """``targets`` unless empty: a model with nothing to protect is an error, never a silent copy."""
    if not targets:
        raise ModelError(f"model {model.get_friendly_name()!r} has no {what}; nothing to protect")
    return targets


def outputs_by_id(model: ov.Model) -> dict[str, ov.Output]:
    """Target id -> output, for every node output of ``model`` (port 0 as ``id``, others as ``id:port``)."""
    found = {}
    for node_id, node in node_ids(model):
        for port, out in enumerate(node.outputs()):
            found[node_id if port == 0 else f"{node_id}:{port}"] = out
    return found


def role_of(node: ov.Node, live: set[str]) -> str:
    """What the node's output holds, from its op type and what feeds it."""
    kind = node.get_type_name()
    if kind in ACTIVATIONS:
        return "activation"
    if kind == "Clamp":
        return "clamp"
    if kind in LINEAR:
        return "linear"
    if kind in NORMS:
        return "norm"
    if kind in ATTENTION:
        return "attention"
    if kind in POOLING:
        return "pooling"
    if kind in MOVEMENT:
        return "movement"
    if kind in ("Add", "Subtract", "Multiply"):
        live_inputs = [v for v in node.input_values() if v.get_node().get_name() in live]
        if len(live_inputs) >= 2 and kind == "Add":
            return "residual"
        source = live_inputs[0].get_node() if len(live_inputs) == 1 else None
        if source is not None and source.get_type_name() in (*LINEAR, *NORMS):
            return "bias" if kind in ("Add", "Subtract") else "norm"  # affine part of a LayerNorm / scale
        if source is not None and source.get_type_name() == "Multiply":
            return "norm" if source.input_value(0).get_node().get_type_name() in NORMS else "other"
    return "other"


def feature_axis(output: ov.Output) -> int | None:
    """The channel/feature axis of ``output``: axis 1 of convolution-layout tensors, the last axis of the outputs of
    MatMul and of normalizations over the last axis ([N, T, C]); found by walking back through element-wise ops."""
    shape = output.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() < 2:
        return None
    rank = shape.rank.get_length()
    value = output
    for _ in range(16):
        node = value.get_node()
        kind = node.get_type_name()
        if kind in ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
                    *POOLING, "BatchNormInference"):
            return 1
        if kind in ("MatMul", "MVN", "ScaledDotProductAttention", "Softmax", "SoftMax"):
            return rank - 1
        if kind not in _ELEMENTWISE or node.get_input_size() == 0:
            break
        value = max(node.input_values(), key=lambda v: v.get_partial_shape().rank.get_length()
                    if v.get_partial_shape().rank.is_static else -1)
    return 1 if rank != 3 else rank - 1


def _target(target_id: str, node: ov.Node, port: int, out: ov.Output, live: set[str]) -> Target:
    shape = out.get_partial_shape()
    rank = shape.rank.get_length() if shape.rank.is_static else None
    axis = feature_axis(out)
    channels = shape[axis].get_length() if axis is not None and shape[axis].is_static else None
    return Target(target_id, node.get_friendly_name(), node.get_type_name(), port, role_of(node, live), rank, axis,
                  channels)
