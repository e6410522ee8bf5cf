"""Fault-injection campaign speed, measured side by side in one run (interleaved rounds, paired medians).

1. Activation-fault trials/s of ``ovrange.faults.inject`` relative to plain batch-1 f32 inference of the same
   model (goal >= 1.5x). One trial is one input with one single-bit flip; plain is one inference per trial.
2. Weight-fault trials/s relative to the same plain inference (goal >= 0.8x).
3. The same single-bit activation-fault campaign in PyTorchFI 0.6.0 on the equivalent PyTorch network
   (``scripts.fashion_models.FashionLeNet`` with the same weights), goal: ovrange >= 10x faster. PyTorchFI is run
   the way its error models run: ``declare_neuron_fi`` (which deep-copies the model) then a forward pass, with a
   bit-flip injection function, either one fault per inference (batch 1, Ranger's fault model) or one fault per
   batch element (``random_neuron_inj_batched`` style, batch 64).

Every contender includes its setup (compiling, PyTorchFI's profiling pass, fault-free references), iterates the
same correctly classified test images, and is timed in the same rounds in alternating order; ratios are medians
of per-round ratios with 95% intervals.

4. With ``--one-lane``: the same activation campaign on one lane (``lanes=1``: one engine using every core) too,
   to show what the default local lanes buy (:class:`ovrange.faults.executors.LocalExecutor`).

Models without labels (``--data`` holding only ``x``, e.g. the random-weight ViT of ``benchmarks/vit_random.py``)
run with ``--no-pytorchfi`` and ``--sdc``.

Usage: python benchmarks/bench_inject.py [--model build/default/fashion_lenet.xml] [--json out.json]
       python benchmarks/bench_inject.py --model /tmp/vit/deit_tiny.xml --data /tmp/vit/images.npz --no-pytorchfi \
           --no-weights --one-lane --trials 400 --batch-size 16 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for scripts.fashion_models

from ovrange.faults import inject  # noqa: E402
from ovrange.modelio import read_model  # noqa: E402
from ovrange.runtime import compile_model  # noqa: E402
from ovrange.timing import interleaved, paired_ratio  # noqa: E402


def plain_inference(model: ov.Model, x: np.ndarray, count: int) -> None:
    """The baseline: compile, then ``count`` batch-1 f32 inferences through a preset shared-memory input."""
    request = compile_model(model, "CPU", precision="f32").create_infer_request()
    buffer = np.zeros((1, *x.shape[1:]), np.float32)
    request.set_input_tensor(0, ov.Tensor(buffer, shared_memory=True))
    for i in range(count):
        buffer[0] = x[i % len(x)]
        request.infer()
        request.get_output_tensor(0).data.argmax()


class PyTorchFICampaign:
    """Single-bit flips in the outputs of Conv2d/Linear layers with PyTorchFI's neuron-injection machinery."""

    def __init__(self, module, x: np.ndarray, batch: int, seed: int = 0):
        import torch

        self.torch, self.module, self.batch = torch, module, batch
        self.x = torch.tensor(x, dtype=torch.float32)
        self.rng = np.random.default_rng(seed)

    def run(self, trials: int) -> dict[str, int]:
        from pytorchfi.core import fault_injection

        torch, batch = self.torch, self.batch
        pfi = fault_injection(self.module, batch, input_shape=list(self.x.shape[1:]),
                              layer_types=[torch.nn.Conv2d, torch.nn.Linear])
        sizes = [int(np.prod(shape[1:])) for shape in pfi.get_output_size()]
        counts = {"masked": 0, "sdc": 0, "due": 0}
        bits: list[int] = []

        def flip(module, inputs, output):  # PyTorchFI custom injection function (a forward hook)
            layer = pfi.get_current_layer()
            for i, corrupt_layer in enumerate(pfi.corrupt_layer):
                if corrupt_layer == layer:
                    index = tuple(v for v in (pfi.corrupt_batch[i], pfi.corrupt_dim1[i], pfi.corrupt_dim2[i],
                                              pfi.corrupt_dim3[i]) if v is not None)
                    value = np.array([output[index].item()], np.float32).view(np.uint32) ^ np.uint32(1 << bits[i])
                    output[index] = float(value.view(np.float32)[0])
            pfi.updateLayer()
            if pfi.get_current_layer() >= pfi.get_total_layers():
                pfi.reset_current_layer()

        with torch.no_grad():
            for start in range(0, trials, batch):
                n = min(batch, trials - start)
                rows = self.rng.integers(0, len(self.x), batch)
                layer = self.rng.choice(len(sizes), size=batch, p=np.array(sizes) / sum(sizes))
                location = [np.unravel_index(self.rng.integers(sizes[k]), pfi.get_output_size()[k][1:]) for k in layer]
                bits[:] = self.rng.integers(0, 32, batch).tolist()
                dims = [[int(loc[d]) if d < len(loc) else None for loc in location] for d in range(3)]
                corrupted = pfi.declare_neuron_fi(batch=list(range(batch)), layer_num=layer.tolist(), dim1=dims[0],
                                                  dim2=dims[1], dim3=dims[2], function=flip)
                inputs = self.x[rows]
                golden = self.module(inputs).argmax(1)
                faulty = corrupted(inputs)[:n]
                finite = torch.isfinite(faulty).all(1)
                sdc = finite & (faulty.argmax(1) != golden[:n])
                counts["due"] += int((~finite).sum())
                counts["sdc"] += int(sdc.sum())
                counts["masked"] += int(n - (~finite).sum() - sdc.sum())
        return counts


