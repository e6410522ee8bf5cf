"""Weights stored in low precision: find the integer Constant behind a layer, read it, and decode it as the
runtime does.

NNCF INT8 IRs and ``compress_weights`` INT8/INT4 IRs hold a layer's weight as
``Constant(i8/u8/i4/u4) -> Convert -> [Subtract(zero point)] -> Multiply(scale) -> [Reshape (INT4 groups)]
-> [Convert] -> layer``. A memory fault flips a bit of the stored integer; the layer then sees
``(q' - zero_point) * scale``. The CPU plugin decodes in f32 (a numpy decode in f16 arithmetic differs from it by
1e-4, in f32 by 1e-7), so the engines decode here in f32 and feed the layer decoded weights: the injected run then
equals the model recompiled with the flipped integer Constant. Scales and zero points are not sites
(docs/quantized.md: one per output channel or group, a few per mille of the weight memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov

INTEGER_FORMATS = {"i8": "int8", "u8": "uint8", "i4": "int4", "u4": "uint4"}
DECODE_OPS = ("Convert", "Subtract", "Multiply", "Reshape")


def stored_integers(node: ov.Node) -> ov.Output | None:
    """The integer Constant a layer's weight (input 1) is decoded from, following the data input 0 of each
    decode op; None for f32/f16 weights and anything else."""
    if node.get_input_size() < 2:
        return None
    out = node.input_value(1)
    for _ in range(len(DECODE_OPS) + 2):
        producer = out.get_node()
        if producer.get_type_name() == "Constant":
            return out if producer.get_output_element_type(0).to_string() in INTEGER_FORMATS else None
        if producer.get_type_name() not in DECODE_OPS:
            return None
        out = producer.input_value(0)
    return None


def constant_array(out: ov.Output) -> np.ndarray:
    """The values of a Constant output (or a Convert of one) as float32; packed u4/i4 unpacked, low nibble first
    as OpenVINO packs them."""
    node = out.get_node()
    if node.get_type_name() == "Convert":
        return constant_array(node.input_value(0))
    kind = node.get_output_element_type(0).to_string()
    if kind not in ("u4", "i4"):
        return np.array(node.get_data(), dtype=np.float32, copy=True)
    packed = np.frombuffer(np.ascontiguousarray(node.get_data()).tobytes(), dtype=np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1).astype(np.int16)
    shape = tuple(int(d) for d in out.get_shape())
    values = nibbles[:int(np.prod(shape, dtype=np.int64))]
    if kind == "i4":
        values = np.where(values >= 8, values - 16, values)
    return values.astype(np.float32).reshape(shape)


@dataclass(frozen=True)
class StoredWeight:
    """A layer weight as stored (``stored``, flat) and its per-element zero point and scale (flat, f32)."""

    stored: np.ndarray
    zero_point: np.ndarray | None
    scale: np.ndarray | None
    layer_shape: tuple[int, ...]

    def decode(self, values: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """The f32 weights the layer sees when the stored numbers at ``elements`` are ``values``."""
        out = np.asarray(values, dtype=np.float32)
        if self.zero_point is not None:
            out = out - self.zero_point[elements]
        if self.scale is not None:
            out = out * self.scale[elements]
        return out.astype(np.float32)

    def decoded(self) -> np.ndarray:
        return self.decode(self.stored, np.arange(self.stored.size)).reshape(self.layer_shape)


def stored_weight(node: ov.Node) -> StoredWeight | None:
    """Read the integer weight of ``node`` and its decoding, or None when it is not stored as integers."""
    source = stored_integers(node)
    if source is None:
        return None
    stored = constant_array(source)
    zero_point = scale = None
    out = node.input_value(1)
    while out != source:  # walk down the decode chain, collecting the other operand of Subtract and Multiply
        producer = out.get_node()
        kind = producer.get_type_name()
        if kind in ("Subtract", "Multiply"):
            shape = tuple(int(d) for d in producer.get_output_shape(0))  # flat order is kept by Reshape
            operand = np.broadcast_to(constant_array(producer.input_value(1)), shape).reshape(-1)
            if kind == "Subtract":
                zero_point = operand.astype(np.float32)
            else:  # a dequantization scale, or a scale GlobalClipper folded into the weight: their product
                scale = operand.astype(np.float32) if scale is None else (scale * operand).astype(np.float32)
        out = producer.input_value(0)
    layer_shape = tuple(int(d) for d in node.input_value(1).get_shape())
    return StoredWeight(stored.reshape(-1), zero_point, scale, layer_shape)
