"""Compiling and running models on OpenVINO devices, in a precision the caller states: the one runner.

The CPU plugin on AMX machines defaults to bf16; statistics, golden runs and fault injection must be
f32, so every compile in ovrange goes through :func:`compile_model` with an explicit precision. :class:`Runner`
owns the batching policy (dynamic batch axis, else one sample at a time), the one error-wrapped ``infer``, timed
inference for benchmarks and the state of stateful models (ReadValue/Assign, e.g. an LLM's KV cache): such a model
is refused by every command that would measure it wrongly, or, when the caller handles it, its state is reset
before each inference so that samples stay independent, or before the first step of a sequence (:meth:`Runner.step`:
a language model's prefill and decode steps, :mod:`ovrange.generate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import openvino as ov

from ovrange.batching import input_batch_axes, output_batch_axes
from ovrange.errors import ConfigError, DataError, DeviceError, ModelError

ProgressFn = Callable[[int, int], None]

PRECISIONS = ("f32", "default")


@lru_cache(maxsize=1)
def shared_core() -> ov.Core:
    """One ``ov.Core`` per process: creating one loads the plugins' registry, and compiled-model caches are per core."""
    return ov.Core()


def available_devices(core: ov.Core | None = None) -> list[str]:
    """Devices OpenVINO sees on this machine, e.g. ``['CPU']`` or ``['CPU', 'GPU.0']``."""
    return list((core or shared_core()).available_devices)


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    full_name: str
    capabilities: tuple[str, ...]


def devices(core: ov.Core | None = None) -> list[DeviceInfo]:
    """The devices OpenVINO sees, with their full names and optimization capabilities (FP32, BF16, INT8...)."""
    core = core or shared_core()
    found = []
    for name in available_devices(core):
        full = _property(core, name, "FULL_DEVICE_NAME", name)
        caps = _property(core, name, "OPTIMIZATION_CAPABILITIES", [])
        found.append(DeviceInfo(name, str(full), tuple(str(c) for c in caps)))
    return found


def _property(core: ov.Core, device: str, key: str, default: Any) -> Any:
    try:
        return core.get_property(device, key)
    except RuntimeError:
        return default


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
    core = core or shared_core()
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


def with_dynamic_batch(model: ov.Model, axes: Sequence[int] | None = None) -> ov.Model:
    """Make the batch axis (``axes``, default :func:`input_batch_axes`) of every input dynamic (edits ``model``);
    raises ValueError when the model cannot be reshaped."""
    axes = input_batch_axes(model) if axes is None else axes
    shapes = {}
    for port, axis in zip(model.inputs, axes):
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() == 0 or shape[axis].is_dynamic:
            continue
        new_shape = ov.PartialShape(shape)
        new_shape[axis] = ov.Dimension()
        shapes[port] = new_shape
    if shapes:
        try:
            model.reshape(shapes)
        except RuntimeError as exc:
            raise ValueError(last_line(exc)) from exc
    return model


def is_stateful(model: ov.Model) -> bool:
    """True for a model that keeps state between inferences (ReadValue/Assign: sinks), e.g. an LLM's KV cache."""
    return bool(model.get_sinks()) or any(op.get_type_name() == "ReadValue" for op in model.get_ops())


def refuse_stateful(model: ov.Model, command: str = "ovrange") -> None:
    """Raise a one-line ModelError when ``model`` is stateful: ``command`` would measure it wrongly."""
    if is_stateful(model):
        raise ModelError(f"model {model.get_friendly_name()!r} is a stateful model (KV cache); {command} does not "
                         "support it yet")


