"""One error family. The library raises these; the CLI turns them into one-line messages and exit codes."""

from __future__ import annotations


class OvrangeError(Exception):
    """Base class of every error ovrange reports to a user. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(OvrangeError):
    """The configuration (file or options) is invalid: unknown key, wrong type, bad value."""

    exit_code = 2


class ModelError(OvrangeError):
    """The model cannot be read, or has nothing this operation can work on."""

    exit_code = 3


class DataError(OvrangeError):
    """The dataset is missing, empty, unreadable, or does not fit the model."""

    exit_code = 4


class OutputError(OvrangeError):
    """The output location exists (without --force) or cannot be written."""

    exit_code = 5


class DeviceError(OvrangeError):
    """The requested OpenVINO device is absent or failed to compile the model."""

    exit_code = 6


class CheckFailed(OvrangeError):
    """A CI gate threshold was not met (``ovrange check``)."""

    exit_code = 10


class Interrupted(OvrangeError):
    """The run was interrupted (Ctrl-C, SIGINT); nothing half-written is left, partial work may be resumable."""

    exit_code = 130  # 128 + SIGINT, what shells report: CI must never read an interrupted gate as passed


def exit_if_command_starting(exc: KeyboardInterrupt) -> None:
    """Ctrl-C while the ``ovrange`` command is still importing its libraries (about a second: OpenVINO, numpy):
    the same one line and exit code 130 as an interrupted command, not Python's import traceback. Nothing has
    been written yet. A program that imports ovrange as a library gets its KeyboardInterrupt back."""
    import os
    import sys

    launcher = os.path.basename(sys.argv[0]) if sys.argv else ""
    if launcher in ("ovrange", "-m", "__main__.py"):  # console script, or `python -m ovrange` (argv[0] is "-m"
        sys.stderr.write("error: interrupted\n")      # while the package imports)
        sys.stderr.flush()
        os._exit(Interrupted.exit_code)
    raise exc
