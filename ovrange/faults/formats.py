"""Number formats and fault models: bit masks drawn, and applied on numpy integer views.

A fault strikes one value: a weight element (memory fault) or one element of an operator's output for one input
(datapath fault). It carries a bit *mask* and an operation: ``flip`` (XOR: one bit, K random bits, or a burst of
neighbouring bits), ``set`` (stuck-at-1: OR) or ``clear`` (stuck-at-0: AND NOT). Values live in IEEE FP32 in the
runtime; other formats are emulated on the struck value only: it is encoded in the format (fixed point: quantized
and saturated, two's complement), the mask is applied to the bit pattern, and the result is decoded back to f32.
The rest of the network still computes in f32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


OPS = ("flip", "set", "clear")  # XOR, OR (stuck-at-1), AND NOT (stuck-at-0)


def apply_mask(values: np.ndarray, masks: np.ndarray, fmt: NumberFormat = FORMATS["fp32"],
               op: str | np.ndarray = "flip") -> np.ndarray:
    """Apply ``masks[i]`` with operation ``op`` (one name, or one per value) to ``values[i]`` stored in ``fmt``.

    The one place a fault changes a value: every engine calls it (``flip`` is the single-bit case).
    """
    values = np.asarray(values, dtype=np.float32)
    masks = np.asarray(masks, dtype=np.uint64) & np.uint64((1 << fmt.bits) - 1)
    patterns = encode(values, fmt)
    ops = np.asarray(op)
    if ops.ndim == 0:
        code = str(ops)
        if code not in OPS:
            raise ConfigError(f"unknown fault operation {code!r}; use {', '.join(OPS)}")
        changed = patterns ^ masks if code == "flip" else patterns | masks if code == "set" else patterns & ~masks
    else:
        changed = np.where(ops == "flip", patterns ^ masks, np.where(ops == "set", patterns | masks, patterns & ~masks))
    return decode(changed, fmt)


def flip(values: np.ndarray, bits: np.ndarray, fmt: NumberFormat = FORMATS["fp32"]) -> np.ndarray:
    """Flip bit ``bits[i]`` of ``values[i]`` (float32) in format ``fmt``; returns new float32 values."""
    return apply_mask(values, np.uint64(1) << np.asarray(bits, dtype=np.uint64), fmt)


def encode(values: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """The bit patterns of ``values`` stored in ``fmt``, as uint64 (a new format adds its branch here and in
    :func:`decode`)."""
    if fmt.is_float:
        dtype = np.dtype(f"float{fmt.bits}")
        with np.errstate(over="ignore"):  # an f32 too large for a narrower float stores as inf, as hardware does
            return values.astype(dtype).view(np.dtype(f"uint{fmt.bits}")).astype(np.uint64)
    if isinstance(fmt, StoredFormat):  # a stored integer (int8/int4...), held in float32
        return (np.rint(values.astype(np.float64)).astype(np.int64) & ((1 << fmt.bits) - 1)).astype(np.uint64)
    return to_fixed(values, fmt).astype(np.uint64)


def decode(patterns: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    if isinstance(fmt, StoredFormat) and not fmt.is_float:
        pattern = np.asarray(patterns, np.uint64).astype(np.int64) & ((1 << fmt.bits) - 1)
        if fmt.signed:
            pattern = np.where(pattern >= 1 << (fmt.bits - 1), pattern - (1 << fmt.bits), pattern)
        return pattern.astype(np.float32)
    if fmt.is_float:
        unsigned = np.asarray(patterns, np.uint64).astype(np.dtype(f"uint{fmt.bits}"))
        return unsigned.view(np.dtype(f"float{fmt.bits}")).astype(np.float32)
    return from_fixed(np.asarray(patterns, np.uint64).astype(np.int64), fmt)


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
class FaultModel:
    """How one fault corrupts a value: which bits (the mask) and how (the operation).

    ``bit``: one bit of the allowed ones; ``bits:K``: K distinct allowed bits (seed 003's six-bit errors);
    ``word:P``: a burst around one allowed bit, each neighbour of a flipped bit flipping too with probability P
    (seed 003's word errors, P = 0.75), within the format's width; ``stuck-at-0`` / ``stuck-at-1``: one allowed
    bit forced to 0 / 1 (masked when it already holds that value).
    """

    kind: str = "bit"
    k: int = 1
    p: float = 0.0

    @property
    def op(self) -> str:
        return {"stuck-at-0": "clear", "stuck-at-1": "set"}.get(self.kind, "flip")

    def __str__(self) -> str:
        return {"bits": f"bits:{self.k}", "word": f"word:{self.p:g}"}.get(self.kind, self.kind)

    def check(self, bits: tuple[int, ...]) -> None:
        if self.kind == "bits" and self.k > len(bits):
            raise ConfigError(f"fault model {self} needs {self.k} distinct bits but only {len(bits)} are allowed")

    def draw_masks(self, rng: np.random.Generator, n: int, bits: tuple[int, ...], fmt: NumberFormat) -> np.ndarray:
        """``n`` masks (uint64) drawn from ``rng``; ``bit`` draws exactly as single-bit plans always did."""
        allowed = np.asarray(bits, np.int64)
        if self.kind == "bits":
            order = rng.random((n, len(allowed))).argsort(axis=1)[:, : self.k]
            return np.bitwise_or.reduce(np.uint64(1) << allowed[order].astype(np.uint64), axis=1)
        centre = rng.choice(allowed, size=n)
        if self.kind != "word":
            return np.uint64(1) << centre.astype(np.uint64)
        # Bits flipped beyond the centre in each direction: a run of successes of probability p, cut at the edge.
        runs = [np.full(n, fmt.bits) if self.p >= 1 else rng.geometric(1 - self.p, size=n) - 1 for _ in range(2)]
        low = np.maximum(centre - runs[0], 0)
        high = np.minimum(centre + runs[1], fmt.bits - 1)
        width = (high - low + 1).astype(np.uint64)
        return ((np.uint64(1) << width) - np.uint64(1)) << low.astype(np.uint64)


def parse_fault_model(spec: str | FaultModel | None) -> FaultModel:
    """``bit``, ``bits:K`` (K >= 1), ``word:P`` (0 <= P <= 1), ``stuck-at-0`` or ``stuck-at-1``."""
    if isinstance(spec, FaultModel):
        return spec
    text = "bit" if spec is None else str(spec).strip().lower()
    if text in ("bit", "stuck-at-0", "stuck-at-1"):
        return FaultModel(text)
    match = re.fullmatch(r"bits:(\d+)", text)
    if match and int(match[1]) >= 1:
        return FaultModel("bits", k=int(match[1]))
    match = re.fullmatch(r"word:([0-9.eE+-]+)", text)
    if match:
        try:
            p = float(match[1])
        except ValueError:
            p = -1.0
        if 0 <= p <= 1:
            return FaultModel("word", p=p)
        raise ConfigError(f"word fault probability must be in [0, 1], got {match[1]}")
    raise ConfigError(f"unknown fault model {spec!r}; use bit, bits:<K>, word:<P>, stuck-at-0 or stuck-at-1")
