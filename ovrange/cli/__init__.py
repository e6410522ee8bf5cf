"""The ``ovrange`` command line: a thin Typer layer over the Python API.

Each command lives in its own module and forwards to a library function; this module owns the one place where
library errors, usage errors and interruptions become one-line messages and exit codes. ``-v/--verbose`` (or
``OVRANGE_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from ovrange.errors import (ConfigError, DeviceError, Interrupted, OutputError, OvrangeError, Terminated,
                            ctrl_c_deferred_while_the_command_imports)

with ctrl_c_deferred_while_the_command_imports():
    import typer
    from typer import _click  # typer vendors click; a plain `import click` fails on a fresh install

USAGE = 2

# Command modules register themselves on `app`, which lives in its own module so that they need not import this one.
with ctrl_c_deferred_while_the_command_imports():
    from ovrange.cli.app import app  # noqa: E402
    from ovrange.cli import protect as _protect  # noqa: E402,F401  (protect, evaluate)
    # (one import line per command module)
    from ovrange.cli import benchmark as _benchmark  # noqa: E402,F401
    from ovrange.cli import check as _check  # noqa: E402,F401
    from ovrange.cli import inject as _inject  # noqa: E402,F401
    from ovrange.cli import report as _report  # noqa: E402,F401


_terminated: list[int] = []


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C (every ``except KeyboardInterrupt`` / ``finally`` cleanup runs), then exits 143."""
    _terminated.append(signum)
    raise Terminated()


def main() -> None:
    """Console-script entry point: run the app, mapping every failure to one ``error: ...`` line and an exit code."""
    from ovrange.cli.options import set_verbose

    set_verbose(False)  # until the command's -v/--verbose says otherwise (main may run twice in one process)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = app(standalone_mode=False, prog_name="ovrange")
    except OvrangeError as exc:
        _fail(str(exc), exc.exit_code, exc)
    except KeyboardInterrupt:  # outside typer's own handling (e.g. while it builds the command)
        _fail("interrupted", Interrupted.exit_code, None)
    except MemoryError as exc:  # a batch, a dataset or a model larger than this machine's memory
        _fail("out of memory: use a smaller --batch-size or --num-samples, or a machine with more memory",
              DeviceError.exit_code, exc)
    except RecursionError as exc:  # a reader without its own depth limit met deeply nested input
        _fail(f"input nested too deeply to read: {exc}", ConfigError.exit_code, exc)
    except _click.exceptions.NoArgsIsHelpError as exc:  # bare `ovrange`: the help, exit 2
        typer.echo(exc.format_message())
        sys.exit(USAGE)
    except _click.exceptions.ClickException as exc:
        _fail(_usage_message(exc), exc.exit_code, exc)
    except typer.Abort:  # end of input at a prompt
        _fail("aborted", 1, None)
    except OSError as exc:  # a filesystem failure no command anticipated: still one line, never a traceback
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG)
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}", OutputError.exit_code if full else 1, exc)
    except Exception as exc:  # noqa: BLE001 - last resort: never show a traceback to a user
        _fail(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0], 70, exc)
    # typer turns a KeyboardInterrupt inside a command into exit code 130 and *returns* it (standalone_mode=False)
    if code == Interrupted.exit_code:
        _fail("interrupted", Interrupted.exit_code, None)
    if isinstance(code, int) and code:
        sys.exit(code)


def _usage_message(exc: _click.exceptions.ClickException) -> str:
    """Click's message on one line, with the command whose --help explains the usage."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, _click.exceptions.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def _fail(message: str, code: int, exc: BaseException | None) -> None:
    if code == Interrupted.exit_code and _terminated:  # SIGTERM took the Ctrl-C path: say so, exit 143
        message, code = "terminated" + message.removeprefix("interrupted"), Terminated.exit_code
    from ovrange.cli.options import verbose

    if exc is not None and (os.environ.get("OVRANGE_DEBUG") or verbose()):
        import traceback

        traceback.print_exception(exc)
    typer.echo(f"error: {message}", err=True)
    if code in (Interrupted.exit_code, Terminated.exit_code):
        # Exit at once: an interrupted run once hung for minutes in interpreter shutdown (a loaded machine, an
        # OpenVINO compile in a worker thread); temporaries are already removed and checkpoints flushed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
