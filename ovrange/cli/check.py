"""``ovrange check``: a protected model gated in CI (accuracy, overhead, SDC reduction)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ovrange.cli.app import app
from ovrange.cli.aliases import AliasedCommand
from ovrange.cli.options import (BatchAxis, ColorOrder, Device, Force, JsonOut, Layout, Mean, Quiet, Scale,
                                 Sdc, Seconds, Shape, Verbose, batch_axes, finite_json, image_options, opt,
                                 progress_bar, static_shapes)

Opt = typer.Option
ModelArg = typer.Argument


@app.command(cls=AliasedCommand)
def check(
    original: Annotated[Path, ModelArg(help="The original model (.xml or .onnx).")],
    protected: Annotated[Path, ModelArg(help="The protected model.")],
    data: Annotated[Path, opt("--data", more="Labels make the accuracy gate compare with them.",
                              show_default=False)],
    max_accuracy_drop: Annotated[Optional[float], Opt("--max-accuracy-drop", help="Largest allowed top-1 drop, "
                                                      "in percentage points (vs labels, else vs the original's "
                                                      "predictions).")] = None,
    max_overhead: Annotated[Optional[float], Opt("--max-overhead", help="Largest allowed latency overhead in "
                                                 "percent (paired median of `ovrange benchmark`).")] = None,
    min_sdc_reduction: Annotated[Optional[float], Opt("--min-sdc-reduction", help="Smallest allowed SDC "
                                                      "reduction, times fewer SDCs (fault injection, same faults "
                                                      "on both models).")] = None,
    trials: Annotated[int, opt("--trials", "-n", more="For --min-sdc-reduction.", min=1)] = 1000,
    seconds: Seconds = 10.0,
    shape: Shape = None,
    num_samples: Annotated[Optional[int], opt("--num-samples", more="The accuracy is measured on the first N.",
                                              min=1, show_default="all")] = None,
    batch_size: Annotated[int, opt("--batch-size", more="Of the accuracy run.", min=1)] = 64,
    sdc: Sdc = None,
    output: Annotated[Optional[str], opt("--output-name", more="An --sdc that names outputs reads those; the "
                                         "agreement and SDC gates judge it.", show_default="the first")] = None,
    seed: Annotated[int, opt("--seed", more="Of the fault list.")] = 0,
    batch_axis: BatchAxis = None,
    layout: Layout = None,
    mean: Mean = None,
    scale: Scale = None,
    color_order: ColorOrder = None,
    device: Device = "CPU",
    json_out: JsonOut = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Gate a protected model in CI: exit 10 with a one-line reason when a threshold fails; --json writes the report.

    Accuracy is always measured; the overhead and SDC gates run only when their threshold is given.
    """
    from ovrange import data as data_mod
    from ovrange.batching import set_batch_axes
    from ovrange.check import Thresholds
    from ovrange.check import check as run_check
    from ovrange.cli.benchmark import warn_mixed_formats
    from ovrange.modelio import model_files, read_model
    from ovrange.outputs import check_output_file, write_file_atomically
    from ovrange.runtime import is_stateful, refuse_stateful
    from ovrange.text import is_language_model, is_text_data, read_prompts

    thresholds = Thresholds(max_accuracy_drop, max_overhead, min_sdc_reduction, trials)
    axes = batch_axes(batch_axis)
    models = [set_batch_axes(read_model(original), axes), set_batch_axes(read_model(protected), axes)]
    for model in models:
        if not is_language_model(model):
            refuse_stateful(model, "check")  # before the data: prompts or token ids would be the wrong complaint
    language_model = is_stateful(models[0]) and is_language_model(models[0])
    if max_overhead is not None and not language_model:
        refuse_stateful(models[0], "check --max-overhead")
    if max_overhead is not None:
        warn_mixed_formats(original, protected)
    labelled = data_mod.load(data, models[0], images=image_options(data, models[0], layout=layout, mean=mean,
                                                                   scale=scale, color_order=color_order),
                             model_path=original)
    shapes = static_shapes(shape, models[0])
    inputs = [*model_files(original), *model_files(protected), data]
    if json_out:
        check_output_file(json_out, force=force, inputs=inputs)
    with progress_bar("checking", enabled=not quiet) as progress:
        result = run_check(models[0], models[1], labelled, thresholds, device=device,
                           batch_size=batch_size, limit=num_samples, bench_seconds=seconds, shapes=shapes, seed=seed,
                           sdc=sdc, output=output, progress=progress, folders=(original, protected),
                           prompts=read_prompts(data) if language_model and is_text_data(data) else None)
    accuracy = result.accuracy
    typer.echo(f"top-1 vs {accuracy.reference} on {accuracy.samples} samples: original {accuracy.original:.2%}, "
               f"protected {accuracy.protected:.2%} (drop {accuracy.drop_pp:.3g} pp)")
    for gate in result.gates:
        typer.echo(f"{'PASS' if gate.passed else 'FAIL'}  {gate.message}")
    if json_out:
        report = {"original": str(original), "protected": str(protected), "data": str(data),
                  "thresholds": {"max_accuracy_drop_pp": max_accuracy_drop, "max_overhead_pct": max_overhead,
                                 "min_sdc_reduction_x": min_sdc_reduction, "trials": trials},
                  **result.to_json()}
        write_file_atomically(json_out, json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n",
                              force=force, inputs=inputs)
        typer.echo(f"report: {json_out}")
    if not result.gates:
        typer.echo("no threshold given: nothing was gated (use --max-accuracy-drop, --max-overhead, "
                   "--min-sdc-reduction)")
    result.raise_for_failure()
