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


def zero_target(entry: dict[str, Any]) -> np.ndarray:
    """Where a far out-of-range value goes (``beyond: zero``), in the unit domain: 0, or the bound nearest 0."""
    centre, half = unit_scale(entry)
    low, high = np.asarray(entry["low"], np.float64), np.asarray(entry["high"], np.float64)
    return np.clip((np.clip(0.0, low, high) - centre) / half, -1.0, 1.0)


def _unit_minus_one(x: ov.Output, centre: np.ndarray, half: np.ndarray, shape: list[int], name: str) -> ov.Node:
    """``u - 1 = x/h - c/h - 1``: the value in the unit domain, measured from its upper bound (one scale-shift)."""
    return ops.add(ops.multiply(x, _const(1 / half, shape), name=f"{name}/scale_Multiply"),
                   _const(-centre / half - 1, shape), name=f"{name}/shift_Add")


def _unit_fold(x: ov.Output, centre: np.ndarray, half: np.ndarray, target: np.ndarray, shape: list[int],
               name: str) -> tuple[ov.Node, float, float]:
    """``beyond: zero`` in the unit domain ``u = x/h - c/h``: identity on ``[-1, 1]``; a value beyond folds back
    into the bounds (``1 - |u - 1|``), and one more than ``2 + d`` half-widths beyond (``d = z + 1``, ``z`` the
    target) becomes ``z``. Piecewise linear, continuous, always inside ``[-1, 1]``; Abs, scale-shift and a scalar
    Clamp only, so the CPU plugin fuses the chain into the producer's post-ops like a Clamp. Returns the node,
    which is ``r + 1`` (the unit value plus one, folded into the unscaling), the offset ``-1`` and the scale 1."""
    d = target + 1.0
    below = _unit_minus_one(x, centre, half, shape, name)
    folded = ops.add(ops.multiply(ops.abs(below, name=f"{name}/fold_Abs"), ops.constant(np.float32(-1))),
                     _const(1 + d, shape), name=f"{name}/fold_Add")  # (1 - |u - 1|) + d
    floor = ops.clamp(folded, -1.0, 3.0, name=f"{name}/unit_Clamp")  # max(t, -1 - d) + d
    return ops.abs(ops.add(floor, _const(1 - d, shape)), name=f"{name}/zero_Abs"), -1.0, 1.0  # |t' + 1| = r + 1


NAN_MARK = 2.0 ** 100  # a NaN becomes -NAN_MARK at the Clamp, a value no finite input reaches there
NAN_SCALE = 2.0 ** 40  # NAN_MARK * NAN_SCALE overflows to Inf; a power of two: finite values scale exactly


def _unit_fold_nan(x: ov.Output, centre: np.ndarray, half: np.ndarray, target: np.ndarray, shape: list[int],
                   name: str) -> tuple[ov.Node, float, float]:
    """:func:`_unit_fold`, the same function of a finite input, but a NaN comes out as +Inf (a DUE a runtime check
    sees, where :func:`_unit_fold` makes it ``z``, as the CPU's Clamp maps NaN to its low bound). The Clamp here
    works on ``|u - 1| - 1 - d`` (never below ``-1 - d`` for a finite input) with the low bound ``-NAN_MARK``: only
    a NaN lands there, and the next scale-shift, by the power of two ``NAN_SCALE``, sends it to -Inf, where a finite
    value scales exactly. +-Inf (a value overflowed upstream) folds to ``z`` like any far value. Scale-shift, Abs
    and one scalar Clamp, as :func:`_unit_fold`. Returns ``(r + 1) * NAN_SCALE``, the offset ``-1`` and the scale
    ``1 / NAN_SCALE``."""
    d = target + 1.0
    below = _unit_minus_one(x, centre, half, shape, name)
    over = ops.add(ops.abs(below, name=f"{name}/fold_Abs"), _const(-1 - d, shape),
                   name=f"{name}/fold_Add")  # |u - 1| - 1 - d = -((1 - |u - 1|) + d)
    ceiling = ops.clamp(over, -NAN_MARK, 1.0, name=f"{name}/unit_Clamp")  # min(., 1); NaN -> -NAN_MARK
    marked = ops.multiply(ops.add(ceiling, _const(d - 1, shape), name=f"{name}/zero_Add"),
                          ops.constant(np.float32(-NAN_SCALE)), name=f"{name}/mark_Multiply")
    return ops.abs(marked, name=f"{name}/zero_Abs"), -1.0, 1.0 / NAN_SCALE  # |t' + 1| * NAN_SCALE


