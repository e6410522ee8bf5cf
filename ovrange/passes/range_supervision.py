"""POT's RangeSupervision: a ``Clamp(low, high)`` after every supported activation.

The Clamp is named ``<activation>/min_max_Clamp`` as POT named it, takes over the activation's tensor names (so
model outputs keep theirs) and is matched by type name, so any opset version of an activation qualifies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import openvino as ov
import openvino.opset13 as ops

from ovrange.bounds import Bound, derive_bounds
from ovrange.config import AlgorithmConfig, Param
from ovrange.errors import ModelError
from ovrange.graph import insert_after, node_by_name, nodes_of_type
from ovrange.passes import PassResult
from ovrange.stats import collect_statistics

# POT's list. LeakyReLU appears in IR as PRelu.
SUPPORTED_ACTIVATIONS = ("Relu", "Swish", "PRelu", "Elu", "Gelu", "Sigmoid", "Tanh")
# Seen in real IRs beyond POT's list (MobileNetV3, PP-LCNet, YOLO...): ovrange protects them too by default.
EXTENDED_ACTIVATIONS = (*SUPPORTED_ACTIVATIONS, "HSwish", "HSigmoid", "Mish", "SoftPlus")
CLAMP_SUFFIX = "/min_max_Clamp"

PARAMS: dict[str, Param] = {
    "activations": Param(list, list(EXTENDED_ACTIVATIONS), None,
                         "activation op types to protect; POT protected the first seven"),
}


def check_params(params: dict[str, Any]) -> str | None:
    unknown = [t for t in params["activations"] if t not in EXTENDED_ACTIVATIONS]
    if unknown:
        return f"unsupported activation type(s) {unknown}; supported: {', '.join(EXTENDED_ACTIVATIONS)}"
    if not params["activations"]:
        return "activations is empty"
    return None


def find_targets(model: ov.Model, activation_types: Iterable[str] = SUPPORTED_ACTIVATIONS) -> list[str]:
    """Friendly names of the activations to protect, in topological order."""
    return [node.get_friendly_name() for node in nodes_of_type(model, activation_types)]


def require_targets(model: ov.Model, activation_types: Iterable[str]) -> list[str]:
    """Like :func:`find_targets`, but a model with none is a ModelError (never a silent copy)."""
    types = tuple(activation_types)
    targets = find_targets(model, types)
    if not targets:
        raise ModelError(f"model {model.get_friendly_name()!r} has no supported activations "
                         f"({', '.join(types)}); nothing to protect")
    return targets


def clamp_node(output: ov.Output, bound: Bound) -> ov.Node:
    """``Clamp(low, high)`` for scalar bounds (what POT inserted)."""
    return ops.clamp(output, float(bound.low), float(bound.high))


def apply_clamps(model: ov.Model, bounds: Mapping[str, Bound], suffix: str = CLAMP_SUFFIX,
                 make=clamp_node) -> ov.Model:
    """A clone of ``model`` with ``make(output, bound)`` after output 0 of each bounded node."""
    clone = model.clone()
    for name, bound in bounds.items():
        output = node_by_name(clone, name).output(0)
        guard = insert_after(output, lambda out, b=bound: make(out, b))
        guard.set_friendly_name(name + suffix)
    clone.validate_nodes_and_infer_types()
    return clone


def run(model: ov.Model, dataset: Any, config: AlgorithmConfig, *, device: str, progress=None) -> PassResult:
    """Observed min/max of every supported activation -> one Clamp each."""
    targets = require_targets(model, config.params["activations"])
    stats = collect_statistics(model, dataset, targets, subset_size=config.subset_size, batch_size=config.batch_size,
                               shuffle=config.shuffle, seed=config.seed, device=device, progress=progress)
    bounds = derive_bounds(stats)
    return PassResult(apply_clamps(model, bounds), {n: b.to_json() for n, b in bounds.items()}, stats.samples,
                      stats.precision)
