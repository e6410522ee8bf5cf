"""Original vs protected on one OpenVINO device: interleaved timing, and which inserted Clamps the plugin fused.

Both models are compiled with the same device, hint and precision and timed in alternating blocks (A B, B A, ...;
:func:`ovrange.timing.interleaved`), so a slow phase of a shared machine hits both. Per-inference latencies are the
infer requests' own (C++) timings; the overhead is the median over rounds of the per-round ratio of median
latencies, with a distribution-free 95% interval (:func:`ovrange.timing.paired_ratio`).

The fusion report reads the compiled model's runtime graph: each runtime node lists, in ``originalLayersNames``,
the model nodes it executes. An inserted Clamp listed together with other layers was fused into them (a post-op
of a Convolution, a Subgraph, an eltwise chain); listed alone, it runs as its own kernel -- an extra pass over
memory, and the first thing to look at when the overhead is not negligible.

``benchmark_app`` (shipped in the openvino wheel) runs on both models the same way, from the bottom of this module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import openvino as ov

from ovrange.errors import ConfigError, DataError, DeviceError
from ovrange.passes.range_supervision import CLAMP_SUFFIX
from ovrange.runtime import available_devices, check_device, compile_model, inference_precision, last_line
from ovrange.timing import PairedRatio, interleaved, paired_ratio

HINTS = ("latency", "throughput")
GUARD_SUFFIXES = (CLAMP_SUFFIX, "/range_zero")  # range_zero: Ranger's zero correction
BLOCK_SECONDS = 0.05  # one timed block per model per round; short blocks pair well against load changes


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    full_name: str
    capabilities: tuple[str, ...]


def devices(core: ov.Core | None = None) -> list[DeviceInfo]:
    """The devices OpenVINO sees, with their full names and optimization capabilities (FP32, BF16, INT8...)."""
    core = core or ov.Core()
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


# ---------------------------------------------------------------------------------------------------------------
# Shapes: a benchmark needs static shapes, the same for both models


def parse_shape(spec: str, model: ov.Model) -> dict[str, list[int]]:
    """benchmark_app's ``-shape`` syntax: ``[1,3,48,320]`` (one input) or ``x[1,3,48,320],y[1,4]``."""
    text = spec.replace(" ", "")
    entry = r"([^\[\],]*)\[(-?\d+(?:,-?\d+)*)\]"
    if not re.fullmatch(f"{entry}(,{entry})*", text):
        raise DataError(f"cannot parse shape {spec!r}; expected e.g. [1,3,224,224] or input[1,3,224,224]")
    names = [_input_name(port, i) for i, port in enumerate(model.inputs)]
    shapes: dict[str, list[int]] = {}
    for name, dims in re.findall(entry, text):
        if not name:
            if len(model.inputs) != 1:
                raise DataError(f"shape {spec!r} names no input, but the model has {len(names)} inputs: "
                                f"{', '.join(names)}")
            name = names[0]
        if name not in names:
            raise DataError(f"shape {spec!r}: the model has no input {name!r}; inputs: {', '.join(names)}")
        shapes[name] = [int(d) for d in dims.split(",")]
    return shapes


