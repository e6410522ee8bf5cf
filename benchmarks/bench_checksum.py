"""Checksum (ABFT) figures: false positives on clean data, coverage and SDC reduction, latency overhead.

* False positives: the checks of a FashionLeNet protected with 1,000 calibration images, evaluated on all 10,000
  test images (``ovrange.passes.checksum.flag_model``).
* Coverage / SDC: single bit flips at the outputs of the MatMul/Convolution layers and their bias Adds (the logits
  included), the original against Checksum (recompute), the same faults on both (paired). Coverage of top-1-changing
  faults = faults that change top-1 on the original and not on the protected model / all that change top-1
  (recompute only helps when the check fired, so this is a lower bound on detection). Coverage of output-changing
  faults: the protected output within 1e-6 (relative L-inf) of its fault-free output where the original moved.
  The logits layer alone is run too (RangeSupervision cannot protect it).
* Latency: ``ovrange benchmark`` (interleaved rounds, several compilations, paired median with a 95% interval) on
  FashionLeNet at batch 1 and on a DeiT-Tiny-sized ViT (224x224, patch 16, 12 blocks, dim 192, 3 heads, MLP 768,
  random weights: latency does not depend on them) built here with OpenVINO opsets.

* GradientSuppression always on against gated by the checks (``gate: select`` / ``gate: if``), FashionLeNet.
* Where the overhead goes (``decompose``): FashionLeNet with only the logits layer checked (the fixed cost of one
  check, the flag and the If; no activation unfused) and the ViT without its 12 ``fc1`` checks (their GELU stays
  fused into the layer).

Usage: python benchmarks/bench_checksum.py [--trials 20000] [--time 20] [--sessions 4] [--out /tmp/checksum]
       [--skip coverage,latency,gating,vit,decompose]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

import ovrange
from ovrange.faults import inject
from ovrange.faults.metrics import Rate
from ovrange.modelio import read_model, save_model
from ovrange.passes.checksum import find_layers, flag_model, plan_of
from ovrange.runtime import compile_model

LENET = Path("build/default/fashion_lenet.xml")
MAC_SITES = ["*/Convolution", "*/MatMul", "*linear/Add", "*convolution/Add"]
LOGITS = ["__module.classifier.5/aten::linear/*"]
LOGITS_LAYER = "__module.classifier.5/aten::linear/MatMul"


def false_positives(model: ov.Model, protected: ov.Model, x: np.ndarray) -> dict[str, int]:
    request = compile_model(flag_model(model, plan_of(protected)), "CPU").create_infer_request()
    names = list(plan_of(protected)["checks"])
    counts = dict.fromkeys(names, 0)
    for start in range(0, len(x), 500):
        for name, flags in zip(names, request.infer([x[start:start + 500]]).to_tuple()):
            counts[name] += int(np.count_nonzero(flags))
    return counts


def coverage(model: ov.Model, protected: ov.Model, sites: list[str], trials: int, seed: int,
             bits: str = "all") -> dict:
    result = inject(model, str(LENET.with_name("test.npz")), compare=[protected], trials=trials, inputs=500,
                    sites=sites, seed=seed, batch_size=1, bits=bits)  # the If decides per batch: one trial each
    a, b = result.models
    changed_top1 = a.outcome != 0
    kept = changed_top1 & (b.outcome == 0)
    moved = a.deviation > 0
    restored = moved & (b.deviation <= 1e-6)
    comparison = result.comparison()
    return {"trials": trials, "sites": sites, "bits": bits, "sdc_original": result.rates(0)["sdc"].to_dict(),
            "sdc_checksum": result.rates(1)["sdc"].to_dict(), "due_original": result.rates(0)["due"].to_dict(),
            "due_checksum": result.rates(1)["due"].to_dict(), "sdc_reduction": comparison["sdc_reduction"],
            "coverage_top1": Rate(int(kept.sum()), int(changed_top1.sum())).to_dict(),
            "coverage_output": Rate(int(restored.sum()), int(moved.sum())).to_dict()}


def vit(depth: int = 12, dim: int = 192, heads: int = 3, mlp: int = 768, image: int = 224, patch: int = 16,
        classes: int = 1000, seed: int = 0) -> ov.Model:
    """A DeiT-Tiny-shaped ViT with random weights (patch conv, pre-norm blocks, mean-pooled head)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return ops.constant((rng.standard_normal(shape) * 0.02).astype(np.float32))

    def linear(h, cin, cout, name):
        return ops.add(ops.matmul(h, w(cin, cout), False, False, name=f"{name}/MatMul"), w(1, 1, cout),
                       name=f"{name}/Add")

    def norm(h, name):
        h = ops.mvn(h, ops.constant(np.array([-1], np.int64)), True, 1e-6, "inside_sqrt", name=f"{name}/mvn")
        return ops.add(ops.multiply(h, ops.constant(np.ones((1, 1, dim), np.float32))), w(1, 1, dim))

    tokens = (image // patch) ** 2
    x = ops.parameter([-1, 3, image, image], ov.Type.f32, name="image")
    h = ops.convolution(x, w(dim, 3, patch, patch), [patch, patch], [0, 0], [0, 0], [1, 1], name="patch/Conv")
    h = ops.add(h, w(1, dim, 1, 1), name="patch/Add")
    h = ops.transpose(ops.reshape(h, ops.constant(np.array([0, dim, tokens], np.int64)), True),
                      ops.constant(np.array([0, 2, 1], np.int64)))
    h = ops.add(h, w(1, tokens, dim))
    head_dim = dim // heads
    split = ops.constant(np.array([0, tokens, heads, head_dim], np.int64))
    order = ops.constant(np.array([0, 2, 1, 3], np.int64))
    for b in range(depth):
        qkv = linear(norm(h, f"b{b}/ln1"), dim, 3 * dim, f"b{b}/qkv")
        q, k, v = (ops.transpose(ops.reshape(part, split, True), order)
                   for part in ops.split(qkv, ops.constant(np.int64(-1)), 3).outputs())
        scores = ops.softmax(ops.multiply(ops.matmul(q, k, False, True), ops.constant(np.float32(head_dim ** -0.5))),
                             -1)
        attended = ops.reshape(ops.transpose(ops.matmul(scores, v, False, False), order),
                               ops.constant(np.array([0, tokens, dim], np.int64)), True)
        h = ops.add(h, linear(attended, dim, dim, f"b{b}/proj"))
        hidden = ops.gelu(linear(norm(h, f"b{b}/ln2"), dim, mlp, f"b{b}/fc1"), "erf")
        h = ops.add(h, linear(hidden, mlp, dim, f"b{b}/fc2"))
    pooled = ops.reduce_mean(norm(h, "final"), ops.constant(np.array([1], np.int64)), False)
    logits = ops.add(ops.matmul(pooled, w(dim, classes), False, False, name="head/MatMul"), w(1, classes),
                     name="head/Add")
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([ops.result(logits)], [x], "deit_tiny_random")


def flags_on_benchmark_input(model: ov.Model, protected: ov.Model, batch: int = 1) -> int:
    """Failing checks on the input `ovrange benchmark` times (0, or the timing would be the recompute's)."""
    from ovrange.bench.shapes import random_inputs

    static = model.clone()
    sample = [d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:]]
    static.reshape({static.inputs[0]: [batch, *sample]})
    flags = compile_model(flag_model(model, plan_of(protected)), "CPU").create_infer_request().infer(
        random_inputs(static)).to_tuple()
    return int(sum(int(np.sum(f)) for f in flags))


