"""Option types shared by commands (Typer ``Annotated`` aliases) and the progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

# What each shared option means: the first sentence of its help, the same in every command that has it
# (tests/test_cli_options.py fails when one option name or short flag means two things).
MEANINGS = {
    "--data": "Input data: an image folder, an .npy file or an .npz file (inputs x, optional labels y); for a "
             "language model, prompts (.txt, one per line, or .jsonl).",
    "--config": "Config file, JSON or YAML.",
    "--device": "OpenVINO device: CPU, GPU, NPU, AUTO...",
    "--num-samples": "Number of data samples to use.",
    "--batch-size": "Inputs per inference request (the model's batch).",
    "--seed": "Random seed.",
    "--trials": "Number of fault-injection trials.",
    "--time": "Seconds of timing in total (both models).",
    "--shape": "Static input shape(s), benchmark_app syntax: [1,3,48,320] or x[1,3,48,320].",
    "--new-tokens": "New tokens each greedy generation of a language model produces.",
    "--sdc": "SDC criterion: what counts as a changed output.",
    "--output-name": "Name of the model output to judge.",
    "--batch-axis": "Batch axis of a model input, NAME:AXIS (repeatable), where it is not axis 0.",
    "--layout": "Image layout: NCHW or NHWC.",
    "--mean": "Per-channel mean subtracted from image pixels, e.g. 123.675,116.28,103.53.",
    "--scale": "Per-channel divisor applied after --mean, e.g. 58.395,57.12,57.375.",
    "--color-order": "Channel order images are fed in: BGR (as POT's cv2) or RGB.",
    "--json": "Write the result as JSON to this file.",
    "--force": "Overwrite an existing result.",
    "--quiet": "No progress bar.",
    "--verbose": "Show more on stderr: the traceback of an error (as OVRANGE_DEBUG=1); protect and inject "
                 "also print the settings they resolved.",
}


def opt(name: str, *short: str, more: str = "", **kwargs: Any) -> Any:
    """``typer.Option(name, *short)`` whose help starts with the declared meaning of ``name``, then ``more``."""
    return typer.Option(name, *short, help=" ".join(filter(None, (MEANINGS[name], more))), **kwargs)


_verbose = [False]


def set_verbose(value: bool) -> bool:
    """Callback of -v/--verbose (and main, which turns it off before each run)."""
    _verbose[0] = bool(value)
    return value


def verbose() -> bool:
    """Whether this run asked for ``-v/--verbose``."""
    return _verbose[0]


def detail(text: str) -> None:
    """A line on stderr under ``--verbose``."""
    if _verbose[0]:
        typer.echo(text, err=True)


Device = Annotated[str, opt("--device")]
DeviceOrConfig = Annotated[Optional[str], opt("--device", show_default="CPU, or the config's")]
Force = Annotated[bool, opt("--force")]
Quiet = Annotated[bool, opt("--quiet", "-q")]
Verbose = Annotated[bool, opt("--verbose", "-v", is_eager=True, callback=set_verbose)]
JsonOut = Annotated[Optional[Path], opt("--json", show_default=False)]
Sdc = Annotated[Optional[str], opt("--sdc", more="top1 (classifiers), tokens (per-position top-1 of [N, T, "
                                   "classes], e.g. OCR), text[:<blank>] (the greedy CTC text of those positions "
                                   "changes), linf:<t> (max |change| over the output's max |value|), cosine:<t>, "
                                   "abs:<t> (max |change|, in the output's units, e.g. pixels), iou:<t> (a "
                                   "segmentation mask's IoU drops below t), detections[:<iou>] (a detection is "
                                   "added, lost, or moves below IoU 0.5), boxes[:<pixels>] (a text-detection map "
                                   "binarized at 0.3 flips), regions[:<pixels>] (that map's text regions change), "
                                   "generation:N (a language model's N greedy new tokens change); per output: "
                                   "NAME=CRITERION,NAME=CRITERION (docs/fault-injection.md).",
                                   show_default="top1 when the output is [N, classes]")]
OutputName = Annotated[Optional[str], opt("--output-name", more="An --sdc that names outputs reads those.",
                                          show_default="every output, a line each")]
LOG_SECONDS = 15.0  # progress lines outside a terminal: often enough to show life, rarely enough to read the log


def _log_lines(description: str) -> Callable[[int, int], None]:
    """``progress(done, total)`` writing ``description: done/total (pct)`` lines every ``OVRANGE_PROGRESS_SECONDS``
    (default LOG_SECONDS): a short run prints nothing, a long one shows it is alive, and how far it got."""
    interval = float(os.environ.get("OVRANGE_PROGRESS_SECONDS", LOG_SECONDS))
    last = [time.monotonic()]
    printed = [False]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < interval and not (done >= total and printed[0]):
            return
        last[0], printed[0] = now, True
        share = f" ({done / total:.0%})" if total else ""
        typer.echo(f"{description}: {done}/{total}{share}", err=True)

    return update


def positive_finite(value: Optional[float]) -> Optional[float]:
    """Typer callback: a float option must be a finite number > 0 (``nan``/``inf`` parse as floats)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def static_shapes(shape: str | None, model) -> dict[str, list[int]] | None:
    """``--shape`` (benchmark_app syntax) parsed against ``model``: positive static dims only."""
    from ovrange.bench import parse_shape
    from ovrange.errors import ConfigError

    shapes = parse_shape(shape, model) if shape else None
    for name, dims in (shapes or {}).items():
        if any(d <= 0 for d in dims):
            raise ConfigError(f"--shape {shape}: input {name!r} needs positive static dimensions, got {dims}")
    return shapes