def static_shapes(model: ov.Model, given: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
    """A static shape for every input: ``given`` ones, else the model's, with a dynamic batch axis set to 1."""
    given = dict(given or {})
    shapes = {}
    for i, port in enumerate(model.inputs):
        name = _input_name(port, i)
        if name in given:
            shapes[name] = list(given[name])
            continue
        shape = port.get_partial_shape()
        dynamic = DataError(f"model input {name!r} has dynamic shape {shape}; give a static one with "
                            f"--shape {name}[...]")
        if shape.rank.is_dynamic:
            raise dynamic
        dims = []
        for axis, dim in enumerate(shape):
            if dim.is_dynamic and axis > 0:
                raise dynamic
            dims.append(dim.get_length() if dim.is_static else 1)
        shapes[name] = dims
    return shapes


def with_static_shapes(model: ov.Model, shapes: Mapping[str, Sequence[int]]) -> ov.Model:
    """A clone of ``model`` reshaped to ``shapes`` (input name -> dims)."""
    clone = model.clone()
    ports = {_input_name(port, i): port for i, port in enumerate(clone.inputs)}
    missing = sorted(set(shapes) - set(ports))
    if missing:
        raise DataError(f"model {model.get_friendly_name()!r} has no input {missing[0]!r}; "
                        f"inputs: {', '.join(ports)}")
    try:
        clone.reshape({ports[name]: ov.PartialShape(list(dims)) for name, dims in shapes.items()})
    except RuntimeError as exc:
        raise DataError(f"cannot reshape model {model.get_friendly_name()!r} to {dict(shapes)}: "
                        f"{last_line(exc)}") from exc
    return clone


def _input_name(port: ov.Output, index: int) -> str:
    names = port.get_names()
    return port.get_any_name() if names else port.get_node().get_friendly_name() or f"input{index}"


def random_inputs(model: ov.Model, seed: int = 0) -> list[np.ndarray]:
    """One seeded array per (static) input, filled as benchmark_app fills them: uniform in [0, 255]."""
    rng = np.random.default_rng(seed)
    arrays = []
    for port in model.inputs:
        shape = [d.get_length() for d in port.get_partial_shape()]
        dtype = port.get_element_type().to_dtype()
        if dtype == np.bool_:
            arrays.append(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.floating):
            arrays.append(rng.uniform(0, 255, shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 256, shape).astype(dtype))
    return arrays


# ---------------------------------------------------------------------------------------------------------------
# Fused / standalone Clamps in the runtime model


@dataclass(frozen=True)
class ClampFusion:
    """Where one inserted guard (a Clamp, or the Minimum/Maximum pair of a per-channel bound) ended up at run time.

    ``status``: ``fused`` (it runs inside ``runtime_node`` together with the model layers ``fused_with``),
    ``standalone`` (a kernel of its own, or shared only with other guards), ``not found`` (the plugin removed it,
    or moved and renamed it) or ``unknown`` (the device's runtime model has no ``originalLayersNames``).
    """

    name: str
    status: str
    runtime_node: str | None = None
    layer_type: str | None = None
    fused_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class FusionReport:
    device: str
    clamps: tuple[ClampFusion, ...]

    def names(self, status: str) -> list[str]:
        return [c.name for c in self.clamps if c.status == status]

    @property
    def counts(self) -> dict[str, int]:
        return {status: len(self.names(status)) for status in ("fused", "standalone", "not found", "unknown")}

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "counts": self.counts, "clamps": [asdict(c) for c in self.clamps]}


def guards(model: ov.Model, suffixes: Sequence[str] = GUARD_SUFFIXES) -> dict[str, set[str]]:
    """Each guard a protection pass inserted (friendly name ``<node><suffix>``) -> the names of its nodes.

    A scalar bound is one Clamp; a per-channel bound is Minimum(Maximum(x)); Ranger's ``zero`` correction is a
    Select over comparisons. The members are the guard node and the non-constant nodes behind it that exist only
    to feed it, up to the guarded node.
    """
    found: dict[str, set[str]] = {}
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        if suffix is None or node.get_type_name() in ("Result", "Constant"):
            continue
        guarded, members, stack = name[: -len(suffix)], {name}, [node]
        while stack:
            for value in stack.pop().input_values():
                source = value.get_node()
                source_name = source.get_friendly_name()
                if source_name == guarded or source_name in members or source.get_type_name() in ("Constant",
                                                                                              "Parameter"):
                    continue
                consumers = {t.get_node().get_friendly_name() for out in source.outputs()
                             for t in out.get_target_inputs()}
                if consumers <= members:
                    members.add(source_name)
                    stack.append(source)
        found[name] = members
    return found


def fusion_report(compiled: ov.CompiledModel, model: ov.Model, device: str = "") -> FusionReport:
    """Classify every guard of ``model`` (the model ``compiled`` was compiled from) from the runtime model."""
    groups = guards(model)
    member_of = {member: guard for guard, members in groups.items() for member in members}
    layers = {n.get_friendly_name() for n in model.get_ops() if n.get_type_name() != "Constant"} - set(member_of)
    hosts: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {guard: [] for guard in groups}
    has_names = False
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        if "originalLayersNames" not in rt:
            continue
        has_names = True
        originals = tuple(n for n in rt["originalLayersNames"].astype(str).split(",") if n)
        layer_type = rt["layerType"].astype(str) if "layerType" in rt else node.get_type_name()
        real = tuple(n for n in originals if n in layers)  # names the plugin made up are not model layers
        for guard in {member_of[n] for n in originals if n in member_of}:
            hosts[guard].append((node.get_friendly_name(), layer_type, real))
    results = []
    for guard in groups:
        found = hosts[guard]
        if not has_names:
            results.append(ClampFusion(guard, "unknown"))
        elif not found:
            results.append(ClampFusion(guard, "not found"))
        else:
            node, layer_type, real = max(found, key=lambda host: len(host[2]))
            results.append(ClampFusion(guard, "fused" if real else "standalone", node, layer_type, real))
    return FusionReport(device, tuple(results))


