"""Typed campaign results that round-trip through JSON; rates and breakdowns are derived, never stored twice.

Per-trial outcomes are kept (as one character per trial in JSON: ``m`` masked, ``s`` SDC, ``d`` DUE, ``-`` not
run), so every summary can be recomputed from a saved result and two models can be compared trial by trial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ovrange.errors import ConfigError
from ovrange.faults.metrics import DUE, MASKED, SDC, Rate, breakdown, paired, rates, reduction
from ovrange.faults.sites import Site
from ovrange.faults.spec import CampaignSpec

CODES = "msd"
NOT_RUN = -1
SCHEMA = "ovrange-campaign/1"


@dataclass
class ModelRun:
    """Per-trial outcomes of one model. ``outcome`` holds MASKED/SDC/DUE codes, NOT_RUN for pending trials."""

    name: str
    outcome: np.ndarray
    top1: np.ndarray  # faulty top-1 class, -1 when not a classifier or not run
    deviation: np.ndarray  # relative L-infinity deviation from the fault-free output (inf for NaN/Inf)
    inputs_checked: int = 0  # candidate inputs evaluated fault-free ...
    inputs_correct: int = 0  # ... and how many of them it classified correctly
    seconds: float = 0.0
    flagged: np.ndarray | None = None  # per trial, the model's own detector fired (None: it has none)

    @classmethod
    def empty(cls, name: str, trials: int) -> ModelRun:
        return cls(name, np.full(trials, NOT_RUN, np.int8), np.full(trials, -1, np.int32),
                   np.full(trials, np.nan, np.float32))

    @property
    def done(self) -> np.ndarray:
        return self.outcome != NOT_RUN

    def merge(self, trials: np.ndarray, codes, top1, deviation, flagged=None) -> None:
        """Record the outcomes of ``trials`` (a shard's, or a checkpoint line's)."""
        self.outcome[trials], self.top1[trials], self.deviation[trials] = codes, top1, deviation
        if flagged is not None:
            if self.flagged is None:
                self.flagged = np.zeros(len(self.outcome), bool)
            self.flagged[trials] = flagged

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "inputs_checked": self.inputs_checked, "inputs_correct": self.inputs_correct,
                "seconds": self.seconds,
                "outcomes": "".join("-" if c < 0 else CODES[c] for c in self.outcome.tolist()),
                "top1": self.top1.tolist(),
                "deviation": [None if not np.isfinite(d) else float(d) for d in self.deviation.tolist()],
                **({} if self.flagged is None else {"flagged": "".join("1" if f else "0" for f in self.flagged)})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRun:
        outcome = np.array([NOT_RUN if c == "-" else CODES.index(c) for c in data["outcomes"]], np.int8)
        deviation = np.array([np.inf if d is None else d for d in data["deviation"]], np.float32)
        deviation[outcome == NOT_RUN] = np.nan
        flagged = data.get("flagged")
        return cls(data["name"], outcome, np.array(data["top1"], np.int32), deviation,
                   data.get("inputs_checked", 0), data.get("inputs_correct", 0), data.get("seconds", 0.0),
                   None if flagged is None else np.array([c == "1" for c in flagged], bool))


@dataclass
class CampaignResult:
    """A campaign: its settings, the per-trial plan (site, bit, input) and each model's per-trial outcomes."""

    spec: CampaignSpec
    sites: list[Site]
    trial_site: np.ndarray  # index into ``sites``; -1 for multi-fault (bit-error-rate) trials
    trial_bit: np.ndarray  # -1 for multi-fault trials
    trial_input: np.ndarray
    faults_per_trial: np.ndarray
    models: list[ModelRun]
    data: str = ""
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def trials(self) -> int:
        return int(len(self.trial_input))

    @property
    def complete(self) -> bool:
        return all(bool(m.done.all()) for m in self.models)

    def rates(self, model: int = 0) -> dict[str, Rate]:
        run = self.models[model]
        return rates(run.outcome[run.done])

    def per_layer(self, model: int = 0, code: int = SDC) -> dict[str, Rate]:
        run = self.models[model]
        keep = run.done & (self.trial_site >= 0)
        names = np.array([s.name for s in self.sites], dtype=object)
        found = breakdown(names[self.trial_site[keep]].astype(str), run.outcome[keep], code)
        return {s.name: found[s.name] for s in self.sites if s.name in found}  # graph order

    def per_bit(self, model: int = 0, code: int = SDC) -> dict[int, Rate]:
        run = self.models[model]
        keep = run.done & (self.trial_bit >= 0)
        found = breakdown(self.trial_bit[keep], run.outcome[keep], code)
        return {int(k): v for k, v in sorted(found.items(), key=lambda kv: int(kv[0]))}

    def comparison(self, first: int = 0, second: int = 1) -> dict[str, Any]:
        """SDC, DUE and SDC+DUE reductions from model ``first`` to ``second`` on the trials both ran, the paired
        table and the DUEs turned silent (DUE under ``first``, SDC under ``second``): a protection that turns
        detectable NaN/Inf into plausible wrong answers lowers DUE and raises SDC, which SDC+DUE shows."""
        a, b = self.models[first], self.models[second]
        both = a.done & b.done
        ra, rb = rates(a.outcome[both]), rates(b.outcome[both])
        table = paired(a.outcome[both], b.outcome[both])
        failed_a, failed_b = (Rate(r["sdc"].k + r["due"].k, r["sdc"].n) for r in (ra, rb))
        return {"models": [a.name, b.name], "trials": int(both.sum()),
                "sdc_reduction": reduction(ra["sdc"], rb["sdc"]), "due_reduction": reduction(ra["due"], rb["due"]),
                "sdc_due_reduction": reduction(failed_a, failed_b), "due_turned_silent": table["due"]["sdc"],
                "paired": table}

    def summary(self) -> dict[str, Any]:
        """The machine-readable digest CI reads: rates with intervals, breakdowns, comparison."""
        out: dict[str, Any] = {"target": self.spec.target, "trials": self.trials, "complete": self.complete,
                               "models": {}}
        for i, run in enumerate(self.models):
            entry = {k: v.to_dict() for k, v in self.rates(i).items()}
            if (self.trial_site >= 0).any():
                entry["per_layer"] = {k: v.to_dict() for k, v in self.per_layer(i).items()}
                entry["per_bit"] = {str(k): v.to_dict() for k, v in self.per_bit(i).items()}
            entry["seconds"] = run.seconds
            entry["trials_per_second"] = int(run.done.sum()) / run.seconds if run.seconds else None
            out["models"][run.name] = entry
        if len(self.models) > 1:
            out["comparison"] = self.comparison()  # the first model against the second
            out["comparisons"] = [self.comparison(0, i) for i in range(1, len(self.models))]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "spec": self.spec.to_dict(), "data": self.data, "fingerprint": self.fingerprint,
                "meta": self.meta, "sites": [s.to_dict() for s in self.sites], "summary": self.summary(),
                "trials": {"site": self.trial_site.tolist(), "bit": self.trial_bit.tolist(),
                           "input": self.trial_input.tolist(), "faults": self.faults_per_trial.tolist()},
                "models": [m.to_dict() for m in self.models]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CampaignResult:
        if data.get("schema") != SCHEMA:
            raise ConfigError(f"not an ovrange campaign result (schema {data.get('schema')!r})")
        trials = data["trials"]
        return cls(CampaignSpec.from_dict(data["spec"]),
                   [Site(s["name"], s["op"], tuple(s["shape"]), s.get("format", "fp32")) for s in data["sites"]],
                   np.array(trials["site"], np.int32), np.array(trials["bit"], np.int16),
                   np.array(trials["input"], np.int64), np.array(trials["faults"], np.int32),
                   [ModelRun.from_dict(m) for m in data["models"]], data.get("data", ""),
                   data.get("fingerprint", ""), data.get("meta", {}))

    @classmethod
    def from_json(cls, text: str) -> CampaignResult:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> CampaignResult:
        return cls.from_json(Path(path).read_text())


__all__ = ["CampaignResult", "ModelRun", "MASKED", "SDC", "DUE", "NOT_RUN"]
