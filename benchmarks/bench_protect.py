"""Calibration cost of ``ovrange protect``, measured side by side in one run (interleaved rounds, paired medians).

1. Calibration throughput relative to plain f32 inference of the same model over the same samples and batches
   (goal >= 0.9x): ``ovrange.collect`` (statistics model with in-graph ReduceMin/ReduceMax) against a
   loop of plain ``infer`` calls; both include their compile, both iterate the data the same way.
2. Wall time of ``ovrange.protect`` against ``nncf.quantize`` with the same subset size on the same model
   (goal: faster).

Usage: python benchmarks/bench_protect.py [--model build/default/fashion_lenet.xml] [--data build/default/test.npz]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import openvino as ov

import ovrange
from ovrange import data as data_mod
from ovrange.modelio import read_model
from ovrange.runtime import compile_model
from ovrange.stats import StatRequest, statistics_model
from ovrange.targets import ACTIVATIONS, find_targets, select
from ovrange.timing import interleaved, paired_ratio


def plain_inference(model: ov.Model, samples: np.ndarray, batch_size: int) -> None:
    request = compile_model(model, "CPU", precision="f32").create_infer_request()
    infer_loop(request, model, samples, batch_size)


def infer_loop(request: ov.InferRequest, model: ov.Model, samples: np.ndarray, batch_size: int) -> None:
    for arrays, _ in data_mod.batches(iter(samples), model, batch_size):
        request.infer(arrays, share_outputs=True)  # the same call the statistics run makes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("build/default/fashion_lenet.xml"))
    parser.add_argument("--data", type=Path, default=Path("build/default/test.npz"))
    parser.add_argument("--throughput-samples", type=int, default=5000)
    parser.add_argument("--subset-size", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    import nncf  # imported once, before timing

    model = read_model(args.model)
    x = np.load(args.data)["x"].astype(np.float32)
    targets = select(find_targets(model), ops=ACTIVATIONS)  # what protect() watches by default
    requests = [StatRequest(t.id) for t in targets]
    print(f"model {args.model} ({len(targets)} activations), OpenVINO {ov.__version__}, f32 on CPU")

    print(f"\n[1] calibration throughput vs plain inference, {args.throughput_samples} samples, batch 1")
    samples = x[: args.throughput_samples]
    times = interleaved({
        "plain": lambda: plain_inference(model, samples, 1),
        "calibration": lambda: ovrange.collect(model, samples, requests, subset_size=None),
    }, rounds=args.rounds)
    ratio = paired_ratio(times["calibration"], times["plain"])  # plain time / calibration time = relative throughput
    n = len(samples)
    print(f"    plain       {n / np.median(times['plain']):9.0f} samples/s (median)")
    print(f"    calibration {n / np.median(times['calibration']):9.0f} samples/s (median)")
    print(f"    calibration throughput relative to plain inference: {ratio}  (goal >= 0.9x)")
    # Steady state: both graphs compiled once, only the inference loops timed (the statistics graph is what
    # collect compiles: the model plus in-graph ReduceMin/ReduceMax of every watched output).
    plain_request = compile_model(model, "CPU", precision="f32").create_infer_request()
    stats_request = compile_model(statistics_model(model, requests)[0], "CPU", precision="f32").create_infer_request()
    times = interleaved({"plain": lambda: infer_loop(plain_request, model, samples, 1),
                         "statistics graph": lambda: infer_loop(stats_request, model, samples, 1)},
                        rounds=args.rounds)
    ratio = paired_ratio(times["statistics graph"], times["plain"])
    print(f"    steady state (compile excluded): statistics graph throughput relative to plain: {ratio}")

    print(f"\n[2] protect vs nncf.quantize, subset_size={args.subset_size}")
    calib = x[: args.subset_size]
    times = interleaved({
        "ovrange.protect": lambda: ovrange.protect(model, calib, subset_size=args.subset_size),
        "nncf.quantize": lambda: nncf.quantize(model, nncf.Dataset(list(calib), lambda s: s[None]),
                                               subset_size=args.subset_size),
    }, rounds=max(3, args.rounds // 2))
    ratio = paired_ratio(times["ovrange.protect"], times["nncf.quantize"])
    print(f"    ovrange.protect {np.median(times['ovrange.protect']):7.3f} s (median)")
    print(f"    nncf.quantize   {np.median(times['nncf.quantize']):7.3f} s (median)")
    print(f"    nncf.quantize time / ovrange.protect time: {ratio}  (goal > 1: protect is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
