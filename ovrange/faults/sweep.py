"""Error-rate sweeps: one campaign per rate, the same models, accuracy and SDC against rate with 95% intervals.

Seed 003 plots test accuracy against a per-neuron error rate; seed 002 tabulates accuracy against the weights'
bit-error rate. Here each rate is a campaign (``error_rate``: every value of every site struck with that
probability, per inference for activations; or ``ber``: every weight bit flipped with that probability). Its
trials run on inputs every model classifies correctly, so a trial keeps the answer exactly when the faulty top-1
equals the fault-free one: *accuracy kept* = 1 - SDC - DUE (Wilson interval), and the accuracy estimate on the
test set is the model's clean accuracy (on the candidate inputs checked) times that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovrange.errors import ConfigError
from ovrange.faults.metrics import Rate
from ovrange.faults.result import CampaignResult
from ovrange.outputs import write_file_atomically

SWEEP_FILES = ("sweep.json", "sweep.md", "sweep.png")


def parse_rates(text: str) -> tuple[str, tuple[float, ...]]:
    """``R1,R2,...`` (per-value error rates) or ``ber:R1,R2,...`` (per-bit rates of weights) -> (kind, rates)."""
    kind, _, values = str(text).strip().rpartition(":")
    kind = kind or "error_rate"
    if kind not in ("error_rate", "ber"):
        raise ConfigError(f"unknown sweep kind {kind!r}; use R1,R2,... or ber:R1,R2,...")
    try:
        rates = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"malformed sweep {text!r}: rates are comma-separated numbers") from exc
    if not rates:
        raise ConfigError("the sweep has no rate")
    bad = [r for r in rates if not 0 < r < 1]
    if bad:
        raise ConfigError(f"sweep rates must be in (0, 1), got {bad[0]:g}")
    return kind, tuple(sorted(set(rates)))


@dataclass
class SweepPoint:
    rate: float
    result: CampaignResult


def point_summary(result: CampaignResult, model: int) -> dict[str, Any]:
    run = result.models[model]
    r = result.rates(model)
    kept = Rate(r["masked"].n - r["sdc"].k - r["due"].k, r["masked"].n)
    clean = run.inputs_correct / run.inputs_checked if run.inputs_checked else None
    return {"trials": kept.n, "sdc": r["sdc"].to_dict(), "due": r["due"].to_dict(), "kept": kept.to_dict(),
            "clean_accuracy": clean, "accuracy": None if clean is None else clean * kept.rate,
            "accuracy_ci": None if clean is None else [clean * kept.interval[0], clean * kept.interval[1]]}


def sweep_summary(kind: str, points: list[SweepPoint], settings: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: per model, one entry per rate."""
    names = [run.name for run in points[0].result.models]
    return {"kind": kind, "rates": [p.rate for p in points], "settings": settings,
            "models": {name: [point_summary(p.result, i) for p in points] for i, name in enumerate(names)}}


def run_sweep(model: Any, dataset: Any, kind: str, rates: tuple[float, ...], *, progress=None,
              **settings: Any) -> dict[str, Any]:
    """One campaign per rate (same seed, same inputs); returns :func:`sweep_summary`. ``settings`` go to
    :func:`ovrange.faults.campaign.inject` (compare, labels, target, trials, fault_model, number_format...)."""
    from ovrange.faults.campaign import inject

    points = []
    for rate in rates:
        result = inject(model, dataset, progress=progress, **{**settings, kind: rate})
        points.append(SweepPoint(rate, result))
    shown = {k: v for k, v in points[0].result.spec.to_dict().items() if k not in ("ber", "error_rate", "bits")}
    return sweep_summary(kind, points, shown)


def sweep_markdown(summary: dict[str, Any]) -> str:
    unit = "bit-error rate (per weight bit)" if summary["kind"] == "ber" else (
        "error rate (per value" + (", per inference)" if summary["settings"].get("target") == "activations" else ")"))
    s = summary["settings"]
    lines = ["# Error-rate sweep", "", f"- Rate: {unit}; fault model {s.get('fault_model')} in "
             f"{s.get('number_format')}; target {s.get('target')}; {s.get('trials')} trials per rate, seed "
             f"{s.get('seed')}", "- accuracy = clean accuracy x kept (kept: trials whose top-1 is unchanged, "
             "Wilson 95% interval)", "", "| rate | " + " | ".join(summary["models"]) + " |",
             "|---|" + "---|" * len(summary["models"])]
    for i, rate in enumerate(summary["rates"]):
        cells = []
        for points in summary["models"].values():
            p = points[i]
            kept = p["kept"]
            acc = "" if p["accuracy"] is None else f"acc {p['accuracy']:.1%}, "
            cells.append(f"{acc}kept {kept['rate']:.1%} [{kept['low']:.1%}, {kept['high']:.1%}], "
                         f"SDC {p['sdc']['rate']:.1%}")
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(summary: dict[str, Any], path: Path, title: str = "") -> None:
    """Accuracy (or kept) and SDC against rate, log x axis, every model on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rates = summary["rates"]
    for index, (name, points) in enumerate(summary["models"].items()):
        style = {"marker": "osD^vP*X"[index % 8], "linestyle": ("-", "--", ":", "-.")[index % 4], "capsize": 3,
                 "label": Path(name).stem, "alpha": 0.85}  # overlapping curves stay visible
        use_acc = all(p["accuracy"] is not None for p in points)
        y = [p["accuracy"] if use_acc else p["kept"]["rate"] for p in points]
        lo = [p["accuracy_ci"][0] if use_acc else p["kept"]["low"] for p in points]
        hi = [p["accuracy_ci"][1] if use_acc else p["kept"]["high"] for p in points]
        left.errorbar(rates, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]], **style)
        sdc = [p["sdc"]["rate"] for p in points]
        right.errorbar(rates, sdc, yerr=[[p["sdc"]["rate"] - p["sdc"]["low"] for p in points],
                                         [p["sdc"]["high"] - p["sdc"]["rate"] for p in points]], **style)
    for axis, label in ((left, "accuracy"), (right, "SDC rate")):
        axis.set_xscale("log")
        axis.set_xlabel("bit-error rate" if summary["kind"] == "ber" else "error rate")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(title or f"{summary['settings'].get('target')}, {summary['settings'].get('fault_model')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sweep(summary: dict[str, Any], folder: str | Path, plots: bool = True) -> None:
    folder = Path(folder)
    write_file_atomically(folder / SWEEP_FILES[0], json.dumps(summary, indent=1))
    write_file_atomically(folder / SWEEP_FILES[1], sweep_markdown(summary))
    if plots:
        plot_sweep(summary, folder / SWEEP_FILES[2])
