"""Shards on Ray actors: a local Ray instance that ovrange starts (``workers``) or an existing cluster (``address``).

Models travel as IR bytes (a worker on another node does not see the driver's files) and the job (plan, inputs)
once through the object store. Each actor holds one engine and runs shards of >= 400 trials per call with
OpenVINO's CPU pinning off (pinned actors on a shared node ran at 0.56x one process). A killed actor is restarted by
Ray and its call retried; a shard that still fails is queued again, and every shard is merged once.

A local instance listens on 127.0.0.1 only, keeps its files in a short private folder under /tmp, and is ended
however the driver ends: by ``ray.shutdown`` on the way out, and by :mod:`ovrange.faults.ray_reaper` when the driver
dies without one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openvino as ov

from ovrange.errors import ConfigError, DeviceError, OvrangeError
from ovrange.faults.executors import Job, Lane, Shard, ShardResult
from ovrange.faults.inputs import InputStore
from ovrange.runtime import shared_core

EXTRA_HINT = "pip install 'ovrange[ray]'"
IN_FLIGHT = 2  # calls queued per actor: the next shard is ready when one finishes
SHARD_ATTEMPTS = 3
OBJECT_STORE_BYTES = 1 << 30
LOOPBACK = "127.0.0.1"
REAPER_SECONDS = 10
# Ray would start one idle worker process per CPU besides the actors' own: CPU and memory for nothing here.
NO_PRESTART = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
TEMP_ROOT = "/tmp"  # not TMPDIR: Ray's socket paths under it must stay within 107 bytes
WORKER_CONFIG = {"ENABLE_CPU_PINNING": False}


def check_ray(workers: int | None, address: str | None) -> None:
    """Fail fast (before any report folder exists): a bad worker count, Ray missing, an unreachable address."""
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers <= 0):
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its settings at import
        raise DeviceError(f"Ray is not installed: {EXTRA_HINT}") from None
    address = resolve_address(address)
    if address not in (None, "auto") and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
                pass
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise DeviceError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS`` (as ``ray.init`` reads it), else None (start one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def model_bytes(model: ov.Model) -> tuple[bytes, bytes]:
    """The IR of ``model`` as (xml, bin) bytes, weights in f32 (``ov.serialize`` does not compress)."""
    with tempfile.TemporaryDirectory(prefix="ovrange-ir-") as tmp:
        xml, weights = Path(tmp) / "model.xml", Path(tmp) / "model.bin"
        ov.serialize(model, str(xml), str(weights))
        return xml.read_bytes(), weights.read_bytes()


def read_model_bytes(ir: tuple[bytes, bytes]) -> ov.Model:
    xml, weights = ir
    return shared_core().read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, np.uint8).copy()))


class Worker:
    """One Ray actor: rebuilds models from IR bytes and inputs from the job on its first shard, then runs shards.

    The job comes with each call as a reference inside a list (not resolved by Ray): a restarted actor fetches it
    again, and the actor has no constructor argument in the object store that a restart would depend on.
    """

    def __init__(self, threads: int):
        self.config = {**WORKER_CONFIG, "INFERENCE_NUM_THREADS": threads}
        self.lane: Lane | None = None

    def run(self, shard: Shard, refs: list) -> ShardResult:
        if self.lane is None:
            import ray

            job, models = ray.get(refs)
            store = InputStore(None, None)
            store.rows = dict(job.rows)
            name = f"{socket.gethostname()}:{os.getpid()}"
            self.lane = Lane(job, lambda i: _checked(read_model_bytes(models[i]), job), store, self.config, name)
        return self.lane.run(shard)


def _checked(model: ov.Model, job: Job) -> ov.Model:
    from ovrange.faults.sites import find_sites

    job.plan.check_sites(find_sites(model, job.spec.target, job.shapes), "on the Ray worker")
    return model


class RayExecutor:
    """Runs shards on ``workers`` actors (default: one per CPU of the cluster), on a local Ray instance it starts and
    stops, or on the cluster at ``address``."""

    remote = True  # a shard is a remote call: at least MIN_SHARD trials (:func:`shard_size`)

    def __init__(self, job: Job, models: list[ov.Model], workers: int | None = None, address: str | None = None,
                 temp_root: str | os.PathLike | None = None):
        check_ray(workers, address)
        self.job, self.models, self.address = job, models, resolve_address(address)
        self.workers = workers or 0
        self.temp_root = temp_root
        self.temp_dir: str | None = None
        self.actors: list = []
        self.refs: list = []
        self.saved_env: dict[str, str | None] = {}
        self.ray_initialised = False  # ray.init was called: __exit__ shuts Ray down
        self.reaper: subprocess.Popen | None = None

    def __enter__(self) -> RayExecutor:
        self.saved_env = _set_env({"RAY_USAGE_STATS_ENABLED": "0"})
        if self.address is None:
            # Read by Ray at import and by the processes it starts: without it, ray.init turns the node address
            # 127.0.0.1 into the machine's own address and its servers listen on every interface.
            self.saved_env.update(_set_env({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}))
        import ray

        self.ray_initialised = True
        try:
            with _keeping_sigterm(), _handlers_errors():
                if self.address is None:
                    self._start_local(ray)
                else:
                    with _cluster_mode(local=False):
                        ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
                    self.workers = self.workers or int(ray.cluster_resources().get("CPU", 1))
            self.refs = [ray.put(self.job), ray.put([model_bytes(m) for m in self.models])]
            actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(Worker)
            self.actors = [actor.remote(1) for _ in range(self.workers)]
        except OvrangeError:
            self.__exit__(None, None, None)
            raise
        except Exception as exc:  # noqa: BLE001 - ray raises many types; for a user they mean "no cluster"
            self.__exit__(None, None, None)
            where = f"at {self.address}" if self.address else "locally"
            raise DeviceError(f"cannot start Ray {where}: {str(exc).strip().splitlines()[-1]}") from exc
        except BaseException:  # Ctrl-C while Ray starts
            self.__exit__(None, None, None)
            raise
        return self

    def _start_local(self, ray) -> None:
        """A Ray instance of this run only: every server on 127.0.0.1, files in a short private folder, no
        dashboard, no usage statistics, a token of its own; whatever of it outlives this process, however this
        process ends, is killed by :mod:`ovrange.faults.ray_reaper`."""
        # Kept for the life of the process: Ray caches the token it first read (and would otherwise write one into
        # ~/.ray and say so on stderr).
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        self.workers = self.workers or os.cpu_count() or 1
        self.temp_dir = short_temp_dir(self.temp_root)
        self.reaper = subprocess.Popen([sys.executable, "-I", str(Path(__file__).with_name("ray_reaper.py")),
                                        str(os.getpid()), self.temp_dir], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        with _cluster_mode(local=True):  # "local": never join a cluster someone else started on this machine
            ray.init(address="local", num_cpus=self.workers, include_dashboard=False, _temp_dir=ray_dir(self.temp_dir),
                     _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, object_store_memory=OBJECT_STORE_BYTES,
                     logging_level=logging.ERROR, log_to_driver=False, runtime_env={"env_vars": _worker_env()},
                     _system_config=NO_PRESTART)
        node = ray.util.get_node_ip_address()
        if node != LOOPBACK:  # never serve beyond loopback, whatever a future Ray does with the address
            raise DeviceError(f"Ray placed its local node on {node}, not on {LOOPBACK}; refusing to run")

    def __exit__(self, *exc: object) -> None:
        if self.ray_initialised:
            import ray

            try:
                for actor in self.actors:
                    ray.kill(actor)
            finally:
                self.actors = []
                self.ray_initialised = False
                ray.shutdown()  # also after a failed ray.init: it stops whatever that had started
        if self.reaper is not None:
            self.reaper.stdin.close()  # the reaper kills what ray.shutdown left and removes the temp folder
            try:
                self.reaper.wait(timeout=REAPER_SECONDS)
            except subprocess.TimeoutExpired:
                pass  # it goes on alone; nothing here waits for it
            self.reaper = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved_env = {}

    def run(self, shards: list[Shard]) -> Iterator[ShardResult]:
        """Yield each shard's result as it finishes; a shard whose worker died is run again (merged once)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        queue = list(reversed(shards))
        attempts = {s.index: 0 for s in shards}
        running: dict = {}  # ObjectRef -> (actor index, shard)
        load = [0] * len(self.actors)
        while queue or running:
            for index in sorted(range(len(self.actors)), key=lambda i: load[i]):
                while queue and load[index] < IN_FLIGHT:
                    shard = queue.pop()
                    running[self.actors[index].run.remote(shard, self.refs)] = (index, shard)
                    load[index] += 1
            ready: list = []
            with _handlers_errors():
                while not ready:  # short waits: a signal's handler runs between them
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            index, shard = running.pop(ready[0])
            load[index] -= 1
            try:
                with _handlers_errors():
                    found = ray.get(ready[0])
            except RayTaskError as exc:
                if isinstance(exc.cause, OvrangeError):  # the worker's one-line error, not Ray's traceback
                    raise exc.cause from None
                raise
            except (RayActorError, WorkerCrashedError) as exc:
                attempts[shard.index] += 1
                if attempts[shard.index] >= SHARD_ATTEMPTS:
                    raise DeviceError(f"shard {shard.index} failed {SHARD_ATTEMPTS} times on Ray workers: "
                                      f"{str(exc).strip().splitlines()[0]}") from None
                queue.append(shard)
                continue
            yield found


