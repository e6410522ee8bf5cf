"""Accuracy against error rate for every protection: the curves and tables of docs/error-rates.md.

Seed 003 plots accuracy against a per-neuron error rate (six-bit errors on ResNet, word errors on VGG); seed 002
tabulates accuracy against the weights' bit-error rate in FP32, FP16 and 8-bit fixed point. Here, per model (the
bundled FashionLeNet and FashionSevenAct) and per fault setting, one sweep (``ovrange.faults.sweep.run_sweep``:
one campaign per rate, the same seeded faults replayed on every compared model):

* activations, per-value error rate per inference, fault models ``bit``, ``bits:6`` and ``word:0.75``;
* weights, per-bit error rate (BER) in fp32, 8-bit fixed point (``fixed:8:6``) and fp16 when the project has the
  format; and per-value error rate with ``bits:6`` / ``word:0.75`` faults in fp32.

Methods: the original, Ranger, GradientSuppression, BoundedWeights, Checksum (recompute) and Checksum with
``correction: zero``, default parameters otherwise, calibrated on 500 bundled calibration images. The recompute
runs fault-free in these campaigns (faults are injected into the main graph only), which is optimistic at rates
where the re-run itself would be struck. Accuracy = clean accuracy x the fraction of trials
whose top-1 is unchanged (inputs are correctly classified by every model), with Wilson 95% intervals.

    python benchmarks/error_rates.py --trials 300            # writes docs/error-rates.md and docs/error-rates/
    python benchmarks/error_rates.py --quick --out /tmp/er   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import ovrange
from ovrange.errors import ConfigError
from ovrange.faults.model import parse_format
from ovrange.faults.sweep import plot_sweep, run_sweep
from ovrange.modelio import read_model

MODELS = {"FashionLeNet": Path("build/default/fashion_lenet.xml"),
          "FashionSevenAct": Path("build/seven_act/fashion_seven_act.xml")}
METHODS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("original", None, {}), ("Ranger", "Ranger", {}), ("GradientSuppression", "GradientSuppression", {}),
    ("BoundedWeights", "BoundedWeights", {}), ("Checksum", "Checksum", {}),
    ("Checksum zero", "Checksum", {"correction": "zero"}),
]
ACTIVATION_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
WEIGHT_BERS = {"fp32": (1e-7, 1e-6, 1e-5, 1e-4), "fixed:8:6": (1e-5, 1e-4, 1e-3, 1e-2), "fp16": (1e-6, 1e-5, 1e-4, 1e-3)}
WEIGHT_RATES = (1e-6, 1e-5, 1e-4, 1e-3)


def settings_list(quick: bool) -> list[dict[str, Any]]:
    """Every sweep: (target, kind, rates, fault model, number format)."""
    sweeps = [{"target": "activations", "kind": "error_rate", "rates": ACTIVATION_RATES, "fault_model": fm,
               "number_format": "fp32"} for fm in ("bit", "bits:6", "word:0.75")]
    for fmt, rates in WEIGHT_BERS.items():
        try:
            parse_format(fmt)
        except ConfigError:
            continue  # fp16 arrives with the formats work; skipped where the project does not have it yet
        sweeps.append({"target": "weights", "kind": "ber", "rates": rates, "fault_model": "bit", "number_format": fmt})
    sweeps += [{"target": "weights", "kind": "error_rate", "rates": WEIGHT_RATES, "fault_model": fm,
                "number_format": "fp32"} for fm in ("bits:6", "word:0.75")]
    if quick:
        sweeps = [dict(s, rates=s["rates"][1::2]) for s in sweeps[:2] + sweeps[3:4]]
    return sweeps


def protected_models(path: Path, calib: np.ndarray) -> dict[str, Any]:
    original = read_model(path)
    return {label: original if algorithm is None else
            ovrange.protect(original, calib, algorithm=algorithm, subset_size=len(calib), batch_size=50, **params)
            for label, algorithm, params in METHODS}


def sweep_id(model: str, s: dict[str, Any]) -> str:
    return f"{model}_{s['target']}_{s['kind']}_{s['fault_model']}_{s['number_format']}".replace(":", "-")


def kept_at_damage(summary: dict[str, Any], drop: float = 0.10) -> dict[str, Any] | None:
    """At the lowest rate where the original loses >= ``drop`` accuracy: every method's accuracy there."""
    original = summary["models"]["original"]
    for i, point in enumerate(original):
        if point["clean_accuracy"] - point["accuracy"] >= drop:
            return {"rate": summary["rates"][i], "accuracy": {name: points[i]["accuracy"] for name, points in
                                                               summary["models"].items()},
                    "interval": {name: points[i]["accuracy_ci"] for name, points in summary["models"].items()},
                    "clean": {name: points[i]["clean_accuracy"] for name, points in summary["models"].items()}}
    return None


