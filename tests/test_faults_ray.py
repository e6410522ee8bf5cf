"""Campaigns on Ray: the same per-trial outcomes in one process, on ``--workers 2`` and on a cluster started with
``ray start --head``; a worker killed mid-campaign; a driver killed and resumed; one-line errors.

The cluster runs on 127.0.0.1 in its own process group (``start_new_session``) and is ended by killing that group:
never ``ray stop``, which would end every Ray process on the machine. Real OpenVINO inference on FashionLeNet.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from ovrange.faults import CampaignResult, inject  # noqa: E402
from tests.test_faults_cli import cli  # noqa: E402

SETTINGS = ["--trials", "4000", "--seed", "5", "--num-samples", "40", "--bits", "20-31", "--batch-size", "8"]
SHARDS = 100
SHARDED = [*SETTINGS, "--shard-size", "40"]  # 100 shards: a kill lands mid-campaign even on a fast, idle machine


@pytest.fixture(scope="module")
def lenet(bundled) -> dict[str, Path]:
    return bundled["lenet"]


def ray_env() -> dict[str, str]:
    """Everything on 127.0.0.1, no usage stats, a token of this test module (nothing written to ~/.ray)."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    env.pop("RAY_ADDRESS", None)
    return env


TOKEN = secrets.token_hex(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A one-node cluster of 2 CPUs from ``ray start --head --block``; yields its address, then kills its group."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="ovr-test-ray-")  # short: Ray's socket paths must fit
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port", str(port),
               "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
               "--temp-dir", temp, "--disable-usage-stats"]
    head = subprocess.Popen(command, env=ray_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}", head.pid
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the group ray start leads: its GCS, raylet and workers
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def run_cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ovrange", "inject", *args], env=ray_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finished(process: subprocess.Popen, timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def same_trials(a: CampaignResult, b: CampaignResult) -> None:
    """The JSON differs only in timing and worker fields: every per-trial record is identical."""
    assert a.fingerprint == b.fingerprint
    for x, y in zip(a.models, b.models):
        assert np.array_equal(x.outcome, y.outcome) and np.array_equal(x.top1, y.top1)
        assert np.array_equal(x.deviation, y.deviation, equal_nan=True)
    strip = lambda s: {k: {m: v for m, v in e.items() if m not in ("seconds", "trials_per_second")}  # noqa: E731
                       for k, e in s["models"].items()}
    assert strip(a.summary()) == strip(b.summary())


@pytest.fixture(scope="module")
def local(lenet) -> CampaignResult:
    return inject(str(lenet["xml"]), str(lenet["test_npz"]), trials=4000, seed=5, inputs=40, bits="20-31",
                  batch_size=8)


def test_workers_and_a_cluster_give_the_outcomes_of_one_process(lenet, local, cluster, tmp_path):
    address, _ = cluster
    runs = {"workers": run_cli(str(lenet["xml"]), "--data", str(lenet["test_npz"]), *SETTINGS, "--workers", "2",
                               "--json", str(tmp_path / "workers.json"), "-q")}
    finished(runs["workers"])  # one after the other: the machine has two cores
    runs["cluster"] = run_cli(str(lenet["xml"]), "--data", str(lenet["test_npz"]), *SETTINGS, "--ray-address",
                              address, "--json", str(tmp_path / "cluster.json"), "-q")
    finished(runs["cluster"])
    for name in runs:
        result = CampaignResult.load(tmp_path / f"{name}.json")
        same_trials(local, result)
        assert result.meta["executor"] == {**result.meta["executor"], "kind": "RayExecutor", "workers": 2}
        assert len(result.meta["workers"]) == 2  # per-worker throughput
        assert all(w["trials_per_second"] > 0 for w in result.meta["workers"].values())
    assert local.models[0].outcome.tolist().count(1) > 20  # the campaign does see SDCs


