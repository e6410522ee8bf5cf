"""Original vs RangeSupervision-protected on deployed low-precision forms: the tables of docs/quantized.md.

Forms of each bundled model: NNCF INT8 (``nncf.quantize``, FakeQuantize + i8 weights), weight-compressed INT8_ASYM
and INT4_SYM (``nncf.compress_weights``) and the FP16 IR (``ov.save_model`` default). Per form, the same seeded fault
list is replayed on the unprotected form and on the form protected after quantization (the chain's order) — and,
for NNCF INT8, on the model protected *before* quantization, to decide the order. Weight faults flip the bits of
the stored format (int8, int4, fp16; auto from the model, INT4's INT8 layers excluded with ``--number-format int4``);
activation faults flip f32 op outputs (before any FakeQuantize). Clean accuracy on the held-out set; latency is
the median of paired per-round ratios (batch 1, f32 hint, interleaved rounds).

    python benchmarks/compare_quantized.py --trials 3000 --json /tmp/quantized.json
    python benchmarks/compare_quantized.py --ppocr      # PP-OCRv4 rec: DefaultQuantization + RangeSupervision text
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.compare_protections import latency_overhead, rate_cell  # noqa: E402
from ovrange import protect  # noqa: E402
from ovrange.config import parse_config  # noqa: E402
from ovrange.evaluate import predict, top1  # noqa: E402
from ovrange.faults import inject  # noqa: E402
from ovrange.quantize import apply  # noqa: E402

COMPRESSION = {"INT8_ASYM weights": {"mode": "INT8_ASYM"},
               "INT4_SYM weights": {"mode": "INT4_SYM", "group_size": 4, "ratio": 1.0}}


def step(name: str, **params: Any):
    return parse_config({"compression": {"algorithms": [{"name": name, "params": params},
                                                        {"name": "RangeSupervision"}]}}).quantization[0]


def fp16_ir(model: ov.Model) -> ov.Model:
    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(model, f"{tmp}/m.xml")  # compress_to_fp16=True, as ovc and the default save do
        return ov.Core().read_model(f"{tmp}/m.xml")


def forms(model: ov.Model, calib: np.ndarray) -> dict[str, list[tuple[str, ov.Model]]]:
    """Form -> [(label, model)]: the unprotected form first, then its protected twin(s)."""
    out: dict[str, list[tuple[str, ov.Model]]] = {}
    int8 = apply(model, calib, step("DefaultQuantization", stat_subset_size=len(calib)))
    before = apply(protect(model, calib, subset_size=len(calib)), calib,
                   step("DefaultQuantization", stat_subset_size=len(calib)))
    out["NNCF INT8"] = [("INT8", int8), ("INT8 -> RangeSupervision", protect(int8, calib, subset_size=len(calib))),
                        ("RangeSupervision -> INT8", before)]
    for label, params in COMPRESSION.items():
        compressed = apply(model, None, step("WeightCompression", **params))
        out[label] = [(label, compressed), (f"{label} -> RangeSupervision",
                                            protect(compressed, calib, subset_size=len(calib)))]
    half = fp16_ir(model)
    out["FP16 IR"] = [("FP16", half), ("FP16 -> RangeSupervision", protect(half, calib, subset_size=len(calib)))]
    out["f32 (reference)"] = [("f32", model), ("f32 -> RangeSupervision", protect(model, calib,
                                                                                  subset_size=len(calib)))]
    return out


def compare(name: str, model: ov.Model, calib: np.ndarray, x: np.ndarray, y: np.ndarray, trials: int, rounds: int,
            seed: int, log) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for form, models in forms(model, calib).items():
        log(f"== {name} / {form}")
        for label, m in models:
            m.set_friendly_name(label)
            rows[label] = {"form": form, "accuracy": float((top1(predict(m, x, batch_size=500)) == y).mean())}
        for target in ("weights", "activations"):
            fmt = "int4" if target == "weights" and "INT4" in form else None
            started = time.perf_counter()
            result = inject(models[0][1], x, compare=[m for _, m in models[1:]], labels=y, target=target,
                            trials=trials, seed=seed, inputs=100, number_format=fmt)
            summary = result.summary()
            for (label, _), run in zip(models, result.models):
                rows[label][target] = {**summary["models"][run.name], "format": result.spec.number_format,
                                       "trials": trials}
            log(f"   {target} ({result.spec.number_format}): " + ", ".join(
                f"{label} {rate_cell(rows[label][target]['sdc'])}" for label, _ in models)
                + f" [{time.perf_counter() - started:.0f}s]")
        for label, m in models[1:]:
            ratio = latency_overhead(models[0][1], m, x[:1].astype(np.float32), 200, rounds)
            rows[label]["latency"] = {"median": ratio.median, "low": ratio.low, "high": ratio.high}
        log("   accuracy: " + ", ".join(f"{label} {rows[label]['accuracy']:.2%}" for label, _ in models))
    return {"model": name, "rows": rows}


def markdown(blocks: list[dict[str, Any]], trials: int) -> str:
    lines = []
    for block in blocks:
        lines += [f"### {block['model']}", "",
                  "| form / model | accuracy | weight faults: SDC (format) | activation faults: SDC | latency |",
                  "|---|---|---|---|---|"]
        for label, row in block["rows"].items():
            latency = row.get("latency")
            cell = f"x{latency['median']:.3f} [{latency['low']:.3f}, {latency['high']:.3f}]" if latency else "—"
            lines.append(f"| {label} | {row['accuracy']:.2%} | {rate_cell(row['weights']['sdc'])} "
                         f"({row['weights']['format']}) | {rate_cell(row['activations']['sdc'])} | {cell} |")
        lines.append("")
    lines.append(f"{trials} single-bit faults per campaign and target, Wilson 95% intervals.")
    return "\n".join(lines) + "\n"


def ppocr(lines: int, calib_size: int, log) -> dict[str, Any]:
    """PP-OCRv4 rec through the chain: decoded text on rendered lines the calibration never saw, with nncf's
    default scheme and with ``model_type: transformer`` (the recognizer has an attention neck)."""
    from scripts import ocr_data
    from ovrange.modelio import read_model

    model = read_model(ocr_data.rec_model_path())
    calib = ocr_data.calibration_inputs(calib_size, seed=0)
    texts = ocr_data.sample_texts(lines, seed=123)
    x = np.concatenate([ocr_data.preprocess(ocr_data.render_line(t)) for t in texts])
    reference = ocr_data.recognize(model, x)
    out: dict[str, Any] = {"lines": lines, "calibration": calib_size,
                           "f32": {"correct": int(sum(a == b for a, b in zip(reference, texts)))}}
    for label, params in (("default", {}), ("transformer", {"model_type": "transformer"})):
        started = time.perf_counter()
        int8 = apply(model, calib, step("DefaultQuantization", stat_subset_size=calib_size, **params))
        chained = protect(int8, calib, subset_size=calib_size)
        out[label] = {"chain_seconds": time.perf_counter() - started}
        for name, m in (("INT8", int8), ("chain", chained)):
            got = ocr_data.recognize(m, x)
            out[label][name] = {"correct": int(sum(a == b for a, b in zip(got, texts))),
                                "same_as_f32": int(sum(a == b for a, b in zip(got, reference)))}
        log(json.dumps({label: out[label]}))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="lenet,seven")
    parser.add_argument("--ppocr", action="store_true", help="only the PP-OCRv4 text check")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import nncf

    nncf.set_log_level(logging.ERROR)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    if args.ppocr:
        result: Any = ppocr(100, 64, log)
    else:
        from scripts.build_default_model import build_default

        paths = build_default(REPO / "build", log=False)
        blocks = []
        for key, name in (("lenet", "FashionLeNet"), ("seven", "FashionSevenAct")):
            if key not in args.models.split(","):
                continue
            calib = np.load(paths[key]["calib_npz"])["x"][:300].astype(np.float32)
            test = np.load(paths[key]["test_npz"])
            model = ov.Core().read_model(paths[key]["xml"])
            blocks.append(compare(name, model, calib, test["x"].astype(np.float32), test["y"], args.trials,
                                  args.rounds, args.seed, log))
        result = blocks
        print(markdown(blocks, args.trials))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
