"""``inject --workers 2`` on FashionLeNet: the Ray instance ovrange starts listens on loopback only, works under a
TMPDIR far longer than Ray's socket paths allow, and leaves no process or folder behind however the command ends
(success, Ctrl-C, SIGTERM, SIGKILL of the command itself).

Sockets are read from /proc (``/proc/net/tcp{,6}`` for listening sockets, ``/proc/<pid>/fd`` for their owners),
so no extra package is needed; the processes are the command's own tree, tracked by pid and start time, so no other
Ray on the machine is looked at or touched.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

GONE_WITHIN = 30.0  # seconds after the command ends
CAMPAIGN = ["--trials", "12000", "--seed", "5", "--num-samples", "40", "--bits", "20-31", "--batch-size", "8",
            "--shard-size", "400", "--workers", "2", "--no-plots", "-q"]
# The signal, sent once both workers run a shard, lands mid-campaign: 400,000 trials of FashionLeNet last about 15 s
# on two cores (40,000 took 1.3 s and could end before the sampling saw both workers at work)
LONG = {"--trials": "400000", "--shard-size": "4000"}


@pytest.fixture(scope="module")
def lenet(bundled) -> dict[str, Path]:
    return bundled["lenet"]


def command(lenet, report: Path, overrides: dict[str, str] | None = None) -> list[str]:
    campaign = list(CAMPAIGN)
    for option, value in (overrides or {}).items():
        campaign[campaign.index(option) + 1] = value
    return [sys.executable, "-m", "ovrange", "inject", str(lenet["xml"]), "--data", str(lenet["test_npz"]),
            *campaign, "--report", str(report)]


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **extra)
    for key in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # the command must get loopback on its own
        env.pop(key, None)
    return env


# --- processes ---------------------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def tree(root: int, known: dict[int, tuple[int, str]]) -> dict[int, tuple[int, str]]:
    """Add ``root`` and its live descendants to ``known`` (pid -> start time, command line); processes already
    known are followed even after their parent died and they were re-parented."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            parents.setdefault(stat[0], []).append(int(entry.name))
    if root not in known and (stat := _stat(root)):
        known[root] = stat[2], _title(root)
    for pid, (start, title) in known.items():  # the latest title: a child seen between fork and exec had its parent's
        stat = _stat(pid)
        if stat and stat[2] == start:
            known[pid] = start, _title(pid) or title
    todo = list(known)
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in known and (stat := _stat(child)):
                known[child] = stat[2], _title(child)
                todo.append(child)
    return known


def alive(known: dict[int, tuple[int, str]]) -> dict[int, str]:
    """The known processes still running (zombies count as gone), with their command lines."""
    found = {}
    for pid, (start, _) in known.items():
        stat = _stat(pid)
        if stat and stat[2] == start and stat[1] != "Z":
            found[pid] = _title(pid)
    return found


def wait_until_gone(known: dict[int, tuple[int, str]], ended: float) -> float:
    """Seconds from ``ended`` until none of ``known`` runs; fails after GONE_WITHIN."""
    while alive(known):
        if time.monotonic() - ended > GONE_WITHIN:
            raise AssertionError(f"still running {GONE_WITHIN:.0f} s after the command ended: {alive(known)}")
        time.sleep(0.2)
    return time.monotonic() - ended


def temp_dirs(known: dict[int, tuple[int, str]]) -> set[Path]:
    """The Ray temp folders of the command's processes (``--log_dir=<dir>/session_.../logs`` of the GCS)."""
    found = set()
    for _, title in known.values():
        match = re.search(r"--log_dir=(\S+?)/session_[^/\s]+/logs", title)
        if match:
            found.add(Path(match.group(1)))
    return found


# --- sockets -----------------------------------------------------------------------------------------------------

