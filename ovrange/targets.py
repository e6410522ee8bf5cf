"""Stage 1 of protection: what could be guarded, in one vocabulary of op types and one :class:`Target`.

A target is one tensor: a node output, or the value on one input edge (an attention input), with a stable unique id.
Ids do not depend on friendly names being unique (see :func:`ovrange.graph.node_ids`): two Relus both named
``act`` are ``act`` and ``act#2``, each with its own statistics and its own guard. Each target also carries its
*role* (what kind of value it holds) and its layout (rank, feature axis), so passes choose by role and per-channel
bounds know which axis holds the channels. Every pass, the fault sites and the fusion report name op types through
the tuples below.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import openvino as ov

from ovrange.errors import ModelError
from ovrange.graph import computed_nodes, constant_values, constant_weight, inserted_nodes, node_ids

# Activation op types (any opset version). POT protected the first seven; LeakyReLU appears in IR as PRelu. The
# others are every element-wise activation OpenVINO's TFLite, ONNX and PyTorch frontends emit: ReLU6 and other hard
# clips arrive as Clamp (MediaPipe's TFLite graphs), ONNX HardSigmoid stays HardSigmoid, PyTorch's as HSigmoid.
# Exp is one too (box decoding, decomposed Softmax): a value it amplifies is cut at its output. LogSoftmax is not:
# like Softmax it returns (log-)probabilities, whose consumer is the application.
POT_ACTIVATIONS = ("Relu", "Swish", "PRelu", "Elu", "Gelu", "Sigmoid", "Tanh")
ACTIVATIONS = (*POT_ACTIVATIONS, "HSwish", "HSigmoid", "HardSigmoid", "Mish", "SoftPlus", "SoftSign", "Selu", "Clamp",
               "Exp")
CONVOLUTIONS = ("Convolution", "GroupConvolution")
TRANSPOSED_CONVOLUTIONS = ("ConvolutionBackpropData", "GroupConvolutionBackpropData")
LINEAR = (*CONVOLUTIONS, *TRANSPOSED_CONVOLUTIONS, "MatMul")
WEIGHTED = (*CONVOLUTIONS, "MatMul")  # layers whose constant weight is bounded, encoded or struck by memory faults
PLAIN_LINEAR = ("MatMul", "Convolution")  # no groups: one weight sum per output (Checksum's encodable layers)
LAYER_NORMS = ("MVN", "NormalizeL2")
NORMS = (*LAYER_NORMS, "BatchNormInference")
SDPA = ("ScaledDotProductAttention",)
SOFTMAX = ("Softmax", "SoftMax")
ATTENTION = (*SDPA, *SOFTMAX)
POOLING = ("MaxPool", "AvgPool")
ADAPTIVE_POOLING = ("AdaptiveAvgPool", "AdaptiveMaxPool")
REDUCTIONS = ("ReduceMean", "ReduceMax", "ReduceSum")
AFFINE = ("Add", "Multiply", "Subtract", "Divide")  # element-wise, a constant operand makes them affine
# Ops whose outputs are values of their data inputs (the ports listed; None: every input), moved or dropped, never
# computed or made up. Gather is not one: out-of-range indices create zeros. None of them is a fault site.
DATA_MOVEMENT: dict[str, tuple[int, ...] | None] = {
    "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Transpose": (0,), "StridedSlice": (0,), "Slice": (0,),
    "Split": (0,), "VariadicSplit": (0,), "DepthToSpace": (0,), "SpaceToDepth": (0,), "ShuffleChannels": (0,),
    "Concat": None,
}
MOVEMENT = (*DATA_MOVEMENT, "Gather")
# Element-wise ops through which a value keeps the layout of its input (for finding the feature axis).
_ELEMENTWISE = (*ACTIVATIONS, *AFFINE, "Convert", "FakeQuantize")
ROLES = ("activation", "linear", "bias", "norm", "residual", "attention", "pooling", "probabilities", "movement",
         "other")


@dataclass(frozen=True)
class Target:
    """One tensor. ``id`` is unique in the model: the node id (``:port`` for outputs > 0), and for an input-edge
    target ``<node id>><consumer id>:<input port>``; ``name`` is the friendly name (may repeat)."""

    id: str
    node: str  # id of the node computing the tensor
    name: str
    op: str
    port: int
    role: str
    rank: int | None
    feature_axis: int | None  # the channel/feature axis (:func:`feature_axis`)
    channels: int | None  # its static length (None when dynamic or unknown)
    edge: tuple[str, int] | None = None  # (consumer id, input port) of an input-edge target
    producer: str = ""  # the op computing the value behind a constant affine chain (a bias Add...), when known
    weighted: bool = False  # that op has a constant input (a linear layer's weight)

    def to_json(self) -> dict:
        return asdict(self)


def make_target(target_id: str, node_id: str, node: ov.Node, port: int, role: str,
                edge: tuple[str, int] | None = None, producer: str = "", weighted: bool = False) -> Target:
    """The :class:`Target` of output ``port`` of ``node``, its layout read from the graph."""
    out = node.output(port)
    shape = out.get_partial_shape()
    rank = shape.rank.get_length() if shape.rank.is_static else None
    axis = feature_axis(out, role)
    channels = shape[axis].get_length() if axis is not None and shape[axis].is_static else None
    return Target(target_id, node_id, node.get_friendly_name(), node.get_type_name(), port, role, rank, axis,
                  channels, edge, producer, weighted)


def find_targets(model: ov.Model) -> list[Target]:
    """Every f32 data output of ``model``'s own nodes (not constants, not nodes ovrange inserted), topological."""
    inserted = set(inserted_nodes(model))
    live = computed_nodes(model)
    found = []
    for node_id, node in node_ids(model):
        kind = node.get_type_name()
        if node.get_name() not in live or kind in ("Parameter", "Result") or node.get_friendly_name() in inserted:
            continue
        role = role_of(node, live)
        for port, out in enumerate(node.outputs()):
            if out.get_element_type() != ov.Type.f32:
                continue
            found.append(make_target(node_id if port == 0 else f"{node_id}:{port}", node_id, node, port, role))
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
    """What the node's output holds, from its op type and what feeds it (``live``: :func:`computed_nodes`)."""
    kind = node.get_type_name()
    if kind in ACTIVATIONS:
        return "activation"
    if kind in LINEAR:
        return "linear"
    if kind in NORMS:
        return "norm"
    if kind in SOFTMAX and returned(node):
        return "probabilities"
    if kind in ATTENTION:
        return "attention"
    if kind in (*POOLING, *ADAPTIVE_POOLING):
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


