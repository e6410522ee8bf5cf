"""The ``ovrange`` console entry point run in the test process (no interpreter or OpenVINO start-up per command)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path


def run(*args: object, cwd: Path | None = None) -> tuple[int, str, str]:
    """``ovrange ARGS`` in this process, in ``cwd`` if given; (exit code, stdout, stderr)."""
    from ovrange.cli import main

    argv, here, out, err = sys.argv, os.getcwd(), io.StringIO(), io.StringIO()
    sys.argv = ["ovrange", *map(str, args)]
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()
