"""Original vs protected on one OpenVINO device, timed side by side.

Both models are compiled with the same device, hint and precision and timed in alternating blocks (A B, B A, ...;
:func:`ovrange.timing.interleaved`), so a slow phase of a shared machine hits both. Per-inference latencies are the
infer requests' own (C++) timings; the overhead is the median over rounds of the per-round ratio of median
latencies, with a distribution-free 95% interval (:func:`ovrange.timing.paired_ratio`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import openvino as ov

from ovrange.bench.fusion import FusionReport, fusion_report
from ovrange.bench.shapes import random_inputs, static_shapes, with_static_shapes
from ovrange.errors import ConfigError, DeviceError
from ovrange.runtime import Runner, check_device, inference_precision, last_line, refuse_stateful, shared_core
from ovrange.timing import PairedRatio, interleaved, paired_ratio

HINTS = ("latency", "throughput")
BLOCK_SECONDS = 0.05  # one timed block per model per round; short blocks pair well against load changes


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
    runners = {label: Runner(models[label], device=device, precision=precision, config=_compile_config(device, hint),
                             core=core, command="benchmark") for label in order}
    requests = {label: _requests(r.compiled, hint) for label, r in runners.items()}
    for label, runner in runners.items():
        runner.bind_inputs(inputs, requests[label])
    per_inference = _probe(runners[order[0]], requests[order[0]], block_seconds)
    block = block or max(max(requests.values()), int(round(block_seconds / per_inference)))
    rounds = max(3, int(seconds / (2 * block * per_inference)))
    blocks: dict[str, list[list[float]]] = {label: [] for label in order}
    times = interleaved({label: (lambda r=runners[label], b=blocks[label]: b.append(r.timed(block)))
                         for label in order}, rounds)
    session = _Session({label: b[-rounds:] for label, b in blocks.items()}, times,
                       {label: inference_precision(r.compiled) for label, r in runners.items()}, requests)
    return session, block, runners["protected"].compiled


def _requests(compiled: ov.CompiledModel, hint: str) -> int:
    if hint == "latency":
        return 1
    try:
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    except RuntimeError:
        return 1


def _probe(runner: Runner, requests: int, block_seconds: float) -> float:
    """Seconds per inference, from a warmed-up run of about half a block."""
    runner.timed(max(2, requests))  # the first inferences are slow (allocation, caches)
    count = max(1, requests)
    while True:
        start = time.perf_counter()
        runner.timed(count)
        elapsed = time.perf_counter() - start
        if elapsed >= block_seconds / 2 or count >= 1 << 20:
            break
        count *= 2
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
    for model in (original, protected):
        refuse_stateful(model, "benchmark")  # before shapes: an LLM's dynamic inputs would be the wrong complaint
    core = core or shared_core()
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


def compiled_fusion(protected: ov.Model, original: ov.Model | None = None, *, device: str = "CPU",
                    precision: str = "f32", shapes: Mapping[str, Sequence[int]] | None = None,
                    hint: str = "latency") -> FusionReport:
    """Which guards of ``protected`` the plugin fuses, from one compilation as :func:`benchmark` compiles it (same
    static shapes, hint and precision), without timing anything; with ``original``, also compiled, a fused guard
    whose kernel differs from every kernel of the original is marked ``changed``
    (:func:`ovrange.bench.fusion.against_original`)."""
    from ovrange.bench.fusion import against_original, kernels

    def compiled(model: ov.Model) -> tuple[ov.Model, ov.CompiledModel]:
        refuse_stateful(model, "benchmark")
        static = with_static_shapes(model, static_shapes(model, shapes))
        return static, Runner(static, device=device, precision=precision, config=_compile_config(device, hint),
                              command="benchmark").compiled

    report = fusion_report(*compiled(protected)[::-1], device)
    if original is None:
        return report
    static, compiled_original = compiled(original)
    return against_original(report, kernels(compiled_original, static))


def overhead_until(original: ov.Model, protected: ov.Model, width: float, *, seconds: float, sessions: int,
                   steps: int, **options: Any) -> tuple[PairedRatio, BenchmarkResult]:
    """The latency ratio protected / original over sessions of :func:`benchmark` (``seconds`` and ``sessions``
    per step), adding steps until the 95% interval over all session medians is at most ``width`` wide (a
    fraction: 0.01 for 1%), ``steps`` steps at most. Returns the pooled ratio and the last step's result."""
    medians: list[float] = []
    for _ in range(max(1, steps)):
        run = benchmark(original, protected, seconds=seconds, sessions=sessions, **options)
        medians.extend(run.session_ratios)
        ratio = paired_ratio([1.0] * len(medians), medians)
        if ratio.high - ratio.low <= width:
            break
    return ratio, run
