"""Global Clipper (Qutub, Paulitsch, Pattabiraman et al., 2024): range restriction by *role*, for transformers.

Ranger and RangeSupervision guard activations only; in a transformer the vulnerable values are elsewhere (linear
layers, normalisation outputs, the residual stream, attention). This pass guards targets chosen by role
(:mod:`ovrange.passes.roles`) with bounds observed on calibration data, per channel on each target's feature axis
(the last axis of ``[N, T, C]`` tensors, with a dynamic ``T``; axis 1 of NCHW tensors).

The steps are pure functions, so they port onto a plan/apply pipeline: :func:`roles.find_targets` ->
:func:`collect` (one calibration loop, min/max reduced in the graph) -> :func:`make_plan` (a JSON dict) ->
:func:`apply_plan` (graph only; a saved plan re-applies without data).

Guards: a scalar bound is one ``Clamp``; a per-channel bound is ``Minimum(Maximum(x, low), high)``, which the CPU
plugin fuses as post-ops like a bias. Non-finite values (``nonfinite``): ``bound`` relies on the guard itself -- the
CPU plugin's Clamp and Maximum map NaN to the lower bound and +-Inf to the bounds (measured, checked by
tests/test_global_clipper.py; OpenVINO's reference Clamp would pass NaN); ``zero`` replaces NaN by 0 explicitly
(``Select(IsNaN)``, an extra kernel); ``keep`` lets NaN through so that a runtime check can see it (DUE, not SDC).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange import data as data_mod
from ovrange.config import AlgorithmConfig, Param, one_of
from ovrange.errors import ConfigError, DataError, ModelError
from ovrange.passes import PassResult
from ovrange.passes.range_supervision import CLAMP_SUFFIX, EXTENDED_ACTIVATIONS
from ovrange.passes.roles import ROLES, Target, find_targets, node_ids
from ovrange.stats import calibration_request, infer_batch

DEFAULT_ROLES = ["activation", "norm", "residual", "attention", "pooling"]
NONFINITE = ("bound", "zero", "keep")

PARAMS: dict[str, Param] = {
    "targets": Param(list, DEFAULT_ROLES, None, f"roles to guard, of: {', '.join(ROLES)}"),
    "per_channel": Param(bool, False, None, "one bound per feature channel (last axis of [N, T, C], axis 1 of "
                                             "NCHW); targets whose feature axis is dynamic get one bound"),
    "nonfinite": Param(str, "bound", one_of(*NONFINITE), "NaN handling: bound (the guard maps it to a bound on "
                                                          "CPU), zero (explicit Select), keep (let NaN through)"),
    "margin": Param(float, 0.0, lambda m: None if m >= 0 else "must be >= 0",
                    "widen each bound by this fraction of its range on both sides"),
    "activations": Param(list, list(EXTENDED_ACTIVATIONS), None, "activation op types of the activation role"),
    "hoist": Param(bool, True, None, "guard SDPA inputs at the op computing them, through data movement "
                                     "(fusable), rather than on the SDPA input edges"),
    "attention_output": Param(bool, True, None, "guard the SDPA output too"),
}


def check_params(params: dict[str, Any]) -> str | None:
    unknown = [r for r in params["targets"] if r not in ROLES]
    if unknown:
        return f"unknown target role(s) {unknown}; roles: {', '.join(ROLES)}"
    if not params["targets"]:
        return "targets is empty"
    bad = [t for t in params["activations"] if t not in EXTENDED_ACTIVATIONS]
    if bad:
        return f"unsupported activation type(s) {bad}; supported: {', '.join(EXTENDED_ACTIVATIONS)}"
    return None


def run(model: ov.Model, dataset: Any, config: AlgorithmConfig, *, device: str, progress=None) -> PassResult:
    p = config.params
    targets = find_targets(model, p["targets"], p["activations"], p["hoist"],
                           () if p["attention_output"] else ("attention_output",))
    if not targets:
        raise ModelError(f"model {model.get_friendly_name()!r} has no target of role(s) "
                         f"{', '.join(p['targets'])}; nothing to protect")
    check_targets(targets, p["per_channel"])
    low, high, samples = collect(model, dataset, targets, p["per_channel"], subset_size=config.subset_size,
                                 batch_size=config.batch_size, shuffle=config.shuffle, seed=config.seed,
                                 device=device, progress=progress)
    plan = make_plan(targets, low, high, samples, p["margin"])
    protected = apply_plan(model, plan, p["nonfinite"])
    counts = {role: sum(e["role"] == role for e in plan.values()) for role in p["targets"]}
    return PassResult(protected, plan, samples, extra={"guards_by_role": counts})


def check_targets(targets: list[Target], per_channel: bool) -> None:
    """Per-channel bounds need a feature axis: a target of rank < 2 is a ConfigError (one line)."""
    flat = next((t for t in targets if t.rank < 2), None)
    if per_channel and flat is not None:
        what = "dynamic-rank" if flat.rank < 0 else f"{flat.rank}-D"
        raise ConfigError(f"per-channel bounds need a feature axis, but {flat.id!r} ({flat.role}) has a {what} "
                          "output; set per_channel: false")


def _axis(target: Target, per_channel: bool) -> int | None:
    """The axis kept by the reduction, or None for one bound over the whole tensor."""
    return target.axis if per_channel and target.channels is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Statistics: min/max of every target, reduced in the graph (all axes but the feature axis), one output


def statistics_model(model: ov.Model, targets: list[Target], per_channel: bool) -> tuple[ov.Model, list[int]]:
    """A clone with one 1-D output ``[min_1..., max_1..., min_2..., ...]`` and the width of each part."""
    clone = model.clone()
    nodes = node_ids(clone)
    parts, widths = [], []
    flat = ops.constant(np.array([-1], np.int64))
    for target in targets:
        out = nodes[target.node].output(0)
        if out.get_partial_shape().rank.is_dynamic:
            raise ModelError(f"target {target.id!r} has an output of dynamic rank; cannot collect statistics")
        keep = _axis(target, per_channel)
        axes = ops.constant(np.array([a for a in range(target.rank) if a != keep], np.int64))
        for reduce in (ops.reduce_min, ops.reduce_max):
            parts.append(ops.reshape(reduce(out, axes, keep_dims=False), flat, special_zero=False))
        widths += [target.channels if keep is not None else 1] * 2
    result = ops.result(ops.concat(parts, 0) if len(parts) > 1 else parts[0])
    return ov.Model([result], clone.get_parameters(), f"{model.get_friendly_name()}_clipper_stats"), widths


def collect(model: ov.Model, dataset: Any, targets: list[Target], per_channel: bool, *, subset_size: int | None,
            batch_size: int, shuffle: bool, seed: int, device: str, progress=None
            ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Observed min and max of every target over the calibration subset (float64 copies of f32 values)."""
    stats_model, widths = statistics_model(model, targets, per_channel)
    request = calibration_request(stats_model, batch_size, device)
    samples, total = data_mod.subset(dataset, subset_size, shuffle, seed)
    if total == 0:
        raise DataError("the calibration dataset is empty")
    is_max = np.concatenate([np.full(w, i % 2 == 1) for i, w in enumerate(widths)])
    folded, seen = None, 0
    for arrays, count in data_mod.batches(samples, model, batch_size):
        values = infer_batch(request, arrays, share_outputs=True)[0]
        if folded is None:
            folded = values.astype(np.float32, copy=True)
        else:
            np.minimum(folded, values, out=folded, where=~is_max)
            np.maximum(folded, values, out=folded, where=is_max)
        seen += count
        if progress:
            progress(seen, total)
    parts = np.split(folded.astype(np.float64), np.cumsum(widths)[:-1])
    return parts[0::2], parts[1::2], seen