def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) order."""
    words = [hex_address[i:i + 8] for i in range(0, len(hex_address), 8)]
    ip = ipaddress.ip_address(b"".join(int(word, 16).to_bytes(4, sys.byteorder) for word in words))
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped else str(ip)  # an IPv6 socket bound to an IPv4 address


def listening() -> dict[int, tuple[str, int]]:
    """Listening TCP sockets of this network namespace: inode -> (address, port)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                address, port = fields[1].split(":")
                found[int(fields[9])] = (_address(address), int(port, 16))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def sample(root: int, known: dict[int, tuple[int, str]], seen: dict[tuple[str, int], str] | None) -> None:
    """Note the command's process tree and (unless ``seen`` is None) every listening socket it owns:
    (address, port) -> owner."""
    tree(root, known)
    if seen is None:
        return
    table = listening()
    for pid in known:
        for inode in sockets_of(pid) & table.keys():
            seen[table[inode]] = _title(pid).split(" ")[0].rsplit("/", 1)[-1]  # the latest: ray::IDLE becomes a Worker


# --- the runs ----------------------------------------------------------------------------------------------------

def watch(process: subprocess.Popen, until, sockets: bool
          ) -> tuple[dict[int, tuple[int, str]], dict[tuple[str, int], str]]:
    """Sample the command's tree (and its sockets) every 0.3 s until ``until(known)`` or the command ends."""
    known: dict[int, tuple[int, str]] = {}
    seen: dict[tuple[str, int], str] = {}
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        sample(process.pid, known, seen if sockets else None)
        if until(known):
            break
        time.sleep(0.3)
    return known, seen


def workers_running(known: dict[int, tuple[int, str]]) -> bool:
    return sum(title.startswith("ray::Worker.run") for title in alive(known).values()) == 2


