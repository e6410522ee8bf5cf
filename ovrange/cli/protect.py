"""``ovrange protect`` and ``ovrange evaluate``: paths in, files and a summary out."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ovrange.cli.app import app
from ovrange.cli.aliases import AliasedCommand
from ovrange.cli.options import (BatchAxis, ColorOrder, Device, DeviceOrConfig, Force, JsonOut, Layout, Mean,
                                 OutputName, Quiet, Scale, Sdc, Verbose, batch_axes, detail, finite_json, image_options,
                                 opt, positive_finite, progress_bar)
from ovrange.errors import ConfigError, DataError
from ovrange.params import COMMON_PARAMS
from ovrange.validate import DEFAULT_HOLDOUT, check_fraction

OR_CONFIG = ", or the config's"
SHUFFLE = "--shuffle" if COMMON_PARAMS["shuffle_data"].default else "--no-shuffle"


@app.command(cls=AliasedCommand)
def protect(
    model: Annotated[Optional[Path], typer.Argument(help="OpenVINO IR .xml (or .onnx). Default: model.model of the "
                                                         "config.", show_default=False)] = None,
    config: Annotated[Optional[Path], opt("--config", "-c", more="POT's layout (model, engine, compression); "
                                          "JSON may hold comments.")] = None,
    data: Annotated[Optional[Path], opt("--data", more="Calibration samples.",
                                        show_default="engine.data_source of the config")] = None,
    shape: Annotated[Optional[str], opt("--shape", more="Image folders only: the images are resized to it, for "
                                        "a model whose spatial dims are dynamic (engine.shape).",
                                        show_default="the model's")] = None,
    layout: Annotated[Optional[str], opt("--layout", more="Config: engine.layout.",
                                         show_default="guessed from the model input")] = None,
    mean: Annotated[Optional[str], opt("--mean", more="Config: engine.mean_values.", show_default=False)] = None,
    scale: Annotated[Optional[str], opt("--scale", more="Config: engine.scale_values.", show_default=False)] = None,
    color_order: Annotated[Optional[str], opt("--color-order", more="Config: engine.color_order.",
                                              show_default="BGR, or the config's")] = None,
    batch_axis: BatchAxis = None,
    subset_size: Annotated[Optional[int], opt("--num-samples", more="Calibration samples, the first ones unless "
                                              "--shuffle (stat_subset_size).",
                                              show_default=f"{COMMON_PARAMS['stat_subset_size'].default}{OR_CONFIG}"
                                              )] = None,
    batch_size: Annotated[Optional[int], opt("--batch-size", more="Of the calibration run (stat_batch_size).",
                                             show_default=f"{COMMON_PARAMS['stat_batch_size'].default}{OR_CONFIG}"
                                             )] = None,
    shuffle: Annotated[Optional[bool], typer.Option("--shuffle/--no-shuffle", help="Random subset "
                                                     "(shuffle_data).",
                                                     show_default=f"{SHUFFLE}{OR_CONFIG}")] = None,
    seed: Annotated[Optional[int], opt("--seed", more="Of the shuffled subset (seed), and of the --max-overhead "
                                       "campaign.",
                                       show_default=f"{COMMON_PARAMS['seed'].default}{OR_CONFIG}")] = None,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", "-a", help="Protection algorithm: "
                                                      "RangeSupervision, Ranger, GradientSuppression, BoundedWeights, "
                                                      "Checksum, GlobalClipper.",
                                                      show_default="the config's, else RangeSupervision")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Algorithm parameter KEY=VALUE "
                                                       "(YAML value), e.g. -p bound=percentile -p percentile=99.9; "
                                                       "repeatable.", metavar="KEY=VALUE")] = None,
    holdout: Annotated[Optional[float], typer.Option("--holdout", metavar="FRACTION", help="Share of the "
                                                     "calibration subset held out to check that clean outputs "
                                                     "stay as the original's (range protections); bounds that "
                                                     "clip held-out values are widened; 0 disables "
                                                     "(compression.holdout).",
                                                     show_default=f"{DEFAULT_HOLDOUT:g}{OR_CONFIG}")] = None,
    sdc: Annotated[Optional[str], opt("--sdc", more="Of the held-out check, beside linf:0.01 on every output, and "
                                      "of the --max-overhead campaign (compression.sdc).",
                                      show_default="top1 when output 0 is [N, classes]")] = None,
    bounds: Annotated[Optional[Path], typer.Option("--bounds", help="Apply a saved plan (a result's bounds.json) "
                                                   "as it is: no calibration data, the same IR.")] = None,
    max_overhead: Annotated[Optional[str], typer.Option(
        "--max-overhead", help="Largest allowed latency overhead in percent (paired median of `ovrange benchmark`). "
        "Keeps the guards that remove the most SDC per cost (1 or 1%; compression.max_overhead): guards the plugin "
        "fuses into the original's kernels are priced free, the rest by timing; each chosen set is replayed on the "
        "benefit faults (guards that make it worse than no guard are dropped) and timed against the original: kept "
        "while its median is within the budget, verified when its 95% interval is: see docs/safety-case.md.",
        show_default=False)] = None,
    trials: Annotated[Optional[int], opt("--trials", more="With --max-overhead: the seeded activation campaign "
                                         "that measures each guard's benefit.", min=1, show_default="1000")] = None,
    seconds: Annotated[Optional[float], opt("--time", "-t", more="With --max-overhead: of each timing step (4 "
                                            "sessions; up to 4 per set, until the interval is narrower than the "
                                            "budget).", callback=positive_finite, show_default="8")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Results go to "
                                             "<output-dir>/<model_name>_<algorithm>/ (a POT chain: "
                                             "<model_name>_<step>_..._<algorithm>/).")] = Path("results"),
    device: DeviceOrConfig = None,
    force: Force = False,
    json_out: JsonOut = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Insert range-supervision Clamps after the activations of MODEL, with bounds from calibration data.

    Writes <output-dir>/<model_name>_<algorithm>/<model_name>.xml/.bin (f32 weights) and bounds.json. A POT chain
    (DefaultQuantization / WeightCompression, then the protection) quantizes with nncf first.
    """
    from ovrange import config as config_mod
    from ovrange import data as data_mod
    from ovrange.batching import set_batch_axes
    from ovrange.modelio import model_files, read_model
    from ovrange.outputs import check_output_file, prepare_output_dir
    from ovrange.protect import chain_name, run_chain, save_protected
    from ovrange.text import export_files

    known_inputs = [*(model_files(model) if model else ()), data, config, bounds]
    if json_out:
        check_output_file(json_out, force=force, inputs=known_inputs)
    if bounds is not None and max_overhead is not None:
        raise ConfigError("--bounds applies a saved plan as it is: --max-overhead chooses guards from calibration")
    if bounds is not None:
        if holdout is not None or sdc is not None:
            raise ConfigError("--bounds applies a saved plan as it is: it takes no --holdout or --sdc")
        _protect_with_plan(model, bounds, output_dir, force, config, data, json_out)
        return
    cfg = config_mod.load_config(config) if config else config_mod.ProtectConfig()
    if algorithm and algorithm != cfg.algorithm.name:  # replaces the protection; a chain keeps its quantization
        cfg = replace(cfg, algorithms=(*cfg.quantization, config_mod.default_algorithm(algorithm)))
    cfg = cfg.with_overrides(**_overrides(config_mod.parse_assignments(param or []), stat_subset_size=subset_size,
                                          stat_batch_size=batch_size, shuffle_data=shuffle, seed=seed))
    budget = max_overhead if max_overhead is not None else cfg.max_overhead
    fraction = None if budget is None else _parse_budget(budget, from_config=max_overhead is None)
    if fraction is None and (trials, seconds) != (None, None):
        raise ConfigError("--trials and --time set how --max-overhead chooses guards: give --max-overhead "
                          "(or compression.max_overhead)")
    model_path = model or cfg.model
    if model_path is None:
        raise ConfigError("no model given: pass MODEL.xml or set model.model in the config")
    data_path = data or cfg.data_source
    if data_path is None:
        raise DataError("no calibration data given: pass --data or set engine.data_source in the config")
    name = cfg.model_name or model_path.stem
    ov_model = read_model(model_path, None if model else cfg.weights)  # inputs first, outputs last: a bad input
    set_batch_axes(ov_model, batch_axes(batch_axis))
    images = image_options(Path(data_path), ov_model, config=cfg.images, shape=shape, layout=layout or cfg.layout,
                           mean=mean, scale=scale, color_order=color_order)
    dataset = data_mod.load(data_path, ov_model, images=images,
                            model_path=model_path).dataset  # leaves no folder behind
    inputs = [*model_files(model_path), None if model else cfg.weights, data_path, config]
    out_dir = prepare_output_dir(output_dir / f"{name}_{chain_name(cfg.algorithms)}", force, inputs)
    for step in cfg.algorithms:
        detail(f"{step.name}: {', '.join(f'{k}={v}' for k, v in step.params.items())}")
    holdout = cfg.holdout if holdout is None else check_fraction(holdout, "--holdout")
    if fraction is None:
        with progress_bar("calibrating", enabled=not quiet) as progress:
            protected = run_chain(ov_model, dataset, cfg.algorithms, device=device or cfg.device, progress=progress,
                                  holdout=holdout, sdc=sdc or cfg.sdc)
    else:
        protected = _within_budget(ov_model, dataset, cfg, fraction, device=device or cfg.device, trials=trials,
                                   seconds=seconds, holdout=holdout, sdc=sdc or cfg.sdc, quiet=quiet)
    save_protected(protected, out_dir, name, force=force, copy=export_files(model_path, ov_model))
    _print_summary(protected, out_dir, name)
    _print_heldout(protected)
    if fraction is not None:
        _print_budget(protected)
    _write_json(json_out, protected, model_path, out_dir, name, force=force, inputs=inputs)


