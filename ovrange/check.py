"""CI gates for a protected model: accuracy drop, latency overhead and SDC reduction against the original.

Each gate is measured only when its threshold is given (accuracy always: it is cheap and every report wants it) and
becomes a typed :class:`Gate`; :class:`CheckResult` turns into JSON for the CI artifact and, through
:meth:`CheckResult.raise_for_failure`, into one ``CheckFailed`` line naming every failed gate.

Units, chosen to read like the numbers people quote:

* ``max_accuracy_drop``: percentage points of top-1 (``0.5`` allows 90.0% -> 89.5%). Without labels, the reference
  is the original model's own predictions (arg-max over the last axis, a sample agreeing only when every position
  agrees), so the "accuracy" of the original is 100% by definition.
* ``max_overhead``: percent of latency, the overhead :func:`ovrange.bench.benchmark` reports (``1`` = 1%). For a
  stateful language model, both the time to first token and the time per output token overhead through
  ``LLMPipeline`` (:func:`ovrange.bench.llm.benchmark_llm`, greedy generations of the prompts) must stay within it.
* ``min_sdc_reduction``: times fewer SDCs, as Ranger reports it (``5`` = at least 5x fewer), from one fault-injection
  campaign replaying the same faults on both models.

A model ``protect`` validated on held-out calibration samples (:mod:`ovrange.validate`) always gets the
``heldout_agreement`` gate: it fails when the protection changed a clean held-out output (under the model's
criterion or ``linf:0.01``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ovrange.bench import BenchmarkResult, benchmark
from ovrange.bench.llm import LlmBenchmarkResult, benchmark_llm
from ovrange.compare import Judge, SdcCriterion, agreement, output_index
from ovrange.data import LabelledData
from ovrange.errors import CheckFailed, ConfigError
from ovrange.evaluate import label_accuracy, predict_outputs
from ovrange.graph import get_rt_json
from ovrange.runtime import is_stateful
from ovrange.text import is_language_model

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Thresholds:
    max_accuracy_drop: float | None = None  # percentage points of top-1
    max_overhead: float | None = None  # percent of latency
    min_sdc_reduction: float | None = None  # times fewer SDCs
    trials: int = 1000  # fault-injection trials for the SDC gate

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "max_overhead"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
        if self.min_sdc_reduction is not None and not self.min_sdc_reduction > 0:
            raise ConfigError(f"min_sdc_reduction must be > 0 (times fewer SDCs), got {self.min_sdc_reduction}")
        if self.trials < 1:
            raise ConfigError(f"trials must be >= 1, got {self.trials}")


@dataclass(frozen=True)
class Gate:
    """One threshold and what was measured against it; ``message`` is the one-line verdict."""

    name: str
    measured: float | None
    limit: float
    passed: bool
    message: str


@dataclass(frozen=True)
class Accuracy:
    reference: str  # "labels" or "original predictions"
    samples: int
    original: float
    protected: float

    @property
    def drop_pp(self) -> float:
        return (self.original - self.protected) * 100.0


@dataclass(frozen=True)
class CheckResult:
    gates: tuple[Gate, ...]
    accuracy: Accuracy
    benchmark: BenchmarkResult | LlmBenchmarkResult | None = None
    fault_injection: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    @property
    def failures(self) -> list[Gate]:
        return [gate for gate in self.gates if not gate.passed]

    def reason(self) -> str:
        return "; ".join(gate.message for gate in self.failures)

    def raise_for_failure(self) -> None:
        """Raise CheckFailed (exit code 10 in the CLI) with every failed gate on one line."""
        if not self.passed:
            raise CheckFailed(f"check failed: {self.reason()}")

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "gates": [asdict(gate) for gate in self.gates],
            "accuracy": {**asdict(self.accuracy), "drop_pp": self.accuracy.drop_pp},
            "benchmark": self.benchmark.to_json() if self.benchmark else None,
            "fault_injection": self.fault_injection,
        }


def check(
    original: ov.Model,
    protected: ov.Model,
    data: LabelledData,
    thresholds: Thresholds,
    *,
    device: str = "CPU",
    batch_size: int = 64,
    limit: int | None = None,
    bench_seconds: float = 10.0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    sdc: str | None = None,
    output: str | None = None,
    progress: ProgressFn | None = None,
    folders: tuple[str | Path, str | Path] | None = None,
    prompts: Sequence[str] | None = None,
) -> CheckResult:
    """Measure what ``thresholds`` ask for and judge each gate; never raises for a failed gate (see raise_for_failure).

    Args:
        data: labelled data (``ovrange.data.load``); without labels, accuracy is agreement with the original.
        limit: use only the first ``limit`` samples for accuracy.
        bench_seconds, shapes: passed to :func:`ovrange.bench.benchmark` for the overhead gate.
        seed: seed of the fault plan for the SDC gate.
        sdc: SDC criterion (``top1``, ``tokens``, ``linf:<t>``, ``cosine:<t>``) of the SDC gate and, without labels,
            of the agreement with the original; default: top-1 (per position for sequence outputs).
        output: the judged output's name (default: the first, or those ``sdc`` names).
        folders, prompts: for the overhead gate of a stateful language model: the original's and the protected
            LLM folders (or their ``openvino_model.xml``) and the prompt texts they generate from (32 new tokens).
    """
    judge = Judge.for_model(original, SdcCriterion.parse(sdc), output) if sdc else None
    language_model = is_stateful(original) and is_language_model(original)
    if judge and judge.criterion.metric == "generation" and not language_model:
        raise ConfigError(f"--sdc {judge.criterion} judges the generations of stateful language models; the original "
                          "is not one")
    if thresholds.max_overhead is not None and language_model and (folders is None or not prompts):
        raise ConfigError("the latency gate of a language model times LLMPipeline generations: it needs both LLM "
                          "folders and prompt texts (--data prompts.txt or .jsonl)")
    index = output_index(original, output) if output else 0
    accuracy = measure_accuracy(original, protected, data, device=device, batch_size=batch_size, limit=limit,
                                judge=judge, output=index, progress=progress)
    gates = []
    if thresholds.max_accuracy_drop is not None:
        gates.append(_at_most("accuracy_drop", accuracy.drop_pp, thresholds.max_accuracy_drop, " pp",
                              f"top-1 accuracy drop {accuracy.drop_pp:.3g} pp ({accuracy.original:.2%} -> "
                              f"{accuracy.protected:.2%} vs {accuracy.reference})"))
    bench: BenchmarkResult | LlmBenchmarkResult | None = None
    if thresholds.max_overhead is not None and language_model:
        bench, overheads = _llm_overhead(folders, prompts, thresholds.max_overhead, device=device,
                                         seconds=bench_seconds)
        gates.extend(overheads)
    elif thresholds.max_overhead is not None:
        bench = benchmark(original, protected, device=device, seconds=bench_seconds, shapes=shapes, seed=seed)
        ratio = bench.latency_ratio
        gates.append(_at_most("overhead", bench.latency_overhead_pct, thresholds.max_overhead, "%",
                              f"latency overhead {bench.latency_overhead_pct:+.2f}% (paired, 95% CI "
                              f"{(ratio.low - 1) * 100:+.2f}% to {(ratio.high - 1) * 100:+.2f}%)"))
    heldout = heldout_gate(protected)
    if heldout is not None:
        gates.append(heldout)
    campaign = None
    if thresholds.min_sdc_reduction is not None:
        campaign, gate = _sdc_gate(original, protected, data, thresholds, device=device, seed=seed, sdc=sdc,
                                   output=output, progress=progress)
        gates.append(gate)
    return CheckResult(tuple(gates), accuracy, bench, campaign)


def measure_accuracy(original: ov.Model, protected: ov.Model, data: LabelledData, *, device: str = "CPU",
                     batch_size: int = 64, limit: int | None = None, judge: Judge | None = None,
                     output: int = 0, progress: ProgressFn | None = None) -> Accuracy:
    """Top-1 accuracy of both models (f32) on ``data``: against its labels, or, without labels, the protected
    model's agreement with the original (arg-max of output ``output``, or ``judge``'s SDC criterion). Stateful
    language models: the share of prompts whose greedy generation (``generation:N``, default 16 tokens) is the
    original's."""
    if is_stateful(original) and is_language_model(original):
        from ovrange import data as data_mod
        from ovrange.evaluate import generation_shares

        judge = judge or Judge(SdcCriterion.parse("generation"))
        if judge.criterion.metric != "generation":
            raise ConfigError(f"stateful language models are compared by their greedy generations: use --sdc "
                              f"generation:N, not {judge.criterion}")
        samples = list(data_mod.subset(data.dataset, limit)[0])
        shares = generation_shares([original, protected], samples, judge, device=device)
        return Accuracy(f"original generations ({judge.criterion})", len(samples), 1.0, shares[1])
    outputs = [predict_outputs(m, data.dataset, batch_size=batch_size, device=device, limit=limit,
                               progress=progress) for m in (original, protected)]
    outputs = [judge.pick(o) if judge and data.labels is None else o[judge.output if judge else output]
               for o in outputs]
    if data.labels is not None:
        scores = [label_accuracy(output, data.labels).top1 for output in outputs]
        return Accuracy("labels", len(outputs[0]), scores[0], scores[1])
    reference = f"original outputs ({judge.criterion})" if judge else "original predictions"
    return Accuracy(reference, len(outputs[0]), 1.0, agreement(outputs[0], outputs[1], judge))


