"""Per-channel guard forms, shaped by what the CPU plugin fuses (measured on PP-OCRv4 rec, docs/transformers.md).

``Clamp`` takes scalar bounds only, and the plugin fuses neither per-channel ``Minimum`` nor ``Maximum`` into a
Convolution or FullyConnected. It does fuse per-channel ``Multiply``/``Add`` (like a bias) and a scalar ``Clamp``.
So a per-channel bound ``[low, high]`` with centre ``c`` and half-width ``h`` is enforced in the unit domain:
``u = Clamp(x * (1/h) - c/h, -1, 1)``, and then

- :func:`affine_clamp`: back to ``u * h + c`` (two scale-shift post-ops on the producer, around the Clamp);
- :func:`folded_clamp`: when convolutions consume the tensor, ``u + c/h`` only, and the ``h`` folds into each
  consuming convolution's weight per input channel (a constant ``Multiply`` the plugin folds at compile time):
  one post-op fewer on the producer, 1.2 points of rec's latency (+2.2% instead of +3.4%, 443 paired rounds).

Where the guard is a kernel of its own anyway (after pooling, or on a classifier's logits, where a fused post-op would
move an MLAS FullyConnected to oneDNN), it is the exact ``Minimum(Maximum(x, low), high)`` of
:func:`ovrange.passes.guards.clamp_guard`. All map NaN to the low bound and +-Inf to the bounds on CPU; the two
forms here are exact to f32 rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.targets import CONVOLUTIONS

FOLD_SUFFIX = "/fold_Multiply"  # the scale folded into a consuming convolution's weight (recorded ``decode``)
FOLDABLE = CONVOLUTIONS


def unit_scale(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half-width per channel; a constant channel still gets a width."""
    low, high = np.asarray(entry["low"], np.float64), np.asarray(entry["high"], np.float64)
    centre, half = (high + low) / 2, (high - low) / 2
    return centre, np.maximum(half, np.maximum(np.abs(centre), 1.0) * 1e-6)


def _const(values: np.ndarray, shape: list[int]) -> ov.Node:
    return ops.constant(np.asarray(values, np.float32).reshape(shape))


def _unit_clamp(x: ov.Output, centre: np.ndarray, half: np.ndarray, shape: list[int], name: str) -> ov.Node:
    unit = ops.add(ops.multiply(x, _const(1 / half, shape), name=f"{name}/scale_Multiply"),
                   _const(-centre / half, shape), name=f"{name}/shift_Add")
    return ops.clamp(unit, -1.0, 1.0, name=f"{name}/unit_Clamp")


def affine_clamp(x: ov.Output, entry: dict[str, Any], shape: list[int], name: str) -> ov.Node:
    """``Clamp(x * (1/h) - c/h, -1, 1) * h + c``."""
    centre, half = unit_scale(entry)
    clamped = _unit_clamp(x, centre, half, shape, name)
    return ops.add(ops.multiply(clamped, _const(half, shape), name=f"{name}/unscale_Multiply"),
                   _const(centre, shape))


def folded_clamp(x: ov.Output, entry: dict[str, Any], shape: list[int], name: str) -> tuple[ov.Node, np.ndarray]:
    """``Clamp(x * (1/h) - c/h, -1, 1) + c/h`` (the bounded value divided by ``h``) and ``h``, which every consumer
    of this node must multiply back in: :func:`fold_into_weight`, or ``* h`` (:func:`unscale`)."""
    centre, half = unit_scale(entry)
    clamped = _unit_clamp(x, centre, half, shape, name)
    return ops.add(clamped, _const(centre / half, shape)), half


def unscale(x: ov.Output, half: np.ndarray, shape: list[int], name: str) -> ov.Node:
    return ops.multiply(x, _const(half, shape), name=f"{name}/unscale_Multiply")


def foldable(consumer: ov.Input) -> bool:
    """A convolution taking the tensor as its data input, with a static-rank weight to scale."""
    layer = consumer.get_node()
    return (layer.get_type_name() in FOLDABLE and consumer.get_index() == 0
            and layer.input_value(1).get_partial_shape().rank.is_static)


def fold_into_weight(layer: ov.Node, half: np.ndarray, name: str) -> ov.Node:
    """Multiply ``layer``'s weight by ``half`` per input channel: ``conv(x / h, W * h) = conv(x, W)``, exactly up to
    rounding, padding included (zeros stay zeros). Returns the ``Multiply`` (a decode op of the stored weight)."""
    weight = layer.input_value(1)
    rank = weight.get_partial_shape().rank.get_length()
    if layer.get_type_name() == "GroupConvolution":  # [G, O/G, I/G, k...]: input channel = g * (I/G) + i
        groups = weight.get_partial_shape()[0].get_length()
        shape = [groups, 1, len(half) // groups] + [1] * (rank - 3)
    else:  # [O, I, k...]
        shape = [1, len(half)] + [1] * (rank - 2)
    scaled = ops.multiply(weight, _const(half, shape), name=name + FOLD_SUFFIX)
    layer.input(1).replace_source_output(scaled.output(0))
    return scaled