def _parse_budget(budget: str | float, from_config: bool) -> float:
    from ovrange.budget import parse_overhead

    return parse_overhead(budget, "compression.max_overhead" if from_config else "--max-overhead")


def _within_budget(model, dataset, cfg, fraction: float, *, device: str, trials: Optional[int],
                   seconds: Optional[float], holdout: float, sdc: Optional[str], quiet: bool):
    """``--max-overhead``: the full protection cut to the guards that fit the budget (ovrange.budget)."""
    from ovrange.budget import SECONDS, TRIALS, protect_within_budget

    with progress_bar("protecting within the budget", enabled=not quiet) as progress:
        protected, _ = protect_within_budget(model, dataset, cfg.algorithms, fraction, device=device, sdc=sdc,
                                             progress=progress, trials=trials or TRIALS, seed=cfg.algorithm.seed,
                                             holdout=holdout, seconds=seconds or SECONDS)
    return protected


def _print_budget(protected) -> None:
    from ovrange.budget import describe
    from ovrange.protect import protection_info

    for line in describe(protection_info(protected).report["budget"]):
        typer.echo(line)


def _protect_with_plan(model: Optional[Path], bounds: Path, output_dir: Path, force: bool,
                       config: Optional[Path], data: Optional[Path], json_out: Optional[Path]) -> None:
    """``--bounds``: apply a saved plan to MODEL; nothing is written when the plan does not fit."""
    from ovrange.modelio import model_files, read_model
    from ovrange.outputs import prepare_output_dir
    from ovrange.plan import load_plan
    from ovrange.protect import apply_plan, save_protected
    from ovrange.text import export_files

    if config is not None or data is not None:
        raise ConfigError("--bounds applies a saved plan as it is: it takes no --config or --data")
    if model is None:
        raise ConfigError("--bounds needs the MODEL to apply the plan to")
    plan = load_plan(bounds)
    ov_model = read_model(model)
    protected = apply_plan(ov_model, plan)  # a plan that does not fit fails here, before any output exists
    name = model.stem
    inputs = [*model_files(model), bounds]
    out_dir = prepare_output_dir(output_dir / f"{name}_{plan.algorithm}", force, inputs)
    save_protected(protected, out_dir, name, force=force, copy=export_files(model, ov_model))
    _print_summary(protected, out_dir, name)
    _write_json(json_out, protected, model, out_dir, name, force=force, inputs=inputs)


