"""What each GlobalClipper role costs on the bundled language model, and why: compiled kernels and timings.

For the fp32 export (or ``--export int8``): the original and GlobalClipper variants (``--variants``): ``default``
(its default roles), ``clamp`` (the default roles with ``beyond: clamp``: a far value cut to the bound),
``final_norm``, ``layer_norm`` and ``qkv`` (the default roles plus the final RMSNorm's output, the decoder layers'
RMSNorm outputs, or the q/k/v projection outputs), and ``only_<role>`` (one role alone, e.g.
``only_linear``: a guard on every linear layer's output, a post-op of each ``FullyConnected``), each protected from
the calibration prompts. For each model it prints the
compiled runtime graph (layer count, eltwise kernels) and the implementation the CPU plugin ran each
``FullyConnected`` with (the profiler's exec type, after a prefill and a decode step). Then it times all of them
with OpenVINO directly, interleaved round after round (the order reversed every other round): a prefill of a random
prompt (8 to 40 tokens) from an empty KV cache, then 16 greedy decode steps; per model the paired median ratio to
the original of the prefill time and of the mean decode step time, with a 95% interval. A second copy of the
original is timed as a control.

Usage: python benchmarks/llm_roles_cost.py [--rounds 200] [--export fp32] [--threads 0]
       [--variants default,clamp,final_norm,layer_norm,qkv,only_weights,only_activation,only_residual,only_linear]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov

import ovrange
from ovrange import generate, text
from ovrange.timing import paired_ratio

LLM = Path(__file__).resolve().parent.parent / "build" / "llm"
DEFAULT = ["activation", "residual", "weights"]  # what GlobalClipper's default roles place on a decoder LM
VARIANTS = {"default": {}, "clamp": {"beyond": "clamp"}, "final_norm": {"targets": [*DEFAULT, "final_norm"]},
            "layer_norm": {"targets": [*DEFAULT, "layer_norm"]}, "qkv": {"targets": [*DEFAULT, "qkv"]}}


def variant(name: str) -> dict:
    """GlobalClipper parameters of a variant: one of VARIANTS, or ``only_<role>``."""
    if name.startswith("only_"):
        return {"targets": [name[len("only_"):]]}
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}: {', '.join(VARIANTS)} or only_<role>")
    return VARIANTS[name]


def kernels(model: ov.Model, config: dict) -> tuple[int, int, Counter]:
    """Runtime layers, eltwise kernels, and the FullyConnected implementations of a prefill and a decode step."""
    compiled = ov.Core().compile_model(model, "CPU", {**config, "PERF_COUNT": "YES"})
    layers = Counter(n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ops())
    request, roles, kinds = compiled.create_infer_request(), generate.input_roles(model), Counter()
    ids = np.arange(5, 29, dtype=np.int64)
    for past, step in ((0, ids), (ids.size, ids[-1:])):
        request.infer(generate._arrays(model, roles, step, past))
        kinds.update(p.exec_type for p in request.profiling_info if p.node_type.startswith("FullyConnected"))
    return sum(layers.values()), layers["Eltwise"], kinds


def timings(models: dict[str, ov.Model], config: dict, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per model and round: the prefill time and the mean decode-step time (16 greedy steps), interleaved."""
    requests = {k: (m, ov.Core().compile_model(m, "CPU", config).create_infer_request()) for k, m in models.items()}
    rng, times = np.random.default_rng(0), {k: [] for k in models}
    for index in range(rounds):
        n = int(rng.integers(8, 40))
        ids = rng.integers(5, 4000, n).astype(np.int64)
        order = list(models) if index % 2 == 0 else list(models)[::-1]
        for key in order:
            model, request = requests[key]
            roles = generate.input_roles(model)
            request.reset_state()
            start = time.perf_counter()
            request.infer(generate._arrays(model, roles, ids, 0))
            prefill = time.perf_counter()
            token = np.array([int(request.get_output_tensor(0).data[0, -1].argmax())], np.int64)
            for step in range(16):
                request.infer(generate._arrays(model, roles, token, n + step))
            times[key].append((prefill - start, (time.perf_counter() - prefill) / 16))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--export", default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="INFERENCE_NUM_THREADS (0: the plugin's default)")
    parser.add_argument("--variants", default="default,clamp,final_norm,layer_norm,qkv,only_weights,"
                        "only_activation,only_residual,only_linear")
    args = parser.parse_args()
    xml = LLM / args.export / "openvino_model.xml"
    original = ov.Core().read_model(xml)
    calibration = text.load(LLM / "calib_prompts.txt", original, xml)
    models = {"original": original, "control (original)": ov.Core().read_model(xml)}
    for name in args.variants.split(","):
        models[name] = ovrange.protect(original, calibration, algorithm="GlobalClipper", **variant(name))
    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": args.threads} if args.threads else {})}
    for key, model in models.items():
        layers, eltwise, kinds = kernels(model, config)
        print(f"{key:20} {layers} runtime layers, {eltwise} eltwise; FullyConnected ran as {dict(kinds)}", flush=True)
    times = timings(models, config, args.rounds)
    base = times["original"]
    print(f"{args.rounds} interleaved rounds; original: prefill {np.median([t[0] for t in base]) * 1e3:.2f} ms, "
          f"decode step {np.median([t[1] for t in base]) * 1e3:.2f} ms (medians)")
    for key in list(models)[1:]:
        cells = []
        for which, label in ((0, "prefill"), (1, "decode step")):
            r = paired_ratio([t[which] for t in base], [t[which] for t in times[key]])
            cells.append(f"{label} {(r.median - 1) * 100:+.1f}% "
                         f"({(r.low - 1) * 100:+.1f}% to {(r.high - 1) * 100:+.1f}%)")
        print(f"{key:20} " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
