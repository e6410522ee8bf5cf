"""The small OpenVINO graph vocabulary ovrange needs: find nodes, insert after an output, read/write rt_info.

Everything here edits the model it is given; callers pass ``model.clone()`` so the user's model stays intact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import openvino as ov

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


def constant_weight(node: ov.Node) -> ov.Output | None:
    """The f32 output feeding input 1 of a layer (Convolution, MatMul...) when it is a constant, possibly
    decompressed from f16 by a Convert; None otherwise."""
    if node.get_input_size() < 2:
        return None
    return constant_source(node.input_value(1))


def constant_source(source: ov.Output) -> ov.Output | None:
    """``source`` when it is an f32 constant, possibly decompressed from f16 by a Convert; None otherwise."""
    producer = source.get_node()
    if producer.get_type_name() == "Convert":
        producer = producer.input_value(0).get_node()
    if producer.get_type_name() != "Constant" or source.get_element_type() != ov.Type.f32:
        return None
    return source


def constant_values(source: ov.Output) -> np.ndarray:
    """A float32 copy of the values behind :func:`constant_weight` (through a decompression Convert)."""
    producer = source.get_node()
    constant = producer.input_value(0).get_node() if producer.get_type_name() == "Convert" else producer
    return np.array(constant.get_data(), dtype=np.float32, copy=True)


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