# ---------------------------------------------------------------------------------------------------------------
# Interleaved timing


@dataclass(frozen=True)
class Latency:
    """Per-inference latency in milliseconds, as the infer requests measured it."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    count: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Latency:
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(a.mean()), float(a.min()), float(a.max()), int(a.size))


@dataclass(frozen=True)
class ModelTiming:
    label: str
    latency: Latency
    throughput_fps: float  # samples per second over all timed blocks (batch size x inferences / seconds)
    inference_precision: str
    infer_requests: int


@dataclass(frozen=True)
class BenchmarkResult:
    """Original vs protected, same device/hint/precision/shapes, timed in interleaved rounds.

    ``latency_ratio`` and ``throughput_ratio`` are protected / original. Each session (a fresh compilation of both
    models) gives the median of its per-round ratios; with 3 or more sessions the result is the median of those
    session medians and its 95% interval is taken over sessions, because a compilation can favour one model for a
    whole session on a busy machine (``session_ratios`` shows it), which an interval over rounds would hide. With
    fewer sessions the rounds are pooled. ``ratio_over`` says which.
    """

    device: str
    hint: str
    precision: str
    shapes: dict[str, list[int]]
    sessions: int
    rounds: int
    inferences_per_block: int
    original: ModelTiming
    protected: ModelTiming
    latency_ratio: PairedRatio
    throughput_ratio: PairedRatio
    session_ratios: tuple[float, ...]
    ratio_over: str  # "sessions" or "rounds"
    fusion: FusionReport
    openvino_version: str = field(default_factory=ov.get_version)

    @property
    def latency_overhead_pct(self) -> float:
        return (self.latency_ratio.median - 1.0) * 100.0

    def to_json(self) -> dict[str, Any]:
        def ratio(r: PairedRatio) -> dict[str, float]:
            return {"median": r.median, "low": r.low, "high": r.high, "n": r.rounds, "over": self.ratio_over}

        return {
            "device": self.device, "hint": self.hint, "precision": self.precision, "shapes": self.shapes,
            "sessions": self.sessions, "rounds": self.rounds, "inferences_per_block": self.inferences_per_block,
            "openvino_version": self.openvino_version,
            "original": asdict(self.original), "protected": asdict(self.protected),
            "latency_ratio": ratio(self.latency_ratio), "throughput_ratio": ratio(self.throughput_ratio),
            "latency_overhead_pct": self.latency_overhead_pct, "session_latency_ratios": list(self.session_ratios),
            "fusion": self.fusion.to_json(),
        }


class _Runner:
    """Runs blocks of inferences on one compiled model, keeping each block's per-inference latencies (ms)."""

    def __init__(self, compiled: ov.CompiledModel, inputs: Sequence[np.ndarray], requests: int):
        self.requests = requests
        self.blocks: list[list[float]] = []
        if requests == 1:
            self.request = compiled.create_infer_request()
            for i, array in enumerate(inputs):
                self.request.set_input_tensor(i, ov.Tensor(array))
        else:
            self.queue = ov.AsyncInferQueue(compiled, requests)
            for request in self.queue:
                for i, array in enumerate(inputs):
                    request.set_input_tensor(i, ov.Tensor(array))
            self.queue.set_callback(lambda request, latencies: latencies.append(request.latency))

    def block(self, count: int) -> None:
        latencies: list[float] = []
        if self.requests == 1:
            request = self.request
            for _ in range(count):
                request.start_async()
                request.wait()
                latencies.append(request.latency)
        else:
            for _ in range(count):
                self.queue.start_async(userdata=latencies)
            self.queue.wait_all()
        self.blocks.append(latencies)


@dataclass
class _Session:
    """What one session measured: per model, the timed blocks' latencies and wall times."""

    blocks: dict[str, list[list[float]]]
    seconds: dict[str, list[float]]
    precision: dict[str, str]
    requests: dict[str, int]


