"""Global Clipper (Qutub, Paulitsch, Pattabiraman et al., 2024): range restriction by *role*, for transformers.

Ranger and RangeSupervision guard activations only; in a transformer the vulnerable values are elsewhere (linear
layers, normalisation outputs, the residual stream, attention). This pass guards targets chosen by role
(:mod:`ovrange.passes.roles`) with bounds observed on calibration data, per channel on each target's feature axis
(the last axis of ``[N, T, C]`` tensors, with a dynamic ``T``; axis 1 of NCHW tensors). On a decoder language model
(``llm: auto``) the roles are placed on its Llama-style blocks where the CPU plugin keeps its fused SDPA, RMS, RoPE
and FullyConnected kernels (:mod:`ovrange.passes.llm_roles`).

The four steps of every protection: :func:`select` (targets by role, :func:`roles.targets_by_role`) ->
:func:`requests` (min/max per target, served by the one statistics loop) -> :func:`plan` (a JSON dict) ->
:func:`apply` (graph only; a saved plan re-applies without data).

The ``weights`` role bounds the *stored* weight of every Convolution/MatMul to its own range per output channel
(bit-identical clean outputs; folded by the plugin at compile time, so it protects the stored weights, not the
compiled copy): :func:`bound_weights`.

Guards: a scalar bound is one ``Clamp``; a per-channel bound is a Clamp in a per-channel unit domain, fused into
the producer as post-ops, its scale folded into consuming convolutions where there are some
(:mod:`ovrange.passes.channel_guards`); a guard that runs as a kernel of its own (after pooling, or on a linear
layer's logits entering Softmax: :func:`standalone`) is per-channel ``Minimum``/``Maximum``. ``per_channel: nchw``
(default) bounds per channel NCHW tensors only. With ``scaled``, per-channel clamps on a residual stream of
convolutions are one scalar Clamp on the tensor divided by a per-channel scale that the convolutions' weights absorb
(:mod:`ovrange.passes.streams`): the cost of a per-tensor bound.
The probabilities a model returns (``probabilities`` role: a Softmax output) have known bounds ``[0, 1]``; their
guard resets a value outside (or NaN) to 0 (:func:`ovrange.passes.guards.reset_guard`): 0 is what
almost every probability is, where a clamp would make a flipped one a confident 1 (a wrong class).
Non-finite values (``nonfinite``, as for every range guard: :mod:`ovrange.passes.guards`): ``keep`` (default)
lets NaN and +-Inf through unchanged (a DUE a runtime check can see); ``bound`` relies on the guard itself (the CPU
plugin's Clamp and Maximum map NaN to the lower bound and +-Inf to the bounds; OpenVINO's reference Clamp would pass
NaN); ``zero`` replaces NaN by 0 first (``Select(IsNaN)``).
Guards are placed to fuse (:mod:`ovrange.passes.placement`): a pooling guard whose input is already guarded is
dropped, one after a MaxPool whose input is not moves before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.errors import ConfigError, ModelError
from ovrange.graph import node_ids, stored_copy
from ovrange.params import Param
from ovrange.passes import PassResult, Selection
from ovrange.bounds import Bound, inherent_bound
from ovrange.passes.channel_guards import (affine_clamp, fold_clamp, fold_into_weight, foldable, folded_clamp,
                                          unscale)
from ovrange.passes.guards import (CLAMP_SUFFIX, NONFINITE, NONFINITE_PARAM, Insertion, clamp_guard, nonfinite_input,
                                   nonfinite_output, reset_guard)
from ovrange.passes import streams
from ovrange.passes.llm_roles import LLM_ONLY_ROLES, is_decoder_lm, llm_targets
from ovrange.passes.placement import describe, place
from ovrange.passes.roles import ROLES as TENSOR_ROLES
from ovrange.passes.roles import targets_by_role
from ovrange.stats import StatRequest, Statistics
from ovrange.targets import (ACTIVATIONS, POOLING, Target, check_activations, layer_weights, output_axes,
                             outputs_by_id, weight_layers as weighted_layers, weight_output)

WEIGHTS = "weights"  # not a tensor: the stored weights of Convolution/MatMul layers, bounded per output channel
ROLES = (*TENSOR_ROLES, *LLM_ONLY_ROLES, WEIGHTS)  # LLM_ONLY_ROLES: placed on decoder LMs only
BEYOND = ("clamp", "zero", "fold")
DEFAULT_ROLES = ["activation", "norm", "residual", "attention", "pooling", "probabilities", WEIGHTS]

PARAMS: dict[str, Param] = {
    "targets": Param(list, DEFAULT_ROLES, None, f"roles to guard, of: {', '.join(ROLES)}"),
    "per_channel": Param((bool, str), "nchw", lambda v: None if v in (True, False, "nchw") else
                         "must be true, false or nchw",
                         "one bound per feature channel (last axis of [N, T, C], axis 1 of NCHW); nchw: only on "
                         "NCHW tensors (where the CPU plugin fuses it into the convolution); targets whose feature "
                         "axis is dynamic get one bound"),
    "nonfinite": NONFINITE_PARAM,
    "beyond": Param(str, "zero", lambda v: None if v in BEYOND else f"must be one of {', '.join(BEYOND)}",
                    "a value beyond a fused per-channel NCHW guard's bound: clamp (cut to the bound) or zero (folded "
                    "back into the bounds, and 0, or the bound nearest 0, once it is more than two widths beyond: "
                    "a flipped exponent lands at 0 however wide the bound is); scalar bounds clamp, but on a decoder "
                    "LM (the llm placement) they fold to 0 too and turn a NaN into +Inf (a DUE); fold: scalar "
                    "bounds reflect a value beyond back and land a far one on the bound nearest 0, per-channel "
                    "bounds clamp"),
    "scaled": Param(bool, False, None,
                    "per-channel clamps (beyond: clamp) on convolution outputs as one scalar Clamp on the tensor "
                    "divided by a per-channel scale folded into the weights of the convolutions computing and "
                    "reading it (ovrange.passes.streams: exact; bounds widened to a profile shared through "
                    "residual Adds); elsewhere the per-channel form"),
    "inherent_bounds": Param(bool, True, None,
                             "use (-1,1)/(0,1) for Tanh/Sigmoid/HSigmoid/HardSigmoid: a bound learned from data "
                             "clips held-out values that the op's own range allows"),
    "margin": Param(float, 0.0, lambda m: None if m >= 0 else "must be >= 0",
                    "widen each bound by this fraction of its range on both sides"),
    "activations": Param(list, list(ACTIVATIONS), None, "activation op types of the activation role"),
    "hoist": Param(bool, True, None, "guard SDPA inputs at the op computing them, through data movement "
                                     "(fusable), rather than on the SDPA input edges"),
    "attention_output": Param(bool, True, None, "guard the SDPA output too"),
    "llm": Param((bool, str), "auto", lambda v: None if v in (True, False, "auto") else "must be true, false or auto",
                 "place the roles for the fused kernels of a decoder language model (llm_roles); auto: on models "
                 "with an SDPA and a decomposed RMSNorm or a KV-cache variable"),
}


def check_params(params: dict[str, Any]) -> str | None:
    unknown = [r for r in params["targets"] if r not in ROLES]
    if unknown:
        return f"unknown target role(s) {unknown}; roles: {', '.join(ROLES)}"
    if not params["targets"]:
        return "targets is empty"
    return check_activations(params["activations"]) if params["activations"] else None


def select(model: ov.Model, params: dict[str, Any]) -> Selection:
    """The tensors of the chosen roles (each once), checked for per-channel bounds, and with the ``weights`` role
    the layers whose constant weights get bounds (as BoundedWeights selects them)."""
    llm = params["llm"] if params["llm"] != "auto" else is_decoder_lm(model)
    targets = (llm_targets(model, params["targets"], params["activations"]) if llm else
               targets_by_role(model, params["targets"], params["activations"], params["hoist"],
                               () if params["attention_output"] else ("attention_output",)))
    layers = weight_layers(model) if WEIGHTS in params["targets"] else Selection([], {})
    if not targets and not layers.targets:
        raise ModelError(f"model {model.get_friendly_name()!r} has no target of role(s) "
                         f"{', '.join(params['targets'])}; nothing to protect")
    check_targets(targets, params["per_channel"] is True)
    return Selection(targets, {"layers": layers, "graph": describe(model), "llm": bool(llm)})


def requests(selection: Selection, params: dict[str, Any]) -> list[StatRequest]:
    return [StatRequest(t.node, "minmax", _axis(t, params["per_channel"])) for t in selection.targets]


def plan(selection: Selection, stats: Statistics, params: dict[str, Any]
         ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Observed min/max per target (widened by ``margin``) and each bounded layer's weight range, as JSON guards."""
    found = [stats[StatRequest(t.node, "minmax", _axis(t, params["per_channel"]))] for t in selection.targets]
    guards = make_plan(selection.targets, [f.low for f in found], [f.high for f in found],
                       stats.samples if found else 0, params["margin"], params["beyond"],
                       scalar_zero=selection.facts.get("llm", False), inherent=params["inherent_bounds"])
    guards, record = place(guards, selection.facts["graph"]) if "graph" in selection.facts else (guards, {})
    guards.update(weight_plan(selection.facts["layers"]))
    counts = {role: sum(e["role"] == role for e in guards.values()) for role in params["targets"]}
    return guards, {"guards_by_role": counts, **({"placement": record} if record else {})}