class Runner:
    """A model compiled once and fed batches of samples: the batching policy and the one error-wrapped ``infer``.

    ``batch_size`` > 1 makes the batch axis of each input dynamic (on a clone): axis 0, or the one
    :func:`input_batch_axes` finds (Silero VAD's state has its batch on axis 1). A model that cannot take it is an
    error when ``fallback`` is False (calibration: ``stat_batch_size`` was asked for), or runs one sample at a time
    when True (evaluation). With ``batched_outputs``, every output must keep a batch axis, else rows would be mixed
    up silently: a model whose outputs lose it (a hard-coded ``Reshape([1, -1, 18])``) is such a model.

    A stateful model is refused (a ModelError naming ``command``) unless ``stateful`` is True; then every inference
    starts from the initial state (``reset_state``), as if each batch were the model's first, except the later
    steps of a sequence run by :meth:`step`.
    """

    def __init__(self, model: ov.Model, *, device: str = "CPU", batch_size: int = 1, precision: str = "f32",
                 fallback: bool = False, batched_outputs: bool = True, config: dict[str, Any] | None = None,
                 core: ov.Core | None = None, stateful: bool = False, command: str = "ovrange"):
        if not stateful:
            refuse_stateful(model, command)
        self.stateful = is_stateful(model)
        self.batch_size = batch_size
        self.batched_outputs = batched_outputs
        self.model = model
        self.axes = input_batch_axes(model)
        self._output_axes: list[int | None] | None = None
        runnable = model
        if batch_size > 1:
            try:
                runnable = with_dynamic_batch(model.clone(), self.axes)
                if batched_outputs:
                    self._check_batched_outputs()
            except ValueError as exc:
                if not fallback:
                    raise ConfigError(f"batch size {batch_size} needs a batchable model: {exc}") from exc
                runnable, self.batch_size = model, 1
        self.compiled = compile_model(runnable, device, precision=precision, config=config, core=core)
        self.outputs = len(self.compiled.outputs)
        # Two requests: the host prepares and folds one batch while the device runs the other (run()).
        self.requests = [self.compiled.create_infer_request() for _ in range(2)]
        self._queue: ov.AsyncInferQueue | None = None

    def output_axes(self) -> list[int]:
        """The batch axis of each output: axis 0 unless an input has its batch elsewhere (then
        :func:`output_batch_axes`; 0 for an output without one)."""
        if self._output_axes is None:
            if not any(self.axes):
                self._output_axes = [0] * len(self.model.outputs)
            else:
                try:
                    self._output_axes = output_batch_axes(self.model, self.axes)
                except ValueError as exc:
                    raise DataError(f"cannot tell the batch axis of the model outputs: {exc}") from exc
        return [0 if axis is None else axis for axis in self._output_axes]

    def _check_batched_outputs(self) -> None:
        self._output_axes = output_batch_axes(self.model, self.axes)
        lost = [port.get_any_name() for port, axis in zip(self.model.outputs, self._output_axes) if axis is None]
        if lost:
            raise ValueError(f"output(s) {', '.join(lost)} do not keep the batch axis")

    def _fresh(self, request: ov.InferRequest) -> ov.InferRequest:
        """``request``, back in the model's initial state when the model keeps one."""
        if self.stateful:
            request.reset_state()
        return request

    def infer(self, arrays: list[np.ndarray], share_outputs: bool = False) -> tuple:
        """Outputs of one batch (``arrays`` in model-input order); a batch the model cannot take is a DataError."""
        try:
            outputs = self._fresh(self.requests[0]).infer(arrays, share_outputs=share_outputs).to_tuple()
        except RuntimeError as exc:
            raise self._data_error(arrays, exc) from exc
        return self._checked(outputs, arrays)

    def step(self, arrays: list[np.ndarray], *, first: bool) -> tuple:
        """One inference of a sequence on a stateful model (a prefill, then decode steps): the state is reset before
        the ``first`` step only, so each later step sees the state (KV cache) the steps before it left."""
        request = self._fresh(self.requests[0]) if first else self.requests[0]
        try:
            outputs = request.infer(arrays, share_outputs=False).to_tuple()
        except RuntimeError as exc:
            raise self._data_error(arrays, exc) from exc
        return outputs

    def run(self, batches: Iterable[tuple[list[np.ndarray], int]], progress: ProgressFn | None = None
            ) -> Iterator[tuple[tuple, int]]:
        """Yield (outputs, samples in batch) for each batch, in order; outputs are views valid until the next yield.

        Pipelined over two infer requests: batch i+1 is read and started before batch i's outputs are handed over,
        so host work (decoding samples, folding statistics) overlaps inference. Results are the same as one
        ``infer`` after another: each inference is independent.
        """
        seen = 0
        pending: tuple[ov.InferRequest, list[np.ndarray], int] | None = None
        for index, (arrays, count) in enumerate(self._sized(batches)):
            request = self._fresh(self.requests[index % 2])
            try:
                request.start_async(arrays)
            except RuntimeError as exc:
                raise self._data_error(arrays, exc) from exc
            if pending is not None:
                yield self._finish(*pending), pending[2]
                seen += pending[2]
                if progress:
                    progress(seen, seen)
            pending = (request, arrays, count)
        if pending is not None:
            yield self._finish(*pending), pending[2]
            if progress:
                progress(seen + pending[2], seen + pending[2])

    def _sized(self, batches: Iterable[tuple[list[np.ndarray], int]]) -> Iterator[tuple[list[np.ndarray], int]]:
        """Batches cut for a batch size this model cannot take are split into ones it can."""
        for arrays, count in batches:
            if count <= self.batch_size:
                yield arrays, count
                continue
            for start in range(0, count, self.batch_size):
                part = [np.take(a, range(start, min(start + self.batch_size, count)), axis=axis)
                        for a, axis in zip(arrays, self.axes)]
                yield part, min(self.batch_size, count - start)

    def _finish(self, request: ov.InferRequest, arrays: list[np.ndarray], count: int) -> tuple:
        try:
            request.wait()
        except RuntimeError as exc:
            raise self._data_error(arrays, exc) from exc
        outputs = tuple(request.get_output_tensor(k).data for k in range(self.outputs))
        return self._checked(outputs, arrays)

    def _checked(self, outputs: tuple, arrays: list[np.ndarray]) -> tuple:
        count = arrays[0].shape[self.axes[0]] if arrays and arrays[0].ndim else 1
        if self.batched_outputs and count > 1 and any(o.ndim <= axis or o.shape[axis] != count
                                                      for o, axis in zip(outputs, self.output_axes())):
            raise DataError(f"a model output does not keep the batch axis (batch of {count}, output shapes "
                            f"{[tuple(o.shape) for o in outputs]}); use batch size 1")
        return outputs

    @staticmethod
    def _data_error(arrays: list[np.ndarray], exc: RuntimeError) -> DataError:
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        return DataError(f"data of shape {shapes} (axis 0 = samples) cannot feed the model: {last_line(exc)}")

    def bind_inputs(self, arrays: Sequence[np.ndarray], requests: int = 1) -> None:
        """Set ``arrays`` once as the inputs of :meth:`timed` inferences, on ``requests`` parallel infer requests
        (more than one: an AsyncInferQueue keeps them busy, as a throughput benchmark does)."""
        if requests > 1 and self.stateful:
            raise ModelError("parallel timed inference of a stateful model is not supported")
        self._queue = ov.AsyncInferQueue(self.compiled, requests) if requests > 1 else None
        for request in (self._queue if self._queue is not None else self.requests[:1]):
            for index, array in enumerate(arrays):
                request.set_input_tensor(index, ov.Tensor(array))
        if self._queue is not None:
            self._queue.set_callback(lambda request, latencies: latencies.append(request.latency))

    def timed(self, count: int) -> list[float]:
        """Run ``count`` inferences on the inputs of :meth:`bind_inputs`; their latencies in ms, as the infer
        requests measured them (C++ timing, no Python overhead). Device failures raise RuntimeError."""
        latencies: list[float] = []
        if self._queue is None:
            request = self.requests[0]
            for _ in range(count):
                self._fresh(request).start_async()
                request.wait()
                latencies.append(request.latency)
        else:
            for _ in range(count):
                self._queue.start_async(userdata=latencies)
            self._queue.wait_all()
        return latencies

    def predict_all(self, batches: Iterable[tuple[list[np.ndarray], int]], progress: ProgressFn | None = None,
                    total: int | None = None) -> list[np.ndarray]:
        """Every output of every sample, each concatenated on axis 0 (moved there from the output's batch axis)."""
        report = (lambda done, _: progress(done, total or done)) if progress else None
        axes = self.output_axes()
        parts: list[list[np.ndarray]] = [[] for _ in axes]
        for outputs, _ in self.run(batches, report):
            for part, out, axis in zip(parts, outputs, axes):
                part.append(np.moveaxis(out, axis, 0).copy())
        return [np.concatenate(part, axis=0) for part in parts]

    def predict(self, batches: Iterable[tuple[list[np.ndarray], int]], output: int = 0,
                progress: ProgressFn | None = None, total: int | None = None) -> np.ndarray:
        """Output ``output`` of :meth:`predict_all`."""
        return self.predict_all(batches, progress, total)[output]