def _compile_config(device: str, hint: str) -> dict[str, Any]:
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
    if device.split(".")[0] == "CPU":
        # Two compiled models in one process: with pinned threads, a whole session favoured one model by 30-40%
        # in 3 of 8 sessions on a shared machine, unpinned in 0 of 8 (busy phases still cause some: see sessions).
        config["ENABLE_CPU_PINNING"] = False
    return config


def _session(models: Mapping[str, ov.Model], order: Sequence[str], inputs: Sequence[np.ndarray], *, device: str,
             hint: str, precision: str, core: ov.Core, seconds: float, block: int | None,
             block_seconds: float) -> tuple[_Session, int, ov.CompiledModel]:
    compiled = {label: compile_model(models[label], device, precision=precision,
                                     config=_compile_config(device, hint), core=core) for label in order}
    requests = {label: _requests(c, hint) for label, c in compiled.items()}
    runners = {label: _Runner(compiled[label], inputs, requests[label]) for label in order}
    per_inference = _probe(runners[order[0]], block_seconds)
    block = block or max(max(requests.values()), int(round(block_seconds / per_inference)))
    rounds = max(3, int(seconds / (2 * block * per_inference)))
    times = interleaved({label: (lambda r=runners[label]: r.block(block)) for label in order}, rounds)
    session = _Session({label: r.blocks[-rounds:] for label, r in runners.items()}, times,
                       {label: inference_precision(c) for label, c in compiled.items()}, requests)
    return session, block, compiled["protected"]


def _requests(compiled: ov.CompiledModel, hint: str) -> int:
    if hint == "latency":
        return 1
    try:
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    except RuntimeError:
        return 1


def _probe(runner: _Runner, block_seconds: float) -> float:
    """Seconds per inference, from a warmed-up run of about half a block."""
    runner.block(max(2, runner.requests))  # the first inferences are slow (allocation, caches)
    count = max(1, runner.requests)
    while True:
        start = time.perf_counter()
        runner.block(count)
        elapsed = time.perf_counter() - start
        if elapsed >= block_seconds / 2 or count >= 1 << 20:
            break
        count *= 2
    runner.blocks.clear()
    return elapsed / count


def benchmark(
    original: ov.Model,
    protected: ov.Model,
    *,
    device: str = "CPU",
    hint: str = "latency",
    precision: str = "f32",
    seconds: float = 10.0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    sessions: int = 8,
    block_seconds: float = BLOCK_SECONDS,
    seed: int = 0,
    core: ov.Core | None = None,
) -> BenchmarkResult:
    """Time ``original`` and ``protected`` in interleaved rounds for about ``seconds`` seconds in total.

    Args:
        device: OpenVINO device (CPU, GPU, NPU, AUTO...); an absent device raises DeviceError.
        hint: ``latency`` (one infer request, back to back) or ``throughput`` (the plugin's optimal number of
            requests, kept busy through an AsyncInferQueue).
        precision: ``f32`` pins INFERENCE_PRECISION_HINT=f32; ``default`` keeps the plugin's (bf16 on AMX CPUs).
        shapes: static input shapes (input name -> dims); default: the model's, with a dynamic batch axis of 1.
        sessions: the time is split into sessions; each compiles both models anew, alternating which is compiled
            first, so an advantage one compilation happens to get does not decide the result.
        block_seconds: length of one timed block; a round times one block of each model.
    """
    if hint not in HINTS:
        raise ConfigError(f"unknown hint {hint!r}; choose one of: {', '.join(HINTS)}")
    if seconds <= 0 or sessions < 1:
        raise ConfigError("the benchmark needs a positive time and at least one session")
    core = core or ov.Core()
    check_device(device, core)
    resolved = static_shapes(original, shapes)
    models = {"original": with_static_shapes(original, resolved), "protected": with_static_shapes(protected, resolved)}
    inputs = random_inputs(models["original"], seed)
    runs: list[_Session] = []
    block = None
    try:
        for index in range(sessions):
            order = ("original", "protected") if index % 2 == 0 else ("protected", "original")
            run, block, compiled = _session(models, order, inputs, device=device, hint=hint, precision=precision,
                                            core=core, seconds=seconds / sessions, block=block,
                                            block_seconds=block_seconds)
            runs.append(run)
    except RuntimeError as exc:
        raise DeviceError(f"inference failed on {device}: {last_line(exc)}") from exc
    return _result(runs, models, compiled, device=device, hint=hint, precision=precision, shapes=resolved,
                   block=block or 1)