def apply(model: ov.Model, plan: Any) -> PassResult:
    """A guard on every tensor of the plan and bounds on every planned weight, in ``model`` (edited); every
    inserted node recorded."""
    weights = {k: e for k, e in plan.guards.items() if e["role"] == WEIGHTS}
    bound_weights(model, weights)  # first: the tensor guards' ids stay those of the original nodes
    tensors = {k: e for k, e in plan.guards.items() if e["role"] != WEIGHTS}
    return PassResult(model, insert(model, tensors, plan.params.get("nonfinite", "bound"),
                                    plan.params.get("scaled", False)) or bool(weights))


# ---------------------------------------------------------------------------------------------------------------
# The weights role: Constant (recorded ``weight``) -> Select(low <= w <= high, w, 0) (``decode``). The bounds are
# each output channel's own min/max, so clean outputs are bit-identical; a flipped exponent or sign that takes the
# stored weight out of its channel's range makes it 0. The chain is constant: the CPU plugin folds it at compile
# time, so it costs nothing and protects the *stored* weights (file, host memory), not the compiled copy.


def weight_layers(model: ov.Model) -> Selection:
    """The layers with a constant f32 weight (as BoundedWeights selects them), their weights and transpose_b."""
    layers = weighted_layers(model)
    weights, transposed = layer_weights(model, layers)
    return Selection(layers, {"weights": weights, "transpose_b": transposed})