def _llm_overhead(folders: tuple[str | Path, str | Path] | None, prompts: Sequence[str] | None, limit: float, *,
                  device: str, seconds: float) -> tuple[LlmBenchmarkResult, list[Gate]]:
    """The time-to-first-token and time-per-output-token gates, timed through LLMPipeline."""
    assert folders is not None and prompts
    result = benchmark_llm(folders[0], folders[1], prompts, device=device, seconds=seconds)
    gates = []
    for name, what, ratio in (("ttft_overhead", "time to first token", result.ttft_ratio),
                              ("tpot_overhead", "time per output token", result.tpot_ratio)):
        pct = (ratio.median - 1) * 100
        gates.append(_at_most(name, pct, limit, "%", f"{what} overhead {pct:+.2f}% (LLMPipeline, paired median of "
                              f"{ratio.rounds} rounds, 95% CI {(ratio.low - 1) * 100:+.2f}% to "
                              f"{(ratio.high - 1) * 100:+.2f}%)"))
    return result, gates


def heldout_gate(protected: ov.Model) -> Gate | None:
    """The held-out agreement ``protect`` recorded in a protected model (:mod:`ovrange.validate`): a protection that
    changed clean held-out outputs fails; None for a model protected without held-out validation."""
    raw = get_rt_json(protected, "protection")
    entry = raw.get("report", {}).get("heldout") if isinstance(raw, dict) else None
    if not isinstance(entry, dict) or not entry.get("agreement"):
        return None
    worst = min(entry["agreement"], key=lambda a: a["rate"])
    changed = worst["total"] - worst["agree"]
    what = (f"held-out agreement {worst['rate']:.2%} ({worst['agree']}/{worst['total']} clean samples, 95% CI "
            f"{worst['ci95'][0]:.1%}-{worst['ci95'][1]:.1%}, {worst['criterion']})")
    passed = changed == 0
    return Gate("heldout_agreement", float(worst["rate"]), 1.0, passed,
                f"{what}: clean outputs {'unchanged' if passed else 'changed by the protection'}")


