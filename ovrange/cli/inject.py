"""``ovrange inject``: a fault-injection campaign on a model (and the same faults on a second one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ovrange.cli.app import app
from ovrange.cli.aliases import AliasedCommand
from ovrange.cli.options import (BatchAxis, ColorOrder, DeviceOrConfig, Force, JsonOut, Layout, Mean, Quiet, Scale,
                                 Sdc, Verbose, batch_axes, detail, image_options, opt, progress_bar)
from ovrange.errors import ConfigError, DataError, Interrupted, OutputError
from ovrange.faults.campaign import MARGIN_CAP
from ovrange.faults.spec import CampaignSpec

Opt = typer.Option
DEFAULT = CampaignSpec()
OR_CONFIG = ", or the config's"


def _default(name: str, shown: object = None) -> str:
    """The help's default of a campaign setting: the library's, unless the config file sets it."""
    return f"{getattr(DEFAULT, name) if shown is None else shown}{OR_CONFIG}"


@app.command(cls=AliasedCommand)
def inject(
    model: Annotated[Optional[Path], typer.Argument(help="OpenVINO IR .xml (or .onnx). Default: model of the "
                                                         "config.", show_default=False)] = None,
    compare: Annotated[Optional[list[Path]], Opt("--compare", help="Replay the same faults on this model (e.g. "
                                                 "the protected one) and compare trial by trial (repeatable).",
                                                 metavar="MODEL")] = None,
    data: Annotated[Optional[Path], opt("--data", more="Inputs are drawn from it (with labels: correctly "
                                        "classified ones).", show_default="data of the config")] = None,
    target: Annotated[Optional[str], Opt("--target", help="activations, weights or kv (a stateful language "
                                         "model's KV cache).",
                                         show_default=_default("target"))] = None,
    trials: Annotated[Optional[int], opt("--trials", "-n", show_default=_default("trials"))] = None,
    seed: Annotated[Optional[int], opt("--seed", more="Of the fault list.", show_default=_default("seed"))] = None,
    bits: Annotated[Optional[str], Opt("--bits", help="Bit positions: all, 30, 23-30, exponent, sign, "
                                       "mantissa, or a comma list.", show_default=_default("bits", "all"))] = None,
    number_format: Annotated[Optional[str], Opt("--number-format", help="Number format of the struck value: "
                                                "auto (as the model stores its weights: fp32, fp16, int8, uint8, "
                                                "int4, uint4; fp32 for activations), one of those, or fixed32 "
                                                "(1/21/10), fixed16 (14/2), fixed:<bits>:<frac> to emulate fixed "
                                                "point.", show_default=_default("number_format"))] = None,
    ber: Annotated[Optional[float], Opt("--ber", help="Bit-error-rate mode for weights: every weight bit "
                                        "flips with this probability, e.g. 1e-5.")] = None,
    fault_model: Annotated[Optional[str], Opt("--fault-model", help="bit (one flip), bits:K (K distinct bits, "
                                              "e.g. bits:6), word:P (burst: each neighbour of a flipped bit flips "
                                              "with probability P, e.g. word:0.75), stuck-at-0, stuck-at-1.",
                                              show_default=_default("fault_model"))] = None,
    error_rate: Annotated[Optional[float], Opt("--error-rate", help="Error-rate mode: every value of every site "
                                               "is struck with this probability (per inference for "
                                               "activations), e.g. 1e-4.")] = None,
    sweep: Annotated[Optional[str], Opt("--sweep", help="One campaign per rate: R1,R2,... (error rates) or "
                                        "ber:R1,R2,... (weight bit-error rates); accuracy and SDC vs rate in the "
                                        "--report folder (sweep.md, sweep.json, sweep.png).")] = None,
    inputs: Annotated[Optional[int], opt("--num-samples", more="Distinct inputs drawn, seeded (correctly "
                                         "classified ones when labels exist).", show_default=_default("inputs"))
                      ] = None,
    batch_size: Annotated[Optional[int], opt("--batch-size", more="Each holds one trial's fault. A model with an "
                                             "If deciding per batch (Checksum recompute, gated "
                                             "GradientSuppression) runs, and needs, batch 1.",
                                             show_default=_default("batch_size"))] = None,
    sites: Annotated[Optional[list[str]], Opt("--sites", help="Only sites whose name matches this glob "
                                              "(repeatable).", metavar="GLOB")] = None,
    exclude: Annotated[Optional[list[str]], Opt("--exclude", help="Leave out sites matching this glob "
                                                "(repeatable).", metavar="GLOB")] = None,
    weighting: Annotated[Optional[str], Opt("--weighting", help="elements (sites in proportion to their size) "
                                            "or uniform.", show_default=_default("weighting"))] = None,
    sdc: Sdc = None,
    output: Annotated[Optional[str], Opt("--output-name", help="Name of the model output to judge.",
                                         show_default=f"the first{OR_CONFIG}")] = None,
    weight_mode: Annotated[Optional[str], Opt("--weight-mode", help="auto, delta (batched layer-output "
                                              "corrections) or parameter (weights as inputs, one inference per "
                                              "trial).", show_default=_default("weight_mode"))] = None,
    config: Annotated[Optional[Path], opt("--config", "-c", more="Campaign settings under the names of "
                                          "ovrange.inject's parameters (inputs for --num-samples, output for "
                                          "--output-name, number_format...), as configs/inject_*.yaml; options "
                                          "given here win.")] = None,
    json_out: JsonOut = None,
    report: Annotated[Optional[Path], Opt("--report", help="Report folder: result.json, summary.md, plots, "
                                          "the fault list and a checkpoint.")] = None,
    replay: Annotated[Optional[Path], Opt("--replay", help="Run the faults of this saved fault list "
                                          "(faults.jsonl).")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the interrupted campaign of --report.")] = False,
    plots: Annotated[Optional[bool], Opt("--plots/--no-plots", help="PNG plots in the report.",
                                         show_default="on when matplotlib is installed")] = None,
    workers: Annotated[Optional[int], Opt("--workers", help="Run on N Ray workers of a local Ray instance "
                                          "(needs ovrange[ray]); with --ray-address or RAY_ADDRESS, N workers "
                                          "on that cluster.")] = None,
    ray_address: Annotated[Optional[str], Opt("--ray-address", help="Join the Ray cluster at HOST:PORT (or "
                                              "auto) started with `ray start --head`; one worker per CPU "
                                              "unless --workers.")] = None,
    shard_size: Annotated[Optional[int], Opt("--shard-size", help="Trials per shard (one remote call).",
                                             show_default="1/8 of the trials, 400 to 8192")] = None,
    lanes: Annotated[Optional[int], Opt("--lanes", help="Parallel inference lanes of a local run, each with "
                                        "cores/lanes OpenVINO threads.",
                                        show_default="one per core, at most 2; one under 400 trials")] = None,
    margin: Annotated[Optional[float], Opt("--margin", help="Stop when every model's SDC interval half-width "
                                           "is at most this (e.g. 0.002); --trials is then the cap "
                                           f"(default {MARGIN_CAP}).")] = None,
    confidence: Annotated[Optional[float], Opt("--confidence", help="Confidence of the --margin interval.",
                                               show_default=_default("confidence"))] = None,
    memory: Annotated[Optional[int], Opt("--memory", help="MB the batch-sized injection and probe buffers may "
                                         "hold; the batch shrinks to fit.", show_default=_default("memory"))] = None,
    batch_axis: BatchAxis = None,
    layout: Layout = None,
    mean: Mean = None,
    scale: Scale = None,
    color_order: ColorOrder = None,
    device: DeviceOrConfig = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Inject bit flips into MODEL and count masked / SDC / DUE outcomes, with 95% intervals."""
    from ovrange.faults.campaign import MARGIN_CAP, inject as run_inject
    from ovrange.faults.report import publish_report, reduction_text, report_session, write_json
    from ovrange.faults.spec import CampaignSpec, load_file
    from ovrange.modelio import model_files
    from ovrange.outputs import check_output_file

    spec, files = load_file(config) if config else (CampaignSpec(), {})
    spec = spec.with_overrides(target=target, trials=trials, seed=seed, bits=bits, number_format=number_format,
                               ber=ber, inputs=inputs, batch_size=batch_size, sites=sites or None, exclude=exclude or None,
                               weighting=weighting, sdc=sdc, output=output, device=device,
                               weight_mode=weight_mode, margin=margin, confidence=confidence,
                               memory=memory, fault_model=fault_model, error_rate=error_rate)
    # A batch size nobody chose is left to inject(): batch 1 for a model that decides per batch.
    default_batch = batch_size is None and spec.batch_size == CampaignSpec.batch_size
    workers = workers if workers is not None else files.get("workers")
    ray_address, shard_size = ray_address or files.get("ray_address"), shard_size or files.get("shard_size")
    lanes = lanes if lanes is not None else files.get("lanes")
    if workers is not None or ray_address is not None:
        from ovrange.faults.ray_executor import check_ray

        check_ray(workers, ray_address)  # before the report folder exists
    if spec.margin is not None and trials is None and spec.trials == CampaignSpec.trials:
        spec = spec.with_overrides(trials=MARGIN_CAP)
    model_path = model or files.get("model")
    if model_path is None:
        raise ConfigError("no model given: pass MODEL.xml or set model in the config")
    compare, data = compare or files.get("compare"), data or files.get("data")
    if isinstance(compare, (str, Path)):
        compare = [compare]
    report, json_out, replay = report or files.get("report"), json_out or files.get("json"), replay or files.get("replay")
    if data is None:
        raise DataError("no data given: pass --data or set data in the config")
    if resume and report is None:
        raise ConfigError("--resume needs the --report folder of the interrupted campaign")
    feed = {"batch_axes": batch_axes(batch_axis) or None,  # how the data feeds the model (no campaign setting)
            "images": image_options(Path(data), None, layout=layout, mean=mean, scale=scale, color_order=color_order)}
    if sweep is not None:
        return _sweep(model_path, data, compare, sweep, spec, report, json_out, plots, force, quiet, default_batch,
                      config, feed)
    inputs = [*model_files(model_path), *[f for path in compare or [] for f in model_files(path)], data, replay,
              config]
    if report is not None:
        _check_report_dir(Path(report), force, resume, inputs)
    if json_out is not None:
        _check_json_outside(Path(json_out), report)
        check_output_file(json_out, force=force, inputs=inputs)
    plots = _plots_wanted(plots) if report is not None else False  # decided before the campaign runs
    detail(f"campaign: {', '.join(f'{k}={v}' for k, v in _settings(spec, default_batch).items())}")
    workdir = None
    try:
        with report_session(report, resume=resume) as workdir:
            with progress_bar("injecting", enabled=not quiet, unit="trials") as progress:
                result = run_inject(model_path, data, compare=compare, replay=replay, checkpoint_dir=workdir,
                                    resume=resume, progress=progress, workers=workers, ray_address=ray_address,
                                    shard_size=shard_size, lanes=lanes, **feed, **_settings(spec, default_batch))
            if json_out is not None:
                write_json(result, json_out, force=force, inputs=inputs)
            if report is not None:
                publish_report(result, workdir, report, plots=plots, inputs=inputs)
    except KeyboardInterrupt:
        resumable = report is not None and workdir == Path(report) and Path(report, "checkpoint.jsonl").exists()
        hint = f"; resume with --report {report} --resume" if resumable else ""
        raise Interrupted(f"interrupted{hint}") from None
    for i, run in enumerate(result.models):
        r = result.rates(i)
        typer.echo(f"{run.name}: SDC {r['sdc']}, DUE {r['due']}, masked {r['masked'].rate:.2%}")
    for other in range(1, len(result.models)):
        typer.echo(reduction_text(result, other))
    if "stopping" in result.meta:
        stop = result.meta["stopping"]
        typer.echo(f"stopped after {stop['trials']} trials: {stop['reason']}")
    if report is not None:
        typer.echo(f"report: {Path(report) / 'summary.md'}")