# ---------------------------------------------------------------------------------------------------------------
# Plan (pure JSON) and apply (graph only)


def make_plan(targets: list[Target], low: list[np.ndarray], high: list[np.ndarray], samples: int,
              margin: float = 0.0) -> dict[str, dict[str, Any]]:
    """Target id -> its guard: role, op, feature axis (None: one bound), low/high (floats or per-channel lists)."""
    plan = {}
    for target, lo, hi in zip(targets, low, high):
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        if margin:
            lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
        lo, hi = lo.astype(np.float32), hi.astype(np.float32)
        scalar = lo.size == 1
        plan[target.id] = {
            "node": target.node, "type": target.op, "role": target.role, "edge": list(target.edge or []) or None,
            "axis": None if scalar else target.axis, "rank": target.rank,
            "low": float(lo.reshape(-1)[0]) if scalar else [float(v) for v in lo],
            "high": float(hi.reshape(-1)[0]) if scalar else [float(v) for v in hi],
            "samples": samples, "method": "max" if not margin else f"max+{margin:g}",
        }
    return plan


def apply_plan(model: ov.Model, plan: dict[str, dict[str, Any]], nonfinite: str = "bound") -> ov.Model:
    """A clone of ``model`` with a guard on every tensor of ``plan``; ``model`` is not modified."""
    if nonfinite not in NONFINITE:
        raise ConfigError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
    clone = model.clone()
    nodes = node_ids(clone)
    for key, entry in plan.items():
        source = nodes[entry["node"]].output(0)
        name = key.replace(">", "/to/")
        if entry["edge"]:
            consumer, port = nodes[entry["edge"][0]], int(entry["edge"][1])
            consumer.input(port).replace_source_output(guard(source, entry, nonfinite, name).output(0))
        else:
            targets = list(source.get_target_inputs())
            node = guard(source, entry, nonfinite, name)
            for target in targets:
                target.replace_source_output(node.output(0))
            names = set(source.get_names())
            if names:  # model outputs keep their tensor names
                source.get_tensor().set_names(set())
                node.output(0).get_tensor().set_names(names)
    clone.validate_nodes_and_infer_types()
    return clone


def guard(x: ov.Output, entry: dict[str, Any], nonfinite: str, name: str) -> ov.Node:
    """The guard of one plan entry on ``x``; its last node is named ``<name>/min_max_Clamp`` (the fusion report
    and the fault-site list recognise guards by that suffix)."""
    value = x
    if nonfinite == "zero":
        value = ops.select(ops.is_nan(x), ops.constant(np.float32(0.0)), x, name=f"{name}/nan_Select").output(0)
    if entry["axis"] is None:
        node = ops.clamp(value, float(entry["low"]), float(entry["high"]))
    else:
        shape = [1] * entry["rank"]
        shape[entry["axis"]] = len(entry["high"])
        low = ops.constant(np.asarray(entry["low"], np.float32).reshape(shape))
        high = ops.constant(np.asarray(entry["high"], np.float32).reshape(shape))
        node = ops.minimum(ops.maximum(value, low, name=f"{name}/min_max_Maximum"), high)
    if nonfinite == "keep":
        node.set_friendly_name(f"{name}/min_max_Bound")
        node = ops.select(ops.is_nan(x), x, node)
    node.set_friendly_name(name + CLAMP_SUFFIX)
    return node
