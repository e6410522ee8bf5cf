"""Weight faults as output corrections: Convolution and MatMul are linear in each weight.

Flipping weight ``w`` to ``w'`` changes the layer output by ``(w' - w) * x`` on the outputs that weight touches:
one output channel of a convolution (the input slice under that kernel tap), one output column of a MatMul. With
the fault-free input ``x`` and output ``y`` of the layer (read from a probe) the faulty output slice is computed in
numpy and written into the running model like an activation fault, so a batch carries one weight fault per
element. ``inf * 0`` gives NaN as in the layer itself; kernel taps that fall into the zero padding contribute
nothing (convolution kernels skip padding rather than multiply by it). For a quantized layer the weight is
``decode(q)`` and a fault flips the stored integer ``q`` (:mod:`ovrange.faults.stored`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov

from ovrange.faults.formats import NumberFormat, apply_mask
from ovrange.faults.sites import stored_through_transform, weight_values
from ovrange.faults.stored import StoredWeight, stored_weight
from ovrange.graph import constant_source, stored_order, stored_output
from ovrange.targets import CONVOLUTIONS


@dataclass(frozen=True)
class LinearLayer:
    """What the correction of one weight site needs: its weights and geometry, per-sample in/out shapes."""

    kind: str  # "conv" or "matmul"
    weights: np.ndarray
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    grouped: bool = False
    transpose_b: bool = False
    stored: StoredWeight | None = None  # a quantized layer: faults flip the stored integer, decoded in f32
    order: np.ndarray | None = None  # weights moved by a constant chain: layer element of each stored element

    @property
    def rows(self) -> int:
        """Output elements (per sample) that one weight touches."""
        if self.kind == "conv":
            return int(np.prod(self.out_shape[1:]))
        return int(np.prod(self.out_shape[:-1], dtype=np.int64))

    def faulty_slices(self, element: np.ndarray, mask: np.ndarray, fmt: NumberFormat, x: np.ndarray,
                      y: np.ndarray, op: str | np.ndarray = "flip") -> tuple[np.ndarray, np.ndarray]:
        """For n faults with per-fault layer input ``x[n, ...]`` and output ``y[n, ...]``: the flat indices (into
        one sample's output) and the faulty values of the touched outputs, both ``[n, rows]``."""
        flat = self.weights.reshape(-1)
        element = element if self.order is None else self.order[element]
        with np.errstate(invalid="ignore", over="ignore"):  # a flip may make a signalling NaN; inf * 0 is NaN
            faulty = apply_mask(flat[element], mask, fmt, op) if self.stored is None else \
                self.stored.decode(apply_mask(self.stored.stored[element], mask, fmt, op), element)
            delta = faulty.astype(np.float64) - flat[element].astype(np.float64)
            if self.kind == "conv":
                return self._conv(element, delta, x, y)
            return self._matmul(element, delta, x, y)

    def _conv(self, element, delta, x, y):
        n, spatial = len(element), len(self.out_shape) - 1
        index = np.unravel_index(element, self.weights.shape)
        if self.grouped:  # [G, O/G, C/G, k...]: absolute output / input channels
            g, o, c = index[0], index[1], index[2]
            o, c = g * self.weights.shape[1] + o, g * self.weights.shape[2] + c
            taps = index[3:]
        else:
            o, c, taps = index[0], index[1], index[2:]
        # Input position under tap k for output position i, per spatial axis: i * stride + k * dilation - pad.
        gather = [np.arange(n)[:, None], c[:, None]]
        valid = np.ones((n,) + self.out_shape[1:], bool)
        shape_n = (n,) + (1,) * spatial
        for axis in range(spatial):
            size_out, size_in = self.out_shape[1 + axis], self.in_shape[1 + axis]
            pos = (np.arange(size_out)[None, :] * self.strides[axis] + taps[axis][:, None] * self.dilations[axis]
                   - self.pads[axis])
            view = [1] * spatial
            view[axis] = size_out
            ok = ((pos >= 0) & (pos < size_in)).reshape((n, *view))
            valid = valid & ok
            gather.append(np.clip(pos, 0, size_in - 1).reshape((n, *view)))
        gather[0] = gather[0].reshape(shape_n)
        gather[1] = gather[1].reshape(shape_n)
        xs = x[tuple(gather)].astype(np.float64)
        contribution = np.where(valid, delta.reshape(shape_n) * xs, 0.0)
        ys = y[np.arange(n), o].astype(np.float64)  # the struck output channel, [n, *spatial]
        values = (ys + contribution).astype(np.float32).reshape(n, -1)
        per_channel = self.rows
        indices = o[:, None] * per_channel + np.arange(per_channel)[None, :]
        return indices, values

    def _matmul(self, element, delta, x, y):
        n = len(element)
        first, second = np.unravel_index(element, self.weights.shape)
        k, col = (second, first) if self.transpose_b else (first, second)
        xs = x.reshape(n, -1, x.shape[-1])[np.arange(n), :, k].astype(np.float64)  # [n, rows]
        ys = y.reshape(n, -1, y.shape[-1])[np.arange(n), :, col].astype(np.float64)
        values = (ys + delta[:, None] * xs).astype(np.float32)
        indices = np.arange(self.rows)[None, :] * y.shape[-1] + col[:, None]
        return indices, values


def linear_layer(node: ov.Node, source: ov.Output) -> LinearLayer | None:
    """The correction geometry of a weight site, or None when the layer is not supported (then faults go through
    the weight-as-input injector)."""
    kind = node.get_type_name()
    stored, order = stored_weight(node), None
    if stored is None and stored_through_transform(node, source):
        layer_side = constant_source(node.input_value(1))
        if layer_side is None or stored_output(layer_side) != source:
            return None  # the layer sees decode(stored), not the stored values: faults go through the graph
        order, source = np.argsort(stored_order(layer_side)), layer_side  # only moved (Transpose, Reshape)
    shape_in, shape_out = node.input_value(0).get_partial_shape(), node.output(0).get_partial_shape()
    if not (shape_in.is_static and shape_out.is_static):
        return None
    in_shape, out_shape = tuple(int(d) for d in shape_in.to_shape()[1:]), tuple(int(d) for d in
                                                                              shape_out.to_shape()[1:])
    weights = weight_values(source) if stored is None else stored.decoded()
    if kind in CONVOLUTIONS:
        if str(node.get_auto_pad()).lower().rsplit(".", 1)[-1] not in ("explicit", "notset", "valid"):
            return None
        pads = tuple(int(p) for p in node.get_pads_begin()) if "valid" not in str(node.get_auto_pad()).lower() \
            else (0,) * (len(in_shape) - 1)
        return LinearLayer("conv", weights, in_shape, out_shape, tuple(int(s) for s in node.get_strides()),
                           tuple(int(d) for d in node.get_dilations()), pads, kind == "GroupConvolution",
                           stored=stored, order=order)
    if kind == "MatMul" and weights.ndim == 2 and not node.get_transpose_a() and len(in_shape) >= 1:
        return LinearLayer("matmul", weights, in_shape, out_shape, transpose_b=node.get_transpose_b(), stored=stored,
                           order=order)
    return None