def markdown(results: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    lines = ["# Accuracy against error rate", "",
             "Produced by `python benchmarks/error_rates.py --trials {}` in {:.0f} min on a shared 2-core machine "
             "(other engineers' jobs running; sizes kept modest on purpose).".format(args.trials, seconds / 60), "",
             "Each sweep replays the same seeded faults on every model; a point is one campaign of "
             f"{args.trials} trials (inputs drawn from {args.inputs} test images every model classifies "
             "correctly). Accuracy = clean accuracy x kept, kept = trials whose top-1 is unchanged, with Wilson "
             "95% intervals (brackets). Activation error rate: every value of every activation site struck with "
             "that probability, independently, per inference, each fault applied to the value the site actually "
             "computes (faults upstream included). Weight BER: every stored weight bit flips with that "
             "probability per inference; in fixed point only the struck weights are quantized (the rest stay f32). "
             "Weight error rate: every weight struck with that probability, with a six-bit or word mask.", "",
             "Methods (default parameters, calibrated on 500 bundled calibration images): original, Ranger, "
             "GradientSuppression (always on; the detection-gated form is discussed in the notes below), "
             "BoundedWeights, Checksum (recompute of the whole inference when a MatMul/Convolution check fails) "
             "and Checksum zero (the flagged row / pixel set to zero). **Caveat:** the recompute runs fault-free "
             "here (faults strike the main graph only). At error rates where a whole inference carries tens of "
             "faults, a real re-run would be struck too, and any check firing triggers a re-run that also removes "
             "faults at sites Checksum does not check (ReLU, pooling outputs): its high-rate points are an upper "
             "bound. Checksum zero has no such advantage.",
             "", "## Where the original has lost 10 accuracy points", "",
             "| model | faults | rate | " + " | ".join(label for label, _, _ in METHODS) + " |",
             "|---|---|---|" + "---|" * len(METHODS)]
    for entry in results:
        s, hit = entry["settings"], entry["at_damage"]
        what = f"{s['target']} {'BER' if s['kind'] == 'ber' else 'error rate'}, {s['fault_model']}, {s['number_format']}"
        if hit is None:
            lines.append(f"| {entry['model']} | {what} | not reached | " + " | ".join("" for _ in METHODS) + " |")
            continue
        cells = [f"{hit['accuracy'][m]:.1%} [{hit['interval'][m][0]:.1%}, {hit['interval'][m][1]:.1%}]"
                 for m, _, _ in METHODS]
        lines.append(f"| {entry['model']} | {what} | {hit['rate']:g} | " + " | ".join(cells) + " |")
    lines += ["", "Clean accuracy (first sweep's candidate inputs): " + ", ".join(
        f"{m} {results[0]['summary']['models'][m][0]['clean_accuracy']:.1%}" for m, _, _ in METHODS
        if results[0]["summary"]["models"][m][0]["clean_accuracy"] is not None), ""]
    lines += ["## Curves", ""]
    for entry in results:
        lines += [f"### {entry['model']}: {entry['settings']['target']} "
                  f"{'BER' if entry['settings']['kind'] == 'ber' else 'error rate'}, {entry['settings']['fault_model']}"
                  f", {entry['settings']['number_format']}", "", f"![]({entry['plot']})", "",
                  "| rate | " + " | ".join(m for m, _, _ in METHODS) + " |", "|---|" + "---|" * len(METHODS)]
        for i, rate in enumerate(entry["summary"]["rates"]):
            cells = []
            for m, _, _ in METHODS:
                p = entry["summary"]["models"][m][i]
                cells.append(f"{p['accuracy']:.1%} (SDC {p['sdc']['rate']:.1%}, DUE {p['due']['rate']:.1%})")
            lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--inputs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.inputs = min(args.trials, 60), min(args.inputs, 30)
    started = time.perf_counter()
    plots = args.out / "error-rates"
    results = []
    for name in args.models.split(","):
        path = MODELS[name]
        calib = np.load(path.with_name("calib.npz"))["x"][:500].astype(np.float32)
        models = protected_models(path, calib)
        names = list(models)
        for s in settings_list(args.quick):
            summary = run_sweep(models["original"], str(path.with_name("test.npz")), s["kind"], s["rates"],
                                compare=[models[n] for n in names[1:]], target=s["target"], trials=args.trials,
                                inputs=args.inputs, fault_model=s["fault_model"], number_format=s["number_format"],
                                seed=0, batch_size=64)
            summary["models"] = dict(zip(names, summary["models"].values()))  # method labels, not model names
            ident = sweep_id(name, s)
            plot_sweep(summary, plots / f"{ident}.png", title=f"{name}: {s['target']} "
                       f"{'BER' if s['kind'] == 'ber' else 'error rate'}, {s['fault_model']}, {s['number_format']}")
            results.append({"model": name, "settings": {k: s[k] for k in ("target", "kind", "fault_model",
                                                                          "number_format")},
                            "summary": summary, "at_damage": kept_at_damage(summary),
                            "plot": f"error-rates/{ident}.png"})
            print(f"{ident}: {time.perf_counter() - started:.0f}s", flush=True)
            (plots / "error-rates.json").write_text(json.dumps(results, indent=1))  # partial results survive
    (args.out / "error-rates.md").write_text(markdown(results, args, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
