"""The small OpenVINO graph vocabulary ovrange needs: find nodes, insert after an output, read/write rt_info.

Everything here edits the model it is given; callers pass ``model.clone()`` so the user's model stays intact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

RT_INFO_ROOT = "ovrange"


def node_ids(model: ov.Model) -> list[tuple[str, ov.Node]]:
    """(stable unique id, node) for every node, in topological order.

    Friendly names repeat in real IRs (exporters produce them), so the id is the friendly name for its first
    occurrence in topological order and ``name#k`` for the k-th (k >= 2): the same model always yields the same ids,
    and nodes that ovrange inserts (uniquely named) do not shift the ids of the model's own nodes.
    """
    seen: dict[str, int] = {}
    ids = []
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        seen[name] = seen.get(name, 0) + 1
        ids.append((name if seen[name] == 1 else f"{name}#{seen[name]}", node))
    return ids


CHAIN_OPS = ("Convert", "Transpose", "Reshape", "Unsqueeze", "Squeeze")  # move or decompress, never compute


def constant_weight(node: ov.Node) -> ov.Output | None:
    """The f32 output feeding input 1 of a layer (Convolution, MatMul...) when it is a constant, possibly
    decompressed and moved by a constant chain (:func:`weight_chain`); None otherwise."""
    if node.get_input_size() < 2:
        return None
    return constant_source(node.input_value(1))


def weight_chain(source: ov.Output) -> tuple[ov.Output, list[ov.Node]] | None:
    """(the stored Constant's output, the ops from it to ``source``) when ``source`` is a Constant seen through
    ``Convert``/``Transpose``/``Reshape``/``Unsqueeze``/``Squeeze`` ops whose other inputs are Constants (TFLite
    depthwise weights: fp16 ``Constant -> Convert -> Transpose -> Reshape``); None otherwise."""
    chain, out = [], source
    while out.get_node().get_type_name() in CHAIN_OPS and len(chain) < 16:
        node = out.get_node()
        if any(v.get_node().get_type_name() != "Constant" for v in node.input_values()[1:]):
            return None
        chain.append(node)
        out = node.input_value(0)
    if out.get_node().get_type_name() != "Constant":
        return None
    return out, chain[::-1]


def constant_source(source: ov.Output) -> ov.Output | None:
    """``source`` when it is an f32 constant, possibly behind a constant chain (:func:`weight_chain`); None
    otherwise."""
    if source.get_element_type() != ov.Type.f32 or weight_chain(source) is None:
        return None
    return source


def apply_chain(values: np.ndarray, chain: list[ov.Node], convert: bool = True) -> np.ndarray:
    """What ``chain`` makes of the stored ``values`` (numpy, as OpenVINO computes it); ``convert=False`` moves the
    values without converting them (for index arrays)."""
    for node in chain:
        kind = node.get_type_name()
        if kind == "Transpose":
            values = np.transpose(values, [int(a) for a in node.input_value(1).get_node().get_data()])
        elif kind == "Convert":
            if convert:
                values = values.astype(node.get_output_element_type(0).to_dtype()).astype(np.float32)
        else:  # Reshape, Unsqueeze, Squeeze keep the row-major order
            values = values.reshape(tuple(int(d) for d in node.get_output_shape(0)))
    return values


def constant_values(source: ov.Output) -> np.ndarray:
    """A float32 copy of the values of a constant output (:func:`constant_source`), through its chain."""
    found = weight_chain(source)
    if found is None:
        raise ValueError(f"{source.get_node().get_friendly_name()!r} is not a constant")
    stored, chain = found
    return np.array(apply_chain(np.array(stored.get_node().get_data(), dtype=np.float32), chain), dtype=np.float32)


def stored_output(source: ov.Output) -> ov.Output:
    """The stored values of a constant ``source`` as they leave memory: the output of the decompression Converts
    right after the stored Constant (the Constant itself without one), before any data movement. A fault strikes
    there; the chain's Transpose/Reshape then carry it to the layer element :func:`stored_order` names."""
    stored, chain = weight_chain(source)
    for node in chain:
        if node.get_type_name() != "Convert":
            break
        stored = node.output(0)
    return stored


def stored_order(source: ov.Output) -> np.ndarray:
    """For each element of the layer's weight ``source`` (flat, row-major), the flat index of the stored element
    it holds: ``layer.reshape(-1) == stored.reshape(-1)[stored_order(source)]``. The chain only moves values, so
    this is a permutation (the identity without a Transpose)."""
    stored, chain = weight_chain(source)
    shape = tuple(int(d) for d in stored.get_shape())
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    return apply_chain(index, chain, convert=False).reshape(-1)


def stored_copy(source: ov.Output, name: str, values: np.ndarray | None = None) -> ov.Output:
    """A copy of the constant chain behind ``source`` (:func:`weight_chain`) starting from a new Constant ``name``:
    the stored values in their stored element type, or ``values`` (stored shape, in their own dtype). The chain's
    ops are named ``<name>/<k>``. Returns the copy's output, in ``source``'s shape."""
    stored, chain = weight_chain(source)
    if values is None:
        kind = stored.get_element_type()  # packed and exotic types (u4, bf16) are copied as f32: the chain converts
        dtype = kind.to_dtype() if kind in (ov.Type.f32, ov.Type.f16, ov.Type.i8, ov.Type.u8) else np.float32
        values = np.array(stored.get_node().get_data()).astype(dtype)
    out = ops.constant(values, name=name).output(0)
    for k, node in enumerate(chain):
        out = _same_op(node, out, f"{name}/{k}").output(0)
    return out


def _same_op(node: ov.Node, data: ov.Output, name: str) -> ov.Node:
    """A chain op like ``node`` (same kind, attributes and constant inputs) applied to ``data``."""
    kind, rest = node.get_type_name(), node.input_values()[1:]
    if kind == "Convert":
        return ops.convert(data, node.get_output_element_type(0), name=name)
    if kind == "Transpose":
        return ops.transpose(data, rest[0], name=name)
    if kind == "Reshape":
        return ops.reshape(data, rest[0], bool(node.get_attributes()["special_zero"]), name=name)
    if kind == "Unsqueeze":
        return ops.unsqueeze(data, rest[0], name=name)
    return ops.squeeze(data, *rest, name=name)


def stored_weight(layer: ov.Node, inserted: dict[str, str]) -> ov.Output | None:
    """The stored f32 values behind input 1 (the weight) of a layer: a constant (through a decompression Convert),
    or a Constant ovrange recorded as a stored ``weight`` that the graph decodes through ``decode`` nodes (e.g.
    BoundedWeights' theta). ``inserted`` is the model's record (:func:`inserted_nodes`). None for computed weights."""
    if layer.get_input_size() < 2:
        return None
    source = layer.input_value(1)
    while inserted.get(source.get_node().get_friendly_name()) == "decode":
        node = source.get_node()
        recorded = [v for v in node.input_values() if v.get_node().get_friendly_name() in inserted]
        # no recorded input: a scale folded into the layer's own constant weight (GlobalClipper), the data on input 0
        source = recorded[0] if recorded else node.input_value(0)
    if inserted.get(source.get_node().get_friendly_name()) == "weight":
        return source
    return constant_source(source)


def computed_nodes(model: ov.Model) -> set[str]:
    """Runtime names of the nodes computed from the model inputs (constant subgraphs are not datapath)."""
    live: set[str] = set()
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Parameter" or any(v.get_node().get_name() in live for v in node.input_values()):
            live.add(node.get_name())
    return live


def move_names(old: ov.Output, new: ov.Output) -> None:
    """Hand the tensor names of ``old`` to ``new`` (model outputs keep their names when a node is inserted after
    them). Explicit because ``Output.replace`` would leave duplicates."""
    names = set(old.get_names())
    if names:
        old.get_tensor().set_names(set())
        new.get_tensor().set_names(names)


def insert_after(output: ov.Output, make: Callable[[ov.Output], ov.Node], consumers: list[ov.Input] | None = None,
                 names: bool = True) -> ov.Node:
    """Insert ``make(output)`` between ``output`` and its consumers (all of them, or ``consumers``); with ``names``
    the new node takes over the tensor names.

    The consumers are snapshotted before the new node exists, so the new node's own input is not rewired to
    itself. ``names=False`` where the new node's output is not the value itself (a guard on one input edge, a value
    scaled for the consumers that fold the scale back).
    """
    targets = list(output.get_target_inputs()) if consumers is None else consumers
    node = make(output)
    for target in targets:
        target.replace_source_output(node.output(0))
    if names:
        move_names(output, node.output(0))
    return node


def node_names(model: ov.Model) -> set[str]:
    """The runtime names of ``model``'s nodes (unique within a process): a snapshot before an edit."""
    return {node.get_name() for node in model.get_ops()}


def added_nodes(model: ov.Model, before: set[str]) -> list[ov.Node]:
    """The non-constant nodes of ``model`` that were not there at the snapshot ``before`` (:func:`node_names`)."""
    return [node for node in model.get_ordered_ops()
            if node.get_name() not in before and node.get_type_name() != "Constant"]


def record_inserted(model: ov.Model, nodes: dict[str, str]) -> None:
    """Add ``{friendly name: role}`` of nodes ovrange inserted to the model's record (``ovrange/inserted``).

    Every later stage (fault sites, fusion reports) asks :func:`inserted_nodes` instead of guessing from
    names. Roles: ``guard`` (a node whose output replaces the protected value), ``check`` (helper ops of a guard),
    ``weight`` (a stored weight that the graph decodes, e.g. BoundedWeights' theta) and ``decode`` (the ops that
    decode it).
    """
    record = {**inserted_nodes(model), **nodes}
    set_rt_json(model, "inserted", record)


def inserted_nodes(model: ov.Model) -> dict[str, str]:
    """Friendly name -> role of every node ovrange inserted into ``model`` (empty for a model it did not touch)."""
    return get_rt_json(model, "inserted") or {}


def set_rt_json(model: ov.Model, key: str, value: Any) -> None:
    """Store ``value`` as JSON text at ``ovrange/<key>`` in the model's rt_info (saved into the IR).

    Node names may contain characters that are not valid XML tags, so structured data is stored as JSON text.
    Node-level rt_info is not serialized to IR; model-level is.
    """
    model.set_rt_info(json.dumps(value), [RT_INFO_ROOT, key])  # insertion order = topological order


def get_rt_json(model: ov.Model, key: str) -> Any | None:
    """Read back what :func:`set_rt_json` stored, or None."""
    if not model.has_rt_info([RT_INFO_ROOT, key]):
        return None
    return json.loads(model.get_rt_info([RT_INFO_ROOT, key]).astype(str))