def _result(runs: list[_Session], models: Mapping[str, ov.Model], compiled: ov.CompiledModel, *, device: str,
            hint: str, precision: str, shapes: dict[str, list[int]], block: int) -> BenchmarkResult:
    batch = int(next(iter(shapes.values()))[0]) if shapes and next(iter(shapes.values())) else 1

    def pooled(label: str, what: str) -> list:
        return [x for run in runs for x in getattr(run, what)[label]]

    def medians(run: _Session, label: str) -> list[float]:
        return [float(np.median(b)) for b in run.blocks[label]]

    timings = {}
    for label in ("original", "protected"):
        blocks, seconds = pooled(label, "blocks"), pooled(label, "seconds")
        timings[label] = ModelTiming(label, Latency.of([x for b in blocks for x in b]),
                                     batch * block * len(seconds) / float(np.sum(seconds)),
                                     runs[0].precision[label], runs[0].requests[label])
    lat_sessions = [paired_ratio(medians(run, "original"), medians(run, "protected")) for run in runs]
    tput_sessions = [paired_ratio(run.seconds["protected"], run.seconds["original"]) for run in runs]
    if len(runs) >= 3:
        ones = [1.0] * len(runs)
        latency = paired_ratio(ones, [r.median for r in lat_sessions])
        throughput = paired_ratio(ones, [r.median for r in tput_sessions])
    else:
        latency = paired_ratio([m for run in runs for m in medians(run, "original")],
                               [m for run in runs for m in medians(run, "protected")])
        throughput = paired_ratio(pooled("protected", "seconds"), pooled("original", "seconds"))
    return BenchmarkResult(
        device=device, hint=hint, precision=precision, shapes=shapes, sessions=len(runs),
        rounds=sum(len(run.seconds["original"]) for run in runs), inferences_per_block=block,
        original=timings["original"], protected=timings["protected"], latency_ratio=latency,
        throughput_ratio=throughput, session_ratios=tuple(r.median for r in lat_sessions),
        ratio_over="sessions" if len(runs) >= 3 else "rounds",
        fusion=fusion_report(compiled, models["protected"], device),
    )


# ---------------------------------------------------------------------------------------------------------------
# benchmark_app (shipped in the openvino wheel): the numbers users compare against


@dataclass(frozen=True)
class BenchmarkAppStats:
    """One benchmark_app run, from its ``-json_stats`` report (and its console lines, which are more precise)."""

    model: str
    device: str
    hint: str
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput_fps: float
    iterations: int
    duration_ms: float
    command: tuple[str, ...]


@dataclass(frozen=True)
class BenchmarkAppComparison:
    """benchmark_app on both models, ``rounds`` runs each in alternating order (A B B A ...)."""

    original: tuple[BenchmarkAppStats, ...]
    protected: tuple[BenchmarkAppStats, ...]
    latency_ratio: PairedRatio  # protected / original median latency, per pair of runs
    throughput_ratio: PairedRatio  # protected / original throughput, per pair of runs

    def to_json(self) -> dict[str, Any]:
        def ratio(r: PairedRatio) -> dict[str, float]:
            return {"median": r.median, "low": r.low, "high": r.high, "rounds": r.rounds}

        return {"original": [asdict(s) for s in self.original], "protected": [asdict(s) for s in self.protected],
                "latency_ratio": ratio(self.latency_ratio), "throughput_ratio": ratio(self.throughput_ratio)}


def benchmark_app_path() -> str:
    """The ``benchmark_app`` console script next to this Python (the venv's), else the one on PATH."""
    import shutil
    import sys
    from pathlib import Path

    local = Path(sys.executable).with_name("benchmark_app")
    found = str(local) if local.is_file() else shutil.which("benchmark_app")
    if not found:
        raise ConfigError("benchmark_app not found; it ships in the openvino wheel: pip install openvino")
    return found