def _settings(spec, default_batch: bool) -> dict:
    return {k: v for k, v in spec.to_dict().items() if not (default_batch and k == "batch_size")}


def _sweep(model_path, data, compare, sweep: str, spec, report, json_out, plots: bool, force: bool,
           quiet: bool, default_batch: bool = False, config=None, feed: dict | None = None) -> None:
    """``--sweep``: one campaign per rate, the table printed, the curves written to the report folder."""
    import json

    from ovrange.faults.sweep import parse_rates, run_sweep, sweep_markdown, write_sweep
    from ovrange.modelio import model_files
    from ovrange.outputs import check_output_file, write_dir_atomically, write_file_atomically

    kind, rates = parse_rates(sweep)
    if spec.ber is not None or spec.error_rate is not None:
        raise ConfigError("--sweep sets the rate itself: drop --ber / --error-rate")
    settings = {k: v for k, v in _settings(spec, default_batch).items() if k not in ("ber", "error_rate")}
    spec.with_overrides(**{kind: rates[0]})  # the combination is valid before any campaign runs
    inputs = [*model_files(model_path), *[f for path in compare or [] for f in model_files(path)], data, config]
    if report is not None:
        _check_report_dir(Path(report), force, False, inputs)
    if json_out is not None:
        _check_json_outside(Path(json_out), report)
        check_output_file(json_out, force=force, inputs=inputs)
    plots = _plots_wanted(plots) if report is not None else False
    with progress_bar("sweeping", enabled=not quiet, unit="trials") as progress:
        summary = run_sweep(model_path, data, kind, rates, compare=compare, progress=progress, **(feed or {}),
                            **settings)
    if report is not None:
        write_dir_atomically(report, lambda tmp: write_sweep(summary, tmp, plots=plots), force=True, inputs=inputs)
    if json_out is not None:
        write_file_atomically(json_out, json.dumps(summary, indent=1), force=force, inputs=inputs)
    typer.echo(sweep_markdown(summary).rstrip())


