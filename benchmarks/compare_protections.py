"""Every protection method x three models x weight and activation faults, in one run: the table in
docs/comparison.md.

For each model the same fault list (seeded) is replayed on the original and on every protected twin, so the SDC
rates are paired trial by trial. Per method: clean accuracy on held-out data, SDC and DUE rates with Wilson 95%
intervals for activation and weight faults (single bit flips in f32, random bit, one fault per inference as in
Ranger), and the CPU latency overhead (median of paired per-round ratios, batch 1, f32, interleaved rounds).

Models: the bundled FashionLeNet, the bundled seven-activation CNN (ReLU, Swish, PReLU, ELU, GELU, Sigmoid, Tanh),
the bundled Fashion ViT (scripts/build_vit.py: SDPA, MVN LayerNorm, Gelu), PP-OCRv4 text recognition (SDC = any
decoded position changes) and PP-OCRv4 text detection (SDC = the binarized probability map changes) from the
rapidocr-onnxruntime wheel.

    python benchmarks/compare_protections.py              # full run (~1 h on 2 cores), rewrites docs/
    python benchmarks/compare_protections.py --quick      # a smoke run with few trials, to a temp folder
    python benchmarks/compare_protections.py --models vit --trials 20000 --merge   # one model, others kept
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

import ovrange
from ovrange.evaluate import predict, top1
from ovrange.faults import inject
from ovrange.modelio import read_model
from ovrange.runtime import compile_model
from ovrange.timing import interleaved, paired_ratio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# (label, algorithm, params); None = the unprotected original.
METHODS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("original", None, {}),
    ("RangeSupervision", "RangeSupervision", {}),
    ("Ranger", "Ranger", {}),
    ("Ranger p99.9", "Ranger", {"bound": "percentile", "percentile": 99.9}),
    ("Ranger per-channel", "Ranger", {"per_channel": True}),
    ("Ranger zero-reset", "Ranger", {"correction": "zero"}),
    ("GradientSuppression", "GradientSuppression", {}),
    ("BoundedWeights", "BoundedWeights", {}),
    ("GlobalClipper", "GlobalClipper", {}),
    ("GlobalClipper per-channel", "GlobalClipper", {"per_channel": True}),
]


@dataclass
class Subject:
    """One model of the comparison with its data and how its clean accuracy is scored."""

    name: str
    model: ov.Model
    calib: np.ndarray
    eval_x: np.ndarray
    eval_y: Any  # labels, or texts for OCR
    sdc: str  # SDC criterion of the campaigns
    inputs: int  # distinct (correctly handled) inputs the campaign draws from
    trials_scale: float = 1.0  # OCR is ~500x costlier per inference than the CNNs
    latency_reps: int = 200  # inferences per timing round
    batch_size: int = 64  # faults per inference; the OCR model's activations need a smaller batch to fit in memory
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method label -> parameter overrides

    def accuracy(self, model: ov.Model) -> float:
        if self.sdc.startswith(("boxes", "regions")):  # eval_y: the original's binarized maps; identical pages count
            from scripts import ocr_det

            maps = ocr_det.binary_maps(model, self.eval_x)
            return float(np.mean([np.array_equal(a, b) for a, b in zip(maps, self.eval_y)]))
        if self.sdc in ("tokens", "text"):
            from scripts import ocr_data

            texts = ocr_data.recognize(model, self.eval_x)
            return float(np.mean([a == b for a, b in zip(texts, self.eval_y)]))
        return float((top1(predict(model, self.eval_x, batch_size=500)) == self.eval_y).mean())


def subjects(which: list[str], det_sdc: str = "boxes", rec_sdc: str = "tokens") -> list[Subject]:
    from scripts.build_default_model import build_default

    found = []
    paths = build_default(REPO / "build", log=False)
    for key, name in (("lenet", "FashionLeNet"), ("seven", "FashionSevenAct")):
        if key not in which:
            continue
        calib = np.load(paths[key]["calib_npz"])["x"][:300].astype(np.float32)
        test = np.load(paths[key]["test_npz"])
        found.append(Subject(name, read_model(paths[key]["xml"]), calib, test["x"].astype(np.float32), test["y"],
                             "top1", 100))
    if "vit" in which:
        from scripts.build_vit import build_vit

        vit = build_vit(REPO / "build", log=False)
        test = np.load(vit["test_npz"])
        found.append(Subject("FashionViT", read_model(vit["xml"]), np.load(vit["calib_npz"])["x"].astype(np.float32),
                             test["x"].astype(np.float32), test["y"], "top1", 100, latency_reps=50))
    if "ppocr_det" in which:
        from scripts import ocr_det

        det = read_model(ocr_det.det_model_path())
        pages = ocr_det.pages(40, seed=123)  # unseen pages (calibration: seed 0)
        # 128 calibration pages do not cover every unseen page's range: GlobalClipper widens its bounds by 25%
        # (with the observed max, 7 of 40 unseen pages flip pixels; docs/transformers.md); per-channel bounds from
        # them flip pixels on 10 of 40 pages even with that margin, so det keeps one bound per tensor
        name = "PP-OCRv4 det" if det_sdc == "boxes" else f"PP-OCRv4 det ({det_sdc})"
        found.append(Subject(name, det, ocr_det.pages(128, seed=0), pages, ocr_det.binary_maps(det, pages),
                             det_sdc, 20, trials_scale=0.25, latency_reps=5, batch_size=8,
                             params={"GlobalClipper": {"margin": 0.25, "per_channel": False}}))
    if "ppocr" in which:
        from scripts import ocr_data

        texts = ocr_data.sample_texts(100, seed=123)
        x = np.concatenate([ocr_data.preprocess(ocr_data.render_line(t)) for t in texts])
        name = "PP-OCRv4 rec" if rec_sdc == "tokens" else f"PP-OCRv4 rec ({rec_sdc})"
        found.append(Subject(name, read_model(ocr_data.rec_model_path()), ocr_data.calibration_inputs(256),
                             x, texts, rec_sdc, 20, trials_scale=0.25, latency_reps=5, batch_size=16))
    return found


def latency_overhead(original: ov.Model, protected: ov.Model, sample: np.ndarray, reps: int, rounds: int):
    a = compile_model(original, "CPU", precision="f32").create_infer_request()
    b = compile_model(protected, "CPU", precision="f32").create_infer_request()

    def run(request):
        return lambda: [request.infer([sample], share_outputs=True) for _ in range(reps)]

    times = interleaved({"original": run(a), "protected": run(b)}, rounds=rounds)
    return paired_ratio(times["original"], times["protected"])


def tenths(log, label: str):
    """A campaign progress callback that logs every tenth (long OCR campaigns run in the background)."""
    seen = set()

    def progress(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth not in seen:
            seen.add(tenth)
            log(f"{label}: {done}/{total} trials, {time.strftime('%H:%M:%S')}")
    return progress


def rate_cell(rate: dict) -> str:
    return f"{rate['rate']:.2%} [{rate['low']:.2%}, {rate['high']:.2%}]"


def compare(subject: Subject, trials: int, rounds: int, seed: int, log, methods=METHODS) -> dict[str, Any]:
    log(f"== {subject.name}: protecting with {len(methods) - 1} methods")
    models, rows = [], {}
    for label, algorithm, params in methods:
        started = time.perf_counter()
        try:
            model = subject.model if algorithm is None else ovrange.protect(
                subject.model, subject.calib, algorithm=algorithm, subset_size=len(subject.calib),
                **{**params, **subject.params.get(label, {})})
        except ovrange.OvrangeError as exc:
            log(f"   {label}: not applicable ({exc})")
            rows[label] = {"error": str(exc)}
            continue
        model.set_friendly_name(label)
        info = ovrange.protection_info(model)
        rows[label] = {"protected_nodes": len(info.nodes) if info else 0,
                       "protect_seconds": time.perf_counter() - started,
                       "clean_accuracy": subject.accuracy(model)}
        if info and info.report:
            rows[label]["report"] = info.report
        models.append((label, model))
        log(f"   {label}: {rows[label]['protected_nodes']} nodes, clean accuracy {rows[label]['clean_accuracy']:.2%}")
    n = max(50, int(trials * subject.trials_scale))
    for target in ("activations", "weights"):
        log(f"   {target} campaign: {n} faults x {len(models)} models")
        result = inject(models[0][1], subject.eval_x, compare=[m for _, m in models[1:]], labels=
                        subject.eval_y if subject.sdc == "top1" else None, target=target, trials=n, seed=seed,
                        sdc=subject.sdc, inputs=subject.inputs, batch_size=subject.batch_size,
                        progress=tenths(log, f"   {target}"))
        summary = result.summary()
        for (label, _), run in zip(models, result.models):
            entry = summary["models"][run.name]
            rows[label][target] = {"sdc": entry["sdc"], "due": entry["due"], "trials": n}
    sample = subject.eval_x[:1]
    for label, model in models[1:] if rounds > 0 else []:  # --rounds 0: no timing (a loaded machine)
        ratio = latency_overhead(subject.model, model, sample, subject.latency_reps, rounds)
        rows[label]["latency_ratio"] = {"median": ratio.median, "low": ratio.low, "high": ratio.high,
                                        "rounds": ratio.rounds}
        log(f"   {label}: latency x{ratio.median:.3f}")
    return {"model": subject.name, "sdc_criterion": subject.sdc, "methods": rows}


SDC_TEXT = {"top1": "top-1 change on correctly classified inputs",
            "tokens": "any decoded position (per-position top-1) changes",
            "text": "the text read changes (greedy CTC decoding of the per-position top-1: repeats merged, blanks "
                    "dropped)",
            "boxes": "any pixel of the probability map binarized at 0.3 flips (the map DBNet's boxes come from); "
                     "clean accuracy = unseen pages whose binarized map equals the original's",
            "regions": "the text regions of the map binarized at 0.3 change (a region DBNet keeps appears, vanishes, "
                       "merges or splits, or a box side moves by more than N pixels; ovrange.faults.regions); clean "
                       "accuracy = unseen pages whose binarized map equals the original's"}


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# Protection methods compared", "",
             f"Generated by `{meta['command']}` on {meta['date']} (OpenVINO {meta['openvino']}, CPU, f32). "
             f"Seed {meta['seed']}. Rates are over the trials of one campaign per target, with Wilson 95% "
             "intervals; every method saw the same faults. Latency is the median of paired per-round ratios "
             "protected/original (batch 1, interleaved rounds, 95% interval).", ""]
    for block in results:
        lines += [f"## {block['model']}", "",
                  "| method | nodes | clean accuracy | activation SDC | activation DUE | weight SDC | weight DUE "
                  "| latency |", "|---|---|---|---|---|---|---|---|"]
        counts = {(r["activations"]["trials"], r["weights"]["trials"]) for r in block["methods"].values()
                  if "activations" in r}
        order = {m[0]: i for i, m in enumerate(METHODS)}  # merged runs: rows in METHODS order
        for label, row in sorted(block["methods"].items(), key=lambda item: order.get(item[0], len(order))):
            if "error" in row:
                lines.append(f"| {label} | — | not applicable: {row['error']} | | | | | |")
                continue
            if len(counts) > 1:  # rows of several runs (--merge): say which
                label += f" ({row['activations']['trials']}/{row['weights']['trials']} faults)"
            cells = [label, str(row["protected_nodes"]), f"{row['clean_accuracy']:.2%}"]
            for target in ("activations", "weights"):
                cells += [rate_cell(row[target]["sdc"]), rate_cell(row[target]["due"])]
            ratio = row.get("latency_ratio")
            cells.append("—" if ratio is None else f"{ratio['median']:.3f}x [{ratio['low']:.3f}, {ratio['high']:.3f}]")
            lines.append("| " + " | ".join(cells) + " |")
        trials = {t: next(r[t]["trials"] for r in block["methods"].values() if t in r) for t in
                  ("activations", "weights")}
        lines += ["", f"Trials: {trials['activations']} activation faults, {trials['weights']} weight faults; "
                  f"SDC = {SDC_TEXT[block['sdc_criterion'].split(':')[0]]}.", ""]
    return "\n".join(lines) + "\n"


def notes(path: Path) -> str:
    """The hand-written sections of an existing comparison.md (from "## Reading the table" on), kept on rewrite."""
    text = path.read_text() if path.is_file() else ""
    start = text.find("\n## Reading the table")
    return "" if start < 0 else text[start:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3000, help="faults per target for the CNNs (OCR: a quarter)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved latency rounds per method (0: no "
                        "latency)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="lenet,seven,vit,ppocr,ppocr_det")
    parser.add_argument("--methods", default=None, help="comma-separated method labels (default: all); the "
                        "original is always included")
    parser.add_argument("--rec-sdc", default="tokens", help="SDC criterion of PP-OCRv4 rec: tokens (any of the 40 "
                        "positions' top-1 changes) or text (the text read changes)")
    parser.add_argument("--det-sdc", default="boxes", help="SDC criterion of PP-OCRv4 det: boxes (any pixel of "
                        "the binarized map flips), boxes:N (more than N pixels) or regions:N (DBNet's text regions "
                        "change)")
    parser.add_argument("--ocr-scale", type=float, default=None, help="OCR trials as a fraction of --trials")
    parser.add_argument("--merge", action="store_true", help="keep the other models' results of an existing "
                        "comparison.json (update only --models)")
    parser.add_argument("--combine", type=Path, nargs="+", default=None, help="run nothing: merge the results of "
                        "these comparison.json files (runs made in parallel with --out elsewhere) into --out")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--quick", action="store_true", help="200 trials, 3 rounds, output to /tmp")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.rounds, args.out = 200, 3, Path("/tmp/ovrange-compare")
    log = lambda text: print(text, flush=True)  # noqa: E731
    started = time.time()
    wanted = set(args.methods.split(",")) if args.methods else None
    methods = [m for m in METHODS if wanted is None or m[0] in wanted or m[1] is None]
    chosen = [] if args.combine else subjects(args.models.split(","), args.det_sdc, args.rec_sdc)
    for subject in chosen:
        if args.ocr_scale is not None and subject.trials_scale != 1.0:
            subject.trials_scale = args.ocr_scale
    args.merge = args.merge or bool(args.combine)
    results = [compare(s, args.trials, args.rounds, args.seed, log, methods) for s in chosen]
    for path in args.combine or []:
        results += json.loads(path.read_text())["results"]
    if args.merge and (args.out / "comparison.json").is_file():
        previous = json.loads((args.out / "comparison.json").read_text())["results"]
        for block in results:
            match = [b for b in previous if b["model"] == block["model"]]
            if match:  # rows of methods not rerun are kept
                match[0]["methods"].update(block["methods"])
            else:
                previous.append(block)
        results = previous
    meta = {"command": "python benchmarks/compare_protections.py" + (" --quick" if args.quick else "") +
            (" --combine (runs listed under Reading the table)" if args.combine else ""),
            "date": time.strftime("%Y-%m-%d"), "openvino": ov.__version__.split("-")[0], "seed": args.seed,
            "trials": args.trials, "seconds": round(time.time() - started)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    (args.out / "comparison.md").write_text(markdown(results, meta) + notes(args.out / "comparison.md"))
    log(f"wrote {args.out / 'comparison.md'} and comparison.json in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