def weight_plan(layers: Selection) -> dict[str, dict[str, Any]]:
    """Per layer: the min and max of its weight per output channel (one pair for a layer without one)."""
    plan = {}
    for target in layers.targets:
        w = layers.facts["weights"][target.id]
        axes = output_axes(target.op, w.ndim, layers.facts["transpose_b"][target.id])
        reduce = tuple(a for a in range(w.ndim) if a not in axes)
        low, high = w.min(axis=reduce, keepdims=True), w.max(axis=reduce, keepdims=True)
        plan[f"{target.id}/weight"] = {"node": target.id, "type": target.op, "role": WEIGHTS, "shape": list(low.shape),
                                       "low": [float(v) for v in low.reshape(-1)],
                                       "high": [float(v) for v in high.reshape(-1)]}
    return plan


def bound_weights(model: ov.Model, plan: dict[str, dict[str, Any]]) -> None:
    """Route each planned layer's weight through its bounds; the stored Constant (a copy, in its stored format:
    fp16 stays fp16) is recorded ``weight``, its decompression and data movement (a copy of the layer's own
    constant chain) and the bounds ``decode`` (so :func:`ovrange.graph.stored_weight` and the weight injector
    strike the stored values)."""
    outputs = outputs_by_id(model)
    insertion = Insertion(model, default="decode")
    for key, entry in plan.items():
        layer = outputs[entry["node"]].get_node()
        source = weight_output(layer)
        if source is None:
            raise ModelError(f"layer {entry['node']!r} has no constant f32 weight to bound")
        weight = stored_copy(source, f"{key}/stored")
        low = ops.constant(np.asarray(entry["low"], np.float32).reshape(entry["shape"]), name=f"{key}/low")
        high = ops.constant(np.asarray(entry["high"], np.float32).reshape(entry["shape"]), name=f"{key}/high")
        # A weight outside its channel's range (no clean weight is) becomes 0: the layer loses one term of a dot
        # product, where a clamp would put the channel's extreme in its place. NaN compares false: 0 too. Comparisons
        # and Select, not IsNaN: IsNaN has no constant folding, and an unfolded chain cost rec +0.7% at run time.
        inside = ops.logical_and(ops.greater_equal(weight, low, name=f"{key}/AboveLow"),
                                 ops.less_equal(weight, high, name=f"{key}/BelowHigh"), name=f"{key}/Inside")
        bounded = ops.select(inside, weight, ops.constant(np.float32(0)), name=f"{key}/Select")
        layer.input(1).replace_source_output(bounded.output(0))
        insertion.mark_constant(f"{key}/stored", "weight")
    insertion.done()