def _at_most(name: str, measured: float, limit: float, unit: str, what: str) -> Gate:
    passed = bool(measured <= limit)
    verdict = "within" if passed else "exceeds"
    return Gate(name, measured, limit, passed, f"{what} {verdict} the limit of {limit:g}{unit}")


def _sdc_gate(original: ov.Model, protected: ov.Model, data: LabelledData, thresholds: Thresholds, *, device: str,
              seed: int, sdc: str | None, output: str | None, progress: ProgressFn | None
              ) -> tuple[dict[str, Any], Gate]:
    from ovrange.faults.campaign import inject  # the campaign machinery is only needed by this gate

    named = []
    for model, name in ((original, "original"), (protected, "protected")):
        clone = model.clone()  # the campaign names its models after them; both often share one friendly name
        clone.set_friendly_name(name)
        named.append(clone)
    result = inject(named[0], data.dataset, compare=named[1], labels=data.labels, trials=thresholds.trials,
                    seed=seed, device=device, sdc=sdc, output=output, progress=progress)
    comparison = result.comparison()
    before, after = result.rates(0)["sdc"], result.rates(1)["sdc"]
    ratio = comparison["sdc_reduction"]["ratio"]
    limit = thresholds.min_sdc_reduction
    rates = f"SDC rate {before.rate:.2%} -> {after.rate:.2%} over {comparison['trials']} trials"
    if before.k == 0:
        gate = Gate("sdc_reduction", None, limit, False, f"{rates}: the original had no SDC, so no reduction can "
                    f"be shown; run more trials (--trials)")
    else:
        passed = ratio is None or ratio >= limit  # None: no SDC left at all
        shown = "no SDC left" if ratio is None else f"{ratio:.3g}x fewer SDCs"
        gate = Gate("sdc_reduction", None if ratio is None else float(ratio), limit, passed,
                    f"{rates} ({shown}) {'meets' if passed else 'is below'} the minimum of {limit:g}x")
    return {"trials": thresholds.trials, "seed": seed, "summary": result.summary()}, gate
