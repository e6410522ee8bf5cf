"""The fault model: number formats, bit sets, bit flips on numpy integer views, and the Fault record.

A fault is one flipped bit in one value: a weight element (memory fault) or one element of an operator's output
for one input (datapath fault). Values live in IEEE FP32 in the runtime; the fixed-point formats Ranger used
(32-bit 1/21/10 and 16-bit 14/2) are emulated on the struck value only: it is quantized to the format, the bit is
flipped in two's complement, and the result goes back to f32. The rest of the network still computes in f32.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from ovrange.errors import ConfigError

TARGETS = ("activations", "weights")


@dataclass(frozen=True)
class NumberFormat:
    """How a value is stored: ``fp32``, or signed two's-complement fixed point with ``frac`` fraction bits."""

    name: str
    bits: int
    frac: int | None = None  # None: IEEE float

    @property
    def is_float(self) -> bool:
        return self.frac is None

    def named_bits(self) -> dict[str, tuple[int, ...]]:
        """Named groups of bit positions (bit 0 is the least significant)."""
        top = self.bits - 1
        if self.is_float:
            return {"sign": (31,), "exponent": tuple(range(23, 31)), "mantissa": tuple(range(23))}
        return {"sign": (top,), "integer": tuple(range(self.frac, top)), "fraction": tuple(range(self.frac))}


FORMATS = {
    "fp32": NumberFormat("fp32", 32),
    "fixed32": NumberFormat("fixed32", 32, 10),  # Ranger RQ1-3: 1 sign, 21 integer, 10 fraction bits
    "fixed16": NumberFormat("fixed16", 16, 2),  # Ranger RQ4: 14 integer (with sign), 2 fraction bits
}


# ---------------------------------------------------------------------------------------------------------------
# Storage formats of low-precision IRs (docs/quantized.md): the bit is flipped in the pattern the weight memory
# holds, not emulated. Values in and out are the *stored* numbers as float32 (integers for the int formats); the
# decoding the IR does (Convert, zero point, scale) stays in the graph. ``auto`` takes the format from the model.


@dataclass(frozen=True)
class StoredFormat(NumberFormat):
    """IEEE half (``frac`` None) or a plain integer (``frac`` 0), signed (two's complement) or unsigned."""

    signed: bool = True

    def named_bits(self) -> dict[str, tuple[int, ...]]:
        if self.is_float:
            return {"sign": (15,), "exponent": tuple(range(10, 15)), "mantissa": tuple(range(10))}
        top = self.bits - 1
        return {"sign": (top,), "magnitude": tuple(range(top))} if self.signed else {"magnitude": tuple(range(top + 1))}


STORED_FORMATS = {
    "fp16": StoredFormat("fp16", 16),
    "int8": StoredFormat("int8", 8, 0),
    "uint8": StoredFormat("uint8", 8, 0, signed=False),
    "int4": StoredFormat("int4", 4, 0),
    "uint4": StoredFormat("uint4", 4, 0, signed=False),
}
AUTO = "auto"


def flip_stored(values: np.ndarray, bits: np.ndarray, fmt: StoredFormat) -> np.ndarray:
    """Flip bit ``bits[i]`` of the stored number ``values[i]`` (f16 values, or integers held in float32)."""
    bits = np.asarray(bits, dtype=np.int64)
    if fmt.is_float:
        half = np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint16)
        return (half ^ (np.uint16(1) << bits.astype(np.uint16))).view(np.float16).astype(np.float32)
    pattern = (np.rint(np.asarray(values, dtype=np.float64)).astype(np.int64) & ((1 << fmt.bits) - 1)) ^ (1 << bits)
    if fmt.signed:
        pattern = np.where(pattern >= 1 << (fmt.bits - 1), pattern - (1 << fmt.bits), pattern)
    return pattern.astype(np.float32)


def rebase_bits(bits: tuple[int, ...], fmt: NumberFormat) -> tuple[int, ...]:
    """Bits parsed under ``auto`` (as fp32) for the format the model turned out to store: ``all`` and the named
    groups (``sign``, ``exponent``, ``mantissa`` and unions of them) are taken again in ``fmt``; other positions
    are kept (and checked against its width by the caller)."""
    named = FORMATS["fp32"].named_bits()
    if set(bits) == set(range(32)):
        return parse_bits("all", fmt)
    groups = [name for name, members in named.items() if set(members) <= set(bits)]
    if groups and set().union(*(named[g] for g in groups)) == set(bits):
        return parse_bits(",".join(groups), fmt)  # a group the format lacks (int8 exponent) is an error
    return bits


