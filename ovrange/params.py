"""Typed algorithm parameters: one schema type shared by config files, the command line and the Python API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ovrange.errors import ConfigError

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Param:
    """One algorithm parameter: its type, default, an optional check returning an error text, and its doc."""

    type: type | tuple[type, ...]
    default: Any
    check: Check | None = None
    doc: str = ""


def one_of(*choices: str) -> Check:
    """A Param check accepting only ``choices``."""
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


# Parameters common to every protection algorithm (POT's RangeSupervision had exactly these).
COMMON_PARAMS: dict[str, Param] = {
    "stat_subset_size": Param(int, 300, positive),
    "stat_batch_size": Param(int, 1, positive),
    "shuffle_data": Param(bool, False),
    "seed": Param(int, 0, non_negative),
}


def validate(name: str, schema: dict[str, Param], params: dict[str, Any], where: str,
             check: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """``params`` checked against ``schema`` (unknown keys, types, values, then combinations), defaults filled."""
    values = {}
    for key, value in params.items():
        if key not in schema:
            raise ConfigError(f"unknown parameter {key!r} for {name} in {where}; known: {', '.join(schema)}")
        values[key] = checked(f"{name}.params.{key}", value, schema[key], where)
    for key, spec in schema.items():
        values.setdefault(key, spec.default)
    problem = check(values) if check else None
    if problem:
        raise ConfigError(f"{name} in {where}: {problem}")
    return values


def checked(key: str, value: Any, spec: Param, where: str) -> Any:
    """``value`` if it has the parameter's type (an int is accepted for a float) and passes its check."""
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        wanted = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{key} in {where} must be {wanted}, got {type(value).__name__} {value!r}")
    problem = spec.check(value) if spec.check else None
    if problem:
        raise ConfigError(f"{key} in {where} {problem}, got {value!r}")
    return value
