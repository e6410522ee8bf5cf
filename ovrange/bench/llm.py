"""Original vs protected language model, timed as its users run it: openvino-genai's LLMPipeline.

Both LLM folders (an optimum-intel export and its protected copy: a stateful ``openvino_model.xml`` with the
tokenizer beside it) are loaded in one ``LLMPipeline`` each, with the same device and precision. Each round both
generate the same prompt greedily with a fixed number of new tokens (``min_new_tokens = max_new_tokens``: an
end-of-sequence token does not shorten one of them), one after the other (A B, A B, ...; with the control, every
order of the three in turn), so that no pipeline runs twice in a row with its weights still in the caches. The
pipeline's own metrics give the time to first token (the prefill from an empty KV cache, plus the first token) and the mean time
per output token of the decode steps. The overheads are the paired medians of the per-round ratios with a
distribution-free 95% interval (:func:`ovrange.timing.paired_ratio`). With ``control``, a second pipeline of the
original runs in the same rounds: its ratio to the original shows how far the machine alone moves the figures.
openvino-genai is an optional extra (``pip install 'ovrange[llm]'``), imported only here.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ovrange.errors import ConfigError, DeviceError, ModelError
from ovrange.modelio import read_model
from ovrange.runtime import check_device, compile_config, compile_model, is_stateful, last_line
from ovrange.timing import PairedRatio, paired_ratio

IR_NAME = "openvino_model.xml"  # the file name LLMPipeline loads from a folder
KERNELS = ("ScaledDotProductAttention", "RMS", "RoPE", "FullyConnected")  # fused kernels worth keeping


@dataclass(frozen=True)
class LlmTiming:
    """One pipeline's per-generation timings in milliseconds (medians over rounds)."""

    label: str
    ttft_ms: float
    tpot_ms: float
    generations: int


@dataclass(frozen=True)
class LlmBenchmarkResult:
    """TTFT and TPOT of ``protected`` over ``original`` (ratios protected / original), paired per round."""

    device: str
    precision: str
    new_tokens: int
    prompts: int
    rounds: int
    original: LlmTiming
    protected: LlmTiming
    ttft_ratio: PairedRatio
    tpot_ratio: PairedRatio
    control_ttft_ratio: PairedRatio | None
    control_tpot_ratio: PairedRatio | None
    kernels: dict[str, dict[str, int]]  # model label -> runtime layer type -> count (KERNELS only)
    openvino_version: str = field(default_factory=ov.get_version)

    def to_json(self) -> dict[str, Any]:
        def ratio(r: PairedRatio | None) -> dict[str, float] | None:
            return None if r is None else {"median": r.median, "low": r.low, "high": r.high, "n": r.rounds}

        return {
            "kind": "language model (LLMPipeline)", "device": self.device, "precision": self.precision,
            "new_tokens": self.new_tokens, "prompts": self.prompts, "rounds": self.rounds,
            "openvino_version": self.openvino_version,
            "original": vars(self.original), "protected": vars(self.protected),
            "ttft_ratio": ratio(self.ttft_ratio), "tpot_ratio": ratio(self.tpot_ratio),
            "control_ttft_ratio": ratio(self.control_ttft_ratio), "control_tpot_ratio": ratio(self.control_tpot_ratio),
            "kernels": self.kernels,
        }