def benchmark(original: Path, protected: Path, seconds: float, sessions: int, out: Path, batch: int = 1) -> dict:
    """``ovrange benchmark`` in a subprocess (as a user runs it); its JSON result."""
    report = out / f"{protected.stem}_{protected.parent.name}_b{batch}_bench.json"
    command = [sys.executable, "-m", "ovrange", "benchmark", str(original), str(protected), "--time", str(seconds),
               "--sessions", str(sessions), "--json", str(report)]
    if batch != 1:
        model = read_model(original)
        dims = [batch, *[d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:]]]
        command += ["--shape", "[" + ",".join(map(str, dims)) + "]"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    data = json.loads(report.read_text())
    return {"command": " ".join(command[1:]), "overhead_pct": data["latency_overhead_pct"],
            "ratio": data["latency_ratio"], "original_ms": data["original"]["latency"]["median_ms"],
            "protected_ms": data["protected"]["latency"]["median_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20000)
    parser.add_argument("--time", type=float, default=20.0)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ovrange_checksum"))
    parser.add_argument("--skip", default="")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    model = read_model(LENET)
    calib = np.load(LENET.with_name("calib.npz"))["x"].astype(np.float32)
    test = np.load(LENET.with_name("test.npz"))["x"].astype(np.float32)
    report: dict = {"machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"}
    protected = {}
    for label, params in {"model": {}, "if": {"branch": "if"}, "select": {"branch": "select"}}.items():
        protected[label] = ovrange.protect(model, calib, algorithm="Checksum", subset_size=1000, batch_size=100,
                                           **params)
        save_model(protected[label], args.out / label / "fashion_lenet.xml")
    report["false_positives_10000"] = false_positives(model, protected["model"], test)
    if "coverage" not in skip:
        report["coverage_mac"] = coverage(model, protected["model"], MAC_SITES, args.trials, seed=1)
        report["coverage_logits"] = coverage(model, protected["model"], LOGITS, max(args.trials // 4, 1000), seed=2)
        report["coverage_mac_exponent"] = coverage(model, protected["model"], MAC_SITES, args.trials // 2, seed=3,
                                                   bits="23-31")
    if "latency" not in skip:
        report["lenet_flags_on_benchmark_input"] = flags_on_benchmark_input(model, protected["model"])
        report["latency_lenet"] = {label: benchmark(LENET, args.out / label / "fashion_lenet.xml", args.time,
                                                    args.sessions, args.out) for label in protected}
        report["latency_lenet_batch64"] = benchmark(LENET, args.out / "model" / "fashion_lenet.xml", args.time,
                                                    args.sessions, args.out, batch=64)
    if "latency" not in skip and "decompose" not in skip:  # the fixed cost of one check, the flag and the If
        only = ovrange.protect(model, calib, algorithm="Checksum", subset_size=1000, batch_size=100,
                               layers=[LOGITS_LAYER])
        save_model(only, args.out / "logits_only" / "fashion_lenet.xml")
        report["latency_lenet_logits_only"] = benchmark(LENET, args.out / "logits_only" / "fashion_lenet.xml",
                                                        args.time, args.sessions, args.out)
    if "gating" not in skip:  # GradientSuppression always on vs gated by the checks (Select, If)
        report["latency_gradient_suppression"] = {}
        for gate in ("none", "select", "if"):
            suppressed = ovrange.protect(model, calib, algorithm="GradientSuppression", subset_size=1000,
                                         batch_size=100, gate=gate)
            save_model(suppressed, args.out / f"gs_{gate}" / "fashion_lenet.xml")
            report["latency_gradient_suppression"][gate] = benchmark(
                LENET, args.out / f"gs_{gate}" / "fashion_lenet.xml", args.time, args.sessions, args.out)
    if "vit" not in skip:
        original = vit()
        save_model(original, args.out / "vit" / "deit_tiny.xml")
        # Calibrated on what `ovrange benchmark` feeds (uniform [0, 255], benchmark_app's fill): a ViT calibrated
        # on N(0, 1) flags the patch convolution on every benchmark input, and then the timing is the recompute's.
        images = np.random.default_rng(1).uniform(0, 255, (8, 3, 224, 224)).astype(np.float32)
        report["latency_vit"] = {}
        # no_fc1: every layer but the 12 fc1 (their GELU stays fused: what unfusing it costs)
        no_fc1 = [layer.name for layer in find_layers(original)[0] if not layer.name.endswith("/fc1/MatMul")]
        variants = {"model": {}, "if": {"branch": "if"}, "no_fc1": {"layers": no_fc1}}
        for label in [v for v in variants if v != "no_fc1" or "decompose" not in skip]:
            checked = ovrange.protect(original, images, algorithm="Checksum", subset_size=8, batch_size=1,
                                      **variants[label])
            save_model(checked, args.out / f"vit_{label}" / "deit_tiny.xml")
            report[f"vit_{label}_checks"] = len(plan_of(checked)["checks"])
            report[f"vit_{label}_flags_on_benchmark_input"] = flags_on_benchmark_input(original, checked)
            report["latency_vit"][label] = benchmark(args.out / "vit" / "deit_tiny.xml",
                                                     args.out / f"vit_{label}" / "deit_tiny.xml", args.time,
                                                     args.sessions, args.out)
    print(json.dumps(report, indent=1))
    (args.out / "bench_checksum.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
