"""Protection under a latency budget: keep the guards that remove the most SDC per unit of measured cost.

``protect --max-overhead 1%`` protects the model fully, then chooses the subset of the plan's guards (or Checksum
checks) that fits the budget:

1. *Benefit*, from a short seeded campaign (:data:`TRIALS` activation faults in the exponent bits :data:`BITS`)
   on the original and the fully protected model, the same faults on both: per fault site, the SDCs the full
   protection removed (SDC on the original, not on the protected model, minus the reverse). The faults of a site
   are credited to the first guards they meet on their way to the outputs (the guard of the site itself, else the
   nearest guards downstream, shared equally), so a guard's benefit is the part of the full protection's SDC
   reduction it delivers (the vulnerability map's per-site SDC share, restricted to what guards actually stop).
2. *Cost*, by construction from the compiled graph (:func:`ovrange.bench.benchmark.compiled_fusion`, no timing):
   a guard the plugin fuses into a kernel that runs the same model layers as a kernel of the original model, with
   the same implementation (a post-op of a Convolution or FullyConnected, one more op in an eltwise chain), one it
   folds into a weight constant and one it removes cost nothing and are always kept; a standalone guard, a fused
   guard whose kernel differs from all of the original's (it split or broke a fusion: a guard inside attention
   stops the fused attention kernel; or it changed the implementation: MLAS to brgemm) and a Checksum check cost a
   pass over their tensor, in proportion to its elements. Only these are priced by timing: the full protection
   against its free guards alone gives the price of an element.
3. *Greedy by benefit / cost*, then *vet*: the priced candidates are taken in benefit/cost order while their
   predicted overhead fits. The chosen set is replayed on the benefit campaign's faults and every guard that
   leaves it worse than no guard is dropped (:func:`ovrange.budget_credit.vet`: a lone guard after a layer that
   mixed an unguarded fault turns the unguarded model's NaN into a plausible wrong answer), so the kept set is
   never worse than the original in SDC or in SDC+DUE on those faults.
4. *Verify*: the vetted set is timed against the original. Every timing adds paired sessions until its 95%
   interval is narrower than the budget (:data:`STEPS` steps at most); a set whose median lies above the budget
   is chosen again at the newly measured price (at least its worst-ratio guard dropped; "free" guards too, priced
   by their elements, once they are measured to cost), :data:`MAX_TIMINGS` times at most, then no guard is kept.
   The kept set's overhead is *verified* when its interval's upper end is within the budget; otherwise the record
   says the budget could not be verified (too noisy a machine, too short a ``--time``) and nothing claims it.

The expected SDC reduction of the chosen set is counted on the same campaign's faults, by the kept set's replay:
the original's SDC count over the kept set's, and the share of the full protection's reduction it keeps. Both are
estimates from :data:`TRIALS` exponent-bit faults on the calibration data; a campaign with
``ovrange inject --compare`` on held-out data measures them.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import openvino as ov

from ovrange.budget_credit import Candidate, Vetting, _candidates, _coverage, trial_nodes, vet
from ovrange.errors import ConfigError, ModelError
from ovrange.faults.metrics import SDC
from ovrange.graph import set_rt_json

TRIALS = 1000  # faults of the benefit campaign (seconds on small models)
# Its bits: the f32 exponent's. Range guards stop values a flip moved far out of range; a flip of a mantissa or sign
# bit changes a value by at most 2x or its sign, which no guard tells from a clean value. Sampling only the
# exponent flips gives a few times the SDCs per trial (FashionSevenAct: 70 in 1,000 exponent-bit faults, 10 in 400
# faults over all bits).
BITS = "23-30"
SECONDS = 8.0  # one timing step of a candidate set, both models together
SESSIONS = 4  # compilations per step (the interval is taken over the session medians of all steps)
STEPS = 4  # steps at most per timed set: timing stops once the interval is narrower than the budget
MAX_TIMINGS = 4  # timed sets at most; when every one's median is above the budget, no guard is kept

ProgressFn = Callable[[int, int], None]


def parse_overhead(value: str | float | int, where: str = "--max-overhead") -> float:
    """A latency budget in percent (``1``, ``1%``, ``0.3%``), as ``check --max-overhead`` takes it -> the
    fraction (0.01 for 1%); refused unless finite and >= 0."""
    text = str(value).strip()
    try:
        percent = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        raise ConfigError(f"{where} {value!r} is not a percentage such as 1% or 0.3%") from None
    if not math.isfinite(percent) or percent < 0 or isinstance(value, bool):
        raise ConfigError(f"{where} {value!r} must be a finite percentage >= 0")
    return percent / 100


@dataclass(frozen=True)
class Overhead:
    """A measured latency overhead (fraction) with its 95% interval over ``sessions`` session medians, of
    ``guards`` guards against ``against`` (the original, or the full protection's free guards alone)."""

    guards: int
    median: float
    low: float
    high: float
    sessions: int
    against: str = "original"

    def text(self) -> str:
        return f"{self.median:+.2%} [{self.low:+.2%}, {self.high:+.2%}]"


@dataclass(frozen=True)
class BudgetResult:
    """The chosen guards, their measured overhead and the expected SDC reduction (from the benefit campaign)."""

    max_overhead: float
    trials: int
    seed: int
    sdc: str
    sdc_original: int  # SDCs of the benefit campaign on the original ...
    sdc_full: int  # ... and on the fully protected model
    candidates: tuple[Candidate, ...]  # in greedy order, best benefit/cost first
    chosen: tuple[str, ...]
    timings: tuple[Overhead, ...]  # every timed set, the full protection first
    vetting: tuple[Vetting, ...] = ()  # every chosen set replayed on the benefit faults before it was timed

    @property
    def overhead(self) -> Overhead | None:
        """The measurement of the chosen set (None when no guard is kept: no overhead to measure)."""
        return next((t for t in reversed(self.timings) if t.guards == len(self.chosen)), None)

    @property
    def verified(self) -> bool:
        """The kept set's measured overhead is within the budget at 95% confidence (its interval's upper end)."""
        return self.overhead is not None and self.overhead.high <= self.max_overhead

    @property
    def removed(self) -> float:
        chosen = set(self.chosen)
        return sum(c.removed for c in self.candidates if c.key in chosen)

    @property
    def sdc_kept(self) -> float:
        """SDCs left with the chosen set on the benefit faults: counted by its replay (the last vetting), or, for a
        set that was not replayed, the original's minus the chosen guards' credited removals."""
        last = self.vetting[-1] if self.vetting else None
        folded = {c.key for c in self.candidates if c.fusion == "folded"}
        vetted = [k for k in self.chosen if k not in folded]  # a replay counts the activation guards it vetted
        if vetted and last is not None and last.guards == len(vetted) and not last.dropped:
            return last.sdc
        return self.sdc_original - self.removed

    @property
    def kept_share(self) -> float | None:
        """Share of the full protection's SDC reduction the chosen set keeps on the benefit faults."""
        gain = self.sdc_original - self.sdc_full
        return (self.sdc_original - self.sdc_kept) / gain if gain > 0 else None

    @property
    def expected_reduction(self) -> float | None:
        """SDC reduction (original / chosen) on the benefit campaign's faults; None: no SDC left."""
        left = self.sdc_kept
        return self.sdc_original / left if left > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {"max_overhead": self.max_overhead, "trials": self.trials, "bits": BITS, "seed": self.seed,
                "sdc": self.sdc,
                "sdc_original": self.sdc_original, "sdc_full": self.sdc_full, "chosen": list(self.chosen),
                "overhead": None if self.overhead is None else asdict(self.overhead), "verified": self.verified,
                "sdc_kept": self.sdc_kept, "kept_share": self.kept_share,
                "expected_reduction": self.expected_reduction,
                "timings": [asdict(t) for t in self.timings], "vetting": [v.to_json() for v in self.vetting],
                "candidates": [{**asdict(c), "sites": list(c.sites)} for c in self.candidates]}


def protect_within_budget(model: ov.Model, dataset: Any, algorithms: tuple, max_overhead: float, *,
                          device: str = "CPU", progress: ProgressFn | None = None, holdout: float | None = None,
                          sdc: str | None = None, **settings: Any) -> tuple[ov.Model, BudgetResult]:
    """A POT chain (``ovrange.protect.run_chain``, with its ``holdout`` and ``sdc``) whose protection is cut to
    ``max_overhead`` (see :func:`within_budget`; ``sdc`` is also the benefit campaign's criterion; ``settings``:
    its trials, seed, output, seconds, sessions)."""
    from ovrange import quantize
    from ovrange.algorithms import QUANTIZATIONS
    from ovrange.protect import run_chain

    for step in (a for a in algorithms if a.name in QUANTIZATIONS):
        model = quantize.apply(model, dataset, step, progress=progress)
    protection = tuple(a for a in algorithms if a.name not in QUANTIZATIONS)[:1]
    chain = {} if holdout is None else {"holdout": holdout}
    full = run_chain(model, dataset, protection, device=device, progress=progress, sdc=sdc, **chain)
    return within_budget(model, full, dataset, max_overhead, device=device, progress=progress, sdc=sdc, **settings)


def within_budget(model: ov.Model, protected: ov.Model, dataset: Any, max_overhead: float, *,
                  trials: int = TRIALS, seed: int = 0, sdc: str | None = None, output: str | None = None,
                  seconds: float = SECONDS, sessions: int = SESSIONS, steps: int = STEPS, shapes: dict | None = None,
                  device: str = "CPU", progress: ProgressFn | None = None) -> tuple[ov.Model, BudgetResult]:
    """The protection of ``protected`` (``model`` fully protected by ovrange) cut to the guards that fit
    ``max_overhead`` (a fraction: 0.01 for 1%), and how they were chosen. ``sdc`` and ``output``: the criterion
    and judged output of the benefit campaign; ``seconds``, ``sessions``, ``steps``, ``shapes``: of each timing."""
    from ovrange.bench.benchmark import compiled_fusion, overhead_until
    from ovrange.bench.shapes import sample_shapes
    from ovrange.faults.campaign import inject
    from ovrange.faults.faultlist import FaultList
    from ovrange.faults.report import FAULTS_FILE
    from ovrange.protect import apply_plan, protection_info

    plan = protection_info(protected)
    if plan is None:
        raise ModelError("--max-overhead needs a model protected by ovrange")
    if not plan.guards:
        raise ModelError(f"{plan.algorithm} inserted nothing into this model: there is no guard to choose")
    criterion = {"sdc": sdc} if sdc else {}
    with tempfile.TemporaryDirectory(prefix="ovrange-budget-") as folder:  # keeps the fault list to replay
        campaign = inject(model, dataset, compare=protected, target="activations", trials=trials, seed=seed,
                          bits=BITS, **criterion, output=output, progress=progress, checkpoint_dir=folder)
        faults = FaultList.load(f"{folder}/{FAULTS_FILE}")
    shapes = shapes or sample_shapes(dataset, model)  # a dynamic input is timed at the data's shape
    fusion = compiled_fusion(protected, model, device=device, shapes=shapes)
    candidates = rank(_candidates(model, protected, plan.guards, campaign, fusion, plan.algorithm == "Checksum"))

    def with_guards(keys: list[str]) -> ov.Model:
        if not keys:
            return model
        return protected if len(keys) == len(plan.guards) else apply_plan(model, _subset(plan, keys))

    def timed(keys: list[str], base: list[str] | None = None) -> Overhead:
        ratio, _ = overhead_until(with_guards(base or []), with_guards(keys), max_overhead, seconds=seconds,
                                  sessions=sessions, steps=steps, device=device, shapes=shapes, seed=seed)
        return Overhead(len(keys), ratio.median - 1, ratio.low - 1, ratio.high - 1, ratio.rounds,
                        "free guards" if base else "original")

    records: list[Vetting] = []

    def replay(keys: list[str]) -> np.ndarray:
        if len(keys) == len(plan.guards):  # the full protection ran in the benefit campaign
            return campaign.models[1].outcome
        again = inject(with_guards(keys), dataset, replay=faults, **criterion, output=output)
        return again.models[0].outcome

    folded = {c.key for c in candidates if c.fusion == "folded"}

    def vetted(keys: list[str]) -> list[str]:
        # the guards of stored weights clamp constants the clean model never exceeds (identity on activation
        # faults, folded at compile time): always kept, only the activation guards are vetted
        weights = [k for k in keys if k in folded]
        kept, done = vet([k for k in keys if k not in folded], lambda chosen: replay(chosen + weights),
                         campaign.models[0].outcome, trial_nodes(campaign), lambda chosen: _coverage(model, chosen))
        records.extend(done)
        kept_set = folded | set(kept)
        return [k for k in keys if k in kept_set]

    chosen, timings = choose(candidates, max_overhead, timed, vetted)
    result = BudgetResult(max_overhead, campaign.trials, seed, str(campaign.spec.sdc),
                          _sdc_count(campaign, 0), _sdc_count(campaign, 1), tuple(candidates), tuple(chosen),
                          tuple(timings), tuple(records))
    cut = plan if len(chosen) == len(plan.guards) else _subset(plan, chosen)
    cut = replace(cut, report={**cut.report, "budget": result.to_json()})
    if not chosen:  # nothing fits: the model as it was, with the record of why (a pass may not take zero guards)
        unprotected = model.clone()
        set_rt_json(unprotected, "protection", cut.to_json())
        return unprotected, result
    return apply_plan(model, cut), result


def choose(candidates: list[Candidate], max_overhead: float, measure: Callable[..., Overhead],
           vetted: Callable[[list[str]], list[str]] = list) -> tuple[list[str], list[Overhead]]:
    """Free guards (cost 0 by the compiled graph) are kept; priced ones by ``measure(all, free)`` (the full
    protection against its free guards alone) and taken greedily by benefit/cost (``candidates`` ranked; one that
    would overflow the predicted budget is skipped, a cheaper one after it may still fit). Each chosen set is first
    cut by ``vetted`` (the guards that leave it no worse than no guard, :func:`ovrange.budget_credit.vet`), then
    timed by ``measure(keys)``; while its median lies above the budget, it is chosen again at the price that
    measurement gives, with at least its worst-ratio guard dropped (priced guards first; once none is left, the
    free ones, priced by their elements). Returns the chosen keys (in rank order) and every timing."""
    free = [c for c in candidates if c.cost == 0]
    paid = [c for c in candidates if c.cost > 0]
    timings: list[Overhead] = []
    picked = list(candidates)
    if paid:
        priced = measure([c.key for c in candidates], [c.key for c in free])
        timings.append(priced)
        unit = max(priced.median, 0.0) / sum(c.cost for c in paid)
        picked = _in_rank(candidates, free + _greedy(paid, unit, max_overhead))
    for _ in range(MAX_TIMINGS):
        kept_keys = set(vetted([c.key for c in picked])) if picked else set()
        picked = [c for c in picked if c.key in kept_keys]
        if not picked:
            break
        last = measure([c.key for c in picked])
        timings.append(last)
        if last.median <= max_overhead:  # kept: verified when the whole interval is within the budget
            return [c.key for c in picked], timings
        # measured over the budget: chosen again at the measured price, at least one guard dropped; the standalone
        # ones first, and free ones (which then measurably cost) priced by their elements
        standalone = [c for c in picked if c.cost > 0]
        pool = standalone or rank([replace(c, cost=float(c.elements)) for c in picked])
        unit = max(last.median, 0.0) / sum(c.cost for c in pool)
        kept = _greedy(pool, unit, max_overhead)[:len(pool) - 1]
        picked = _in_rank(candidates, [c for c in picked if c.cost == 0 and standalone] + kept)
    return [], timings


def _in_rank(candidates: list[Candidate], chosen: list[Candidate]) -> list[Candidate]:
    keys = {c.key for c in chosen}
    return [c for c in candidates if c.key in keys]


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Best benefit/cost first; guards that removed nothing in the campaign last, cheapest first."""
    return sorted(candidates, key=lambda c: (-c.ratio, c.cost, c.key))


def _greedy(candidates: list[Candidate], unit: float, max_overhead: float) -> list[Candidate]:
    """In rank order, every candidate whose predicted cost still fits in what is left of the budget; guards the
    campaign credited with nothing only fill what is left once every guard credited with something is in."""
    total, picked, left_out = 0.0, [], False
    for c in candidates:
        if c.removed <= 0 and left_out:
            break
        if total + c.cost * unit <= max_overhead:
            total += c.cost * unit
            picked.append(c)
        else:
            left_out = True
    return picked


def _subset(plan, keys: list[str]):
    wanted = set(keys)
    return replace(plan, guards={k: v for k, v in plan.guards.items() if k in wanted})


def _sdc_count(campaign, index: int) -> int:
    run = campaign.models[index]
    return int(np.count_nonzero(run.outcome[run.done] == SDC))


def describe(budget: dict[str, Any]) -> list[str]:
    """What ``protect --max-overhead`` prints of a budget record (:meth:`BudgetResult.to_json`)."""
    total = len(budget["candidates"])
    free = sum(1 for c in budget["candidates"] if c["cost"] == 0)
    lines = [f"budget {budget['max_overhead']:.2%}: {len(budget['chosen'])} of {total} guards kept",
             f"  {free} of {total} cost nothing by the compiled graph, {total - free} were priced by timing"]
    chosen = set(budget["chosen"])
    dropped = list(dict.fromkeys(k for v in budget.get("vetting", ()) for k in v["dropped"] if k not in chosen))
    if dropped:
        lines.append(f"  {len(dropped)} guards dropped as worse than no guard on the benefit faults (without the "
                     "guards upstream of them they turned faults into SDCs or DUEs): " + ", ".join(dropped))
    overhead = budget["overhead"]
    if overhead is None:
        timed = ", ".join(f"{t['guards']} guards {t['median']:+.2%}" for t in budget["timings"])
        lines.append("  no guard set fits the budget and is no worse than no guard: the model is written without "
                     f"guards (measured overheads: {timed or 'none timed'})")
    else:
        lines.append(f"  measured overhead {overhead['median']:+.2%} [{overhead['low']:+.2%}, "
                     f"{overhead['high']:+.2%}] (paired median over {overhead['sessions']} sessions, 95% interval)")
        if not budget["verified"]:
            lines.append("  note: the budget is not verified: the interval reaches past it (a busy machine, or too "
                         "short a --time); re-time the result with `ovrange benchmark --time 40` before relying on "
                         "it")
    kept, ratio = budget["kept_share"], budget["expected_reduction"]
    kept_text, ratio_text = "–" if kept is None else f"{kept:.0%}", "∞" if ratio is None else f"{ratio:.1f}×"
    lines.append(f"  expected SDC reduction {ratio_text}, {kept_text} of the full protection's "
                 f"({budget['sdc_original']} → {budget['sdc_full']} SDC in {budget['trials']} activation faults in "
                 f"bits {budget['bits']}, seed {budget['seed']}, --sdc {budget['sdc']})")
    return lines