def check_targets(targets: list[Target], per_channel: bool) -> None:
    """Per-channel bounds need a feature axis: a target of rank < 2 is a ConfigError (one line)."""
    flat = next((t for t in targets if t.rank is None or t.rank < 2), None)
    if per_channel and flat is not None:
        what = "dynamic-rank" if flat.rank is None else f"{flat.rank}-D"
        raise ConfigError(f"per-channel bounds need a feature axis, but {flat.id!r} ({flat.role}) has a {what} "
                          "output; set per_channel: false")


def standalone(target: Target) -> bool:
    """Whether the guard of ``target`` runs as a kernel of its own, one Minimum/Maximum pair with C equal or
    per-channel bounds (the plugin does not turn that into a fusable Clamp). Where the CPU plugin can't fuse a guard
    (pooling: no post-ops), or shouldn't: a linear layer's logits entering Softmax -- a fused post-op moved PP-OCRv4
    rec's 6,625-class head from MLAS to oneDNN's brgemm (+20% on that layer). Not after other MatMuls: standalone
    q/k/v guards cost DeiT-Tiny +5.7%, fused +1.9%."""
    logits = target.edge is not None and target.producer == "MatMul" and target.weighted
    return (target.producer in POOLING or logits) and target.channels is not None


def _axis(target: Target, per_channel: bool | str) -> int | None:
    """The axis kept by the reduction, or None for one bound over the whole tensor. ``nchw``: per channel on
    rank-4 tensors with channels on axis 1 only -- there the guard fuses into the convolution; on ``[N, T, C]``
    tensors of attention, norm and residual roles the plugin's eltwise subgraphs leave a per-channel guard as a
    kernel of its own (docs/transformers.md)."""
    if target.role == "probabilities":
        return None
    if per_channel == "nchw":
        per_channel = target.rank == 4 and target.feature_axis == 1
    return target.feature_axis if per_channel and target.channels is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Plan (pure JSON) and apply (graph only)