def load_torch(weights: Path | None, threads: int, arch: str = "FashionLeNet"):
    import torch

    from scripts import fashion_models

    torch.set_num_threads(threads)
    module = getattr(fashion_models, arch)().eval()
    if weights is not None and weights.is_file():
        module.load_state_dict(torch.load(weights, map_location="cpu"))
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("build/default/fashion_lenet.xml"))
    parser.add_argument("--torch-weights", type=Path, default=Path("build/default/fashion_lenet.pt"))
    parser.add_argument("--data", type=Path, default=Path("build/default/test.npz"))
    parser.add_argument("--trials", type=int, default=20000, help="ovrange trials (and plain inferences) per round")
    parser.add_argument("--pfi-trials", type=int, default=640, help="PyTorchFI batch-1 trials per round")
    parser.add_argument("--pfi-batched-trials", type=int, default=6400, help="PyTorchFI batch-64 trials per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--torch-threads", type=int, default=1, help="PyTorch threads; 1 is PyTorchFI's fastest on a "
                        "busy 2-core machine (OpenMP spin-waits collapse under contention)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--pytorchfi", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--weights", action=argparse.BooleanOptionalAction, default=True,
                        help="time a weight campaign too")
    parser.add_argument("--one-lane", action="store_true", help="time the activation campaign on one lane "
                        "(lanes=1) too")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--sdc", default=None, help="SDC criterion (default: top1 with the labels)")
    args = parser.parse_args()

    model = read_model(args.model)
    archive = np.load(args.data)
    x, y = archive["x"], archive["y"] if "y" in archive else None
    n, outcomes = args.trials, {}
    settings = dict(batch_size=args.batch_size, inputs=args.inputs, sdc=args.sdc)

    def campaign(target: str, lanes: int | None = None) -> None:
        outcomes[target + ("_one_lane" if lanes else "")] = inject(model, x, labels=y, target=target, trials=n,
                                                                   seed=0, lanes=lanes, **settings)

    print(f"model {args.model}, OpenVINO {ov.__version__}, f32 on CPU; {args.rounds} rounds, batch "
          f"{args.batch_size}")
    contenders = {"plain": lambda: plain_inference(model, x, n)}
    contenders["activations"] = lambda: campaign("activations")
    if args.weights:
        contenders["weights"] = lambda: campaign("weights")
    if args.one_lane:
        contenders["one_lane"] = lambda: campaign("activations", lanes=1)
    if args.pytorchfi:
        module = load_torch(args.torch_weights, args.torch_threads)
        import torch

        with torch.no_grad():
            correct = module(torch.tensor(x[:2000], dtype=torch.float32)).argmax(1).numpy() == y[:2000]
        pool = x[:2000][correct][:100]  # PyTorchFI draws from the same kind of inputs ovrange picks
        single, batched = PyTorchFICampaign(module, pool, 1), PyTorchFICampaign(module, pool, 64)
        contenders["pytorchfi_b1"] = lambda: outcomes.__setitem__("pfi1", single.run(args.pfi_trials))
        contenders["pytorchfi_b64"] = lambda: outcomes.__setitem__("pfi64", batched.run(args.pfi_batched_trials))
    started = time.perf_counter()
    times = interleaved(contenders, rounds=args.rounds, warmup=args.warmup)
    trials = {"plain": n, "activations": n, "weights": n, "one_lane": n, "pytorchfi_b1": args.pfi_trials,
              "pytorchfi_b64": args.pfi_batched_trials}
    trials = {k: v for k, v in trials.items() if k in times}
    rate = {k: trials[k] / np.median(v) for k, v in times.items()}
    # Relative throughput of A against B per round is (trials_A / t_A) / (trials_B / t_B).
    scale = {k: trials[k] / n for k in times}
    report = {"model": str(args.model), "openvino": ov.__version__, "rounds": args.rounds,
              "trials_per_round": trials, "median_rate": rate, "ratios": {}}
    print(f"\n{'contender':<15}{'trials/round':>14}{'median trials/s':>18}")
    for k in times:
        print(f"{k:<15}{trials[k]:>14}{rate[k]:>18.0f}")
    print()
    for name, (a, b), goal in (
        ("activation faults vs plain batch-1 inference", ("activations", "plain"), ">= 1.5x (CNNs), >= 1x (ViT)"),
        ("weight faults vs plain batch-1 inference", ("weights", "plain"), ">= 0.8x"),
        ("activation faults vs PyTorchFI, batch 1", ("activations", "pytorchfi_b1"), ">= 10x"),
        ("activation faults vs PyTorchFI, batch 64", ("activations", "pytorchfi_b64"), ">= 10x"),
        ("one-lane activation faults vs plain", ("one_lane", "plain"), "-"),
        ("default lanes vs one lane, activation faults", ("activations", "one_lane"), "-"),
    ):
        if a not in times or b not in times:
            continue
        ratio = paired_ratio([t / scale[a] for t in times[a]], [t / scale[b] for t in times[b]])
        report["ratios"][f"{a}/{b}"] = {"median": ratio.median, "low": ratio.low, "high": ratio.high, "goal": goal}
        print(f"{name:<48} {ratio}  (goal {goal})")
    for key, last in outcomes.items():
        if not isinstance(last, dict):
            print(f"(last {key} campaign: SDC {last.rates()['sdc']}; engine: "
                  f"{next(iter(last.meta['engines'].values()))})")
    if "pfi64" in outcomes:
        print(f"(PyTorchFI batch-64 outcomes in the last round: {outcomes['pfi64']})")
    if "one_lane" in times:
        a, b = outcomes["activations"].models[0], outcomes["activations_one_lane"].models[0]
        same = np.array_equal(a.outcome, b.outcome) and np.array_equal(a.deviation, b.deviation, equal_nan=True)
        print(f"(default-lane and one-lane runs of the same seed agree trial by trial: {same})")
    print(f"total benchmark time {time.perf_counter() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
