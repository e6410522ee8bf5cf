"""The batch axis of each model input and output: where samples are stacked into a batch.

Axis 0 unless the model says otherwise: the ``N`` of an input's layout (``--batch-axis name:k`` sets it, and a saved
IR keeps it), else, for an input whose axis 0 cannot be the batch (static, not 1), its one dynamic or length-1 axis
(Silero VAD's state ``[2, 1, 128]``: axis 1). Outputs: the axis whose length follows the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import openvino as ov

from ovrange.errors import ConfigError


def input_batch_axes(model: ov.Model) -> list[int]:
    """The batch axis of each model input: the ``N`` of its layout (``--batch-axis`` sets it), else axis 0, except
    for an input whose axis 0 cannot be the batch the other inputs share. All inputs share one batch: when inputs
    with axis 0 dynamic or 1 show it (dynamic, or 1), an input whose axis 0 is static and another length has its
    batch on its one dynamic axis (a dynamic batch), or its one axis of length 1 (a batch of 1): Silero VAD's input
    ``[1, 576]`` and state ``[2, 1, 128]``, batched on axis 1. A single input is batched on axis 0."""
    parameters = model.get_parameters()
    shown = {_axis0(p) for p in parameters} - {None}
    batch = "dynamic" if "dynamic" in shown else 1 if shown else None
    return [_batch_axis(p, batch) for p in parameters]


def _axis0(parameter: ov.Node) -> str | int | None:
    """``dynamic`` or 1 when the input's axis 0 can be the batch (of unknown or of one sample), else None."""
    shape = parameter.get_output_partial_shape(0)
    if shape.rank.is_dynamic or shape.rank.get_length() == 0 or ov.layout_helpers.has_batch(parameter.get_layout()):
        return None
    return "dynamic" if shape[0].is_dynamic else 1 if shape[0].get_length() == 1 else None


def _batch_axis(parameter: ov.Node, batch: str | int | None) -> int:
    shape = parameter.get_output_partial_shape(0)
    if shape.rank.is_dynamic or shape.rank.get_length() == 0:
        return 0
    layout = parameter.get_layout()
    if ov.layout_helpers.has_batch(layout):
        return ov.layout_helpers.batch_idx(layout) % shape.rank.get_length()
    dims = list(shape)
    if batch is None or dims[0].is_dynamic or dims[0].get_length() == 1:
        return 0
    found = [axis for axis, dim in enumerate(dims)
             if (dim.is_dynamic if batch == "dynamic" else dim.is_static and dim.get_length() == 1)]
    return found[0] if len(found) == 1 else 0


def set_batch_axes(model: ov.Model, axes: dict[str, int] | None) -> ov.Model:
    """Mark input ``name``'s batch axis ``k`` for every ``name: k`` (the ``N`` of its layout, kept in a saved IR);
    edits ``model``. An unknown input or an axis outside the input's rank is a ConfigError."""
    parameters = model.get_parameters()
    for name, axis in (axes or {}).items():
        index = next((i for i, port in enumerate(model.inputs) if name in port.get_names()), None)
        if index is None:
            raise ConfigError(f"--batch-axis {name}:{axis}: the model has no input {name!r} (inputs: "
                              f"{', '.join(port.get_any_name() for port in model.inputs)})")
        shape = model.inputs[index].get_partial_shape()
        rank = shape.rank.get_length() if shape.rank.is_static else None
        if rank is None or not 0 <= axis < rank:
            raise ConfigError(f"--batch-axis {name}:{axis}: input {name!r} of shape {shape} has no axis {axis}")
        parameters[index].set_layout(_layout(rank, axis))
    return model


def _layout(rank: int, axis: int) -> ov.Layout:
    return ov.Layout("[" + ",".join("N" if k == axis else f"D{k}" for k in range(rank)) + "]")


def batch_first(model: ov.Model) -> ov.Model:
    """``model`` (unchanged) when every input has its batch on axis 0, else a copy whose inputs take it there: a
    Transpose after each such input restores the model's own order. The other operations, their names and the
    outputs are those of ``model`` (nothing is folded); code that stacks samples on axis 0 (fault-injection engines)
    can then feed it."""
    axes = input_batch_axes(model)
    if not any(axes):
        return model
    from openvino import opset13 as ops

    view = model.clone()
    for index, axis in enumerate(axes):
        if not axis:
            continue
        old = view.get_parameters()[index]
        shape = old.get_output_partial_shape(0)
        order = [axis] + [k for k in range(shape.rank.get_length()) if k != axis]  # the new input's axes
        new = ops.parameter(ov.PartialShape([shape[k] for k in order]), old.get_element_type(),
                            name=old.get_friendly_name())
        names = old.output(0).get_names()
        old.output(0).set_names(set())
        new.output(0).set_names(names)
        back = ops.transpose(new, ops.constant(np.argsort(order).astype(np.int64)))
        back.set_friendly_name(f"{old.get_friendly_name()}/batch_first")
        for target in old.output(0).get_target_inputs():
            target.replace_source_output(back.output(0))
        view.replace_parameter(index, new)
    view.validate_nodes_and_infer_types()
    return view


def output_batch_axes(model: ov.Model, axes: Sequence[int] | None = None) -> list[int | None]:
    """The batch axis of each output: the one whose length is the batch at batches of 2 and 3 (on a clone), None
    for an output that does not keep the batch (a hard-coded ``Reshape([1, -1, 18])`` folds it into another
    axis); raises ValueError when the model cannot be reshaped."""
    axes = input_batch_axes(model) if axes is None else axes
    found: list[set[int]] = []
    for batch in (2, 3):
        clone = model.clone()
        shapes = {}
        for port, axis in zip(clone.inputs, axes):
            shape = ov.PartialShape(port.get_partial_shape())
            if shape.rank.is_static and shape.rank.get_length():
                shape[axis] = ov.Dimension(batch)
                shapes[port] = shape
        try:
            clone.reshape(shapes)
        except RuntimeError as exc:
            raise ValueError(_last_line(exc)) from exc
        sizes = [set(k for k, d in enumerate(p.get_partial_shape()) if d.is_static and d.get_length() == batch)
                 if p.get_partial_shape().rank.is_static else set() for p in clone.outputs]
        found = sizes if not found else [a & b for a, b in zip(found, sizes)]
    return [min(axes_) if axes_ else None for axes_ in found]


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