def _write_json(json_out: Optional[Path], protected, model: Path, out_dir: Path, name: str, *, force: bool,
                inputs: list) -> None:
    """``--json``: what was protected and where the files are."""
    if not json_out:
        return
    import json

    from ovrange.outputs import write_file_atomically
    from ovrange.protect import protection_info

    info = protection_info(protected)
    report = {"model": str(model), "protected_model": str(out_dir / f"{name}.xml"),
              "bounds": str(out_dir / "bounds.json"), "algorithm": info.algorithm, "samples": info.samples,
              "precision": info.precision, "protected_nodes": len(info.nodes),
              "node_types": dict(sorted(Counter(node.get("type", "?") for node in info.nodes.values()).items())),
              **{key: info.report[key] for key in ("coverage", "heldout") if key in info.report}}
    write_file_atomically(json_out, json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n",
                          force=force, inputs=inputs)
    typer.echo(f"result:          {json_out}")


def _print_summary(protected, out_dir: Path, name: str) -> None:
    from ovrange.coverage import coverage_line
    from ovrange.protect import protection_info

    info = protection_info(protected)
    kinds = Counter(node.get("type", "?") for node in info.nodes.values())
    typer.echo(f"{info.algorithm}: {len(info.nodes)} node(s) protected "
               f"({', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}); "
               f"statistics from {info.samples} samples in {info.precision}")
    labels = {key: key if node.get("name", key) == key else f"{key} ({node['name']})"
              for key, node in info.nodes.items()}  # a repeated friendly name: the unique id, then the name
    width = max((len(label) for label in labels.values()), default=0)
    for key, node in info.nodes.items():
        typer.echo(f"  {labels[key]:<{width}}  {node.get('type', ''):<9} {_describe(node)}")
    if "coverage" in info.report:
        typer.echo(coverage_line(info.report["coverage"]))
    typer.echo(f"protected model: {out_dir / (name + '.xml')}")
    typer.echo(f"bounds:          {out_dir / 'bounds.json'}")


