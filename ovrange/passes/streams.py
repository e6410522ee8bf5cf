"""Per-channel bounds at the cost of one scalar Clamp: a per-channel scale folded into the convolutions' weights.

A fused per-channel guard costs its post-ops per output value, and a per-channel post-op loads a vector of constants
(docs/zoo.md#cost); one scalar ``Clamp`` is the cheapest guard that fuses. A per-channel bound ``[low_c, high_c]``
is one scalar bound ``[lo, hi]`` on the tensor divided by a positive per-channel scale ``s_c`` when ``lo * s_c <=
low_c`` and ``high_c <= hi * s_c``. The tensor divided by ``s`` costs nothing at run time where every op between the
convolutions that compute it and the convolutions that read it commutes with a positive per-channel scale:

- the producing convolution's weights (per output channel) and bias are divided by ``s``;
- PReLU and ReLU are positively homogeneous (``prelu(x / s) = prelu(x) / s``), MaxPool takes the maximum within a
  channel, a zero Pad (channels appended at the end) pads zeros, an Add of two such tensors adds them;
- each convolution reading the tensor gets its weight multiplied by ``s`` per input channel
  (:func:`ovrange.passes.channel_guards.fold_into_weight`): ``conv(x / s, W * s) = conv(x, W)``, zero-padded
  borders included (a zero divided by ``s`` is still zero).

The scale multiplies are constant subgraphs of the weights (recorded ``decode``), which the CPU plugin folds at
compile time. A residual network joins many tensors through its Adds (a *stream*: every block's output, the skips,
the downsampling MaxPool and Pad); they must share one scale, so :func:`find_streams` groups them (union over the
links above) and keeps a stream only when every tensor in it is computed by one of those ops or a convolution with
a constant weight, and read only by one of them or a convolution's data input. :func:`stream_scale` picks the scale
from the bounds of the guarded tensors in the stream (the geometric mean of their per-channel magnitude profiles),
and :func:`scaled_bound` each guard's scalar bound, which contains its per-channel bound (wider where the profiles
of the stream's tensors differ). Clean outputs change by f32 rounding only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.graph import node_ids
from ovrange.passes.channel_guards import fold_into_weight
from ovrange.passes.guards import Insertion
from ovrange.targets import CONVOLUTIONS

HOMOGENEOUS = ("PRelu", "Relu")  # f(x / s) = f(x) / s for s > 0
LINKS = (*HOMOGENEOUS, "MaxPool", "Pad", "Add")  # ops whose output keeps the scale of their (non-constant) inputs
SCALE_SUFFIX = "/stream_Multiply"  # a weight or bias scaled (recorded ``decode``)
UNSCALE_SUFFIX = "/unscale_Multiply"  # the value handed back, unscaled, to a reader outside the stream
FLOOR = 1e-3  # the smallest scale, relative to the stream's largest: a channel that was ~0 on calibration data


@dataclass
class Stream:
    """Tensors (node ids) that share one per-channel scale; the convolutions computing them (``roots``: (conv id,
    bias Add id or None)); the convolutions reading them (``readers``: (conv id, input-0 source id))."""

    members: list[str] = field(default_factory=list)
    roots: list[tuple[str, str | None]] = field(default_factory=list)
    readers: list[str] = field(default_factory=list)
    channels: int = 0
    exits: list[tuple[str, str, int]] = field(default_factory=list)  # (member, reader id, port): other readers
    blocked: list[str] = field(default_factory=list)  # why the stream cannot be scaled (empty: it can)


def _constant(value: ov.Output, limit: int = 64) -> bool:
    """Whether ``value`` is computed from Constants only (a stored weight, decompressed and bounded: the weights
    role's comparisons and ``Select``), looking at ``limit`` ops at most."""
    stack, seen = [value.get_node()], set()
    while stack:
        node = stack.pop()
        if node.get_name() in seen or node.get_type_name() == "Constant":
            continue
        seen.add(node.get_name())
        if len(seen) > limit or not node.get_input_size() or node.get_type_name() in ("Parameter", "ReadValue"):
            return False
        stack.extend(v.get_node() for v in node.input_values())
    return True


def _conv(node: ov.Node) -> bool:
    """A convolution with a constant weight, whose output only the next op reads."""
    return (node.get_type_name() in CONVOLUTIONS and _constant(node.input_value(1))
            and len(node.output(0).get_target_inputs()) == 1)


def _channels(node: ov.Node) -> int | None:
    shape = node.output(0).get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or shape[1].is_dynamic:
        return None
    return shape[1].get_length()


def _link_inputs(node: ov.Node) -> list[ov.Node] | None:
    """The inputs that must carry the scale of ``node``'s output, or None when ``node`` does not keep a scale."""
    kind = node.get_type_name()
    if kind in HOMOGENEOUS:
        return [node.input_value(0).get_node()] if kind == "Relu" or _constant(node.input_value(1)) else None
    if kind == "MaxPool":
        return [node.input_value(0).get_node()] if not _used(node, 1) else None
    if kind == "Pad":
        return [node.input_value(0).get_node()] if _zero_pad(node) else None
    if kind == "Add":
        values = node.input_values()
        if any(_constant(v) for v in values):
            return None
        return [v.get_node() for v in values]
    return None


def _used(node: ov.Node, port: int) -> bool:
    return node.get_output_size() > port and bool(node.output(port).get_target_inputs())


def _zero_pad(node: ov.Node) -> bool:
    """A constant-mode Pad with value 0 (or none) and no channels added before the input's."""
    if node.get_attributes().get("pad_mode") != "constant":
        return False
    values = node.input_values()[1:]
    if not all(v.get_node().get_type_name() == "Constant" for v in values):
        return False
    begin = values[0].get_node().get_data().reshape(-1)
    fill = values[2].get_node().get_data().reshape(-1) if len(values) > 2 else np.zeros(1)
    return len(begin) == 4 and begin[1] == 0 and float(fill[0]) == 0.0


def _bias_root(node: ov.Node) -> ov.Node | None:
    """The convolution behind a bias Add (``conv + constant``), or None."""
    if node.get_type_name() != "Add":
        return None
    values = node.input_values()
    data = [v for v in values if not _constant(v)]
    if len(data) != 1 or data[0].get_index() != 0:
        return None
    conv, bias = data[0].get_node(), next(v for v in values if _constant(v))
    shape = [d.get_length() for d in bias.get_partial_shape()] if bias.get_partial_shape().is_static else None
    channels = _channels(node)
    per_channel = shape is not None and len(shape) >= 3 and shape[-3] == channels and int(np.prod(shape)) == channels
    if shape is None or len(shape) > 4 or not (int(np.prod(shape)) == 1 or per_channel):
        return None
    return conv if _conv(conv) else None


def find_streams(model: ov.Model, guarded: list[str]) -> list[Stream]:
    """The streams holding the guarded node ids ``guarded`` (output 0 of each), each complete and safe to scale;
    guarded tensors whose stream is not (the model's input, a Concat, a reshape towards an output) are in none."""
    nodes = dict(node_ids(model))
    ids = {node.get_name(): node_id for node_id, node in nodes.items()}
    found, done = [], set()
    for start in guarded:
        if start in done or start not in nodes:
            continue
        stream, ok = _explore(nodes[start], ids)
        done.update(stream.members)
        if ok and any(m in guarded for m in stream.members):
            found.append(stream)
    return found


def _explore(start: ov.Node, ids: dict[str, str]) -> tuple[Stream, bool]:
    stream, seen, stack = Stream(), set(), [start]
    while stack:
        node = stack.pop()
        if node.get_name() in seen:
            continue
        seen.add(node.get_name())
        channels = _channels(node)
        if channels is None:
            stream.blocked.append(f"{ids[node.get_name()]}: not NCHW with static channels")
            continue
        stream.members.append(ids[node.get_name()])
        stream.channels = max(stream.channels, channels)
        conv = _bias_root(node)
        if conv is not None:
            stream.roots.append((ids[conv.get_name()], ids[node.get_name()]))
        elif _conv(node) and node.get_output_size() == 1:
            stream.roots.append((ids[node.get_name()], None))
        else:
            inputs = _link_inputs(node)
            if inputs is None:
                stream.blocked.append(f"{ids[node.get_name()]}: computed by {node.get_type_name()}")
            else:
                stack.extend(inputs)
        for reader in node.output(0).get_target_inputs():
            layer = reader.get_node()
            if layer.get_type_name() in CONVOLUTIONS and reader.get_index() == 0 and _constant(layer.input_value(1)):
                stream.readers.append(ids[layer.get_name()])
            elif layer.get_type_name() in LINKS and _link_inputs(layer) is not None:
                stack.append(layer)
            else:  # it gets the unscaled value back: a per-channel Multiply on that edge
                stream.exits.append((ids[node.get_name()], ids[layer.get_name()], reader.get_index()))
    stream.readers = sorted(set(stream.readers))
    return stream, not stream.blocked


def stream_scale(stream: Stream, bounds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per channel, the geometric mean over the guarded tensors of ``max(|low|, |high|)`` relative to the tensor's
    largest (1 for channels no guard sees), floored at :data:`FLOOR`."""
    logs = np.zeros(stream.channels)
    counts = np.zeros(stream.channels)
    for low, high in bounds:
        magnitude = np.maximum(np.abs(low), np.abs(high))
        profile = np.maximum(magnitude / max(float(magnitude.max()), 1e-30), FLOOR)
        logs[:len(profile)] += np.log(profile)
        counts[:len(profile)] += 1
    return np.where(counts > 0, np.exp(logs / np.maximum(counts, 1)), 1.0)


def scaled_bound(low: np.ndarray, high: np.ndarray, scale: np.ndarray) -> tuple[float, float]:
    """The scalar bound, on the tensor divided by ``scale``, that contains every channel's ``[low, high]``."""
    s = scale[:len(high)]
    return float(np.min(low / s)), float(np.max(high / s))


def apply_stream(model: ov.Model, stream: Stream, scale: np.ndarray, name: str) -> list[str]:
    """Divide ``stream``'s producing convolutions (weight per output channel, bias) by ``scale`` and multiply its
    reading convolutions' weights by it (per input channel); the names of the inserted Multiply nodes."""
    nodes = dict(node_ids(model))
    made = []
    for conv_id, bias_id in stream.roots:
        conv = nodes[conv_id]
        channels = _channels(conv)
        inverse = 1.0 / scale[:channels]
        made.append(_scale_weight(conv, inverse, f"{name}/{conv_id}"))
        if bias_id is not None:
            made.append(_scale_bias(nodes[bias_id], inverse, f"{name}/{bias_id}"))
    for reader_id in stream.readers:
        layer = nodes[reader_id]
        channels = layer.input_value(0).get_partial_shape()[1].get_length()
        made.append(fold_into_weight(layer, scale[:channels], f"{name}/to/{reader_id}").get_friendly_name())
    for member, reader_id, port in stream.exits:
        value = nodes[member].output(0)
        factor = scale[:_channels(nodes[member])].astype(np.float32).reshape(1, -1, 1, 1)
        back = ops.multiply(value, ops.constant(factor), name=f"{name}/{member}/to/{reader_id}:{port}{UNSCALE_SUFFIX}")
        nodes[reader_id].input(port).replace_source_output(back.output(0))
    return made


def _scale_weight(conv: ov.Node, factor: np.ndarray, name: str) -> str:
    """Multiply ``conv``'s weight by ``factor`` per output channel."""
    weight = conv.input_value(1)
    shape = [int(d.get_length()) for d in weight.get_partial_shape()]
    if conv.get_type_name() == "GroupConvolution":  # [G, O/G, I/G, k...]: output channel = g * (O/G) + o
        target = [shape[0], shape[1]] + [1] * (len(shape) - 2)
    else:  # [O, I, k...]
        target = [shape[0]] + [1] * (len(shape) - 1)
    scaled = ops.multiply(weight, ops.constant(factor.astype(np.float32).reshape(target)), name=name + SCALE_SUFFIX)
    conv.input(1).replace_source_output(scaled.output(0))
    return scaled.get_friendly_name()


def _scale_bias(add: ov.Node, factor: np.ndarray, name: str) -> str:
    """Multiply the constant operand of the bias Add by ``factor`` per channel (axis 1 of the rank-4 sum)."""
    port = next(k for k, v in enumerate(add.input_values()) if _constant(v))
    bias = add.input_value(port)
    scaled = ops.multiply(bias, ops.constant(factor.astype(np.float32).reshape(-1, 1, 1)), name=name + SCALE_SUFFIX)
    add.input(port).replace_source_output(scaled.output(0))
    return scaled.get_friendly_name()


def summary(stream: Stream, bounds: list[tuple[np.ndarray, np.ndarray]], scale: np.ndarray) -> dict[str, Any]:
    """How much the shared scale widens the stream's bounds: the largest ratio of a channel's scaled bound width to
    its own width."""
    worst = 1.0
    for low, high in bounds:
        lo, hi = scaled_bound(low, high, scale)
        s = scale[:len(high)]
        worst = max(worst, float(np.max((hi - lo) * s / np.maximum(high - low, 1e-30))))
    return {"tensors": len(stream.members), "guards": len(bounds), "producers": len(stream.roots),
            "readers": len(stream.readers), "widening": worst}


# ---------------------------------------------------------------------------------------------------------------
# GlobalClipper plan entries


def streamable(entry: dict[str, Any]) -> bool:
    """A per-channel clamp on a convolution-sized NCHW tensor, or a scalar clamp (both guard values of the tensor)."""
    return (not entry.get("edge") and entry.get("form", "fused") in ("fused", "standalone")
            and entry.get("beyond", "clamp") == "clamp" and entry["axis"] in (1, None) and "high" in entry)


def scale_streams(model: ov.Model, plan: dict[str, dict[str, Any]], insertion: Insertion
                  ) -> dict[str, dict[str, Any]]:
    """``plan`` with the guards of every scalable stream (:func:`find_streams`) as one scalar bound on the
    scaled tensor (``scaled``: the scale's widening); the scales folded into ``model``'s weights."""
    plan = dict(plan)
    per_channel = [e["node"] for e in plan.values() if streamable(e) and e["axis"] == 1 and e["rank"] == 4]
    by_node: dict[str, list[str]] = {}
    for key, entry in plan.items():
        by_node.setdefault(entry.get("node", key), []).append(key)
    for k, stream in enumerate(find_streams(model, per_channel)):
        keys = [key for member in stream.members for key in by_node.get(member, [])]
        if not all(streamable(plan[key]) for key in keys):
            continue  # a guard of another form would see the scaled values
        bounds = [channel_bounds(plan[key], stream.channels) for key in keys]
        scale = stream_scale(stream, bounds)
        for name in apply_stream(model, stream, scale, f"stream{k}"):
            insertion.mark(name, "decode")
        widening = summary(stream, bounds, scale)["widening"]
        for key, (low, high) in zip(keys, bounds):
            lo, hi = scaled_bound(low, high, scale)
            plan[key] = {**plan[key], "axis": None, "low": lo, "high": hi, "form": "fused",
                         "scaled": round(widening, 3)}
    return plan


def channel_bounds(entry: dict[str, Any], channels: int) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.asarray(entry["low"], np.float64).reshape(-1), np.asarray(entry["high"], np.float64).reshape(-1)
    if high.size == 1:  # a scalar bound holds for every channel of the tensor
        size = channels if entry["axis"] is None else high.size
        low, high = np.full(size, low[0]), np.full(size, high[0])
    return low, high
