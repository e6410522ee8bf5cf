"""``ovrange report``: evidence from a finished campaign folder (vulnerability map, safety figures, HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ovrange.cli.app import app
from ovrange.cli.aliases import AliasedCommand
from ovrange.cli.options import Force, JsonOut, Verbose, finite_json, positive_finite

Opt = typer.Option


@app.command(cls=AliasedCommand)
def report(
    campaign: Annotated[Path, typer.Argument(help="A campaign's report folder (from `ovrange inject --report`), "
                                                  "or its result.json.")],
    html: Annotated[Optional[Path], Opt("--html", help="Write one self-contained HTML report here.")] = None,
    fit_raw: Annotated[Optional[float], Opt("--fit-raw", help="Raw fault rate in FIT (failures per 1e9 h) per "
                                            "Mbit (2^20 bits) of the faulted bits, or per device with "
                                            "--fit-unit device: residual SDC/DUE rates in FIT.",
                                            callback=positive_finite)] = None,
    fit_unit: Annotated[str, Opt("--fit-unit", help="mbit or device.")] = "mbit",
    check: Annotated[Optional[Path], Opt("--check", help="`ovrange check --json` output to show with the "
                                         "report.")] = None,
    json_out: JsonOut = None,
    force: Force = False,
    verbose: Verbose = False,
) -> None:
    """Print the safety figures and write vulnerability.json/.svg into the CAMPAIGN folder; --html writes one
    shareable, self-contained HTML report."""
    import json

    from ovrange.errors import ConfigError, DataError
    from ovrange.evidence.html import render, report_data, with_interval, fit
    from ovrange.evidence.safety import FIT_UNITS
    from ovrange.evidence.vulnerability import write_vulnerability
    from ovrange.faults.report import RESULT_FILE
    from ovrange.faults.result import CampaignResult
    from ovrange.outputs import check_output_file, write_file_atomically

    if fit_unit not in FIT_UNITS:
        raise ConfigError(f"--fit-unit must be one of {', '.join(FIT_UNITS)}, got {fit_unit!r}")
    path = campaign / RESULT_FILE if campaign.is_dir() else campaign
    inputs = [path, check]
    for out in (html, json_out):
        if out is not None:
            check_output_file(out, force=force, inputs=inputs)
    try:
        result = CampaignResult.load(path)
        gates = json.loads(check.read_text()) if check is not None else None
    except OSError as exc:
        raise DataError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not an ovrange campaign result or check report: {exc}") from exc
    if gates is not None and not isinstance(gates, dict):
        raise DataError(f"{check} is not an `ovrange check --json` report")
    data = report_data(result, fit_raw, fit_unit, gates)
    written = write_vulnerability(result, campaign) if campaign.is_dir() else []  # never beside a loose JSON
    if html is not None:
        written.append(write_file_atomically(html, render(data), force=force, inputs=inputs))
    if json_out is not None:
        text = json.dumps(finite_json(data), indent=1, allow_nan=False) + "\n"
        written.append(write_file_atomically(json_out, text, force=force, inputs=inputs))
    for model in data["safety"]["models"]:
        what = "SDC per trial" if data["safety"]["unsuitable"] else "P(SDC|fault)"
        line = f"{model['name']}: {what} {with_interval(model['p_sdc'])}"
        if model["lambda_sdc_fit"] is not None:
            line += f", SDC {with_interval(model['lambda_sdc_fit'], fit)} FIT"
        if model["spfm"] is not None:
            line += f", SPFM {with_interval(model['spfm'])}"
        flagged = f", flagged {with_interval(model['flagged'])}" if model.get("flagged") else ""
        typer.echo(line + f", DC {with_interval(model['dc'])}{flagged}")
    for comparison in data["safety"]["comparisons"]:
        typer.echo(f"SDC reduction (paired): {with_interval(comparison['sdc_reduction'], lambda v: f'{v:.2f}x')}")
    for path_ in written:
        typer.echo(f"wrote {path_}")
