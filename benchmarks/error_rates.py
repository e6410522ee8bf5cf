"""Accuracy against error rate for every protection: the curves and tables of docs/error-rates.md.

Seed 003 plots accuracy against a per-neuron error rate (six-bit errors on ResNet, word errors on VGG); seed 002
tabulates accuracy against the weights' bit-error rate in FP32, FP16 and 8-bit fixed point. Here, per model (the
bundled FashionLeNet, FashionSevenAct and FashionViT) and per fault setting, one sweep
(``ovrange.faults.sweep.run_sweep``: one campaign per rate, the same seeded faults replayed on every compared
model):

* activations, per-value error rate per inference, fault models ``bit``, ``bits:6`` and ``word:0.75``;
* weights, per-bit error rate (BER) in fp32, 8-bit fixed point (``fixed:8:6``) and fp16 (every model stored with
  FP16 weights, as ``ov.save_model`` writes them, then protected); and per-value error rate with ``bits:6`` /
  ``word:0.75`` faults in fp32.

Methods: the original, Ranger, GradientSuppression, BoundedWeights, Checksum (recompute) and Checksum with
``correction: zero``, default parameters otherwise, calibrated on 500 bundled calibration images. The recompute
runs fault-free in these campaigns (faults are injected into the main graph only), which is optimistic at rates
where the re-run itself would be struck. Accuracy = clean accuracy x the fraction of trials
whose top-1 is unchanged (inputs are correctly classified by every model), with Wilson 95% intervals; the clean
accuracy is measured on the whole test set.

    python benchmarks/error_rates.py --trials 300            # writes docs/error-rates.md and docs/error-rates/
    python benchmarks/error_rates.py --quick --out /tmp/er   # a smoke run
    python benchmarks/error_rates.py --models FashionViT --sweeps activations --max-activation-rate 3e-4 \
        --out /tmp/vit                                       # a part (merge the error-rates.json lists, --from-json)
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
from ovrange.faults.formats import parse_format
from ovrange.faults.sweep import plot_sweep, run_sweep
from ovrange.modelio import read_model

MODELS = {"FashionLeNet": Path("build/default/fashion_lenet.xml"),
          "FashionSevenAct": Path("build/seven_act/fashion_seven_act.xml"),
          "FashionViT": Path("build/vit/fashion_vit.xml")}
METHODS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("original", None, {}), ("Ranger", "Ranger", {}), ("GradientSuppression", "GradientSuppression", {}),
    ("GradientSuppression gated", "GradientSuppression", {"gate": "if"}),
    ("BoundedWeights", "BoundedWeights", {}), ("Checksum", "Checksum", {}),
    ("Checksum zero", "Checksum", {"correction": "zero"}),
]
METHODS_LABELS = [label for label, _, _ in METHODS]
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


def stored_fp16(model: Any) -> Any:
    """``model`` with its weights stored in FP16 (as ``ov.save_model`` writes by default), read back."""
    import tempfile

    import openvino as ov

    with tempfile.TemporaryDirectory() as folder:
        ov.save_model(model, f"{folder}/m.xml", compress_to_fp16=True)
        return read_model(Path(folder) / "m.xml")


def protected_models(path: Path, calib: np.ndarray, fp16: bool = False) -> dict[str, Any]:
    """Every method's model; ``fp16``: protected from the FP16-stored original (seed 002's FP16 weights)."""
    original = stored_fp16(read_model(path)) if fp16 else read_model(path)
    models = {label: original if algorithm is None else
              ovrange.protect(original, calib, algorithm=algorithm, subset_size=len(calib), batch_size=50, **params)
              for label, algorithm, params in METHODS}
    if fp16:  # BoundedWeights writes its clipped weights in f32: store them in FP16 as the original's
        models["BoundedWeights"] = stored_fp16(models["BoundedWeights"])
    return models


def clean_accuracy(models: dict[str, Any], test: Path) -> dict[str, float]:
    """Top-1 accuracy of every method on the whole test set (the campaigns' own estimate uses only the few hundred
    candidate inputs they checked)."""
    from ovrange.runtime import compile_model

    data = np.load(test)
    x, y = data["x"].astype(np.float32), data["y"]
    found = {}
    for label, model in models.items():
        request = compile_model(model, "CPU").create_infer_request()
        predicted = np.concatenate([request.infer([x[i:i + 500]])[0].argmax(1) for i in range(0, len(x), 500)])
        found[label] = float((predicted == y).mean())
    return found


def rescale(summary: dict[str, Any], clean: dict[str, float]) -> None:
    """accuracy = clean test-set accuracy x kept (with kept's Wilson interval)."""
    for label, points in summary["models"].items():
        for p in points:
            p["clean_accuracy"] = clean[label]
            p["accuracy"] = clean[label] * p["kept"]["rate"]
            p["accuracy_ci"] = [clean[label] * p["kept"]["low"], clean[label] * p["kept"]["high"]]


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
             "Produced by `python benchmarks/error_rates.py --trials {} --inputs {}` ({:.0f} min of campaigns on a "
             "shared 2-core machine with other engineers' jobs running, summed over the parts run separately "
             "with `--models` / `--sweeps` and merged; sizes kept modest on purpose; "
             "`--from-json` redraws this page from the saved results).".format(args.trials, args.inputs,
                                                                              seconds / 60), "",
             "Each sweep replays the same seeded faults on every model; a point is one campaign of "
             f"{args.trials} trials (inputs drawn from {args.inputs} test images every model classifies "
             "correctly). Accuracy = clean accuracy x kept, kept = trials whose top-1 is unchanged, with Wilson "
             "95% intervals (brackets). Activation error rate: every value of every activation site struck with "
             "that probability, independently, per inference, each fault applied to the value the site actually "
             "computes (faults upstream included). Weight BER: every stored weight bit flips with that "
             "probability per inference; in fixed point only the struck weights are quantized (the rest stay f32). "
             "Weight error rate: every weight struck with that probability, with a six-bit or word mask.", "",
             "Weight BER in fp16: the model stored with FP16 weights (as `ov.save_model` writes it by default), "
             "protected from that, the flips applied to the stored half-precision values (BoundedWeights' clipped "
             "weights are stored in FP16 too); its clean accuracy is the FP16 model's.", "",
             "Methods (default parameters, calibrated on 500 bundled calibration images): original, Ranger, "
             "GradientSuppression (always on), GradientSuppression gated (`gate: if`: the suppression runs only "
             "when a Checksum check of a MAC layer feeding the activation fails or, for a ReLU, its output is not "
             "max(input, 0) -- seed 003's two detectors), "
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
    for model in dict.fromkeys(entry["model"] for entry in results):
        first = next(entry for entry in results if entry["model"] == model)["summary"]["models"]
        lines += ["", f"Clean accuracy of {model} on the 10,000 test images: " + ", ".join(
            f"{m} {first[m][0]['clean_accuracy']:.2%}" for m, _, _ in METHODS) + "."]
    lines.append("")
    lines += ["## Reading it", "",
              "- Checksum (recompute) stays at the clean accuracy throughout because its re-run is fault-free in "
              "these campaigns (see the caveat above): read it as the ceiling that detection + re-execution "
              "reaches when the re-run is protected, not as a measured figure at high rates. Its single-fault "
              "figures (SDC at the MAC outputs, the logits included) are in [checksum.md](checksum.md).",
              "- Checksum zero (seed 003's suppression of flagged values) helps against transient activation "
              "faults but collapses under weight faults: a weight fault is persistent and fails the check on "
              "every row / pixel the weight feeds, so zeroing erases whole layer outputs.",
              "- BoundedWeights equals the original under activation faults (it only changes how weights are "
              "stored). Under weight faults it is among the best in fp32 (GradientSuppression is level or ahead "
              "for six-bit weight errors) and by far the best in 8-bit fixed point, where clamping activations "
              "(Ranger, GradientSuppression) barely helps: a flipped 8-bit weight stays small, it is just wrong.",
              "- GradientSuppression gated: with seed 003's ReLU check a fault striking a ReLU's output opens the "
              "gate too. FashionLeNet's activation sweeps were re-run with it (the GradientSuppression gated "
              "columns of those three sweeps; the original and always-on columns came out count for count as "
              "before, the same faults) and the gated counts did not change: under error rates at every site, "
              "some MAC check fires in any inference whose answer the faults change. The ReLU check matters for "
              "faults confined to ReLU outputs: there gated without it kept the original's SDC, with it matches "
              "always on (gradient-suppression.md). The other gated columns predate the ReLU check. FashionViT "
              "has GELUs, no ReLU. Gating does not save CPU time (checksum.md).",
              "- FashionViT: activation error rates up to 3e-4 for single-bit faults and up to 1e-4 for six-bit and "
              "word faults (the cascade engine costs one inference per struck site and the ViT has many values "
              "per inference; the original had lost 10 points by then). Range restriction does little on the ViT "
              "(Ranger / GradientSuppression keep a few points over the original: residual connections and "
              "LayerNorm carry a fault past the clamped activations), while BoundedWeights keeps nearly the clean "
              "accuracy under every weight fault setting, FP16 and 8-bit included.",
              "- Ranger and GradientSuppression keep most of the accuracy under activation faults at the rate "
              "where the original has lost 10 points; word (burst) faults cost them more than single bits.", ""]
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
    parser.add_argument("--batch-size", type=int, default=1,
                        help="trials per inference; 1 because Checksum's and gated GradientSuppression's If decides "
                             "for the whole batch: with several trials per batch one trial's detection would "
                             "re-run (or suppress) its batch neighbours too")
    parser.add_argument("--sweeps", default="",
                        help="only the sweeps whose id contains one of these comma-separated parts (e.g. fp16)")
    parser.add_argument("--max-activation-rate", type=float, default=1.0,
                        help="drop activation rates above this (the cascade engine's cost grows with the rate)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--from-json", action="store_true", help="redraw the doc from the saved error-rates.json")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.inputs = min(args.trials, 60), min(args.inputs, 30)
    started = time.perf_counter()
    plots = args.out / "error-rates"
    results = json.loads((plots / "error-rates.json").read_text()) if args.from_json else []
    for name in args.models.split(","):
        path = MODELS[name]
        calib = np.load(path.with_name("calib.npz"))["x"][:500].astype(np.float32)
        wanted = [part for part in args.sweeps.split(",") if part]
        chosen = [s for s in ([] if args.from_json else settings_list(args.quick))
                  if not wanted or any(part in sweep_id(name, s) for part in wanted)]
        formats = {"fp16" if s["number_format"] == "fp16" else "fp32" for s in chosen} or {"fp32"}
        if args.from_json:
            formats |= {"fp16" if e["settings"]["number_format"] == "fp16" else "fp32"
                        for e in results if e["model"] == name}
        by_format = {fmt: protected_models(path, calib, fmt == "fp16") for fmt in sorted(formats)}
        cleans = {fmt: clean_accuracy(ms, path.with_name("test.npz")) for fmt, ms in by_format.items()}
        names = list(METHODS_LABELS)
        for entry in (e for e in results if e["model"] == name):  # --from-json: accuracy and plots again
            rescale(entry["summary"], cleans["fp16" if entry["settings"]["number_format"] == "fp16" else "fp32"])
            entry["at_damage"] = kept_at_damage(entry["summary"])
            s = entry["settings"]
            plot_sweep(entry["summary"], args.out / entry["plot"], title=f"{name}: {s['target']} "
                       f"{'BER' if s['kind'] == 'ber' else 'error rate'}, {s['fault_model']}, {s['number_format']}")
        for s in chosen:
            fmt = "fp16" if s["number_format"] == "fp16" else "fp32"
            models, clean = by_format[fmt], cleans[fmt]
            if s["target"] == "activations":
                s = dict(s, rates=tuple(r for r in s["rates"] if r <= args.max_activation_rate))
            summary = run_sweep(models["original"], str(path.with_name("test.npz")), s["kind"], s["rates"],
                                compare=[models[n] for n in names[1:]], target=s["target"], trials=args.trials,
                                inputs=args.inputs, fault_model=s["fault_model"], number_format=s["number_format"],
                                seed=0, batch_size=args.batch_size)
            summary["models"] = dict(zip(names, summary["models"].values()))  # method labels, not model names
            rescale(summary, clean)
            ident = sweep_id(name, s)
            plot_sweep(summary, plots / f"{ident}.png", title=f"{name}: {s['target']} "
                       f"{'BER' if s['kind'] == 'ber' else 'error rate'}, {s['fault_model']}, {s['number_format']}")
            results.append({"model": name, "settings": {k: s[k] for k in ("target", "kind", "fault_model",
                                                                          "number_format")},
                            "summary": summary, "at_damage": kept_at_damage(summary),
                            "plot": f"error-rates/{ident}.png"})
            print(f"{ident}: {time.perf_counter() - started:.0f}s", flush=True)
            (plots / "error-rates.json").write_text(json.dumps(results, indent=1))  # partial results survive
    (plots / "error-rates.json").write_text(json.dumps(results, indent=1))
    meta = plots / "error-rates-meta.json"
    if args.from_json:  # the campaigns' duration and sizes, not the redraw's
        saved = json.loads(meta.read_text()) if meta.is_file() else {"seconds": float("nan")}
        seconds, args.trials, args.inputs = saved["seconds"], saved.get("trials", args.trials), \
            saved.get("inputs", args.inputs)
    else:
        seconds = time.perf_counter() - started
        meta.write_text(json.dumps({"seconds": seconds, "trials": args.trials, "inputs": args.inputs}))
    (args.out / "error-rates.md").write_text(markdown(results, args, seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
