"""Latency of several models of one network side by side: each against the first, interleaved, paired.

``ovrange benchmark`` times one original against one protected model; choosing between guard placements or forms
needs several variants in the same run, or the machine's drift between runs (a point on PP-OCRv4 rec, minutes
apart) swamps the differences. Each round runs a block of ``--block`` inferences of every model, in a rotating
order, reversed every other round; a model's round value is its block's median latency; the result is the median
of per-round ratios against the first model with the order-statistic 95% interval (``ovrange.timing``).

    python benchmarks/interleaved_latency.py REC.onnx DEFAULT.xml NO_WEIGHTS_ROLE.xml --shape [1,3,48,320] --time 300

CPU f32, latency hint, threads unpinned (as ``ovrange benchmark``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovrange.modelio import read_model  # noqa: E402
from ovrange.runtime import compile_model  # noqa: E402
from ovrange.timing import paired_ratio  # noqa: E402


def request(path: Path, shape: list[int], sample: np.ndarray) -> ov.InferRequest:
    model = read_model(path)
    model.reshape({model.inputs[0].any_name: shape})
    compiled = compile_model(model, "CPU", precision="f32",
                             config={"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
    infer = compiled.create_infer_request()
    infer.set_input_tensor(0, ov.Tensor(sample))
    return infer


def block(infer: ov.InferRequest, count: int) -> float:
    latencies = []
    for _ in range(count):
        infer.infer()
        latencies.append(infer.latency)
    return float(np.median(latencies))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="the reference first, then the variants")
    parser.add_argument("--shape", required=True, help="input shape, e.g. [1,3,48,320]")
    parser.add_argument("--data", type=Path, default=None, help=".npy whose first sample is the input "
                        "(default: uniform noise)")
    parser.add_argument("--time", type=float, default=120.0, help="seconds of timing")
    parser.add_argument("--block", type=int, default=25, help="inferences per model per round")
    args = parser.parse_args()
    shape = [int(v) for v in args.shape.strip("[]").split(",")]
    sample = (np.load(args.data)[:1].astype(np.float32) if args.data else
              np.random.default_rng(0).random(shape, dtype=np.float32))
    requests = [request(path, shape, sample) for path in args.models]
    for infer in requests:  # warm-up: allocation, caches
        block(infer, 2 * args.block)
    rounds: list[list[float]] = [[] for _ in requests]
    started, k = time.time(), 0
    while time.time() - started < args.time:
        order = list(range(len(requests)))
        order = order[k % len(order):] + order[:k % len(order)]
        for i in (order if (k // len(order)) % 2 == 0 else order[::-1]):
            rounds[i].append(block(requests[i], args.block))
        k += 1
    print(f"{len(rounds[0])} rounds of {args.block} inferences; {args.models[0].name}: {np.median(rounds[0]):.3f} ms")
    for path, values in zip(args.models[1:], rounds[1:]):
        ratio = paired_ratio(rounds[0], values)
        print(f"{str(path):70s} {100 * (ratio.median - 1):+.2f}% [{100 * (ratio.low - 1):+.2f}%, "
              f"{100 * (ratio.high - 1):+.2f}%]  {np.median(values):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
