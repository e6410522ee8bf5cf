"""POT chains run by NNCF: ``DefaultQuantization`` (``nncf.quantize``) and ``WeightCompression``
(``nncf.compress_weights``), the steps a POT config lists before its protection.

A chain always runs its quantization steps first, in the order listed, then the protection: protecting after
quantization puts the bounds on the activations the deployed (quantized) model really computes (measured in
docs/quantized.md). nncf is imported inside the functions that call it, so ``ovrange --help`` and protect-only runs
never load it. The input model is never modified (nncf's ``compress_weights`` edits its argument: it gets a clone).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import openvino as ov

from ovrange.algorithms import AlgorithmConfig
from ovrange.errors import ConfigError, ModelError
from ovrange.params import COMMON_PARAMS, Param, one_of
from ovrange.graph import get_rt_json, set_rt_json
from ovrange.runtime import with_dynamic_batch

ProgressFn = Callable[[int, int], None]
LOW_PRECISION = (ov.Type.i8, ov.Type.u8, ov.Type.i4, ov.Type.u4, ov.Type.nf4)
WEIGHT_MODES = ("INT8_ASYM", "INT8_SYM", "INT4_SYM", "INT4_ASYM")
TARGET_DEVICES = ("ANY", "CPU", "GPU", "NPU", "CPU_SPR")


def _ignored(value: dict) -> str | None:
    """POT's ``{"scope": [names], "operations": [{"type": T}]}`` or nncf's ``names``/``patterns``/``types``."""
    known = {"scope", "operations", "names", "patterns", "types"}
    unknown = sorted(set(value) - known)
    if unknown:
        return f"has unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
    lists = {k: v for k, v in value.items() if k != "operations"}
    if any(not isinstance(v, list) or not all(isinstance(s, str) for s in v) for v in lists.values()):
        return "scope, names, patterns and types must be lists of strings"
    ops = value.get("operations", [])
    if not isinstance(ops, list) or not all(isinstance(o, dict) and isinstance(o.get("type"), str) for o in ops):
        return 'operations must be a list of {"type": "<op type>"}'
    return None


def _group_size(value: int) -> str | None:
    return None if value == -1 or value > 0 else "must be -1 (per output channel) or a positive group size"


def _ratio(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


SATURATION_FIX = {"first_layer": "FIRST_LAYER", "all": "ENABLE", "no": "DISABLE"}
IGNORED = Param(dict, {}, _ignored, "layers nncf leaves in float (POT's ignored scope)")
DEFAULT_QUANTIZATION_PARAMS: dict[str, Param] = {
    **COMMON_PARAMS,
    "preset": Param(str, "performance", one_of("performance", "mixed"), "symmetric (performance) or "
                    "asymmetric activations (mixed)"),
    "target_device": Param(str, "ANY", one_of(*TARGET_DEVICES), "device whose quantization rules apply"),
    "model_type": Param((str, type(None)), None, lambda v: None if v in (None, "transformer") else
                        "must be transformer or null", "transformer: nncf's transformer-specific scheme"),
    "fast_bias_correction": Param(bool, True),
    "use_fast_bias": Param((bool, type(None)), None, None, "POT's name of fast_bias_correction"),
    "inplace_statistics": Param(bool, True),
    # POT's saturation_fix, nncf's overflow_fix: 7-bit weights where u8 x s8 products added in pairs would saturate
    # 16 bits (CPUs without VNNI); unset = nncf's default (the first layer only).
    "saturation_fix": Param((str, type(None)), None, lambda v: None if v in (None, *SATURATION_FIX) else
                            f"must be one of {', '.join(SATURATION_FIX)}", "7-bit weights against int8 saturation on "
                            "CPUs without VNNI: first_layer (the default), all or no"),
    "ignored": IGNORED,
}
WEIGHT_COMPRESSION_PARAMS: dict[str, Param] = {
    **COMMON_PARAMS,
    "mode": Param(str, "INT8_ASYM", one_of(*WEIGHT_MODES)),
    "group_size": Param(int, -1, _group_size, "INT4 only: weights per scale along the input channels"),
    "ratio": Param((int, float), 1.0, _ratio, "INT4 only: share of weights in INT4 (the rest INT8_ASYM)"),
    "all_layers": Param(bool, False, None, "INT4 also for the first and last layers"),
    "ignored": IGNORED,
}
SCHEMAS = {"DefaultQuantization": DEFAULT_QUANTIZATION_PARAMS, "WeightCompression": WEIGHT_COMPRESSION_PARAMS}
ACCURACY_AWARE = ("AccuracyAwareQuantization needs a validation function and a labelled validation set, which a "
                  "config cannot give; quantize in Python with nncf.quantize_with_accuracy_control(model, "
                  "calibration_dataset, validation_dataset, validation_fn, max_drop=0.01), save the IR, then run "
                  "ovrange protect on it")


def schema(name: str) -> dict[str, Param]:
    """The parameter schema of quantization step ``name`` (raises the one-line AccuracyAware error)."""
    if name == "AccuracyAwareQuantization":
        raise ConfigError(ACCURACY_AWARE)
    return SCHEMAS[name]


def check_params(params: dict[str, Any]) -> str | None:
    """Combinations a schema cannot express."""
    mode = params.get("mode")
    if mode is not None and not mode.startswith("INT4"):
        if params["group_size"] != -1 or params["ratio"] != 1.0:
            return f"group_size and ratio apply to INT4 modes only, not {mode}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Running a step


def quantized_form(model: ov.Model) -> str | None:
    """How ``model`` is already quantized (FakeQuantize, or integer weight constants), or None."""
    kinds = {node.get_type_name() for node in model.get_ops()}
    if "FakeQuantize" in kinds:
        return "FakeQuantize"
    for node in model.get_ops():
        if node.get_type_name() == "Constant" and node.get_output_element_type(0) in LOW_PRECISION and any(
                t.get_node().get_type_name() == "Convert" for t in node.output(0).get_target_inputs()):
            return f"{node.get_output_element_type(0).to_string()} weights"
    return None


def apply(model: ov.Model, dataset: Any, step: AlgorithmConfig, *, progress: ProgressFn | None = None) -> ov.Model:
    """Run one quantization step on a copy of ``model``; returns the quantized model (the step is in rt_info)."""
    form = quantized_form(model)
    if form is not None:
        raise ModelError(f"model {model.get_friendly_name()!r} is already quantized ({form}); {step.name} needs a "
                         "float model")
    import nncf

    if step.name == "WeightCompression":
        result = _nncf_call(step, lambda: nncf.compress_weights(model.clone(), **_compression_args(nncf, step)))
    else:
        result = _quantize(nncf, model, dataset, step, progress)
    set_rt_json(result, "quantization", [*(get_rt_json(model, "quantization") or []),
                                         {"algorithm": step.name, "params": step.params}])
    return result


def _quantize(nncf, model: ov.Model, dataset: Any, step: AlgorithmConfig, progress: ProgressFn | None) -> ov.Model:
    from ovrange import data as data_mod

    work = model.clone()
    batched = step.batch_size > 1
    if batched:  # a static batch of 1 would not take stat_batch_size samples per inference
        shapes = {port: port.get_partial_shape() for port in work.inputs}
        with_dynamic_batch(work)
    samples, total = data_mod.subset(dataset, step.subset_size, step.shuffle, step.seed)
    items = [arrays if len(arrays) > 1 else arrays[0] for arrays, _ in data_mod.batches(samples, work,
                                                                                         step.batch_size)]
    if not items:
        raise ModelError("DefaultQuantization got an empty calibration dataset")
    sizes = np.cumsum([(a[0] if isinstance(a, list) else a).shape[0] for a in items])

    def feed(index: int) -> Any:
        if progress:
            progress(int(sizes[index]), total)
        return items[index]

    p = step.params
    ignored = p["ignored"]
    args = dict(preset=getattr(nncf.QuantizationPreset, p["preset"].upper()),
                target_device=getattr(nncf.TargetDevice, p["target_device"]),
                subset_size=len(items),
                fast_bias_correction=p["fast_bias_correction"] if p["use_fast_bias"] is None else p["use_fast_bias"],
                model_type=nncf.ModelType.TRANSFORMER if p["model_type"] == "transformer" else None,
                ignored_scope=_ignored_scope(nncf, ignored) if ignored else None,
                advanced_parameters=nncf.AdvancedQuantizationParameters(
                    inplace_statistics=p["inplace_statistics"],
                    overflow_fix=getattr(nncf.OverflowFix, SATURATION_FIX[p["saturation_fix"]], None)
                    if p["saturation_fix"] else None))
    calibration = nncf.Dataset(range(len(items)), feed)
    result = _nncf_call(step, lambda: nncf.quantize(work, calibration, **args))
    if batched:
        result.reshape({result.input(port.get_index()): shape for port, shape in shapes.items()})
    return result


def _compression_args(nncf, step: AlgorithmConfig) -> dict[str, Any]:
    p = step.params
    int4 = p["mode"].startswith("INT4")
    return dict(mode=getattr(nncf.CompressWeightsMode, p["mode"]),
                group_size=p["group_size"] if int4 else None, ratio=float(p["ratio"]) if int4 else None,
                all_layers=p["all_layers"] or None,
                ignored_scope=_ignored_scope(nncf, p["ignored"]) if p["ignored"] else None)


def _ignored_scope(nncf, ignored: dict[str, list]) -> Any:
    types = [*ignored.get("types", []), *(o["type"] for o in ignored.get("operations", []))]
    return nncf.IgnoredScope(names=[*ignored.get("scope", []), *ignored.get("names", [])],
                             patterns=ignored.get("patterns", []), types=types)


def _nncf_call(step: AlgorithmConfig, call: Callable[[], ov.Model]) -> ov.Model:
    """Run an nncf call quietly (the library never prints) and turn its errors into one-line ovrange errors."""
    import nncf

    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return call()
    except nncf.InvalidGroupSizeError as exc:
        raise ConfigError(f"{step.name} group_size {step.params['group_size']} does not divide the input channels "
                          f"of {_failed_nodes(exc)}; use a divisor of them or -1 (per channel)") from exc
    except (nncf.ValidationError, nncf.ParameterNotSupportedError, nncf.UnsupportedModelError) as exc:
        raise ConfigError(f"{step.name}: {_first_line(exc)}") from exc
    except nncf.InternalError as exc:
        raise ModelError(f"{step.name} failed in nncf: {_first_line(exc)}") from exc
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _failed_nodes(exc: BaseException) -> str:
    """nncf lists one failed layer per line: ``"name" (channel size: 120)``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip().startswith('"')]
    if not lines:
        return "some layers"
    return f"{len(lines)} layer(s), e.g. {lines[0]}"


def quantization_info(model: ov.Model) -> list[dict[str, Any]]:
    """The quantization steps ovrange ran on ``model`` (read back from rt_info), oldest first."""
    return get_rt_json(model, "quantization") or []