@contextmanager
def progress_bar(description: str, enabled: bool = True, unit: str = "") -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields the ``progress(done, total)`` callback the library calls.

    With ``unit`` it shows a rate (``trials/s``) measured from the first update, so work resumed from a checkpoint
    does not inflate it. When stderr is not a terminal (CI logs, pipelines), where a redrawn bar only leaves blank
    lines, it logs plain lines instead (see :func:`_log_lines`).
    """
    if not enabled:
        yield lambda done, total: None
        return
    if not sys.stderr.isatty():
        yield _log_lines(description)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    rate_column = (TextColumn(f"{{task.fields[rate]}} {unit}/s"),) if unit else ()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *rate_column,
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None, rate="-")
        first: list[float] = []  # (time, done) of the first update

        def update(done: int, total: int) -> None:
            now = time.perf_counter()
            if not first:
                first.extend((now, done))
            elapsed, counted = now - first[0], done - first[1]
            rate = f"{counted / elapsed:,.0f}" if elapsed > 0 and counted > 0 else "-"
            bar.update(task, completed=done, total=total, rate=rate)

        yield update


BatchAxis = Annotated[Optional[list[str]], opt("--batch-axis", more="protect keeps it in the protected IR (the "
                                               "input's layout N).", metavar="NAME:AXIS",
                                               show_default="the N of the input's layout, else axis 0, or the "
                                               "one axis that can hold the batch the other inputs show on axis 0 "
                                               "(Silero VAD's state [2,1,128]: 1)")]
Layout = Annotated[Optional[str], opt("--layout", show_default="guessed from the model input")]
Mean = Annotated[Optional[str], opt("--mean", show_default=False)]
Scale = Annotated[Optional[str], opt("--scale", show_default=False)]
ColorOrder = Annotated[Optional[str], opt("--color-order", show_default="BGR")]


def batch_axes(values: list[str] | None) -> dict[str, int]:
    """``--batch-axis NAME:AXIS`` values as ``{name: axis}`` (the last colon splits: names may hold colons)."""
    axes: dict[str, int] = {}
    for value in values or []:
        name, _, axis = value.rpartition(":")
        if not name or not axis.strip().isdigit():
            raise typer.BadParameter(f"{value!r}: use NAME:AXIS, e.g. state:1", param_hint="--batch-axis")
        axes[name] = int(axis)
    return axes


def image_options(data: Path | None, model, *, config: dict | None = None, shape: str | None = None,
                  layout: str | None = None, mean: str | None = None, scale: str | None = None,
                  color_order: str | None = None):
    """Image preprocessing from the options, else the config's engine section (options win); options that
    describe image files are refused for array data (arrays are fed as they are)."""
    from dataclasses import replace

    from ovrange.errors import ConfigError
    from ovrange.images import ImageOptions

    config = config or {}
    shape = shape or config.get("shape")
    if isinstance(shape, list):
        shape = "[" + ",".join(map(str, shape)) + "]"
    dims = next(iter(static_shapes(shape, model).values())) if shape else None
    images = ImageOptions(layout=layout or config.get("layout"), color_order=color_order or
                          config.get("color_order", "BGR"), mean=_floats(mean, config.get("mean_values"), "mean"),
                          scale=_floats(scale, config.get("scale_values"), "scale"),
                          shape=tuple(dims) if dims else None)
    if data is not None and images != replace(images, mean=(), scale=(), color_order="BGR", shape=None) \
            and not Path(data).is_dir():
        raise ConfigError(f"--shape/--mean/--scale/--color-order describe image folders; {data} is not one "
                          "(arrays are fed as they are)")
    return images


def _floats(text: str | None, values: list | None, what: str) -> tuple[float, ...]:
    """``123.7,116.3,103.5`` (brackets allowed, as MO wrote them) or a config list, as floats."""
    from ovrange.errors import ConfigError

    items = text.strip("[]() ").split(",") if text else values or []
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be numbers separated by commas, got {text or values!r}") from None


Seconds = Annotated[float, opt("--time", "-t", callback=positive_finite)]
Shape = Annotated[Optional[str], opt("--shape", show_default="the model's, batch 1")]


def finite_json(value: object) -> object:
    """JSON has no NaN/Infinity (strict parsers such as jq reject them): write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