def _set_env(values: dict[str, str]) -> dict[str, str | None]:
    """Set environment variables (Ray's processes read them at start-up); returns the previous values."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    return previous


def _worker_env() -> dict[str, str]:
    """Workers of a local instance import ovrange from where this driver does (a source checkout included)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": root + (os.pathsep + path if path else "")}


def short_temp_dir(root: str | os.PathLike | None = None) -> str:
    """A fresh folder (mode 0700) for one Ray instance, with a path short enough for Ray's Unix sockets
    (``<dir>/session_<date>_<pid>/sockets/plasma_store`` must fit in 107 bytes) whatever TMPDIR is."""
    if root is None:
        root = TEMP_ROOT if os.path.isdir(TEMP_ROOT) and os.access(TEMP_ROOT, os.W_OK | os.X_OK) else None
    return tempfile.mkdtemp(prefix="ovr-", dir=root)


def ray_dir(temp_dir: str) -> str:
    """Ray's folder inside ``temp_dir``: Ray makes the folder it is given world-writable, its 0700 parent keeps
    other users out."""
    return os.path.join(temp_dir, "r")


@contextlib.contextmanager
def _cluster_mode(local: bool) -> Iterator[None]:
    """``ray.init`` resolves a node address of 127.0.0.1 to the machine's address unless Ray was imported with
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, a setting Ray reads once: while Ray starts, the mode of this start
    (off for a local instance, as the environment says for a cluster), whatever the process's earlier campaigns
    set."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = not local and ray_constants.env_bool(
        ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, not ray_constants.IS_WINDOWS_OR_OSX)
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def _keeping_sigterm() -> Iterator[None]:
    """``ray.init`` replaces the SIGTERM handler (Python's with ``sys.exit(15)``, then the C++ core's, which dumps a
    stack trace): put back the one the program had, so SIGTERM still means what the program says it means."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _handlers_errors() -> Iterator[None]:
    """The exception a signal handler raises while Ray waits in C++ (the CLI's SIGTERM -> ``error: terminated``)
    reaches Python as ``SystemError: ... returned a result with an exception set``: raise the handler's own."""
    try:
        yield
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if cause is None or isinstance(cause, SystemError):
            raise
        raise cause from None