def make_plan(targets: list[Target], low: list[np.ndarray], high: list[np.ndarray], samples: int,
              margin: float = 0.0, beyond: str = "clamp", scalar_zero: bool = False, inherent: bool = False
              ) -> dict[str, dict[str, Any]]:
    """Target id -> its guard: role, op, feature axis (None: one bound), low/high (floats or per-channel lists),
    form (``fused`` into the producer's post-ops, a ``standalone`` kernel, or ``reset`` for probabilities).
    ``scalar_zero`` (the LLM placement): ``beyond: zero`` applies to one bound per tensor too, in the form that
    keeps a NaN detectable (``nan: inf``, :func:`ovrange.passes.channel_guards._unit_fold_nan`). ``inherent``:
    a saturating activation (Sigmoid, HardSigmoid...) gets its own range, one bound, never widened."""
    plan = {}
    for target, lo, hi in zip(targets, low, high):
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        if target.role == "probabilities":  # known, not observed: an unseen 0.99999 must not look like a fault
            plan[target.id] = {"node": target.node, "type": target.op, "role": target.role, "edge": None,
                               "axis": None, "rank": _rank(target), "low": 0.0, "high": 1.0, "samples": samples,
                               "method": "distribution", "form": "reset"}
            continue
        own = inherent_bound(target.id, target.op) if inherent else None
        if own:
            lo, hi = np.float64(own.low), np.float64(own.high)
        elif margin:
            lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
        lo, hi = lo.astype(np.float32), hi.astype(np.float32)
        if standalone(target) and lo.size == 1:  # C equal values: ClampFusion would turn scalars into a fused Clamp
            lo, hi = np.full(target.channels, lo.reshape(-1)[0]), np.full(target.channels, hi.reshape(-1)[0])
        scalar = lo.size == 1
        plan[target.id] = {
            "node": target.node, "type": target.op, "role": target.role, "edge": list(target.edge or []) or None,
            "axis": None if scalar else target.feature_axis, "rank": _rank(target),
            "low": float(lo.reshape(-1)[0]) if scalar else [float(v) for v in lo],
            "high": float(hi.reshape(-1)[0]) if scalar else [float(v) for v in hi],
            "samples": samples, "method": "inherent" if own else "max" if not margin else f"max+{margin:g}",
            "form": "standalone" if standalone(target) else "fused",
        }
        if beyond == "zero" and not scalar and target.feature_axis == 1 and not standalone(target):
            plan[target.id]["beyond"] = beyond  # per-channel NCHW guards (a unit domain already); others clamp
        if beyond == "zero" and scalar and scalar_zero and not standalone(target):
            plan[target.id].update(beyond=beyond, nan="inf")  # [N, T, C] of a decoder LM: scalar post-ops
        if beyond == "fold" and scalar and not standalone(target):
            plan[target.id]["beyond"] = beyond  # one bound per tensor: scalar post-ops
    return plan


def _rank(target: Target) -> int:
    return -1 if target.rank is None else target.rank


def protected_copy(model: ov.Model, plan: dict[str, dict[str, Any]], nonfinite: str = "keep") -> ov.Model:
    """A clone of ``model`` with a guard on every tensor of ``plan`` (a hand-made plan); ``model`` is not modified."""
    clone = model.clone()
    insert(clone, plan, nonfinite)
    return clone


