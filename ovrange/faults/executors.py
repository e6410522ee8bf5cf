"""The executor seam: a campaign is a plan plus shards of trial indices; executors run shards and return outcomes.

A :class:`Job` is everything an engine needs apart from the models' files (plan, sites, shapes, settings, judge and
the campaign's input rows). A :class:`Lane` holds one engine at a time and runs a shard through it; it lives in the
driver (:class:`LocalExecutor`, one per local lane) or in each Ray actor (:mod:`ovrange.faults.ray_executor`).
Shards depend on the plan, the pending trials and the shard size (which grows with the worker count only beyond
4 workers); a trial's outcome does not depend on the shard it ran in (the fault-free output it is judged against
comes from the same compiled model, per input), so the same seed gives the same per-trial outcomes however a
campaign is run; the tests check it for 1 process, 2 workers and a cluster, and for a resumed campaign.
"""

from __future__ import annotations

import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import openvino as ov

from ovrange.compare import Judge
from ovrange.faults.engines import Engine, make_engine
from ovrange.faults.faultlist import FaultList
from ovrange.faults.formats import parse_format
from ovrange.faults.injectors import Stopped, lane_stop
from ovrange.faults.inputs import InputStore
from ovrange.faults.outcomes import Outcomes
from ovrange.faults.sites import Site
from ovrange.faults.spec import CampaignSpec

MIN_SHARD = 400  # trials per remote call: one inference per call ran at 0.13x native under Ray, >= 400 at ~1x
MAX_SHARD = 8192
MAX_LANES = 2  # measured on 2 cores; more lanes than cores only add engines
# Each lane compiles its own engines (a tap model and a reader per model, seconds on a detector); below a few hundred
# trials per lane the second lane's compilations cost more than it saves (a 4-trial comparison: 4 engines, not 2)
MIN_LANE_TRIALS = 200
SHARDS_PER_ROUND = 8  # per round: enough to keep 2 workers busy to its end (2 per worker with more workers)


@dataclass(frozen=True)
class Shard:
    """Trials ``trials`` of model ``model``; ``index`` identifies it for merging (each shard merges once)."""

    index: int
    model: int
    trials: np.ndarray


@dataclass(frozen=True)
class ShardResult:
    shard: Shard
    outcomes: Outcomes
    seconds: float  # busy time of the worker on this shard, engine building included
    worker: str
    engine: str


@dataclass(frozen=True)
class Job:
    """What any worker needs to run shards, apart from the models: small enough to ship once to a cluster."""

    plan: FaultList
    sites: list[Site]
    shapes: list[tuple[int, ...]]
    spec: CampaignSpec
    judge: Judge
    rows: dict[int, list[np.ndarray]] = field(default_factory=dict)  # the campaign's inputs, by dataset index


def shard_size(trials: int, requested: int | None, batch: int, workers: int = 1, remote: bool = True) -> int:
    """Trials per shard: ``requested``, else 1/8 of the round (1/(2 x workers) beyond 4 workers) within
    [400, 8192], a multiple of the batch. Each shard reads its inputs' fault-free values once: fewer, larger
    shards waste less; more shards balance workers. Local lanes (``remote`` False) have no call to amortise: two
    shards per lane and round, at most 8192 trials each (a count the lanes share evenly; with the 400 floor a
    2,000-trial round made 5 shards and one lane ran the last alone, a sixth of the round)."""
    if requested:
        return requested
    if remote:
        size = min(MAX_SHARD, max(MIN_SHARD, math.ceil(trials / max(SHARDS_PER_ROUND, 2 * workers))))
    else:
        size = math.ceil(trials / (workers * max(2, math.ceil(trials / (workers * MAX_SHARD)))))
    return math.ceil(size / batch) * batch


def make_shards(pending: list[np.ndarray], trial_input: np.ndarray, size: int, first_index: int = 0) -> list[Shard]:
    """Cut each model's pending trials into shards, trials of one input kept together (a shard reads the fault-free
    tensors of its own inputs, so fewer inputs per shard means less of that work)."""
    shards = []
    for model, trials in enumerate(pending):
        ordered = trials[np.lexsort((trials, trial_input[trials]))]
        for start in range(0, len(ordered), size):
            shards.append(Shard(first_index + len(shards), model, np.sort(ordered[start:start + size])))
    return shards


class Lane:
    """Runs shards of a Job; builds the engine of a model on first use and keeps one engine at a time (each holds
    compiled models with their own copy of the weights)."""

    def __init__(self, job: Job, load_model: Callable[[int], ov.Model], store: InputStore,
                 config: dict[str, Any] | None = None, name: str = "local"):
        self.job, self.load_model, self.store, self.config, self.name = job, load_model, store, config, name
        self.fmt = parse_format(job.plan.number_format)
        self.model_index: int | None = None
        self.engine: Engine | None = None
        self.plan, self.sites = struck_sites(job.plan, job.sites)
        # more faults per inference than the plan holds would only compute empty batch rows
        self.spec = replace(job.spec, batch_size=max(1, min(job.spec.batch_size, job.plan.trials)))

    def run(self, shard: Shard) -> ShardResult:
        started = time.perf_counter()
        if self.model_index != shard.model:
            self.engine = None  # drop the previous model's compiled models before building the next
            job = self.job
            self.engine = make_engine(self.load_model(shard.model), job.spec.target, self.sites, job.shapes, self.spec,
                                      job.judge, self.fmt, self.config)
            self.model_index = shard.model
        outcomes = self.engine.run(self.plan, shard.trials, self.store, self.fmt)
        return ShardResult(shard, outcomes, time.perf_counter() - started, self.name, self.engine.description)


