"""Shapes for benchmarks: both models need the same static input shapes, and inputs to fill them."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import openvino as ov

from ovrange.batching import input_batch_axes
from ovrange.errors import DataError
from ovrange.runtime import last_line


def sample_shapes(dataset: object, model: ov.Model) -> dict[str, list[int]]:
    """The shape of each input of ``model`` in the first sample of ``dataset`` (a batch of one)."""
    from ovrange import data as data_mod

    samples, count = data_mod.subset(dataset, 1)
    if not count:
        raise DataError("no samples in the data")
    arrays = data_mod.sample_arrays(next(samples), model)
    return {_input_name(port, i): list(array.shape) for i, (port, array) in enumerate(zip(model.inputs, arrays))}


def parse_shape(spec: str, model: ov.Model) -> dict[str, list[int]]:
    """benchmark_app's ``-shape`` syntax: ``[1,3,48,320]`` (one input) or ``x[1,3,48,320],y[1,4]``."""
    text = spec.replace(" ", "")
    entry = r"([^\[\],]*)\[(-?\d+(?:,-?\d+)*)\]"
    if not re.fullmatch(f"{entry}(,{entry})*", text):
        raise DataError(f"cannot parse shape {spec!r}; expected e.g. [1,3,224,224] or input[1,3,224,224]")
    names = [_input_name(port, i) for i, port in enumerate(model.inputs)]
    shapes: dict[str, list[int]] = {}
    for name, dims in re.findall(entry, text):
        if not name:
            if len(model.inputs) != 1:
                raise DataError(f"shape {spec!r} names no input, but the model has {len(names)} inputs: "
                                f"{', '.join(names)}")
            name = names[0]
        if name not in names:
            raise DataError(f"shape {spec!r}: the model has no input {name!r}; inputs: {', '.join(names)}")
        shapes[name] = [int(d) for d in dims.split(",")]
    return shapes


def static_shapes(model: ov.Model, given: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
    """A static shape for every input: ``given`` ones, else the model's, with a dynamic batch axis set to 1."""
    given = dict(given or {})
    shapes = {}
    for i, (port, batch_axis) in enumerate(zip(model.inputs, input_batch_axes(model))):
        name = _input_name(port, i)
        if name in given:
            shapes[name] = list(given[name])
            continue
        shape = port.get_partial_shape()
        dynamic = DataError(f"model input {name!r} has dynamic shape {shape}; give a static one with "
                            f"--shape {name}[...], or --data (the shape of its first sample)")
        if shape.rank.is_dynamic:
            raise dynamic
        dims = []
        for axis, dim in enumerate(shape):
            if dim.is_dynamic and axis != batch_axis:
                raise dynamic
            dims.append(dim.get_length() if dim.is_static else 1)
        shapes[name] = dims
    return shapes


def with_static_shapes(model: ov.Model, shapes: Mapping[str, Sequence[int]]) -> ov.Model:
    """A clone of ``model`` reshaped to ``shapes`` (input name -> dims)."""
    clone = model.clone()
    ports = {_input_name(port, i): port for i, port in enumerate(clone.inputs)}
    missing = sorted(set(shapes) - set(ports))
    if missing:
        raise DataError(f"model {model.get_friendly_name()!r} has no input {missing[0]!r}; "
                        f"inputs: {', '.join(ports)}")
    try:
        clone.reshape({ports[name]: ov.PartialShape(list(dims)) for name, dims in shapes.items()})
    except RuntimeError as exc:
        raise DataError(f"cannot reshape model {model.get_friendly_name()!r} to {dict(shapes)}: "
                        f"{last_line(exc)}") from exc
    return clone


def _input_name(port: ov.Output, index: int) -> str:
    names = port.get_names()
    return port.get_any_name() if names else port.get_node().get_friendly_name() or f"input{index}"


def random_inputs(model: ov.Model, seed: int = 0) -> list[np.ndarray]:
    """One seeded array per (static) input, filled as benchmark_app fills them: uniform in [0, 255]."""
    rng = np.random.default_rng(seed)
    arrays = []
    for port in model.inputs:
        shape = [d.get_length() for d in port.get_partial_shape()]
        dtype = port.get_element_type().to_dtype()
        if dtype == np.bool_:
            arrays.append(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.floating):
            arrays.append(rng.uniform(0, 255, shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 256, shape).astype(dtype))
    return arrays
