"""The algorithm registry: every name a config's ``compression.algorithms`` may list, what kind of step it is and
which module implements it, and the record of one configured step.

Protections are one module each in ``ovrange/passes/``; the quantization steps of a POT chain live in
``ovrange/quantize.py`` (run by nncf). The registry names modules, it does not import them: :func:`module` loads
one on first use, so reading a config never loads nncf, and config, protect, quantize and the passes all depend on
this module rather than on each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ovrange.errors import ConfigError
from ovrange.params import COMMON_PARAMS, Param

PROTECTION = "protection"
QUANTIZATION = "quantization"

PROTECTIONS: dict[str, str] = {
    "RangeSupervision": "ovrange.passes.range_supervision",
    "Ranger": "ovrange.passes.ranger",
    "GradientSuppression": "ovrange.passes.gradient_suppression",
    "BoundedWeights": "ovrange.passes.bounded_weights",
    "Checksum": "ovrange.passes.checksum",
    "GlobalClipper": "ovrange.passes.global_clipper",
}
# POT chains: quantization steps that nncf runs before the protection. AccuracyAwareQuantization is known so that
# a POT config naming it gets the one-line explanation of why a config cannot run it (quantize.schema).
QUANTIZATIONS: dict[str, str] = {
    "DefaultQuantization": "ovrange.quantize",
    "WeightCompression": "ovrange.quantize",
    "AccuracyAwareQuantization": "ovrange.quantize",
}


@dataclass(frozen=True)
class AlgorithmConfig:
    """One step of a chain: an algorithm name and its validated parameters (POT's common ones included)."""

    name: str
    params: dict[str, Any]

    @property
    def subset_size(self) -> int:
        return self.params["stat_subset_size"]

    @property
    def batch_size(self) -> int:
        return self.params["stat_batch_size"]

    @property
    def shuffle(self) -> bool:
        return self.params["shuffle_data"]

    @property
    def seed(self) -> int:
        return self.params["seed"]


def kind(name: str) -> str | None:
    """``protection``, ``quantization``, or None for a name the registry does not know."""
    if name in PROTECTIONS:
        return PROTECTION
    if name in QUANTIZATIONS:
        return QUANTIZATION
    return None


def protection(name: str) -> ModuleType:
    """The module implementing protection ``name``."""
    if name not in PROTECTIONS:
        raise ConfigError(f"unknown algorithm {name!r}; available: {', '.join(PROTECTIONS)}")
    return importlib.import_module(PROTECTIONS[name])


def schema(name: str) -> tuple[dict[str, Param], Callable[[dict[str, Any]], str | None] | None]:
    """(parameter schema, combination check) of the protection or quantization step ``name``."""
    if name in QUANTIZATIONS:
        quantize = importlib.import_module(QUANTIZATIONS[name])
        return quantize.schema(name), quantize.check_params
    module = protection(name)
    return {**COMMON_PARAMS, **module.PARAMS}, getattr(module, "check_params", None)