def returned(node: ov.Node) -> bool:
    """Whether every consumer of the node's output is a model Result (the model returns the value as it is)."""
    return all(t.get_node().get_type_name() == "Result" for t in node.output(0).get_target_inputs())


def feature_axis(output: ov.Output, role: str | None = None) -> int | None:
    """The channel/feature axis of ``output``: axis 1 of convolution-layout tensors, the last axis of the outputs of
    MatMul and of normalizations over the last axis ([N, T, C]), found by walking back through element-wise ops;
    the last axis of attention tensors ([N, heads, T, d] or [N, T, C]). None below rank 2."""
    shape = output.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() < 2:
        return None
    rank = shape.rank.get_length()
    if role == "attention":
        return rank - 1
    value = output
    for _ in range(16):
        node = value.get_node()
        kind = node.get_type_name()
        if kind in (*CONVOLUTIONS, *TRANSPOSED_CONVOLUTIONS, *POOLING, *ADAPTIVE_POOLING, "BatchNormInference"):
            return 1
        if kind in ("MatMul", "MVN", *ATTENTION):
            return rank - 1
        if kind not in _ELEMENTWISE or node.get_input_size() == 0:
            break
        value = max(node.input_values(), key=_layout_source)
    return 1 if rank != 3 else rank - 1


def _layout_source(value: ov.Output) -> tuple[bool, int]:
    """The input an element-wise op's output takes its layout from: computed before constant (a bias may come
    first and have the same rank), then the highest rank."""
    node = value.get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    rank = value.get_partial_shape().rank
    return node.get_type_name() != "Constant", rank.get_length() if rank.is_static else -1


# ---------------------------------------------------------------------------------------------------------------
# Layers with a constant weight


def weight_output(node: ov.Node) -> ov.Output | None:
    """The f32 constant weight of a :data:`WEIGHTED` layer (None for other ops or computed weights)."""
    return constant_weight(node) if node.get_type_name() in WEIGHTED else None


def weight_layers(model: ov.Model) -> list[Target]:
    """The targets of :data:`WEIGHTED` layers with a constant f32 weight, in topological order."""
    outputs = outputs_by_id(model)
    return [t for t in find_targets(model) if t.op in WEIGHTED and weight_output(outputs[t.id].get_node())]


def layer_weights(model: ov.Model, layers: list[Target]) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """Per layer id: a float32 copy of its weight, and whether it is a MatMul with ``transpose_b``."""
    outputs = outputs_by_id(model)
    weights = {t.id: constant_values(weight_output(outputs[t.id].get_node())) for t in layers}
    transposed = {t.id: bool(outputs[t.id].get_node().get_attributes().get("transpose_b", False)) for t in layers}
    return weights, transposed


def output_axes(kind: str, rank: int, transpose_b: bool = False) -> tuple[int, ...]:
    """Axes of a :data:`WEIGHTED` layer's weight that index the layer's output channels."""
    if kind == "Convolution":
        return (0,)
    if kind == "GroupConvolution":
        return (0, 1)
    if rank < 2:
        return ()
    return (rank - 2,) if transpose_b else (rank - 1,)


def check_activations(activations: list[str]) -> str | None:
    """Why an ``activations`` parameter is invalid, or None."""
    unknown = [t for t in activations if t not in ACTIVATIONS]
    if unknown:
        return f"unsupported activation type(s) {unknown}; supported: {', '.join(ACTIVATIONS)}"
    if not activations:
        return "activations is empty"
    return None
