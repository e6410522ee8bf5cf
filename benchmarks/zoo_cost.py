"""What a protection's guards cost on each zoo model, and where: guard forms side by side, per op kind.

For every zoo model (``scripts/build_zoo.py``) and every variant (``NAME=PARAMS``: GlobalClipper parameters, ``;``
between them; ``-`` for the defaults), ``ovrange protect`` writes the protected IR; then the original and every
variant are compiled in one process (f32, latency hint, one inference thread) and timed in interleaved rounds on
the first held-out sample: each round runs every model for ~30 ms. The ratio of a variant is the median over
rounds of its per-round time over the original's, with the 10th-90th percentile of the rounds. ``--cpu`` times the
process's CPU time instead of wall time: on a machine other jobs load, a descheduled inference then costs nothing,
and the rounds agree far better (a paired measurement still; ``ovrange benchmark`` times wall clock).

``--layers`` adds the breakdown behind a ratio: the models compiled with ``PERF_COUNT``, each executed node's time
summed per (op type, kernel) over the same interleaved rounds (medians), original beside each variant: which kernels
got slower (a convolution with more post-ops, a FullyConnected that left MLAS, a new Reorder or standalone
Eltwise). Usage::

    python benchmarks/zoo_cost.py --models face_landmark,ppocr_cls --cpu --variant default=- \
        --variant clamp='beyond=clamp' --variant scalar='per_channel=false' \
        --variant fold='per_channel=false;beyond=fold' --variant scaled='beyond=clamp;scaled=true'
    python benchmarks/zoo_cost.py --models face_landmark --layers --variant default=-
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ovrange.runtime import shared_core  # noqa: E402

CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "1"}
BLOCK_SECONDS = 0.03


def protect(model: Path, calib: Path, params: str, out: Path) -> Path:
    extra = [] if params == "-" else sum((["-p", p] for p in params.split(";") if p), [])
    subprocess.run([sys.executable, "-m", "ovrange", "protect", str(model), "--data", str(calib), "-a",
                    "GlobalClipper", *extra, "-o", str(out), "--force", "-q"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return next(out.glob(f"*/{model.stem}.xml"))


def first_sample(model, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first held-out sample of every input (samples on axis 0; a sample holds the input's batch axis, or
    the batch axis is the sample axis)."""
    found = {}
    for port in model.inputs:
        array = data[port.get_any_name()]
        rank = port.get_partial_shape().rank.get_length()
        found[port.get_any_name()] = (array[0] if array.ndim - 1 == rank else array[:1]).astype(np.float32)
    return found


def rounds(requests: list, inputs: dict[str, np.ndarray], count: int, clock, profile: bool
           ) -> tuple[list[list[float]], list[dict[str, list[float]]]]:
    """Per model: its per-round time per inference (us) and, with ``profile``, per kernel its per-round time."""
    for request in requests:
        for _ in range(3):
            request.infer(inputs)
    start = time.perf_counter()
    requests[0].infer(inputs)
    repeat = max(1, int(BLOCK_SECONDS / max(time.perf_counter() - start, 1e-6)))
    times: list[list[float]] = [[] for _ in requests]
    kernels: list[dict[str, list[float]]] = [collections.defaultdict(list) for _ in requests]
    for _ in range(count):
        for k, request in enumerate(requests):
            spent = collections.defaultdict(float)
            begin = clock()
            for _ in range(repeat):
                request.infer(inputs)
                if profile:
                    for p in request.get_profiling_info():
                        spent[f"{p.node_type}:{p.exec_type}"] += p.real_time.total_seconds() * 1e6 / repeat
            times[k].append((clock() - begin) / repeat * 1e6)
            for kind, us in spent.items():
                kernels[k][kind].append(us)
    return times, kernels


def ratio(times: list[float], reference: list[float]) -> dict[str, float]:
    found = sorted(a / b for a, b in zip(times, reference))
    tenth = len(found) // 10
    return {"median": statistics.median(found), "low": found[tenth], "high": found[-tenth - 1]}


def measure(name: str, zoo: Path, variants: dict[str, str], args: argparse.Namespace) -> dict:
    folder = zoo / name
    original = folder / f"{name}.xml"
    paths = {"original": original}
    for label, params in variants.items():
        paths[label] = protect(original, folder / "calib.npz", params, args.work / label / name)
    core = shared_core()
    models = {label: core.read_model(str(p)) for label, p in paths.items()}
    inputs = first_sample(models["original"], dict(np.load(folder / "heldout.npz")))
    config = {**CONFIG, **({"PERF_COUNT": "YES"} if args.layers else {})}
    requests = []
    for model in models.values():
        model.reshape({k: v.shape for k, v in inputs.items()})
        requests.append(core.compile_model(model, "CPU", config).create_infer_request())
    clock = time.process_time if args.cpu else time.perf_counter
    times, kernels = rounds(requests, inputs, args.rounds, clock, args.layers)
    row = {"model": name, "original_us": statistics.median(times[0]),
           "variants": {label: ratio(times[k], times[0]) for k, label in enumerate(paths) if k}}
    if args.layers:
        row["kernels"] = {label: {kind: statistics.median(v) for kind, v in kernels[k].items()}
                          for k, label in enumerate(paths)}
    return row


def report(row: dict) -> str:
    lines = [f"{row['model']}: original {row['original_us']:.0f} us; " + "; ".join(
        f"{label} {r['median'] - 1:+.1%} [{r['low'] - 1:+.1%}, {r['high'] - 1:+.1%}]"
        for label, r in row["variants"].items())]
    if "kernels" in row:
        labels = list(row["kernels"])
        kinds = sorted(set().union(*row["kernels"].values()), key=lambda k: -max(
            row["kernels"][label].get(k, 0.0) for label in labels))
        lines.append(f"  {'kernel (us per inference)':44s}" + "".join(f"{label[:12]:>13s}" for label in labels))
        for kind in kinds[:14]:
            lines.append(f"  {kind[:44]:44s}" + "".join(f"{row['kernels'][label].get(kind, 0.0):13.0f}"
                                                      for label in labels))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "build" / "zoo")
    parser.add_argument("--models", default="iris_landmark,face_landmark,palm_detection_full,pose_detection,"
                                            "ppocr_cls,ppocr_rec,ppocr_det,silero_vad")
    parser.add_argument("--variant", action="append", default=[], help="NAME=PARAMS (';'-separated, '-': defaults)")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--cpu", action="store_true", help="time CPU time, not wall time")
    parser.add_argument("--layers", action="store_true", help="per-kernel breakdown (PERF_COUNT)")
    parser.add_argument("--work", type=Path, default=Path("results/zoo_cost"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"default": "-"}
    rows = []
    for name in args.models.split(","):
        rows.append(measure(name, args.zoo, variants, args))
        print(report(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
