"""The ``ovrange`` command line: a thin Typer layer over the Python API.

Each command lives in its own module and forwards to a library function; this module owns the one place where
library errors become one-line messages and exit codes. Set ``OVRANGE_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import os
import sys

import typer

from ovrange.errors import OvrangeError

app = typer.Typer(
    name="ovrange",
    help="Protect OpenVINO models against hardware faults and measure the protection with fault injection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules register themselves on `app`; import them after it exists.
from ovrange.cli import protect as _protect  # noqa: E402,F401  (protect, evaluate)
# (one import line per command module)
from ovrange.cli import benchmark as _benchmark  # noqa: E402,F401
from ovrange.cli import inject as _inject  # noqa: E402,F401


def main() -> None:
    """Console-script entry point: run the app, mapping ovrange errors to ``error: ...`` and an exit code."""
    try:
        app(standalone_mode=False)
    except OvrangeError as exc:
        _fail(str(exc), exc.exit_code, exc)
    except KeyboardInterrupt:
        _fail("interrupted", 130, None)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - last resort: never show a traceback to a user
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            _fail("aborted", 1, None)
        _fail(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0], 70, exc)


def _fail(message: str, code: int, exc: BaseException | None) -> None:
    if exc is not None and os.environ.get("OVRANGE_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)