def _print_heldout(protected) -> None:
    """The held-out agreement line, and a warning (stderr) when clean held-out outputs changed."""
    from ovrange.protect import protection_info
    from ovrange.validate import summary, warning

    entry = protection_info(protected).report.get("heldout")
    if entry is None:
        return
    typer.echo(summary(entry))
    problem = warning(entry)
    if problem:
        typer.echo(problem, err=True)


def _describe(node: dict) -> str:
    """One short text for what was applied to a node (bounds, thresholds, ...)."""
    if "high" in node:
        low, high = node["low"], node["high"]
        if isinstance(high, list):
            method = f", {node['method']}" if node.get("method") else ""
            return f"[{min(low):.4g}, {max(high):.4g}] per channel ({len(high)}){method}"
        return f"[{low:.6g}, {high:.6g}] {node.get('method', '')}".rstrip()
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in node.items()
                     if k not in ("node", "name", "type") and not isinstance(v, (list, dict)))


@app.command(cls=AliasedCommand)
def evaluate(
    models: Annotated[list[Path], typer.Argument(help="One or more models (e.g. original and protected).")],
    data: Annotated[Path, opt("--data", more="Labels make a top-1 accuracy.", show_default=False)],
    batch_size: Annotated[int, opt("--batch-size", min=1)] = 64,
    num_samples: Annotated[Optional[int], opt("--num-samples", more="The first N.", min=1,
                                              show_default="all")] = None,
    sdc: Sdc = None,
    output: OutputName = None,
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
    """Top-1 accuracy of each model (with labels) and how often each agrees with the first (always), in f32.

    A model with several outputs gets a line per output, unless --output-name picks one or the --sdc criterion
    names its outputs (NAME=CRITERION,..., detections).

    Stateful language models (optimum-intel exports) are compared by their greedy generations on prompts:
    --sdc generation:N (default 16 new tokens), agreement = the same N tokens.
    """
    from ovrange import data as data_mod
    from ovrange.batching import set_batch_axes
    from ovrange.evaluate import generation_criterion, generation_lines, judged_outputs, label_accuracy, predict_outputs
    from ovrange.modelio import model_files, read_model
    from ovrange.outputs import check_output_file

    inputs = [file for path in models for file in model_files(path)] + [data]
    axes = batch_axes(batch_axis)
    loaded = [set_batch_axes(read_model(path), axes) for path in models]  # every input is checked before inference
    if generation_criterion(loaded, sdc):  # language models: their greedy generations are compared
        if json_out:
            check_output_file(json_out, force=force, inputs=inputs)
        lines, report = generation_lines(models, loaded, data, sdc, limit=num_samples, device=device or "CPU")
        for line in lines:
            typer.echo(line)
        if json_out:
            import json

            from ovrange.outputs import write_file_atomically

            write_file_atomically(json_out, json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n",
                                  force=force, inputs=inputs)
            typer.echo(f"result: {json_out}")
        return
    judged = judged_outputs(loaded[0], sdc, output)
    labelled = data_mod.load(data, loaded[0], images=image_options(data, loaded[0], layout=layout, mean=mean,
                                                                  scale=scale, color_order=color_order))
    if json_out:
        check_output_file(json_out, force=force, inputs=inputs)
    reference = None
    results = []
    for path, model in zip(models, loaded):
        with progress_bar(f"evaluating {path.name}", enabled=not quiet) as progress:
            outputs = predict_outputs(model, labelled.dataset, batch_size=batch_size, device=device,
                                      limit=num_samples, progress=progress)
        samples = len(outputs[0])
        parts = []
        entry: dict[str, Any] = {"model": str(path), "samples": samples}
        if labelled.labels is not None:
            result = label_accuracy(outputs[judged[0].index], labelled.labels)
            parts.append(f"top-1 {result.top1:.2%} ({result.correct}/{result.total}, f32)")
            entry.update(top1=result.top1, correct=result.correct, total=result.total)
        if reference is None:
            reference = outputs
            if labelled.labels is None:
                parts.append(f"the reference ({samples} samples; {data.name} has no labels)")
            typer.echo(f"{path}: {', '.join(parts)}")
        else:
            lines = []
            for view in judged:
                agrees = view.agreement(reference, outputs)
                lines.append({"output": view.label, "agreement": agrees, "criterion": view.criterion})
                shown = f" [{view.label}]" if view.label and len(loaded[0].outputs) > 1 else ""
                said = f"agrees with {models[0].name} on {agrees:.2%} ({view.criterion})"
                typer.echo(f"{path}{shown}: {', '.join([*parts, said])}")
                parts = []
            if len(lines) == 1:
                entry.update({k: v for k, v in lines[0].items() if v is not None})
            else:
                entry["outputs"] = lines
        results.append(entry)
    if json_out:
        import json

        from ovrange.outputs import write_file_atomically

        report = {"data": str(data), "reference": str(models[0]), "models": results}
        write_file_atomically(json_out, json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n",
                              force=force, inputs=inputs)
        typer.echo(f"result: {json_out}")


def _overrides(assigned: dict[str, Any], **flags: Any) -> dict[str, Any]:
    """``-p KEY=VALUE`` assignments and the given flags (--num-samples...) as one set of parameters; a parameter
    given both ways with two values is a usage error."""
    given = {key: value for key, value in flags.items() if value is not None}
    clash = next((key for key in given if key in assigned and assigned[key] != given[key]), None)
    if clash is not None:
        raise ConfigError(f"{clash} is given twice, as -p {clash}={assigned[clash]} and by its option ({given[clash]})")
    return {**assigned, **given}