def _unit(x: ov.Output, entry: dict[str, Any], shape: list[int], name: str) -> tuple[ov.Node, np.ndarray,
                                                                                      np.ndarray, float, float]:
    """The bounded value in the unit domain (times a scale, plus an offset), its centre and half-width, the offset
    to add and the scale to multiply by (``nan: inf``: :func:`_unit_fold_nan`)."""
    centre, half = unit_scale(entry)
    if entry.get("beyond", "clamp") == "zero":
        fold = _unit_fold_nan if entry.get("nan") == "inf" else _unit_fold
        node, offset, scale = fold(x, centre, half, zero_target(entry), shape, name)
        return node, centre, half, offset, scale
    return _unit_clamp(x, centre, half, shape, name), centre, half, 0.0, 1.0


def fold_clamp(x: ov.Output, low: float, high: float, name: str) -> ov.Node:
    """``beyond: fold`` for one bound per tensor: identity on ``[low, high]`` (to f32 rounding); a value beyond is
    reflected back into the bound and, once it is far beyond (a flipped exponent, +-Inf, NaN), lands at 0, or at
    the bound nearest 0 when 0 is outside ``[low, high]``.

    The value is reflected at the bound farther from 0 (``pivot``): ``t = pivot - |x - pivot|`` (mirrored when the
    far bound is ``low``) is the identity on the bound's side and runs off towards the near bound for every value
    beyond either bound. With ``low < 0 < high`` a second reflection sends the run-off to 0: with
    ``w = (high - low) - |x - pivot|`` (``|t - near|`` on the bound), the guard is ``near -+ |Clamp(w, -|near|,
    high - low)|``, which is ``x`` on the bound and 0 where the Clamp stops ``w``. Otherwise the Clamp to
    ``[low, high]`` lands it on the near bound. Scalar element-wise post-ops only (scale-shift, Abs, Clamp): four
    (bound on one side of 0) or six of them, against the Clamp's one (docs/zoo.md#cost); NaN goes where the CPU's
    Clamp sends it, the Clamp's low end, which is 0 or the near bound as well."""
    pivot, sign = (high, -1.0) if abs(low) <= abs(high) else (low, 1.0)
    near = low if sign < 0 else high
    shifted = ops.abs(ops.add(x, ops.constant(np.float32(-pivot)), name=f"{name}/fold_shift"),
                      name=f"{name}/fold_Abs")
    if not low < 0 < high:
        back = ops.add(ops.multiply(shifted, ops.constant(np.float32(sign))), ops.constant(np.float32(pivot)),
                       name=f"{name}/fold_back")
        return ops.clamp(back, float(low), float(high))
    # w = (high - low) - |x - pivot|: in [0, high - low] on the bound (where near - sign * |w| is x), running to
    # -inf beyond either bound; the Clamp stops it at -|near|, where near - sign * |w| is 0 (NaN lands there too)
    width = ops.add(ops.multiply(shifted, ops.constant(np.float32(-1))), ops.constant(np.float32(high - low)),
                    name=f"{name}/fold_back")
    clamped = ops.clamp(width, -abs(float(near)), float(high - low), name=f"{name}/fold_Clamp")
    return ops.add(ops.multiply(ops.abs(clamped, name=f"{name}/zero_Abs"), ops.constant(np.float32(-sign))),
                   ops.constant(np.float32(near)), name=f"{name}/zero_Add")


def affine_clamp(x: ov.Output, entry: dict[str, Any], shape: list[int], name: str) -> ov.Node:
    """``Clamp(x * (1/h) - c/h, -1, 1) * h + c`` (``beyond: zero``: the folded unit value, :func:`_unit_fold`)."""
    clamped, centre, half, offset, scale = _unit(x, entry, shape, name)
    return ops.add(ops.multiply(clamped, _const(half * scale, shape), name=f"{name}/unscale_Multiply"),
                   _const(centre + offset * half, shape))


def folded_clamp(x: ov.Output, entry: dict[str, Any], shape: list[int], name: str) -> tuple[ov.Node, np.ndarray]:
    """``Clamp(x * (1/h) - c/h, -1, 1) + c/h`` (the bounded value divided by ``h``) and ``h``, which every consumer
    of this node must multiply back in: :func:`fold_into_weight`, or ``* h`` (:func:`unscale`)."""
    clamped, centre, half, offset, scale = _unit(x, entry, shape, name)
    if scale != 1.0:
        clamped = ops.multiply(clamped, ops.constant(np.float32(scale)), name=f"{name}/mark_unscale")
    return ops.add(clamped, _const(centre / half + offset, shape)), half


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