def struck_sites(plan: FaultList, sites: list[Site]) -> tuple[FaultList, list[Site]]:
    """The plan and the sites narrowed to the sites its faults strike: the engine then taps only those (a 4-trial
    campaign on a detector with hundreds of sites compiled injection models with a tap on every one). The whole
    plan decides, never a shard, so every lane, worker and resumed run builds the same engine. Error-rate and
    bit-error-rate plans strike every site."""
    if plan.error_rate is not None or plan.ber is not None:
        return plan, sites
    names = {fault.site for fault in plan.faults}
    if len(names) >= len(sites):
        return plan, sites
    return (replace(plan, sites=tuple(s for s in plan.sites if s.name in names)),
            [s for s in sites if s.name in names])


def local_lanes(cores: int | None = None, trials: int | None = None) -> int:
    """Lanes of a local run: one per core, at most 2 (see :class:`LocalExecutor`); one for a plan of fewer than
    ``2 * MIN_LANE_TRIALS`` trials, where a second lane's engines would cost more than the trials it takes over."""
    if trials is not None and trials < 2 * MIN_LANE_TRIALS:
        return 1
    return max(1, min(MAX_LANES, cores or os.cpu_count() or 1))


class LocalExecutor:
    """Shards run in this process on ``lanes`` threads, each with its own engine compiled for cores/lanes OpenVINO
    threads without CPU pinning (``infer`` releases the GIL). Two one-thread lanes beat one two-thread engine:
    OpenVINO splits small layers badly over threads (see docs/distributed.md for the measurements). ``memory`` is
    shared: each lane's engine gets memory/lanes."""

    def __init__(self, job: Job, models: list[ov.Model], store: InputStore, lanes: int | None = None):
        self.lanes = lanes or local_lanes(trials=job.plan.trials)
        name = f"local:{socket.gethostname()}:{os.getpid()}"
        if self.lanes == 1:
            self.pool = [Lane(job, lambda i: models[i], store, name=name)]
        else:
            plan = job.plan  # every input loaded here: the dataset is not read from two threads
            store.load(sorted({int(i) for i in (*plan.inputs, *plan.trial_inputs, *plan.arrays.input)}))
            threads = max(1, (os.cpu_count() or 1) // self.lanes)
            config = {"INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}  # pinned lanes share a core
            lane_job = replace(job, spec=replace(job.spec, memory=max(1, job.spec.memory // self.lanes)))
            self.pool = [Lane(lane_job, lambda i: models[i], store, config, f"{name}:{k}")
                         for k in range(self.lanes)]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    workers = property(lambda self: self.lanes)
    remote = False  # shards are not remote calls: no minimum size (:func:`shard_size`)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()  # lanes stop at their next inference (Ctrl-C, an error elsewhere)
        _join(self.threads)
        for lane in self.pool:
            lane.engine = None

    def run(self, shards: list[Shard]) -> Iterator[ShardResult]:
        if len(self.pool) == 1:
            for shard in shards:
                yield self.pool[0].run(shard)
            return
        todo: queue.SimpleQueue = queue.SimpleQueue()
        done: queue.SimpleQueue = queue.SimpleQueue()
        for shard in shards:
            todo.put(shard)
        self.threads = threads = [threading.Thread(target=_drain, args=(lane, todo, done, self.stop), daemon=True)
                                  for lane in self.pool[:len(shards)]]
        for thread in threads:
            thread.start()
        try:
            for _ in shards:
                while True:
                    try:
                        result = done.get(timeout=0.2)  # a timeout keeps Ctrl-C responsive
                        break
                    except queue.Empty:
                        continue
                if isinstance(result, BaseException):
                    raise result
                yield result
        finally:
            self.stop.set()
            _join(threads)
            self.stop.clear()


def _join(threads: list[threading.Thread]) -> None:
    """Wait for the lanes that started: a signal between creating the lanes and starting them all leaves some
    unstarted, and joining one raises RuntimeError (a Ctrl-C then ended as an internal error)."""
    for thread in threads:
        try:
            thread.join()
        except RuntimeError:
            continue


def _drain(lane: Lane, todo: queue.SimpleQueue, done: queue.SimpleQueue, stop: threading.Event) -> None:
    """Run shards from ``todo`` until it is empty or ``stop`` is set; results (or the error) go to ``done``."""
    with lane_stop(stop):
        while not stop.is_set():
            try:
                shard = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put(lane.run(shard))
            except Stopped:
                return
            except BaseException as exc:  # the driver re-raises it
                done.put(exc)
                return
