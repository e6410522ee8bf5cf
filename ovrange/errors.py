"""One error family. The library raises these; the CLI turns them into one-line messages and exit codes."""

from __future__ import annotations

import contextlib
from typing import Iterator


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the command line's handler: it unwinds through the same cleanup as
    Ctrl-C (temporaries removed, checkpoints flushed); the command exits 143 with ``error: terminated``."""

    exit_code = 143  # 128 + SIGTERM


@contextlib.contextmanager
def ctrl_c_deferred_while_the_command_imports() -> Iterator[None]:
    """Around the ``ovrange`` command's heavy imports (about a second: OpenVINO, numpy, typer): a Ctrl-C (or
    SIGTERM) then is only noted, and once the imports are done the command stops with the same one line and exit
    code as an interrupted (130) or terminated (143) command. Raised inside the imports instead, a
    KeyboardInterrupt is lost or worse: OpenVINO's import-time telemetry catches it with bare ``except:`` (the
    command then ran to completion and exited 0), and inside a compiled module's initialisation it becomes
    ``ImportError: initialization failed``. Nothing has been written yet. A program that imports ovrange as a
    library keeps its own signal handling."""
    import os
    import signal
    import sys
    import threading

    launcher = os.path.basename(sys.argv[0]) if sys.argv else ""  # "-m" while `python -m ovrange` imports
    if launcher not in ("ovrange", "-m", "__main__.py") or threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous = {signum: signal.signal(signum, lambda number, frame: pressed.append(number))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pressed:
        terminated = signal.SIGTERM in pressed
        sys.stderr.write(f"error: {'terminated' if terminated else 'interrupted'}\n")
        sys.stderr.flush()
        os._exit(Terminated.exit_code if terminated else Interrupted.exit_code)
