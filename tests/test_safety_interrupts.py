"""Signals, races and killed runs, with real processes: Ctrl-C is exit 130 and one line for every command (an
interrupted ``ovrange check`` must never read as a passed gate), two runs racing for one output cannot both win,
and the temporaries of a killed run are cleaned up by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ovrange.outputs import write_dir_atomically

PROGRESS = {**os.environ, "OVRANGE_PROGRESS_SECONDS": "0.2"}  # progress lines outside a terminal, soon


def start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ovrange", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=PROGRESS)


def interrupt_when(process: subprocess.Popen, stream: str, marker: str) -> tuple[int, str, str]:
    """Send SIGINT once ``marker`` appears on ``stream`` (the command is then mid-work); return (code, out, err)."""
    seen = []
    for line in getattr(process, stream):
        seen.append(line)
        if marker in line:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return process.returncode, (out if stream == "stderr" else "".join(seen) + out), \
        ("".join(seen) + err if stream == "stderr" else err)


@pytest.fixture(scope="module")
def lenet(bundled) -> dict[str, Path]:
    return bundled["lenet"]


@pytest.mark.parametrize("command", ["protect", "evaluate", "check", "benchmark", "inject"])
def test_ctrl_c_exits_130_with_one_line(lenet, tmp_path, command):
    xml, test = lenet["xml"], lenet["test_npz"]
    args, stream, marker = {
        "protect": (("protect", xml, "--data", test, "--num-samples", "10000", "-o", tmp_path / "out"), "stderr",
                    "calibrating:"),
        "evaluate": (("evaluate", xml, xml, "--data", test, "--batch-size", "1"), "stderr", "evaluating"),
        "check": (("check", xml, xml, "--data", test, "--batch-size", "1", "--max-accuracy-drop", "1"), "stderr",
                  "checking:"),
        "benchmark": (("benchmark", xml, xml, "--time", "120", "--sessions", "1"), "stdout", "OpenVINO sees"),
        "inject": (("inject", xml, "--data", test, "--trials", "200000", "--report", tmp_path / "report"), "stderr",
                   "injecting:"),
    }[command]
    code, out, err = interrupt_when(start(*args), stream, marker)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 130, err
    assert len(errors) == 1 and errors[0].startswith("error: interrupted") and "Traceback" not in err + out
    if command == "inject":
        assert "--resume" in errors[0]
        assert not (tmp_path / "report" / "result.json").exists()  # an interrupted campaign never looks complete
    assert not (tmp_path / "out").exists()  # protect: nothing half-written, no folder created


RACER = """
import sys, time
from pathlib import Path
from ovrange.errors import OutputError
from ovrange.outputs import write_dir_atomically

out, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def write(tmp):  # both runs are past the existence check before either moves its result into place
    (tmp / "who").write_text(me)
    (out.parent / f"ready-{me}").touch()
    while not (out.parent / f"ready-{other}").exists():
        time.sleep(0.01)

try:
    write_dir_atomically(out, write)
except OutputError as exc:
    sys.exit(f"error: {exc}")