def session_workers(session: int) -> list[int]:
    """Pids of the Ray actor processes in the process session ``session`` (our cluster's, nobody else's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == session and title.startswith("ray::Worker"):
            found.append(int(entry.name))
    return found


def wait_for_shards(checkpoint: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and len(checkpoint.read_text().splitlines()) > count:  # header + shards
            return
        time.sleep(0.05)
    raise AssertionError(f"{checkpoint} did not reach {count} shards")


def test_a_worker_killed_mid_campaign_changes_no_outcome(lenet, local, cluster, tmp_path):
    address, session = cluster
    report = tmp_path / "run"
    process = run_cli(str(lenet["xml"]), "--data", str(lenet["test_npz"]), *SHARDED, "--ray-address", address,
                      "--report", str(report), "--no-plots", "-q")
    wait_for_shards(report / "checkpoint.jsonl", 1, process)
    victims = session_workers(session)
    assert victims, "no Ray worker of the test cluster found"
    os.kill(victims[0], signal.SIGKILL)
    assert len((report / "checkpoint.jsonl").read_text().splitlines()) - 1 < SHARDS  # killed before the end
    finished(process)
    same_trials(local, CampaignResult.load(report / "result.json"))
    lines = (report / "checkpoint.jsonl").read_text().splitlines()[1:]
    merged = [t for line in lines for t in json.loads(line)["t"]]
    assert sorted(merged) == list(range(4000))  # every trial checkpointed exactly once


def test_a_killed_driver_resumes_from_its_checkpoint(lenet, local, cluster, tmp_path):
    address, _ = cluster
    report = tmp_path / "run"
    process = run_cli(str(lenet["xml"]), "--data", str(lenet["test_npz"]), *SHARDED, "--ray-address", address,
                      "--report", str(report), "--no-plots", "-q", start_new_session=True)
    wait_for_shards(report / "checkpoint.jsonl", 3, process)
    os.killpg(process.pid, signal.SIGKILL)  # the driver (and only it: it is alone in its session)
    process.communicate()
    before = len((report / "checkpoint.jsonl").read_text().splitlines()) - 1
    assert not (report / "result.json").exists() and 3 <= before < SHARDS
    finished(run_cli(str(lenet["xml"]), "--data", str(lenet["test_npz"]), *SHARDED, "--ray-address", address,
                     "--report", str(report), "--resume", "--no-plots", "-q"))
    same_trials(local, CampaignResult.load(report / "result.json"))


@pytest.mark.parametrize("case", ["zero workers", "zero workers in the config", "unreachable", "ray missing"])
def test_bad_ray_settings_fail_in_one_line_and_leave_no_report(lenet, tmp_path, capsys, monkeypatch, case):
    report = tmp_path / "report"
    args = [lenet["xml"], "--data", lenet["test_npz"], "--trials", "50", "--report", report]
    if case == "zero workers":
        args += ["--workers", "0"]
    elif case == "zero workers in the config":
        (tmp_path / "campaign.yaml").write_text("workers: 0\nshard_size: 500\n")
        args += ["--config", tmp_path / "campaign.yaml"]
    elif case == "unreachable":
        args += ["--ray-address", f"127.0.0.1:{free_port()}"]  # nothing listens there
    else:
        monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra looks like
        args += ["--workers", "2"]
    code, _, err = cli(capsys, "inject", *args)
    assert code != 0 and err.count("\n") == 1 and err.startswith("error: "), err
    expected = {"zero workers": "workers must be a positive integer", "zero workers in the config": "workers",
                "unreachable": "cannot reach the Ray cluster", "ray missing": "ovrange[ray]"}[case]
    assert expected in err, err
    assert not report.exists()


def test_a_local_campaign_imports_no_ray(lenet):
    code = ("import sys, ovrange; ovrange.inject(sys.argv[1], sys.argv[2], trials=100); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code, str(lenet["xml"]), str(lenet["test_npz"])], check=True,
                   env=ray_env(), timeout=120)
