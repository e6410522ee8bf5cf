"""POT's RangeSupervision: a ``Clamp(low, high)`` after every supported activation, bounds = observed min/max.

It is Ranger's machinery (:mod:`ovrange.passes.range_guards`) with Ranger's refinements switched off (no
propagation, no inherent bounds, per-tensor ``max`` bounds, clamp correction). The Clamp is named ``<activation>/min_max_Clamp`` as POT named it (``<id>/...``
for an activation whose friendly name repeats), takes over the activation's tensor names (so model outputs keep
theirs) and is matched by type name, so any opset version of an activation qualifies.
"""

from __future__ import annotations

from typing import Any

import openvino as ov

from ovrange.params import Param
from ovrange.passes import PassResult, Selection
from ovrange.passes import range_guards
from ovrange.passes.guards import CLAMP_SUFFIX  # noqa: F401  (re-exported: the POT name of the guard)
from ovrange.stats import StatRequest, Statistics
from ovrange.targets import ACTIVATIONS, POT_ACTIVATIONS

# POT's list, and the list ovrange protects by default: beyond POT's, HSwish/HardSigmoid (MobileNetV3, PP-LCNet),
# Mish/SoftPlus (YOLO) and the existing Clamps of TFLite graphs (ReLU6, which POT left unguarded). POT's exact
# targets: ``activations: [Relu, Swish, PRelu, Elu, Gelu, Sigmoid, Tanh]``.
SUPPORTED_ACTIVATIONS = POT_ACTIVATIONS
EXTENDED_ACTIVATIONS = ACTIVATIONS

PARAMS: dict[str, Param] = {
    "activations": Param(list, list(EXTENDED_ACTIVATIONS), None,
                         "activation op types to protect; POT protected the first seven"),
}
_PRESET = {"bound": "max", "percentile": 100.0, "per_channel": False, "correction": "clamp", "propagate": False,
           "inherent_bounds": False, "tighten_clamps": False, "skip_last": 0, "histogram_bins": 2048}


def ranger_params(params: dict[str, Any]) -> dict[str, Any]:
    return {**_PRESET, "activations": params["activations"]}


def check_params(params: dict[str, Any]) -> str | None:
    return range_guards.check_params(ranger_params(params))


def select(model: ov.Model, params: dict[str, Any]) -> Selection:
    return range_guards.select(model, ranger_params(params))


def requests(selection: Selection, params: dict[str, Any]) -> list[StatRequest]:
    return range_guards.requests(selection, ranger_params(params))


def plan(selection: Selection, stats: Statistics | None, params: dict[str, Any]):
    return range_guards.plan(selection, stats, ranger_params(params))


def apply(model: ov.Model, plan: Any) -> PassResult:
    return range_guards.apply(model, plan)