"""


def test_two_runs_racing_for_one_output_cannot_both_win(tmp_path):
    out = tmp_path / "result"
    runs = [subprocess.Popen([sys.executable, "-c", RACER, str(out), me, other], stderr=subprocess.PIPE, text=True)
            for me, other in (("a", "b"), ("b", "a"))]
    results = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 1], results
    winner = "ab"[[code for code, _ in results].index(0)]
    loser = next(err for code, err in results if code)
    assert loser.startswith("error: output already exists") and len(loser.strip().splitlines()) == 1
    assert (out / "who").read_text() == winner  # the winner's result, not overwritten by the loser
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready-a", "ready-b", "result"]


def test_temporaries_of_a_killed_run_are_cleaned_by_the_next(tmp_path):
    out = tmp_path / "result"
    writer = ("import sys, time; from pathlib import Path; from ovrange.outputs import write_dir_atomically\n"
              "def write(tmp):\n    (tmp / 'part').write_text('half'); print('writing', flush=True); time.sleep(60)\n"
              "write_dir_atomically(Path(sys.argv[1]), write)\n")
    killed = subprocess.Popen([sys.executable, "-c", writer, str(out)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "writing"
    killed.kill()
    killed.wait(timeout=30)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".result.") and left[0].endswith(".tmp")
    write_dir_atomically(out, lambda tmp: (tmp / "done").write_text("ok"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    assert (out / "done").read_text() == "ok"


def test_a_result_moved_aside_by_a_killed_run_is_restored(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".result.old-{dead.pid}").mkdir()  # the rename of --force, cut short by SIGKILL
    (tmp_path / f".result.old-{dead.pid}" / "model.xml").write_text("previous result")
    with pytest.raises(Exception, match="already exists"):
        write_dir_atomically(tmp_path / "result", lambda tmp: None)  # restored first, then found existing
    assert (tmp_path / "result" / "model.xml").read_text() == "previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_progress_lines_when_stderr_is_not_a_terminal(lenet, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ovrange", "evaluate", lenet["xml"], "--data", lenet["test_npz"],
                           "--num-samples", "2000", "--batch-size", "1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OVRANGE_PROGRESS_SECONDS": "0"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("evaluating fashion_lenet.xml: ") for line in lines)
    assert lines[-1].endswith("2000/2000 (100%)")
    assert np.diff([int(line.split(": ")[1].split("/")[0]) for line in lines]).min() > 0


def test_a_full_disk_is_one_line_and_leaves_nothing(lenet, tmp_path):
    import resource

    def small_files() -> None:  # the kernel refuses writes past 64 KiB (EFBIG), as a full disk refuses them
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = subprocess.run([sys.executable, "-m", "ovrange", "protect", lenet["xml"], "--data", lenet["calib_npz"],
                           "--num-samples", "10", "-o", tmp_path / "out", "-q"], capture_output=True, text=True,
                          timeout=300, preexec_fn=small_files)
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("delay", [0.2, 0.4, 0.8])
def test_ctrl_c_while_the_command_starts_up(lenet, tmp_path, delay):
    """The command spends about a second importing OpenVINO and numpy: a Ctrl-C then is one line and 130 too."""
    process = start("inject", lenet["xml"], "--data", lenet["test_npz"], "--trials", "200000",
                    "--report", tmp_path / "report")
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert process.returncode == 130, err
    assert len(errors) == 1 and errors[0].startswith("error: interrupted") and "Traceback" not in err + out
    assert not (tmp_path / "report" / "result.json").exists()



DURING_IMPORTS = """
import os, signal, sys, time
sys.argv = [{launcher!r}]
from ovrange.errors import ctrl_c_deferred_while_the_command_imports
with ctrl_c_deferred_while_the_command_imports():
    try:  # what OpenVINO's import-time telemetry does: a bare except around file reads
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
    except:  # noqa: E722
        print("swallowed")
    print("imports done")
print("command ran")
"""


@pytest.mark.parametrize("launcher", ["ovrange", "my_program.py"])
def test_ctrl_c_during_the_imports_is_not_swallowed(launcher):
    """The ovrange command notes a Ctrl-C during its imports and stops with one line and 130 once they are done
    (raised inside them, a bare except in OpenVINO's telemetry swallowed it and the command ran on to exit 0); a
    program importing ovrange as a library gets its KeyboardInterrupt where it lands."""
    done = subprocess.run([sys.executable, "-c", DURING_IMPORTS.format(launcher=launcher)], capture_output=True,
                          text=True, timeout=60)
    if launcher == "ovrange":
        assert (done.returncode, done.stdout, done.stderr) == (130, "imports done\n", "error: interrupted\n")
    else:
        assert done.returncode == 0 and done.stdout == "swallowed\nimports done\ncommand ran\n"


def test_help_into_a_closed_pipe_is_quiet():
    """``ovrange protect --help | head -1``: the reader leaves early; no traceback, whatever the exit code."""
    process = subprocess.Popen([sys.executable, "-m", "ovrange", "protect", "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the help is written: the write meets a broken pipe
    err = process.stderr.read()
    process.wait(timeout=60)
    assert "Traceback" not in err and process.returncode in (0, 1)
