"""Ends what a local Ray instance of ovrange left running once its driver is gone, however it went (SIGKILL included).

Run by :mod:`ovrange.faults.ray_executor` as ``python ray_reaper.py DRIVER_PID TEMP_DIR`` (by path: standard
library only, no ovrange import), in a session of its own so a terminal's Ctrl-C does not reach it, with a pipe
from the driver on stdin. While the pipe is open it notes, about once a second, the processes Ray started: children
of the driver whose command line names TEMP_DIR (GCS, raylet, dashboard, monitors) and all their descendants
(workers, agents), each by pid and start time. When the pipe closes (the driver ended or died) it kills every noted
process still running and removes TEMP_DIR.

Why: Ray starts its head processes with PR_SET_PDEATHSIG, but the raylet's agents only notice its death after
publishing an error to the dead GCS, which waits 60 s.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
from pathlib import Path

POLL_SECONDS = 1.0  # a look reads /proc/*/stat: about 7 ms of CPU with 120 processes


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live, non-zombie ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))


def _names(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def note(driver: int, temp_dir: str, known: dict[int, int]) -> None:
    """Add Ray's processes (pid -> start time) to ``known``: the driver's children naming ``temp_dir`` and every
    descendant of a known process (followed after re-parenting, since they are known by pid)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    for pid, start in children.get(driver, []):
        if pid != os.getpid() and pid not in known and _names(pid, temp_dir):
            known[pid] = start
    todo = list(known)
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in known:
                known[pid] = start
                todo.append(pid)


def kill(known: dict[int, int]) -> int:
    """SIGKILL the noted processes that still run (same pid and start time); returns how many."""
    count = 0
    for pid, start in known.items():
        stat = _stat(pid)
        if stat and stat[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                count += 1
            except OSError:
                pass
    return count


def main(driver: int, temp_dir: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    known: dict[int, int] = {}
    while True:
        note(driver, temp_dir, known)
        ready, _, _ = select.select([sys.stdin], [], [], POLL_SECONDS)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    for _ in range(3):  # a process forked while the others died is noted and killed on the next pass
        note(driver, temp_dir, known)
        if not kill(known):
            break
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