def parse_format(spec: str) -> NumberFormat:
    """``fp32``, ``fixed32``, ``fixed16``, ``fixed:<bits>:<fraction bits>``, a storage format (``fp16``,
    ``int8``, ``uint8``, ``int4``, ``uint4``) or ``auto`` (resolved from the model; parsed as fp32 until then)."""
    if spec in FORMATS:
        return FORMATS[spec]
    if spec in STORED_FORMATS:
        return STORED_FORMATS[spec]
    if spec == AUTO:
        return FORMATS["fp32"]
    match = re.fullmatch(r"fixed:(\d+):(\d+)", spec)
    if match:
        bits, frac = int(match[1]), int(match[2])
        if 2 <= bits <= 32 and 0 <= frac < bits:
            return NumberFormat(spec, bits, frac)
    raise ConfigError(f"unknown number format {spec!r}; use auto, fp32, fp16, int8, uint8, int4, uint4, fixed32, "
                      "fixed16 or fixed:<bits>:<fraction>")


def parse_bits(spec: str | int | list | tuple | None, fmt: NumberFormat) -> tuple[int, ...]:
    """Bit positions from ``all``, ``30``, ``23-30``, ``exponent``/``sign``/``mantissa`` or a comma list of those."""
    if spec is None:
        spec = "all"
    parts = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    named = fmt.named_bits()
    chosen: set[int] = set()
    for part in (str(p).strip().lower() for p in parts):
        if part == "all":
            chosen.update(range(fmt.bits))
        elif part in named:
            chosen.update(named[part])
        elif re.fullmatch(r"\d+", part):
            chosen.add(int(part))
        elif re.fullmatch(r"\d+-\d+", part):
            low, high = sorted(int(v) for v in part.split("-"))
            chosen.update(range(low, high + 1))
        else:
            raise ConfigError(f"unknown bit position {part!r}; use numbers, ranges like 23-30, 'all' or "
                              f"{', '.join(named)}")
    bad = sorted(b for b in chosen if not 0 <= b < fmt.bits)
    if bad or not chosen:
        raise ConfigError(f"bit position(s) {', '.join(map(str, bad)) or 'none'} outside 0..{fmt.bits - 1} "
                          f"of {fmt.name}")
    return tuple(sorted(chosen))


def flip(values: np.ndarray, bits: np.ndarray, fmt: NumberFormat = FORMATS["fp32"]) -> np.ndarray:
    """Flip bit ``bits[i]`` of ``values[i]`` (float32) in format ``fmt``; returns new float32 values."""
    if isinstance(fmt, StoredFormat):
        return flip_stored(values, bits, fmt)
    values = np.asarray(values, dtype=np.float32)
    bits = np.asarray(bits, dtype=np.uint32)
    if fmt.is_float:
        return (values.view(np.uint32) ^ (np.uint32(1) << bits)).view(np.float32)
    return from_fixed(to_fixed(values, fmt) ^ (np.int64(1) << bits.astype(np.int64)), fmt)


def to_fixed(values: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """Round to the fixed-point grid, saturate, and return the two's-complement bit patterns as int64."""
    scale = float(2 ** fmt.frac)
    low, high = -(2 ** (fmt.bits - 1)), 2 ** (fmt.bits - 1) - 1
    with np.errstate(invalid="ignore"):
        q = np.clip(np.nan_to_num(np.rint(values.astype(np.float64) * scale), nan=0.0), low, high).astype(np.int64)
    return q & ((1 << fmt.bits) - 1)


def from_fixed(patterns: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    patterns = patterns & ((1 << fmt.bits) - 1)
    signed = np.where(patterns >= 2 ** (fmt.bits - 1), patterns - 2 ** fmt.bits, patterns)
    return (signed / float(2 ** fmt.frac)).astype(np.float32)


@dataclass(frozen=True)
class Fault:
    """One flipped bit in one trial. A trial has one fault (Ranger's model) or several (bit-error-rate mode).

    ``site`` is the node friendly name (the layer for weights; the producer, with ``:port`` when port > 0, for
    activations); ``element`` is the flat index into the weight tensor, or into one sample's output tensor;
    ``input`` is the index of the input sample in the dataset.
    """

    trial: int
    input: int
    site: str
    element: int
    bit: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Fault:
        try:
            return cls(int(data["trial"]), int(data["input"]), str(data["site"]), int(data["element"]),
                       int(data["bit"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed fault record {data!r}") from exc
