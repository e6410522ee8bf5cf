"""The small OpenVINO graph vocabulary ovrange needs: find nodes, insert after an output, read/write rt_info.

Everything here edits the model it is given; callers pass ``model.clone()`` so the user's model stays intact.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import openvino as ov

RT_INFO_ROOT = "ovrange"


def nodes_of_type(model: ov.Model, types: Iterable[str]) -> list[ov.Node]:
    """Nodes whose type name (``Relu``, ``Swish``, ...; any opset version) is in ``types``, in topological order."""
    wanted = set(types)
    return [node for node in model.get_ordered_ops() if node.get_type_name() in wanted]


def node_by_name(model: ov.Model, name: str) -> ov.Node:
    """The node with friendly name ``name``; KeyError when absent."""
    for node in model.get_ops():
        if node.get_friendly_name() == name:
            return node
    raise KeyError(name)


def constant_weight(node: ov.Node) -> ov.Output | None:
    """The f32 output feeding input 1 of a layer (Convolution, MatMul...) when it is a constant, possibly
    decompressed from f16 by a Convert; None otherwise."""
    if node.get_input_size() < 2:
        return None
    source = node.input_value(1)
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


def consumers(output: ov.Output) -> list[ov.Node]:
    """Nodes that read ``output``."""
    return [target.get_node() for target in output.get_target_inputs()]


def insert_after(output: ov.Output, make: Callable[[ov.Output], ov.Node]) -> ov.Node:
    """Insert ``make(output)`` between ``output`` and all its consumers; the new node takes over the tensor names.

    The consumers are snapshotted before the new node exists, so the new node's own input is not rewired to
    itself. Names move explicitly because ``Output.replace`` would leave duplicates, and the model's output
    tensors must keep their names.
    """
    targets = list(output.get_target_inputs())
    node = make(output)
    for target in targets:
        target.replace_source_output(node.output(0))
    names = set(output.get_names())
    if names:
        output.get_tensor().set_names(set())
        node.output(0).get_tensor().set_names(names)
    return node


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


def with_dynamic_batch(model: ov.Model) -> ov.Model:
    """Make axis 0 of every input dynamic (so statistics can run in batches); raises ValueError if impossible."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() == 0 or shape[0].is_dynamic:
            continue
        new_shape = ov.PartialShape(shape)
        new_shape[0] = ov.Dimension()
        shapes[port] = new_shape
    if shapes:
        try:
            model.reshape(shapes)
        except RuntimeError as exc:
            raise ValueError(str(exc).strip().splitlines()[-1]) from exc
    return model