def insert(model: ov.Model, plan: dict[str, dict[str, Any]], nonfinite: str = "keep", scaled: bool = False) -> bool:
    """Insert a guard on every tensor of ``plan`` into ``model`` (edited) and record the inserted nodes; with
    ``scaled``, per-channel clamps in scalable streams become scalar Clamps (:func:`streams.scale_streams`)."""
    if nonfinite not in NONFINITE:
        raise ConfigError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
    insertion = Insertion(model)
    if scaled:
        plan = streams.scale_streams(model, plan, insertion)
    nodes = dict(node_ids(model))
    position = {node.get_name(): k for k, node in enumerate(nodes.values())}
    for key, entry in plan.items():
        source = nodes[entry["node"]].output(0)
        name = key.replace(">", "/to/")
        if entry["edge"]:
            consumers = [nodes[entry["edge"][0]].input(int(entry["edge"][1]))]
        else:  # a fixed order (the last consumer in the graph first): the folds' Constants are created, and
            # auto-named, in this order, which a set of inputs would leave to memory addresses
            consumers = sorted(source.get_target_inputs(), key=lambda i: (
                -position.get(i.get_node().get_name(), len(position)), i.get_node().get_name(), i.get_index()))
        convs = [c for c in consumers if foldable(c)] if _folds(entry, nonfinite) else []
        if len(convs) < len(consumers):
            convs = []  # the others' unscaled copy would be a kernel of its own: the affine form instead
        others = [c for c in consumers if c not in convs]
        if convs:
            make = lambda x, e=entry, n=name, c=convs, o=bool(others): _folded_guard(  # noqa: E731
                x, e, nonfinite, n, c, o, insertion)
        else:
            make = lambda x, e=entry, n=name: guard(x, e, nonfinite, n)  # noqa: E731
        # the tensor names move only where the guard's output is the bounded value itself (not it divided by h)
        insertion.after(source, make, others, names=not entry["edge"] and bool(others))
    return insertion.done()


def _folds(entry: dict[str, Any], nonfinite: str) -> bool:
    """Per-channel fused guards on NCHW tensors fold their scale into consuming convolutions."""
    return entry["axis"] == 1 and entry["rank"] >= 3 and entry.get("form", "fused") == "fused"


def _folded_guard(x: ov.Output, entry: dict[str, Any], nonfinite: str, name: str, convs: list[ov.Input],
                  unscaled: bool, insertion: Insertion) -> ov.Node:
    """:func:`folded_clamp` feeding ``convs`` (their weights scaled back, recorded ``decode``), and ``* h`` for the
    other consumers when there are some (``unscaled``). The guard is the unscaled value when there is one, else the
    clamp the convolutions read."""
    shape = [1] * entry["rank"]
    shape[entry["axis"]] = len(entry["high"])
    clamped, half = folded_clamp(nonfinite_input(x, nonfinite, name), entry, shape, name)
    clamped = nonfinite_output(x, clamped, nonfinite, f"{name}/folded")  # x where it is not finite (keep)
    for consumer in convs:
        layer = consumer.get_node()
        insertion.mark(fold_into_weight(layer, half, f"{name}/to/{layer.get_friendly_name()}").get_friendly_name(),
                       "decode")
        consumer.replace_source_output(clamped.output(0))
    node = clamped
    if unscaled:
        clamped.set_friendly_name(f"{name}/folded_Add")
        node = unscale(clamped.output(0), half, shape, name)
    node.set_friendly_name(name + CLAMP_SUFFIX)
    return node


def guard(x: ov.Output, entry: dict[str, Any], nonfinite: str, name: str) -> ov.Node:
    """The guard of one plan entry on ``x``; its last node is named ``<name>/min_max_Clamp`` (as POT named guards;
    the fusion report and the fault-site list know guards from the inserted-node record)."""
    value = nonfinite_input(x, nonfinite, name)
    if entry.get("form") == "reset":
        node = reset_guard(value, _bound(entry), name + CLAMP_SUFFIX)
    elif entry["axis"] is None:
        beyond = entry.get("beyond", "clamp")
        node = (fold_clamp(value, float(entry["low"]), float(entry["high"]), name) if beyond == "fold" else
                affine_clamp(value, entry, [], name) if beyond != "clamp"
                else ops.clamp(value, float(entry["low"]), float(entry["high"])))
    else:
        shape = [1] * entry["rank"]
        shape[entry["axis"]] = len(entry["high"])
        node = (clamp_guard(value, _bound(entry), name + CLAMP_SUFFIX) if entry.get("form") == "standalone"
                else affine_clamp(value, entry, shape, name))
    return nonfinite_output(x, node, nonfinite, name + CLAMP_SUFFIX)


def _bound(entry: dict[str, Any]) -> Bound:
    return Bound(entry["node"], entry["type"], entry["low"], entry["high"], entry["samples"], axis=entry["axis"])
