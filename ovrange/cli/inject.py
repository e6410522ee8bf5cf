"""``ovrange inject``: a fault-injection campaign on a model (and the same faults on a second one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovrange.cli import app
from ovrange.cli.options import DataPath, Device, Force, Quiet, progress_bar
from ovrange.errors import ConfigError, DataError, OutputError

Opt = typer.Option


@app.command()
def inject(
    model: Annotated[Optional[Path], typer.Argument(help="OpenVINO IR .xml (or .onnx). Default: model of the "
                                                         "config.", show_default=False)] = None,
    compare: Annotated[Optional[list[Path]], Opt("--compare", help="Replay the same faults on this model (e.g. "
                                                 "the protected one) and compare trial by trial (repeatable).")] = None,
    data: DataPath = None,
    target: Annotated[Optional[str], Opt("--target", "-t", help="activations or weights. Default: "
                                         "activations.")] = None,
    trials: Annotated[Optional[int], Opt("--trials", "-n", help="Number of trials. Default: 1000.")] = None,
    seed: Annotated[Optional[int], Opt("--seed", help="Seed of the fault list. Default: 0.")] = None,
    bits: Annotated[Optional[str], Opt("--bits", help="Bit positions: all, 30, 23-30, exponent, sign, "
                                       "mantissa, or a comma list. Default: all.")] = None,
    number_format: Annotated[Optional[str], Opt("--format", help="Number format of the struck value: fp32, "
                                                "fixed32 (1/21/10), fixed16 (14/2), fixed:<bits>:<frac>.")] = None,
    ber: Annotated[Optional[float], Opt("--ber", help="Bit-error-rate mode for weights: every weight bit "
                                        "flips with this probability, e.g. 1e-5.")] = None,
    inputs: Annotated[Optional[int], Opt("--inputs", help="Distinct inputs to draw (correctly classified ones "
                                         "when labels exist). Default: 100.")] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", help="Faults per inference (batched engines). "
                                             "Default: 64.")] = None,
    sites: Annotated[Optional[list[str]], Opt("--sites", help="Only sites whose name matches this glob "
                                              "(repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], Opt("--exclude", help="Leave out sites matching this glob "
                                                "(repeatable).")] = None,
    weighting: Annotated[Optional[str], Opt("--weighting", help="elements (sites in proportion to their size) "
                                            "or uniform.")] = None,
    sdc: Annotated[Optional[str], Opt("--sdc", help="SDC criterion: top1 (classifiers), tokens "
                                      "(per-position top-1 of [N, T, classes], e.g. OCR), linf:<t>, cosine:<t> or boxes[:<pixels>] "
                                      "(text-detection map binarized at 0.3 flips). "
                                      "Default: top1 when the output is [N, classes].")] = None,
    output: Annotated[Optional[str], Opt("--output", help="Name of the model output to judge. Default: the "
                                         "first.")] = None,
    weight_mode: Annotated[Optional[str], Opt("--weight-mode", help="auto, delta (batched layer-output "
                                              "corrections) or parameter (weights as inputs, one inference per "
                                              "trial).")] = None,
    config: Annotated[Optional[Path], Opt("--config", "-c", help="Campaign settings, YAML or JSON.")] = None,
    json_out: Annotated[Optional[Path], Opt("--json", help="Write the result JSON here.")] = None,
    report: Annotated[Optional[Path], Opt("--report", help="Report folder: result.json, summary.md, plots, "
                                          "the fault list and a checkpoint.")] = None,
    replay: Annotated[Optional[Path], Opt("--replay", help="Run the faults of this saved fault list "
                                          "(faults.jsonl).")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the interrupted campaign of --report.")] = False,
    plots: Annotated[bool, Opt("--plots/--no-plots", help="PNG plots in the report.")] = True,
    device: Device = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Inject bit flips into MODEL and count masked / SDC / DUE outcomes, with 95% intervals."""
    from ovrange.faults.campaign import inject as run_inject
    from ovrange.faults.report import reduction_text, write_json, write_report
    from ovrange.faults.spec import CampaignSpec, load_file

    spec, files = load_file(config) if config else (CampaignSpec(), {})
    spec = spec.with_overrides(target=target, trials=trials, seed=seed, bits=bits, number_format=number_format,
                               ber=ber, inputs=inputs, batch_size=batch_size, sites=sites or None, exclude=exclude or None,
                               weighting=weighting, sdc=sdc, output=output, device=device,
                               weight_mode=weight_mode)
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
    if report is not None:
        _check_report_dir(Path(report), force, resume)
    if json_out is not None:
        _check_writable(Path(json_out).parent)
    with progress_bar("injecting", enabled=not quiet, unit="trials") as progress:
        try:
            result = run_inject(model_path, data, compare=compare, replay=replay, checkpoint_dir=report,
                                resume=resume, progress=progress, **spec.to_dict())
        except KeyboardInterrupt:
            hint = f"; resume with --report {report} --resume" if report else ""
            typer.echo(f"error: interrupted{hint}", err=True)
            raise SystemExit(130) from None  # typer.Exit would be swallowed by main()'s standalone_mode=False
    if json_out is not None:
        write_json(result, json_out)
    if report is not None:
        write_report(result, report, plots=plots)
    for i, run in enumerate(result.models):
        r = result.rates(i)
        typer.echo(f"{run.name}: SDC {r['sdc']}, DUE {r['due']}, masked {r['masked'].rate:.2%}")
    for other in range(1, len(result.models)):
        typer.echo(reduction_text(result, other))
    if report is not None:
        typer.echo(f"report: {Path(report) / 'summary.md'}")


def _check_report_dir(path: Path, force: bool, resume: bool) -> None:
    if path.exists() and not path.is_dir():
        raise OutputError(f"report path exists and is not a directory: {path}")
    if path.exists() and any(path.iterdir()) and not (force or resume):
        raise OutputError(f"report folder already exists: {path} (use --force to overwrite or --resume)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create report directory {path}: {exc.strerror}") from exc
    _check_writable(path)


def _check_writable(directory: Path) -> None:
    import os
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise OutputError(f"directory is not writable: {directory} ({exc.strerror})") from exc
    if not os.access(directory, os.W_OK):
        raise OutputError(f"directory is not writable: {directory}")


