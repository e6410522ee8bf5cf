"""The ``ovrange`` console entry point run in the test process (no interpreter or OpenVINO start-up per command), or
many commands one after the other in one fresh process (:func:`run_many`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def run_many(commands: list[list[str]], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Each of ``commands`` (``ovrange`` argument lists) through the console entry point, one after the other, in one
    fresh ``python`` process: isolated from the test process (signal handlers, a crash, a hang ended by ``timeout``)
    while OpenVINO starts once rather than once per command."""
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results.json"
        done = subprocess.run([sys.executable, "-m", "tests.console", str(results)], input=json.dumps(commands),
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        assert done.returncode == 0 and results.is_file(), done.stderr[-2000:]
        return [subprocess.CompletedProcess(["ovrange", *command], code, out, err)
                for command, (code, out, err) in zip(commands, json.loads(results.read_text()))]


if __name__ == "__main__":  # python -m tests.console RESULTS.json < commands.json (what run_many starts)
    Path(sys.argv[1]).write_text(json.dumps([run(*command) for command in json.load(sys.stdin)]))
