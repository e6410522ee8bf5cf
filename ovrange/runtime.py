"""Compiling and running models on OpenVINO devices, in a precision the caller states.

The CPU plugin on AMX machines defaults to bf16; statistics, golden runs and fault injection must be
f32, so every compile in ovrange goes through :func:`compile_model` with an explicit precision.
"""

from __future__ import annotations

from typing import Any

import openvino as ov

from ovrange.errors import DeviceError

PRECISIONS = ("f32", "default")


def available_devices(core: ov.Core | None = None) -> list[str]:
    """Devices OpenVINO sees on this machine, e.g. ``['CPU']`` or ``['CPU', 'GPU.0']``."""
    return list((core or ov.Core()).available_devices)


def check_device(device: str, core: ov.Core | None = None) -> None:
    """Raise DeviceError with the list of present devices when ``device`` is not one of them."""
    devices = available_devices(core)
    base = device.split(":")[0].split(".")[0]
    virtual = {"AUTO", "MULTI", "HETERO", "BATCH"}
    if base in virtual or device in devices or any(d.split(".")[0] == base for d in devices):
        return
    raise DeviceError(f"device {device!r} is not available; OpenVINO sees: {', '.join(devices) or 'none'}")


def compile_config(device: str, precision: str = "f32", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The compile properties for a precision: ``f32`` pins INFERENCE_PRECISION_HINT, ``default`` leaves the plugin's."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    config: dict[str, Any] = {}
    if precision == "f32" and device.split(":")[0] not in {"AUTO", "MULTI", "HETERO", "BATCH"}:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    config.update(extra or {})
    return config


def compile_model(
    model: ov.Model,
    device: str = "CPU",
    *,
    precision: str = "f32",
    config: dict[str, Any] | None = None,
    core: ov.Core | None = None,
) -> ov.CompiledModel:
    """Compile ``model`` on ``device`` in ``precision``; failures become one-line DeviceErrors."""
    core = core or ov.Core()
    check_device(device, core)
    try:
        return core.compile_model(model, device, compile_config(device, precision, config))
    except RuntimeError as exc:
        raise DeviceError(f"{device} could not compile model {model.get_friendly_name()!r}: {last_line(exc)}") from exc


def inference_precision(compiled: ov.CompiledModel) -> str:
    """The precision the compiled model really runs in, as the plugin reports it (e.g. 'f32', 'bf16')."""
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
    except RuntimeError:
        return "unknown"
    return (value.to_string() if isinstance(value, ov.Type) else str(value)).lower()  # str(ov.Type) is "<Type...>"


def last_line(exc: BaseException) -> str:
    """OpenVINO exceptions carry a multi-line trace of C++ locations; the last non-empty line is the message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