def _check_report_dir(path: Path, force: bool, resume: bool, inputs: list = ()) -> None:
    """Before the campaign: the folder may be written. It is created by the campaign itself, once inputs are valid."""
    from ovrange.outputs import prepare_output_dir

    if path.is_dir() and not any(path.iterdir()):
        force = True  # an empty folder holds nothing to protect
    if resume:
        if not path.is_dir():
            raise OutputError(f"cannot resume: no report folder {path}")
        force = True
    if path.exists() and not path.is_dir():
        raise OutputError(f"report path exists and is not a directory: {path}")
    if path.exists() and not force:
        raise OutputError(f"report folder already exists: {path} (use --force to overwrite or --resume)")
    prepare_output_dir(path, force=True, inputs=inputs)


def _check_json_outside(json_out: Path, report: Path | None) -> None:
    """The report folder is replaced as a whole: a --json file inside it would be lost with the old one."""
    if report is not None and Path(os.path.abspath(json_out)).is_relative_to(os.path.abspath(report)):
        raise OutputError(f"--json {json_out} is inside the --report folder {report}, which is replaced as a whole: "
                          "write it elsewhere")


def _plots_wanted(plots: bool | None) -> bool:
    """Plots need matplotlib (the ``plots`` extra): without it they are off with a note, or an error if asked for."""
    if plots is False:
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if plots:
            raise OutputError("--plots needs matplotlib: pip install 'ovrange[plots]' (or pass --no-plots)") from None
        if plots is None:
            typer.echo("note: matplotlib is not installed: the report has no plots (pip install 'ovrange[plots]')",
                       err=True)
        return False
    return True
