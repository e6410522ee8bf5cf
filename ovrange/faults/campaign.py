"""The campaign driver: plan once, cut the pending trials into shards, let an executor run them, merge.

Every model replays the same fault list (sites matched by node name). Shards run in this process (the default) or
on Ray workers (``workers`` / ``ray_address``, :mod:`ovrange.faults.ray_executor`); each finished shard is merged
once, appended to a JSON-lines checkpoint (so an interrupted campaign resumes where it stopped) and reported
through the progress callback. With a ``margin`` the trials run in rounds until the SDC intervals are that narrow
(:mod:`ovrange.faults.stopping`). A stateful language model's trial is a generation (:mod:`ovrange.faults.stateful`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ovrange import data as data_mod
from ovrange.batching import batch_first, set_batch_axes
from ovrange.compare import Judge
from ovrange.errors import ConfigError, DataError, OutputError
from ovrange.faults.executors import Job, LocalExecutor, make_shards, shard_size as shard_trials
from ovrange.faults.faultlist import FaultList, plan_faults
from ovrange.faults.formats import OPS, parse_format, rebase_bits
from ovrange.faults.injectors import check_batchable
from ovrange.faults.inputs import InputStore, select_inputs
from ovrange.faults.report import CHECKPOINT_FILE, FAULTS_FILE, RESULT_FILE, SUMMARY_FILE, remove_report
from ovrange.faults.result import CampaignResult, ModelRun
from ovrange.faults.sites import Site, find_sites, match_sites, sites_in_format
from ovrange.faults.spec import CampaignSpec
from ovrange.faults.stateful import PromptStore, check_models, check_plan, generation_judge, plan_campaign
from ovrange.faults.stopping import Stopping, fault_space
from ovrange.graph import get_rt_json, inserted_nodes
from ovrange.modelio import read_model
from ovrange.runtime import Runner

ProgressFn = Callable[[int, int], None]


ModelLike = ov.Model | str | os.PathLike
MARGIN_CAP = 100_000  # default trial cap of a campaign that stops on its margin


def inject(model: ModelLike, dataset: Any, *, compare: ModelLike | list[ModelLike] | None = None,
           labels: np.ndarray | None = None, target: str = "activations", trials: int | None = None, seed: int = 0,
           replay: FaultList | str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None,
           resume: bool = False, progress: ProgressFn | None = None, workers: int | None = None,
           ray_address: str | None = None, shard_size: int | None = None, lanes: int | None = None,
           batch_axes: dict[str, int] | None = None, images: Any = None, **settings: Any) -> CampaignResult:
    """Run a fault-injection campaign on ``model`` (and the same faults on each ``compare`` model); see CampaignSpec.

    ``dataset`` is a path (image folder, .npy, .npz with labels ``y``), an array, or any ovrange/nncf dataset;
    ``labels`` gives labels for non-path datasets. ``settings`` are the other CampaignSpec fields (bits,
    number_format, ber, inputs, batch_size, sites, exclude, weighting, sdc, output, device, weight_mode, margin,
    confidence, memory, fault_model, error_rate). ``trials`` defaults to 1000, or to a cap of 100,000 with a
    ``margin``. ``workers`` runs the shards on that many Ray workers of a local Ray instance, ``ray_address`` (or
    ``RAY_ADDRESS``) on a cluster; ``shard_size`` sets the trials per shard (default:
    :func:`ovrange.faults.executors.shard_size`); ``lanes`` sets the parallel engines of a local run (default:
    :func:`ovrange.faults.executors.local_lanes`). ``batch_axes`` (``{input: axis}``) says where an input has its
    batch when it is not axis 0 (:func:`ovrange.batching.set_batch_axes`); ``images`` (an ImageOptions) how an
    image folder is decoded.
    """
    if trials is None:
        trials = MARGIN_CAP if settings.get("margin") is not None else 1000
    spec = CampaignSpec.create(target=target, trials=trials, seed=seed, **settings)
    if lanes is not None and lanes < 1:
        raise ConfigError(f"lanes must be at least 1, got {lanes}")
    if workers is not None or ray_address is not None:
        from ovrange.faults.ray_executor import check_ray

        check_ray(workers, ray_address)  # before anything is read or written
    others = [] if compare is None else list(compare) if isinstance(compare, (list, tuple)) else [compare]
    models = [_as_model(m) for m in [model, *others]]
    if batch_axes:
        models = [(name, set_batch_axes(m.clone(), batch_axes)) for name, m in models]
    stateful = check_models(models)  # before the data: prompts or token ids would be the wrong complaint
    spec = one_trial_per_inference(spec, models, explicit=settings.get("batch_size") is not None)
    source = str(dataset) if isinstance(dataset, (str, os.PathLike)) else type(dataset).__name__
    if isinstance(dataset, (str, os.PathLike)):
        loaded = data_mod.load(dataset, models[0][1], images=images, model_path=models[0][0] if stateful else None)
        dataset, labels = loaded.dataset, loaded.labels if labels is None else labels
    dataset = data_mod.batch_first(data_mod.as_dataset(dataset), models[0][1])  # engines stack trials on axis 0
    models = [(name, batch_first(m)) for name, m in models]
    if resume and replay is None and checkpoint_dir is not None:
        replay = Path(checkpoint_dir) / FAULTS_FILE  # resuming replays the plan the interrupted run saved
    plan = FaultList.load(replay) if isinstance(replay, (str, os.PathLike)) else replay
    return run_campaign(models, data_mod.as_dataset(dataset), spec, labels=labels, plan=plan, data=source,
                        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None, resume=resume,
                        progress=progress, workers=workers, ray_address=ray_address, shard_size=shard_size,
                        lanes=lanes)


def decides_per_batch(model: ov.Model) -> bool:
    """True when ovrange inserted an ``If`` into ``model`` (Checksum's recompute, gated GradientSuppression): its
    condition covers the whole batch, so one row's detection re-runs or suppresses every row."""
    inserted = inserted_nodes(model)
    return any(op.get_type_name() == "If" and op.get_friendly_name() in inserted for op in model.get_ordered_ops())


def one_trial_per_inference(spec: CampaignSpec, models: list[tuple[str, ov.Model]], explicit: bool) -> CampaignSpec:
    """Batch 1 when a model decides per batch (each trial is a batch row: a neighbour's detection would rescue
    it); an explicit larger batch size is refused rather than silently measuring the wrong thing."""
    deciding = [name for name, model in models if decides_per_batch(model)]
    if not deciding or spec.batch_size == 1:
        return spec
    if explicit:
        raise ConfigError(f"{deciding[0]} has an If that decides for its whole batch (Checksum recompute or gated "
                          "GradientSuppression): one trial's detection would correct its batch neighbours; "
                          "use --batch-size 1 (the default for such models)")
    return replace(spec, batch_size=1)


def _as_model(model: ModelLike) -> tuple[str, ov.Model]:
    if isinstance(model, ov.Model):
        return model.get_friendly_name(), model
    return str(model), read_model(model)


def run_campaign(models: list[tuple[str, ov.Model]], dataset: data_mod.Dataset, spec: CampaignSpec, *,
                 labels: np.ndarray | None = None, plan: FaultList | None = None, data: str = "",
                 checkpoint_dir: Path | None = None, resume: bool = False, progress: ProgressFn | None = None,
                 workers: int | None = None, ray_address: str | None = None,
                 shard_size: int | None = None, lanes: int | None = None) -> CampaignResult:
    """Plan (or take ``plan``), then run every trial on every model; returns the (possibly partial) result."""
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        names = [f"{name} [{i}]" for i, name in enumerate(names)]
    reference = models[0][1]
    judged = generation_judge(spec, models, remote=workers is not None or ray_address is not None)
    stateful = judged is not None  # a language model's sample is a prompt, a trial its generation
    if stateful:
        spec, judge = judged
    else:
        judge = Judge.for_model(reference, spec.sdc, spec.output)
        spec = replace(spec, sdc=judge.criterion)
    store = PromptStore(dataset, reference) if stateful else InputStore(dataset, reference)
    checked: list[tuple[int, int]] = [(0, 0)] * len(models)
    population = None
    if plan is None and stateful:
        spec, plan = plan_campaign(models, store, spec, data, lambda m, s: _sites(m, s, None))
        shapes, sites = store.sample_shapes(plan.inputs[0]), list(plan.sites)
    elif plan is None:
        shapes = store.sample_shapes(0)
        spec, sites = _sites(models, spec, shapes)
    else:
        spec = spec.with_overrides(target=plan.target, number_format=plan.number_format, trials=plan.trials,
                                   ber=plan.ber, seed=plan.seed if plan.seed is not None else spec.seed,
                                   bits=plan.bits() or None,  # report the bits that ran, not the options
                                   fault_model=plan.fault_model, error_rate=plan.error_rate)
        shapes = store.sample_shapes(plan.inputs[0] if plan.inputs else plan.faults[0].input)
        for name, model in models:
            if not stateful or plan.target == "weights":
                plan.check_sites(find_sites(model, plan.target, shapes), name)
        if stateful and plan.target != "weights":
            check_plan(plan, models)
        sites = list(plan.sites)
    if not stateful and plan is None:
        # Plain compiled models pick the inputs; the injection engines are built one model at a time below (each
        # holds its weights and batch-sized buffers: several at once ran a large model out of memory).
        references = [_plain_reference(model, judge, shapes, spec) for _, model in models]
        inputs, checked = select_inputs(references, store, labels, judge.criterion.metric == "top1", spec.inputs,
                                        spec.seed, spec.batch_size)
        del references
        rated = spec.ber is not None or spec.error_rate is not None
        faults, trial_inputs = plan_faults(sites, np.array(inputs), spec.trials, spec.bits, spec.seed,
                                           spec.weighting, spec.ber, spec.fault_model, parse_format(spec.number_format),
                                           spec.error_rate)
        plan = FaultList(spec.target, spec.number_format, tuple(sites), tuple(inputs), tuple(faults), spec.trials,
                         spec.seed, spec.ber, data, tuple(int(i) for i in trial_inputs) if rated else (),
                         spec.fault_model, spec.error_rate)
        if not rated and spec.weighting == "elements":
            population = fault_space([s.size for s in sites], len(inputs), len(spec.bits), spec.trials)
    result = _empty_result(plan, spec, names, data)
    for run, (n_checked, n_correct) in zip(result.models, checked):
        run.inputs_checked, run.inputs_correct = n_checked, n_correct
    job = Job(plan, sites, shapes, spec, judge)
    if workers is None and ray_address is None:
        executor = LocalExecutor(job, [m for _, m in models], store, lanes)
    else:
        from ovrange.faults.ray_executor import RayExecutor

        rows = store.load(sorted(set(result.trial_input.tolist())))
        job = replace(job, rows=dict(zip(sorted(set(result.trial_input.tolist())), rows)))
        executor = RayExecutor(job, [m for _, m in models], workers, ray_address)
    stopping = Stopping(spec.margin, spec.confidence, population) if spec.margin is not None else None
    started = time.perf_counter()
    checkpoint = None
    try:
        with executor:  # started before the checkpoint exists: a failed Ray start leaves no report folder behind
            if checkpoint_dir:
                checkpoint = _Checkpoint(checkpoint_dir, plan, result, [m for _, m in models], resume)
            _run_rounds(result, executor, stopping, _fault_keys(plan) if stopping else None, shard_size, checkpoint,
                        progress)
    finally:
        if checkpoint:
            checkpoint.close()
    result.meta["executor"] = {"kind": type(executor).__name__, "workers": executor.workers,
                               "wall_seconds": time.perf_counter() - started}
    if stopping:
        result.meta["stopping"] = stopping.to_dict()
    from ovrange.evidence.provenance import provenance  # versions, command line, model and data digests
    result.meta["provenance"] = provenance([n for n, _ in models], [model_digest(m) for _, m in models], data)
    return result


def _run_rounds(result: CampaignResult, executor, stopping: Stopping | None, keys: np.ndarray | None,
                shard_size: int | None, checkpoint: _Checkpoint | None, progress: ProgressFn | None) -> None:
    """Run trials up to a target (all of them without ``stopping``), round after round; merge each shard once."""
    done = sum(int(r.done.sum()) for r in result.models)
    cap = result.trials
    target = stopping.first_target(cap) if stopping else cap
    merged: set[int] = set()
    workers = result.meta.setdefault("workers", {})
    engines = result.meta.setdefault("engines", {})
    first_index = 0
    if progress:
        progress(done, cap * len(result.models))
    while target is not None:
        pending = [np.nonzero(~run.done[:target])[0] for run in result.models]
        size = shard_trials(target, shard_size, result.spec.batch_size, executor.workers, executor.remote)
        shards = make_shards(pending, result.trial_input, size, first_index)
        first_index += len(shards)
        for shard_result in executor.run(shards):
            shard, out = shard_result.shard, shard_result.outcomes
            if shard.index in merged:
                continue  # a shard re-run after a worker died must not count twice
            merged.add(shard.index)
            run = result.models[shard.model]
            run.merge(out.trials, out.codes, out.top1, out.deviation, out.flagged)
            run.seconds += shard_result.seconds
            engines[run.name] = shard_result.engine
            stats = workers.setdefault(shard_result.worker, {"trials": 0, "seconds": 0.0, "shards": 0})
            stats["trials"] += len(out.trials)
            stats["seconds"] += shard_result.seconds
            stats["shards"] += 1
            stats["trials_per_second"] = stats["trials"] / stats["seconds"] if stats["seconds"] else None
            if checkpoint:
                checkpoint.append(shard.model, out)
            done += len(out.trials)
            if progress:
                progress(done, cap * len(result.models))
        if not stopping:
            break
        target = stopping.next_target([run.outcome for run in result.models], keys, target, cap)


def _fault_keys(plan: FaultList) -> np.ndarray:
    """Per trial, an id of its fault (input, site, element, mask, operation): equal ids are the same fault drawn
    twice."""
    faults = plan.arrays
    rows = np.full((plan.trials, 5), -1, np.int64)
    trials, last = faults.last()  # multi-fault trials keep their last fault: only single-fault plans use the ids
    codes = np.select([faults.op[last] == op for op in OPS], range(len(OPS)), -1)  # the operation's index in OPS
    rows[trials] = np.stack([faults.input[last], faults.site[last], faults.element[last],
                             faults.mask[last].astype(np.int64), codes], axis=1)
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def _plain_reference(model: ov.Model, judge: Judge, shapes: list[tuple[int, ...]], spec: CampaignSpec):
    """Fault-free judged output of ``model`` for a batch of inputs (one sample at a time if it cannot batch)."""
    batch = spec.batch_size if check_batchable(model, shapes, spec.batch_size) else 1
    runner = Runner(model, device=spec.device, batch_size=batch, fallback=True)

    def reference(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([judge.pick(outputs) for outputs, _ in runner.run([(arrays, len(arrays[0]))])])

    return reference


def _sites(models: list[tuple[str, ov.Model]], spec: CampaignSpec, shapes: list[tuple[int, ...]]
           ) -> tuple[CampaignSpec, list[Site]]:
    """The sites of the campaign and its spec with the number format resolved (``auto``: from the model)."""
    include, exclude = list(spec.sites), list(spec.exclude)
    found = find_sites(models[0][1], spec.target, shapes, include, exclude)
    number_format, sites = sites_in_format(found, spec.number_format, models[0][0])
    for name, model in models[1:]:
        protected_twin = get_rt_json(model, "protection") is not None  # the record ovrange.protect writes
        _, theirs = sites_in_format(find_sites(model, spec.target, shapes, include, exclude), number_format, name)
        match_sites(sites, theirs, name, protected_twin)
    if number_format != spec.number_format:  # 'all' and named bit groups under auto: taken in the model's format
        spec = spec.with_overrides(number_format=number_format,
                                   bits=list(rebase_bits(spec.bits, parse_format(number_format))))
    return spec, sites


def _empty_result(plan: FaultList, spec: CampaignSpec, names: list[str], data: str) -> CampaignResult:
    faults = plan.arrays
    bad = (faults.trial < 0) | (faults.trial >= plan.trials) | (faults.site < 0)
    if bad.any():
        raise ConfigError(f"fault {plan.faults[int(np.argmax(bad))]} does not fit the plan ({plan.trials} trials)")
    count = np.bincount(faults.trial, minlength=plan.trials).astype(np.int32)
    single = count[faults.trial] == 1
    trial_site = np.full(plan.trials, -1, np.int32)
    trial_bit = np.full(plan.trials, -1, np.int16)
    trial_site[faults.trial[single]] = faults.site[single]
    trial_bit[faults.trial[single]] = faults.bits()[single]
    if plan.ber is None and plan.error_rate is None and (count != 1).any():
        raise ConfigError("a single-fault plan must hold exactly one fault per trial")
    trial_input = plan.trial_input.copy()
    if (trial_input < 0).any():
        raise ConfigError("the fault list has trials without an input")
    runs = [ModelRun.empty(name, plan.trials) for name in names]
    return CampaignResult(spec, list(plan.sites), trial_site, trial_bit, trial_input, count, runs, data,
                          plan.fingerprint())


def model_digest(model: ov.Model) -> str:
    """A digest of a model's graph and constants: a checkpoint must not resume on a different model."""
    digest = hashlib.sha256()
    for node in model.get_ordered_ops():
        shapes = [str(out.get_partial_shape()) for out in node.outputs()]  # not names: unnamed ops get counters
        digest.update(f"{node.get_type_name()}|{shapes}|".encode())
        if node.get_type_name() == "Constant":
            digest.update(np.ascontiguousarray(node.get_data()).tobytes())
    return digest.hexdigest()[:16]


def _lock(handle, directory: Path) -> None:
    """One campaign per report folder: two writers would interleave their checkpoints."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, no guard
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise OutputError(f"another campaign is running in {directory}") from exc


class _Checkpoint:
    """Appends each finished chunk of trials to ``checkpoint.jsonl``; on resume, replays it into the result."""

    def __init__(self, directory: Path, plan: FaultList, result: CampaignResult, models: list[ov.Model],
                 resume: bool):
        self.path = directory / CHECKPOINT_FILE
        header = {"fingerprint": plan.fingerprint(), "models": [m.name for m in result.models],
                  "digests": [model_digest(m) for m in models], "spec": result.spec.to_dict()}
        if resume:
            self._restore(header, result)
            self.handle = open(self.path, "a")
            _lock(self.handle, directory)
            if not all((directory / name).is_file() for name in (RESULT_FILE, SUMMARY_FILE)):  # complete: stays
                remove_report(directory)  # a partial report beside a checkpoint must never look complete
        else:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self.handle = open(self.path, "a")
                _lock(self.handle, directory)  # before anything is overwritten
                remove_report(directory)
                plan.save(directory / FAULTS_FILE)
                self.handle.truncate(0)
            except OSError as exc:
                raise OutputError(f"cannot write the checkpoint in {directory}: {exc.strerror}") from exc
            self.handle.write(json.dumps(header) + "\n")
            self.handle.flush()

    def _restore(self, header: dict, result: CampaignResult) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            raise DataError(f"cannot resume: no checkpoint at {self.path} ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"cannot resume: {self.path} is not an ovrange checkpoint (binary data)") from exc
        try:
            saved = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            saved = None
        if not isinstance(saved, dict) or any(saved.get(key) != header[key]
                                              for key in ("fingerprint", "models", "digests")):
            raise ConfigError(f"cannot resume: {self.path} belongs to a different campaign (models or faults "
                              "differ) or is damaged")
        for number, line in enumerate(lines[1:], start=2):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by the interruption: its trials simply run again
            try:
                result.models[rec["m"]].merge(np.array(rec["t"], np.int64), np.array(rec["o"], np.int8), np.array(
                    rec["p"], np.int32), np.array([np.inf if d is None else d for d in rec["d"]], np.float32),
                    None if rec.get("f") is None else np.array(rec["f"], bool))
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ConfigError(f"cannot resume: line {number} of {self.path} is damaged ({exc})") from exc

    def append(self, model: int, out) -> None:
        record = {"m": model, "t": out.trials.tolist(), "o": out.codes.tolist(), "p": out.top1.tolist(),
                  "d": [float(d) if np.isfinite(d) else None for d in out.deviation.tolist()],
                  **({} if out.flagged is None else {"f": out.flagged.astype(int).tolist()})}
        self.handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()
