"""``ovrange devices`` and ``ovrange benchmark``: the cost of protection on OpenVINO devices."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from ovrange.cli.app import app
from ovrange.cli.options import Device, Force, JsonOut, Seconds, Shape, Verbose, finite_json, opt, static_shapes
from ovrange.errors import ConfigError

Opt = typer.Option
ModelArg = typer.Argument
Hint = Annotated[str, Opt("--hint", help="Performance hint: latency (one request) or throughput.")]
Precision = Annotated[str, Opt("--precision", help="f32 (INFERENCE_PRECISION_HINT=f32) or default (the plugin's "
                                                   "choice, bf16 on AMX CPUs).")]


@app.command()
def devices(json_out: JsonOut = None, force: Force = False, verbose: Verbose = False) -> None:
    """List the devices OpenVINO sees on this machine."""
    import openvino as ov

    from ovrange.bench import devices as list_devices
    from ovrange.outputs import check_output_file, write_file_atomically

    if json_out:
        check_output_file(json_out, force=force)
    found = list_devices()
    typer.echo(f"OpenVINO {ov.get_version()} sees {len(found)} device(s):")
    for info in found:
        caps = f"  [{', '.join(info.capabilities)}]" if info.capabilities else ""
        typer.echo(f"  {info.name:<8} {info.full_name}{caps}")
    if json_out:
        report = {"openvino": ov.get_version(),
                  "devices": [{"name": d.name, "full_name": d.full_name, "capabilities": list(d.capabilities)}
                              for d in found]}
        write_file_atomically(json_out, json.dumps(report, indent=2) + "\n", force=force)
        typer.echo(f"result: {json_out}")


@app.command()
def benchmark(
    original: Annotated[Path, ModelArg(help="The original model (.xml or .onnx), or a language model's folder.")],
    protected: Annotated[Path, ModelArg(help="The protected model (or folder).")],
    device: Device = "CPU",
    hint: Hint = "latency",
    precision: Precision = "f32",
    seconds: Seconds = 10.0,
    shape: Shape = None,
    data: Annotated[Optional[Path], opt("--data", more="Its first sample gives the input shapes (instead of "
                                        "--shape), for a model whose dimensions are dynamic; a language model "
                                        "generates these prompts (cycled), timed through LLMPipeline.",
                                        show_default=False)] = None,
    sessions: Annotated[int, Opt("--sessions", help="Compile both models anew this many times (alternating "
                                                    "which comes first); with 3 or more, the overhead and its "
                                                    "interval are taken over sessions.", min=1)] = 8,
    benchmark_app: Annotated[bool, Opt("--benchmark-app", help="Also run OpenVINO's benchmark_app on both "
                                                               "models, alternating, and parse its reports.")] = False,
    app_rounds: Annotated[int, Opt("--benchmark-app-rounds", help="benchmark_app runs per model.", min=1)] = 3,
    new_tokens: Annotated[int, opt("--new-tokens", min=2)] = 32,
    json_out: JsonOut = None,
    verbose: Verbose = False,
    force: Force = False,
) -> None:
    """Time ORIGINAL and PROTECTED on one device in interleaved rounds; report the overhead and fused Clamps.

    Stateful language models (optimum-intel exports, or their folders) are timed through openvino-genai's
    LLMPipeline: time to first token and time per output token of greedy generations of the --data prompts."""
    from ovrange import bench
    from ovrange.bench.shapes import sample_shapes
    from ovrange.data import load
    from ovrange.modelio import model_files, read_model
    from ovrange.outputs import check_output_file, write_file_atomically
    from ovrange.runtime import is_stateful
    from ovrange.text import is_language_model

    _print_devices(device)
    models = [] if original.is_dir() or protected.is_dir() else [read_model(original), read_model(protected)]
    if not models or any(is_stateful(m) and is_language_model(m) for m in models):
        _benchmark_llm(original, protected, data, device=device, precision=precision, seconds=seconds,
                       new_tokens=new_tokens, json_out=json_out, force=force,
                       unused={"--shape": bool(shape), "--benchmark-app": benchmark_app})
        return
    warn_mixed_formats(original, protected)
    if shape and data:
        raise ConfigError("give the input shapes once: --shape or --data")
    shapes = static_shapes(shape, models[0]) if not data else sample_shapes(load(data, models[0]).dataset, models[0])
    inputs = [*model_files(original), *model_files(protected), *([data] if data else [])]
    if json_out:
        check_output_file(json_out, force=force, inputs=inputs)
    result = bench.benchmark(models[0], models[1], device=device, hint=hint, precision=precision, seconds=seconds,
                             shapes=shapes, sessions=sessions)
    _print_benchmark(result)
    app_result = None
    if benchmark_app:
        per_run = max(1.0, seconds / (2 * app_rounds))
        typer.echo(f"\nbenchmark_app: {app_rounds} run(s) of {per_run:.0f} s per model, alternating ...")
        with tempfile.TemporaryDirectory(prefix="ovrange-benchmark-app-") as folder:
            app_result = bench.compare_with_benchmark_app(
                str(original), str(protected), folder, rounds=app_rounds, device=device, hint=hint,
                precision=precision, seconds=per_run, shapes=result.shapes, float_inputs=_float_inputs(models[0]))
        _print_benchmark_app(app_result)
    if json_out:
        report = {"original": str(original), "protected": str(protected), **result.to_json(),
                  "benchmark_app": app_result.to_json() if app_result else None}
        write_file_atomically(json_out, json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n",
                              force=force, inputs=inputs)
        typer.echo(f"\nresult: {json_out}")


def _benchmark_llm(original: Path, protected: Path, data: Path | None, *, device: str, precision: str,
                   seconds: float, new_tokens: int, json_out: Path | None, force: bool,
                   unused: dict[str, bool]) -> None:
    """Language models: greedy generations through LLMPipeline, TTFT and TPOT side by side."""
    from ovrange.bench.llm import benchmark_llm, llm_folder
    from ovrange.outputs import check_output_file, write_file_atomically
    from ovrange.text import read_prompts

    folders = [llm_folder(original), llm_folder(protected)]
    given = [name for name, used in unused.items() if used]
    if given:
        raise ConfigError(f"{', '.join(given)} does not apply to a language model (timed through LLMPipeline)")
    if data is None:
        raise ConfigError("a language model is timed on prompts: give --data prompts.txt (one per line, or .jsonl)")
    inputs = [*(f / "openvino_model.xml" for f in folders), *(f / "openvino_model.bin" for f in folders), data]
    if json_out:
        check_output_file(json_out, force=force, inputs=inputs)
    prompts = read_prompts(data)
    typer.echo(f"LLMPipeline on {device}, precision {precision}: {len(prompts)} prompt(s), greedy, "
               f"{new_tokens} new tokens, original and protected alternating for {seconds:g} s ...")
    result = benchmark_llm(folders[0], folders[1], prompts, device=device, precision=precision,
                           new_tokens=new_tokens, seconds=seconds)
    _print_llm(result)
    if json_out:
        report = {"models": {"original": str(original), "protected": str(protected)}, **result.to_json()}
        write_file_atomically(json_out, json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n",
                              force=force, inputs=inputs)
        typer.echo(f"\nresult: {json_out}")


def _print_llm(result) -> None:
    typer.echo(f"{result.rounds} paired rounds (generations per model), {result.prompts} distinct prompt(s)")
    typer.echo(f"{'':10} {'TTFT':>10} {'TPOT':>10}   (medians)")
    for timing in (result.original, result.protected):
        typer.echo(f"{timing.label:10} {timing.ttft_ms:8.3f}ms {timing.tpot_ms:8.3f}ms")
    for name, ratio in (("time to first token", result.ttft_ratio), ("time per output token", result.tpot_ratio)):
        typer.echo(f"{name} overhead: {_pct(ratio.median)} (paired median of {ratio.rounds} rounds, 95% CI "
                   f"{_pct(ratio.low)} to {_pct(ratio.high)})")
    kinds = result.kernels["original"]
    same = kinds == result.kernels["protected"]
    counts = ", ".join(f"{kinds[k]} {k}" for k in kinds)
    typer.echo(f"fused kernels in the {result.device} runtime model: original {counts}; protected "
               + ("the same" if same else ", ".join(f"{v} {k}" for k, v in result.kernels["protected"].items())))


def warn_mixed_formats(original: Path, protected: Path) -> None:
    """A ``warning:`` line on stderr when the two models come in different formats (their timings compare more than
    the protection)."""
    from ovrange.modelio import mixed_formats

    warning = mixed_formats(original, protected)
    if warning:
        typer.echo(f"warning: {warning}", err=True)


def _float_inputs(model) -> bool:
    return all(port.get_element_type().is_real() for port in model.inputs)


def _print_devices(device: str) -> None:
    from ovrange.runtime import available_devices, check_device

    typer.echo(f"OpenVINO sees: {', '.join(available_devices()) or 'no device'}")
    check_device(device)


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.2f}%"


def _print_benchmark(result) -> None:
    shapes = ", ".join(f"{name}[{','.join(map(str, dims))}]" for name, dims in result.shapes.items())
    typer.echo(f"{result.device}, hint {result.hint}, precision {result.precision} (runs "
               f"{result.original.inference_precision}), {shapes}; {result.sessions} session(s), "
               f"{result.rounds} paired rounds of {result.inferences_per_block} inferences")
    typer.echo(f"{'':10} {'median':>10} {'p90':>10} {'p99':>10} {'mean':>10} {'throughput':>14}")
    for timing in (result.original, result.protected):
        lat = timing.latency
        typer.echo(f"{timing.label:10} {lat.median_ms:8.4f}ms {lat.p90_ms:8.4f}ms {lat.p99_ms:8.4f}ms "
                   f"{lat.mean_ms:8.4f}ms {timing.throughput_fps:10.1f} fps")
    lat, tput = result.latency_ratio, result.throughput_ratio
    sessions = ", ".join(_pct(r) for r in result.session_ratios)
    over = f"median over {lat.rounds} sessions" if result.ratio_over == "sessions" else "paired median of rounds"
    typer.echo(f"latency overhead:  {_pct(lat.median)} ({over}, 95% CI {_pct(lat.low)} to {_pct(lat.high)}; "
               f"per session {sessions})")
    typer.echo(f"throughput change: {_pct(tput.median)} (95% CI {_pct(tput.low)} to {_pct(tput.high)})")
    counts = result.fusion.counts
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n or status in ("fused", "standalone"))
    typer.echo(f"inserted Clamps in the {result.device} runtime model: {summary}")
    width = max((len(c.name) for c in result.fusion.clamps), default=0)
    for clamp in result.fusion.clamps:
        where = f"in {clamp.layer_type} {clamp.runtime_node}" if clamp.runtime_node else ""
        typer.echo(f"  {clamp.status:<10} {clamp.name:<{width}}  {where}".rstrip())


def _print_benchmark_app(comparison) -> None:
    for label, runs in (("original", comparison.original), ("protected", comparison.protected)):
        medians = ", ".join(f"{s.median_ms:.4f}" for s in runs)
        fps = ", ".join(f"{s.throughput_fps:.1f}" for s in runs)
        typer.echo(f"  {label:10} median latency {medians} ms; throughput {fps} fps")
    lat, tput = comparison.latency_ratio, comparison.throughput_ratio
    typer.echo(f"  benchmark_app latency overhead: {_pct(lat.median)} (paired median of {lat.rounds} pairs, "
               f"range {_pct(lat.low)} to {_pct(lat.high)}); throughput change {_pct(tput.median)}")