def test_workers_listen_on_loopback_only_under_a_long_tmpdir_and_leave_nothing(lenet, tmp_path):
    long_tmp = tmp_path / ("t" * 60) / ("m" * 60) / ("p" * 60)  # TMPDIR of 200+ characters
    long_tmp.mkdir(parents=True)
    assert len(str(long_tmp)) >= 200
    process = subprocess.Popen(command(lenet, tmp_path / "run"), env=environment(TMPDIR=str(long_tmp)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    modes: dict[Path, int] = {}

    def note_modes(known) -> bool:  # the folder Ray gets sits in a private (0700) one
        for folder in temp_dirs(known):
            try:
                modes.setdefault(folder.parent, folder.parent.stat().st_mode & 0o777)
            except OSError:
                pass
        return False

    known, seen = watch(process, note_modes, sockets=True)
    out, err = process.communicate()
    ended = time.monotonic()
    assert process.returncode == 0, err
    assert err == "" and "SDC" in out
    owners = set(seen.values())
    assert {"gcs_server", "raylet"} <= owners, seen  # the sampling did see Ray's servers
    # Workers were there (their sockets are checked below when a sample caught them: a short campaign can end
    # between two samples on a quiet machine)
    assert any(title.startswith(("ray::Worker", "ray::IDLE")) for _, title in known.values()), known
    outside = {f"{a}:{p}": owner for (a, p), owner in seen.items() if not is_loopback(a)}
    assert not outside, f"listening beyond loopback: {outside}"
    print(f"\nlistening sockets of the run: {sorted((owner, f'{a}:{p}') for (a, p), owner in seen.items())}")
    folders = temp_dirs(known)
    assert folders and all(len(str(f)) < 30 and str(f).startswith("/tmp/") for f in folders), folders
    assert modes == {f.parent: 0o700 for f in folders}, modes
    print(f"all gone {wait_until_gone(known, ended):.1f} s after success")
    assert not any(f.parent.exists() for f in folders)
    assert (tmp_path / "run" / "result.json").exists()


def cli_maps_sigterm() -> bool:
    """Whether this tree's CLI turns SIGTERM into ``error: terminated`` / 143."""
    import ovrange.cli

    return "SIGTERM" in Path(ovrange.cli.__file__).read_text()


# What the CLI's SIGTERM mapping does, for a tree without it: the handler raises, the command ends in one line.
TERMINATING_CLI = """
import signal, sys
from ovrange.errors import OvrangeError
class Terminated(OvrangeError):
    exit_code = 143
def terminated(signum, frame):
    raise Terminated("terminated")
signal.signal(signal.SIGTERM, terminated)
from ovrange.cli import main
sys.argv = ["ovrange", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("ending", ["ctrl-c", "sigterm", "sigkill"])
def test_an_interrupted_or_killed_command_leaves_no_ray_process(lenet, tmp_path, ending):
    report = tmp_path / "run"
    argv = command(lenet, report, LONG)
    if ending == "sigterm" and not cli_maps_sigterm():
        argv[1:3] = ["-c", TERMINATING_CLI]
    process = subprocess.Popen(argv, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    begun = time.monotonic()
    try:
        known, _ = watch(process, workers_running, sockets=False)
        print(f"\nworkers running after {time.monotonic() - begun:.1f} s", end="")
        if not workers_running(known):
            if process.poll() is None:
                process.kill()
            out, err = process.communicate(timeout=60)
            raise AssertionError(f"the campaign's Ray workers were not seen at work (exit {process.returncode}): "
                                 f"{out}{err}")
        if ending == "ctrl-c":  # a terminal sends SIGINT to the whole foreground group, Ray's processes included
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM if ending == "sigterm" else signal.SIGKILL)
        signalled = time.monotonic()
        out, err = process.communicate(timeout=60)
        ended = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
    gone = wait_until_gone(known, ended)
    print(f"\n{ending}: exit {process.returncode} {ended - signalled:.1f} s after the signal, all of Ray gone "
          f"{gone:.1f} s after the command ended")
    folders = temp_dirs(known)
    assert folders
    if ending == "ctrl-c":
        assert process.returncode == 130, err
        assert err.startswith("error: interrupted") and err.count("\n") == 1, err
    elif ending == "sigterm":
        assert process.returncode == 143, err
        assert err.startswith("error: terminated") and err.count("\n") == 1, err
    else:
        assert process.returncode == -signal.SIGKILL
    assert not any(f.parent.exists() for f in folders), folders
    assert (report / "checkpoint.jsonl").exists() and not (report / "result.json").exists()  # stopped mid-way


def test_ctrl_c_while_ray_starts_leaves_nothing(lenet, tmp_path):
    """Ctrl-C once Ray's GCS runs, before the workers: exit 130 in one line, no report folder (the checkpoint is
    only written once Ray is up), no Ray process, no temp folder."""
    report = tmp_path / "run"
    process = subprocess.Popen(command(lenet, report), env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        known, _ = watch(process, lambda known: any("gcs_server" in t for t in alive(known).values()), sockets=False)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
        ended = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
    print(f"\nctrl-c at start: all of Ray gone {wait_until_gone(known, ended):.1f} s after the command ended")
    assert process.returncode == 130 and err == "error: interrupted\n", (process.returncode, err)
    assert not report.exists()
    folders = temp_dirs(known)
    assert folders and not any(f.parent.exists() for f in folders), folders


def test_a_failed_ray_start_leaves_no_report_folder(lenet, tmp_path, capsys, monkeypatch):
    """Ray's own limit, for real: a temp root too long for its socket paths makes ``ray.init`` fail. One error
    line, exit 6, no report folder (the same command would otherwise be refused), no temp folder, no process."""
    from ovrange.faults import ray_executor
    from tests.test_faults_cli import cli

    root = tmp_path / ("r" * 120)
    root.mkdir()
    before = set(alive(tree(os.getpid(), {})))  # other tests of the session may have left helpers of their own
    monkeypatch.setattr(ray_executor, "TEMP_ROOT", str(root))
    code, _, err = cli(capsys, "inject", lenet["xml"], "--data", lenet["test_npz"], "--trials", "500", "--workers",
                       "2", "-q", "--report", tmp_path / "run")
    assert code == 6 and err.startswith("error: cannot start Ray locally: ") and err.count("\n") == 1, err
    assert "107 bytes" in err
    assert not (tmp_path / "run").exists()
    assert not list(root.iterdir())
    left = {pid: title for pid, title in alive(tree(os.getpid(), {})).items() if pid not in before | {os.getpid()}}
    assert not left, left