def benchmark_app_command(model_path: str, report_folder: str, *, device: str = "CPU", hint: str = "latency",
                          precision: str = "f32", seconds: float = 10.0,
                          shapes: Mapping[str, Sequence[int]] | None = None, float_inputs: bool = True) -> list[str]:
    """The benchmark_app command line equivalent to :func:`benchmark`'s settings (see docs/benchmarks.md)."""
    command = [benchmark_app_path(), "-m", str(model_path), "-d", device, "-hint", hint,
               "-t", str(max(1, int(round(seconds)))), "-report_type", "no_counters", "-report_folder",
               str(report_folder), "-json_stats"]
    if float_inputs:
        command += ["-ip", "f32"]  # feed f32 as the model expects, not benchmark_app's u8 images
    if precision == "f32" and device.split(":")[0] not in ("AUTO", "MULTI", "HETERO", "BATCH"):
        command += ["-infer_precision", "f32"]
    if shapes:
        command += ["-shape", ",".join(f"{name}[{','.join(map(str, dims))}]" for name, dims in shapes.items())]
    return command


_CONSOLE = re.compile(r"^\[ INFO \]\s+(Median|Average|Min|Max):\s+([\d.]+)\s+(us|ms)\s*$", re.MULTILINE)


def parse_benchmark_app(report: Mapping[str, Any], console: str = "", command: Sequence[str] = ()) -> BenchmarkAppStats:
    """Read a ``benchmark_report.json``; latencies come from the console output when given.

    The JSON rounds latencies to 0.01 ms, which is all of a small model's latency; benchmark_app prints them in
    microseconds when they are that small, so the console lines are preferred for the four latency figures.
    """
    try:
        setup, results = report["configuration_setup"], report["execution_results"]
        values = {
            "Median": float(results.get("latency (ms)", "nan")), "Average": float(results.get("avg latency", "nan")),
            "Min": float(results.get("min latency", "nan")), "Max": float(results.get("max latency", "nan")),
        }
        for key, number, unit in _CONSOLE.findall(console):
            values[key] = float(number) / (1000.0 if unit == "us" else 1.0)
        return BenchmarkAppStats(
            model=str(report.get("cmd_options", {}).get("-m", "")), device=str(setup.get("target device", "")),
            hint=str(report.get("cmd_options", {}).get("-hint", "")), median_ms=values["Median"],
            mean_ms=values["Average"], min_ms=values["Min"], max_ms=values["Max"],
            throughput_fps=float(results["throughput"]), iterations=int(results["total number of iterations"]),
            duration_ms=float(results["total execution time (ms)"]), command=tuple(command))
    except (KeyError, TypeError, ValueError) as exc:
        raise DeviceError(f"unexpected benchmark_app report: missing or bad {exc}") from exc


def run_benchmark_app(model_path: str, report_folder: str, **settings: Any) -> BenchmarkAppStats:
    """Run benchmark_app once (``settings`` as in :func:`benchmark_app_command`) and parse its report."""
    import json
    import subprocess
    from pathlib import Path

    folder = Path(report_folder)
    folder.mkdir(parents=True, exist_ok=True)  # benchmark_app writes no report into a missing folder
    command = benchmark_app_command(model_path, str(folder), **settings)
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=float(settings.get("seconds", 10)) + 300)
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"benchmark_app did not finish on {model_path}") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines()
                 if line.strip() and not line.startswith(("[ INFO ]", "[ WARNING ]", "[Step"))]
        raise DeviceError(f"benchmark_app failed on {model_path}: {lines[-1] if lines else 'no output'}")
    report = folder / "benchmark_report.json"
    if not report.is_file():
        raise DeviceError(f"benchmark_app wrote no report into {folder}")
    return parse_benchmark_app(json.loads(report.read_text()), done.stdout, command)


def compare_with_benchmark_app(original_path: str, protected_path: str, report_folder: str, *, rounds: int = 3,
                               **settings: Any) -> BenchmarkAppComparison:
    """benchmark_app on both models, alternating (A B, B A, ...), ``rounds`` runs each, one report folder each."""
    from pathlib import Path

    paths = {"original": original_path, "protected": protected_path}
    runs: dict[str, list[BenchmarkAppStats]] = {"original": [], "protected": []}
    for index in range(rounds):
        order = ("original", "protected") if index % 2 == 0 else ("protected", "original")
        for label in order:
            folder = Path(report_folder) / f"{label}-{index + 1}"
            runs[label].append(run_benchmark_app(paths[label], str(folder), **settings))
    latency = paired_ratio([s.median_ms for s in runs["original"]], [s.median_ms for s in runs["protected"]])
    throughput = paired_ratio([1 / s.throughput_fps for s in runs["protected"]],
                              [1 / s.throughput_fps for s in runs["original"]])
    return BenchmarkAppComparison(tuple(runs["original"]), tuple(runs["protected"]), latency, throughput)
