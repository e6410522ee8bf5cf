"""Interruptions, races and a full disk, with real processes on the bundled LeNet: Ctrl-C exits 130 and SIGTERM 143,
each with one ``error:`` line; an earlier result or report stays complete until the new one is complete (a
``--force`` swap never leaves a moment without a result folder, two ``--force`` runs both end cleanly); a full disk
(a small tmpfs) is one line, exit 5, with the old result intact and no temporary left."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OVRANGE_PROGRESS_SECONDS": "0.2"}


def start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ovrange", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=ENV)


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          env=ENV, stdin=subprocess.DEVNULL, timeout=300)


def one_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def signal_when(process: subprocess.Popen, marker: str, signum: int) -> tuple[int, str]:
    """Send ``signum`` once ``marker`` appears on stderr (the command is mid-work); return (code, stderr)."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        if marker in line:
            break
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, "".join(seen) + err


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def debris(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def lenet(bundled, tmp_path_factory) -> dict[str, Path]:
    """The LeNet files, 32 labelled samples, and a plan (protect --bounds: a result without calibration)."""
    import ovrange
    from ovrange.modelio import read_model

    lenet = bundled["lenet"]
    root = tmp_path_factory.mktemp("signals")
    with np.load(lenet["test_npz"]) as test:
        np.savez(root / "d.npz", x=test["x"][:32], y=test["y"][:32])
    result = ovrange.save_protected(ovrange.protect(read_model(lenet["xml"]), np.load(root / "d.npz")["x"],
                                                    subset_size=32), root / "res", "m")
    return {"xml": Path(lenet["xml"]), "test": Path(lenet["test_npz"]), "data": root / "d.npz",
            "plan": result / "bounds.json"}


def _old_result(lenet: dict[str, Path], out: Path) -> Path:
    """An earlier result of ``protect`` in ``out`` (from the plan: the same files a protect run writes)."""
    done = run("protect", lenet["xml"], "--bounds", lenet["plan"], "-o", out)
    assert done.returncode == 0, done.stderr
    return out / "fashion_lenet_RangeSupervision"


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_a_signal_mid_protect_force_keeps_the_old_result(lenet, tmp_path, signum, code, word):
    old = _old_result(lenet, tmp_path / "out")
    before = tree(old)
    process = start("protect", lenet["xml"], "--data", lenet["test"], "--num-samples", "100000", "-o",
                    tmp_path / "out", "--force")
    got, err = signal_when(process, "calibrating:", signum)
    assert got == code and one_error(code, err) == f"error: {word}", err[-3000:]
    assert tree(old) == before and not debris(tmp_path / "out")


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_a_signal_mid_inject(lenet, tmp_path, signum, code, word):
    """A new report keeps its checkpoint for --resume (and shows no result); a replaced one stays as it was."""
    base = ("inject", lenet["xml"], "--data", lenet["data"], "--num-samples", "4", "--no-plots")
    report = tmp_path / "report"
    assert run(*base, "--trials", "20", "--report", report, "-q").returncode == 0
    before = tree(report)
    got, err = signal_when(start(*base, "--trials", "50000", "--report", report, "--force"), "injecting:", signum)
    assert got == code and one_error(code, err) == f"error: {word}", err[-3000:]
    assert tree(report) == before and not debris(tmp_path)
    fresh = tmp_path / "fresh"
    got, err = signal_when(start(*base, "--trials", "50000", "--report", fresh), "injecting:", signum)
    assert got == code and one_error(code, err) == f"error: {word}; resume with --report {fresh} --resume", \
        err[-3000:]
    assert sorted(p.name for p in fresh.iterdir()) == ["checkpoint.jsonl", "faults.jsonl"]


def test_two_concurrent_force_runs_both_end_cleanly(lenet, tmp_path):
    out = tmp_path / "out"
    _old_result(lenet, out)
    for _ in range(3):
        runs = [start("protect", lenet["xml"], "--bounds", lenet["plan"], "-o", out, "--force") for _ in range(2)]
        results = [(p.wait(timeout=300), p.communicate()[1]) for p in runs]
        for code, err in results:
            assert code == 0 or (code == 5 and one_error(5, err).startswith("error: ")), err
        assert any(code == 0 for code, _ in results)
        assert sorted(p.name for p in (out / "fashion_lenet_RangeSupervision").iterdir()) == \
            ["bounds.json", "fashion_lenet.bin", "fashion_lenet.xml"]
        assert not debris(out)


SWAPPER = """
import sys
from pathlib import Path
from ovrange.outputs import write_dir_atomically
for i in range(300):
    write_dir_atomically(Path(sys.argv[1]), lambda tmp: (tmp / "who").write_text(str(i)), force=True)
"""


def test_a_reader_always_finds_the_result_folder_during_force_swaps(tmp_path):
    from ovrange.outputs import write_dir_atomically

    out = tmp_path / "result"
    write_dir_atomically(out, lambda tmp: (tmp / "who").write_text("first"))
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(out)], env=ENV)
    missing = reads = 0
    while swapper.poll() is None:
        reads += 1
        missing += not (out / "who").is_file()
    assert swapper.returncode == 0 and reads > 100
    assert missing == 0 and (out / "who").read_text() == "299" and not debris(tmp_path)


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB tmpfs (we run as root in CI); ``fill()`` takes its last free byte."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill ({mounted.stderr.strip() or 'not permitted'})")

    def fill() -> None:
        with open(disk / "filler", "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    yield disk, fill
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_keeps_every_old_result(lenet, full_disk):
    disk, fill = full_disk
    old = _old_result(lenet, disk / "out")
    base = ("inject", lenet["xml"], "--data", lenet["data"], "--num-samples", "4", "--trials", "20", "--no-plots", "-q")
    assert run(*base, "--report", disk / "report", "--json", disk / "r.json").returncode == 0
    fill()
    before = tree(disk)
    for args in (("protect", lenet["xml"], "--bounds", lenet["plan"], "-o", disk / "out", "--force"),
                 (*base, "--report", disk / "report", "--force"),
                 (*base, "--json", disk / "r.json", "--force"),
                 (*base, "--report", disk / "new"),
                 ("protect", lenet["xml"], "--bounds", lenet["plan"], "-o", disk / "new")):
        done = run(*args)
        assert done.returncode == 5, (args, done.stderr)
        one_error(5, done.stderr)
        assert tree(disk) == before, args  # the old results as they were, no new folder, no temporary
    assert json.loads((old / "bounds.json").read_text())["algorithm"] == "RangeSupervision"
    shutil.rmtree(disk / "out")


def test_force_without_an_atomic_exchange_still_replaces(tmp_path, monkeypatch):
    """Where renameat2 is missing, the old folder moves aside and the new one in; a killed run's old one is restored."""
    from ovrange import outputs

    monkeypatch.setattr(outputs, "_exchange", lambda first, second: False)
    out = tmp_path / "result"
    outputs.write_dir_atomically(out, lambda tmp: (tmp / "who").write_text("old"))
    outputs.write_dir_atomically(out, lambda tmp: (tmp / "who").write_text("new"), force=True)
    assert (out / "who").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(out, tmp_path / f".result.old-{dead.pid}-x1y2")  # killed between its two renames
    assert outputs.clean_stale(out) and (out / "who").read_text() == "new"
