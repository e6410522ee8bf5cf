"""Latency/throughput overhead of protection on CPU, f32: the figures in docs/benchmarks.md.

For each model: an A/A control (the original against a copy of itself: the noise floor of this machine at this
moment), original vs RangeSupervision (the default protection; goal <= 1% latency overhead, paired median), and
original vs Ranger -- each with ``ovrange.bench.benchmark``
(interleaved rounds, several compilations), plus a few alternating benchmark_app runs of the RangeSupervision pair.

Models: the bundled Fashion-MNIST LeNet (``python -m scripts.build_default_model --out build`` and
``ovrange protect --config configs/fashion_lenet.json``) and PP-OCRv4 recognition from rapidocr-onnxruntime,
protected here through the Python API with rendered text lines (``scripts.ocr_data``).

Usage: python benchmarks/bench_overhead.py [--time 60] [--sessions 6] [--models lenet,ocr] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov

import ovrange
from ovrange import bench
from ovrange.modelio import read_model, save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts.ocr_data lives in the repo, not the package

OUT = Path("results/bench_overhead")
LENET = Path("build/default/fashion_lenet.xml")
LENET_PROTECTED = Path("results/fashion_lenet_RangeSupervision/fashion_lenet.xml")
OCR_SHAPE = [1, 3, 48, 320]


def models_lenet() -> tuple[str, Path, Path, dict[str, ov.Model]]:
    if not LENET.is_file() or not LENET_PROTECTED.is_file():
        sys.exit(f"missing {LENET} or {LENET_PROTECTED}: run `python -m scripts.build_default_model --out build` "
                 "and `ovrange protect --config configs/fashion_lenet.json`")
    original = read_model(LENET)
    calib = np.load(LENET.with_name("calib.npz"))["x"][:300].astype(np.float32)
    ranger = ovrange.protect(original, calib, subset_size=300, algorithm="Ranger")
    return "fashion_lenet", LENET, LENET_PROTECTED, {"RangeSupervision": read_model(LENET_PROTECTED),
                                                     "Ranger": ranger}


def models_ocr() -> tuple[str, Path, Path, dict[str, ov.Model]]:
    from scripts import ocr_data

    path = ocr_data.rec_model_path()
    original = read_model(path)
    calib = ocr_data.calibration_inputs(64)
    protected = {algorithm: ovrange.protect(original, calib, subset_size=64, algorithm=algorithm)
                 for algorithm in ("RangeSupervision", "Ranger")}
    OUT.mkdir(parents=True, exist_ok=True)
    saved = OUT / "ppocrv4_rec_RangeSupervision.xml"
    save_model(protected["RangeSupervision"], saved)
    return "ppocrv4_rec", path, saved, protected


def line(name: str, result: bench.BenchmarkResult) -> dict:
    lat, tput = result.latency_ratio, result.throughput_ratio
    pct = lambda r: f"{(r - 1) * 100:+.2f}%"  # noqa: E731
    counts = result.fusion.counts
    print(f"  {name:<28} latency {pct(lat.median)} [{pct(lat.low)}, {pct(lat.high)}]  "
          f"throughput {pct(tput.median)} [{pct(tput.low)}, {pct(tput.high)}]  "
          f"median {result.original.latency.median_ms:.4f} -> {result.protected.latency.median_ms:.4f} ms  "
          f"sessions {', '.join(pct(r) for r in result.session_ratios)}  "
          f"clamps fused {counts['fused']} standalone {counts['standalone']} not found {counts['not found']}")
    for clamp in result.fusion.clamps:
        if clamp.status != "fused":
            print(f"      {clamp.status}: {clamp.name}")
    return result.to_json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=60.0, help="seconds per comparison")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--hints", default="latency,throughput")
    parser.add_argument("--models", default="lenet,ocr")
    parser.add_argument("--app-rounds", type=int, default=3, help="benchmark_app runs per model (0: skip)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    devices = ", ".join(f"{d.name} ({d.full_name})" for d in bench.devices())
    print(f"OpenVINO {ov.get_version()}; devices: {devices}; CPU f32, {args.time:.0f} s per comparison")
    report: dict = {}
    loaders = {"lenet": models_lenet, "ocr": models_ocr}
    for key in args.models.split(","):
        name, original_path, protected_path, protected = loaders[key]()
        original = read_model(original_path)
        shapes = bench.static_shapes(original, {original.inputs[0].get_any_name(): OCR_SHAPE} if key == "ocr"
                                     else None)
        print(f"\n{name}: {original_path} vs {protected_path}, shapes {shapes}")
        contenders = {"A/A control": original.clone(), "RangeSupervision": protected["RangeSupervision"],
                      "Ranger": protected["Ranger"]}
        entry: dict = {}
        for hint in args.hints.split(","):
            print(f" hint {hint}")
            for label, model in contenders.items():
                result = bench.benchmark(original, model, hint=hint, seconds=args.time, shapes=shapes,
                                         sessions=args.sessions)
                entry[f"{hint}/{label}"] = line(label, result)
        if args.app_rounds:
            with tempfile.TemporaryDirectory() as folder:
                app = bench.compare_with_benchmark_app(
                    str(original_path), str(protected_path), folder, rounds=args.app_rounds,
                    seconds=max(1.0, args.time / (2 * args.app_rounds)), shapes=shapes)
            med = lambda runs: ", ".join(f"{s.median_ms:.4f}" for s in runs)  # noqa: E731
            fps = lambda runs: ", ".join(f"{s.throughput_fps:.0f}" for s in runs)  # noqa: E731
            print(f" benchmark_app (latency, -ip f32 -infer_precision f32): median ms original {med(app.original)};"
                  f" protected {med(app.protected)}; fps original {fps(app.original)}; protected "
                  f"{fps(app.protected)}; paired median latency ratio {app.latency_ratio}")
            entry["benchmark_app"] = app.to_json()
        report[name] = entry
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
