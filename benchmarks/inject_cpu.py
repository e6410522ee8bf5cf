"""CPU time per trial of the activation injection model against plain batch-1 inference, and where it goes.

One-thread engines (what each local lane runs), CPU seconds of this process (``time.process_time``: it counts what
the engine computes, not the time other processes take from it, so the *shape* survives a loaded machine; wall-
clock throughput is ``bench_inject.py``'s job on a quiet one). Per round: ``--reps`` injection inferences of
``--batch-size`` trials (one write per row, sites drawn by size and ordered by site as the engine orders a shard)
and as many plain batch-1 inferences; medians with min/max over rounds. ``--profile`` adds OpenVINO's per-node
counters (PERF_COUNT) of both models by node type: kernels and milliseconds of one inference.

Usage: python benchmarks/inject_cpu.py --model /tmp/ovrange-vit-random/deit_tiny.xml \
           --data /tmp/ovrange-vit-random/images.npz --batch-size 16 [--profile]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovrange.faults.injectors import ScatterInjector  # noqa: E402
from ovrange.faults.sites import find_sites, static_clone  # noqa: E402
from ovrange.modelio import read_model  # noqa: E402
from ovrange.runtime import compile_model  # noqa: E402


def by_type(request: ov.InferRequest) -> dict[str, tuple[int, float]]:
    """Executed kernels and milliseconds per node type in the last inference."""
    kinds: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for info in request.profiling_info:
        if info.status == ov.ProfilingInfo.Status.EXECUTED:
            kinds[info.node_type][0] += 1
            kinds[info.node_type][1] += info.real_time.total_seconds() * 1e3
    return {k: (n, ms) for k, (n, ms) in sorted(kinds.items(), key=lambda kv: -kv[1][1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=4, help="injection inferences per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    model, batch = read_model(args.model), args.batch_size
    x = np.load(args.data)["x"][:batch].astype(np.float32)
    shapes = [tuple(x.shape[1:])]
    sites = find_sites(model, "activations", shapes)
    config = {"INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False, "PERF_COUNT": args.profile}
    injector = ScatterInjector(model, "activations", [s.name for s in sites], shapes, batch, reads=True,
                               config=config)
    plain = compile_model(static_clone(model, shapes, batch=1), precision="f32", config=config).create_infer_request()
    plain.set_input_tensor(0, ov.Tensor(x[:1]))
    sizes = np.array([s.size for s in sites])
    rng = np.random.default_rng(0)
    cpu: dict[str, list[float]] = {"injection": [], "plain": []}
    for _ in range(args.rounds):
        taps = np.sort(rng.choice(len(sites), batch * args.reps, p=sizes / sizes.sum()))
        started = time.process_time()
        for k in range(args.reps):
            tap = taps[k * batch:(k + 1) * batch]
            element = np.array([rng.integers(sizes[t]) for t in tap])
            injector.run([x], tap, np.arange(batch), element, np.full(batch, 1e30, np.float32))
        cpu["injection"].append((time.process_time() - started) / (args.reps * batch) * 1e3)
        started = time.process_time()
        for _ in range(args.reps * batch):
            plain.infer()
        cpu["plain"].append((time.process_time() - started) / (args.reps * batch) * 1e3)
    print(f"{args.model}: {len(sites)} sites, batch {batch}, one thread, OpenVINO {ov.__version__}")
    for name, values in cpu.items():
        print(f"  {name:<10} {np.median(values):9.4f} ms CPU per trial [{min(values):.4f}, {max(values):.4f}]")
    ratio = [p / i for p, i in zip(cpu["plain"], cpu["injection"])]
    print(f"  plain/injection per round {np.median(ratio):.3f} [{min(ratio):.3f}, {max(ratio):.3f}]")
    if args.profile:
        for name, request in (("injection", injector.runner.request), ("plain batch 1", plain)):
            kinds = by_type(request)
            print(f"  {name}: {sum(n for n, _ in kinds.values())} kernels, "
                  + ", ".join(f"{k} {n}x {ms:.1f} ms" for k, (n, ms) in list(kinds.items())[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