def llm_folder(path: str | Path) -> Path:
    """The LLM folder of ``path`` (the folder itself, or the folder of its ``openvino_model.xml``)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name != IR_NAME:
        raise ModelError(f"{path}: LLMPipeline loads a language model from a folder as {IR_NAME}; "
                         f"name the IR {IR_NAME}")
    if not (folder / IR_NAME).is_file():
        raise ModelError(f"{folder} holds no {IR_NAME} (an LLM folder as optimum-intel exports it)")
    return folder


def _genai() -> Any:
    try:
        import openvino_genai
    except ImportError as exc:
        raise ConfigError("benchmarking a language model needs openvino-genai: pip install 'ovrange[llm]'") from exc
    return openvino_genai


def _pipeline(genai: Any, folder: Path, device: str, precision: str) -> Any:
    try:
        return genai.LLMPipeline(str(folder), device, **compile_config(device, precision))
    except RuntimeError as exc:
        raise DeviceError(f"LLMPipeline cannot load {folder} on {device}: {last_line(exc)}") from exc


def _orders(labels: list[str]) -> list[tuple[str, ...]]:
    """The rounds' orders of the pipelines: two run A B, A B, ...; three run each of their 6 orders in turn, none
    starting with the pipeline the one before ends with, so that each pipeline runs equally often in each position
    and never twice in a row (with its weights still in the caches)."""
    if len(labels) != 3:
        return [tuple(labels)]
    every = list(itertools.permutations(labels))
    return next(list(cycle) for cycle in itertools.permutations(every)  # a cycle: the last order leads to the first
                if all(a[-1] != b[0] for a, b in zip(cycle, cycle[1:] + cycle[:1])))


def _generate(pipe: Any, prompt: str, config: Any) -> tuple[float, float]:
    """TTFT and mean TPOT (ms) of one greedy generation."""
    metrics = pipe.generate([prompt], config).perf_metrics
    return float(metrics.get_ttft().mean), float(metrics.get_tpot().mean)


def kernel_counts(model: ov.Model, device: str, precision: str) -> dict[str, int]:
    """How many runtime layers of each fused-kernel type (KERNELS) the compiled model has."""
    compiled = compile_model(model, device, precision=precision)
    types = Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()
                    if "layerType" in op.get_rt_info())
    return {kind: types.get(kind, 0) for kind in KERNELS}


def benchmark_llm(
    original: str | Path,
    protected: str | Path,
    prompts: Sequence[str],
    *,
    device: str = "CPU",
    precision: str = "f32",
    new_tokens: int = 32,
    seconds: float = 30.0,
    control: bool = False,
    warmup: int = 2,
) -> LlmBenchmarkResult:
    """Time greedy generation of ``original`` and ``protected`` (LLM folders or their IRs) for about ``seconds``.

    Args:
        prompts: the prompts, cycled over rounds; every round gives the same prompt to each pipeline.
        precision: ``f32`` pins INFERENCE_PRECISION_HINT=f32; ``default`` keeps the plugin's (bf16 on AMX CPUs).
        new_tokens: new tokens per generation (at least 2: one for the first token, the rest for TPOT).
        control: also time a second pipeline of the original (original vs original).
    """
    if new_tokens < 2:
        raise ConfigError("a language-model benchmark needs at least 2 new tokens (first token, then decode steps)")
    if seconds <= 0 or not prompts:
        raise ConfigError("the benchmark needs a positive time and at least one prompt")
    folders = {"original": llm_folder(original), "protected": llm_folder(protected)}
    models = {label: read_model(folder / IR_NAME) for label, folder in folders.items()}
    for label, model in models.items():
        if not is_stateful(model):
            raise ModelError(f"{folders[label] / IR_NAME} is not a stateful language model; LLMPipeline needs the "
                             "KV cache in the model (optimum-intel --task text-generation-with-past)")
    check_device(device)
    compile_config(device, precision)  # an unknown precision: one line, before loading anything
    genai = _genai()
    if control:
        folders["control"] = folders["original"]
    pipes = {label: _pipeline(genai, folder, device, precision) for label, folder in folders.items()}
    config = genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = new_tokens
    config.do_sample = False
    labels = list(pipes)
    orders = _orders(labels)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
    try:
        for label in labels:  # the first generations allocate and warm caches
            for index in range(warmup):
                _generate(pipes[label], prompts[index % len(prompts)], config)
        start = time.perf_counter()
        index = 0
        while index < 3 or time.perf_counter() - start < seconds or index % len(orders):  # whole order cycles
            for label in orders[index % len(orders)]:
                times[label].append(_generate(pipes[label], prompts[index % len(prompts)], config))
            index += 1
    except RuntimeError as exc:
        raise DeviceError(f"generation failed on {device}: {last_line(exc)}") from exc
    return _result(times, models, device=device, precision=precision, new_tokens=new_tokens,
                   prompts=min(len(prompts), index))


def _result(times: dict[str, list[tuple[float, float]]], models: dict[str, ov.Model], *, device: str, precision: str,
            new_tokens: int, prompts: int) -> LlmBenchmarkResult:
    def column(label: str, which: int) -> list[float]:
        return [t[which] for t in times[label]]

    def timing(label: str) -> LlmTiming:
        return LlmTiming(label, float(np.median(column(label, 0))), float(np.median(column(label, 1))),
                         len(times[label]))

    def ratio(label: str, which: int) -> PairedRatio | None:
        return paired_ratio(column("original", which), column(label, which)) if label in times else None

    return LlmBenchmarkResult(
        device=device, precision=precision, new_tokens=new_tokens, prompts=prompts, rounds=len(times["original"]),
        original=timing("original"), protected=timing("protected"),
        ttft_ratio=ratio("protected", 0), tpot_ratio=ratio("protected", 1),  # type: ignore[arg-type]
        control_ttft_ratio=ratio("control", 0), control_tpot_ratio=ratio("control", 1),
        kernels={label: kernel_counts(model, device, precision) for label, model in models.items()},
    )
