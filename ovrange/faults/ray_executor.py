"""Shards on Ray actors: a local Ray instance that ovrange starts (``workers``) or an existing cluster (``address``).

Models travel as IR bytes (a worker on another node does not see the driver's files) and the job (plan, inputs)
once through the object store. Each actor holds one engine and runs shards of >= 400 trials per call with
OpenVINO's CPU pinning off (pinned actors on a shared node ran at 0.56x one process). A killed actor is restarted by
Ray and its call retried; a shard that still fails is queued again, and every shard is merged once.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openvino as ov

from ovrange.errors import ConfigError, DeviceError, OvrangeError
from ovrange.faults.executors import Job, Lane as Bench, Shard, ShardResult
from ovrange.faults.inputs import InputStore

EXTRA_HINT = "pip install 'ovrange[ray]'"
IN_FLIGHT = 2  # calls queued per actor: the next shard is ready when one finishes
SHARD_ATTEMPTS = 3
OBJECT_STORE_BYTES = 1 << 30
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
    return ov.Core().read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, np.uint8).copy()))


class Worker:
    """One Ray actor: rebuilds models from IR bytes and inputs from the job on its first shard, then runs shards.

    The job comes with each call as a reference inside a list (not resolved by Ray): a restarted actor fetches it
    again, and the actor has no constructor argument in the object store that a restart would depend on.
    """

    def __init__(self, threads: int):
        self.config = {**WORKER_CONFIG, "INFERENCE_NUM_THREADS": threads}
        self.bench: Bench | None = None

    def run(self, shard: Shard, refs: list) -> ShardResult:
        if self.bench is None:
            import ray

            job, models = ray.get(refs)
            store = InputStore(None, None)
            store.rows = dict(job.rows)
            name = f"{socket.gethostname()}:{os.getpid()}"
            self.bench = Bench(job, lambda i: _checked(read_model_bytes(models[i]), job), store, self.config, name)
        return self.bench.run(shard)


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
        self.started = False

    def __enter__(self) -> RayExecutor:
        self.saved_env = _set_env({"RAY_USAGE_STATS_ENABLED": "0"})
        import ray

        try:
            if self.address is None:
                # Local instance: everything on 127.0.0.1, temp files in a folder of ours (not ~/.ray or /tmp/ray),
                # and a token of this run's own (Ray would otherwise write one into ~/.ray and say so on stderr).
                # Kept for the life of the process: Ray caches the token it first read.
                os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
                self.saved_env.update(_set_env({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}))
                self.workers = self.workers or os.cpu_count() or 1
                self.temp_dir = tempfile.mkdtemp(prefix="ovrange-ray-", dir=self.temp_root)
                ray.init(num_cpus=self.workers, include_dashboard=False, _temp_dir=self.temp_dir,
                         _node_ip_address="127.0.0.1", object_store_memory=OBJECT_STORE_BYTES,
                         logging_level=logging.ERROR, log_to_driver=False, runtime_env={"env_vars": _worker_env()})
            else:
                ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
                self.workers = self.workers or int(ray.cluster_resources().get("CPU", 1))
            self.started = True
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
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            ray.shutdown()
            self.started = False
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        for key, value in getattr(self, "saved_env", {}).items():
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
            ready, _ = ray.wait(list(running), num_returns=1)
            index, shard = running.pop(ready[0])
            load[index] -= 1
            try:
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
