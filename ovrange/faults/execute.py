"""Engines: how one model runs a fault plan. Fault-free references first, then the trials, in batches if possible.

* ActivationEngine: one fault per batch element; the struck value is read by a probe and flipped in numpy.
* DeltaWeightEngine: weight faults as corrections of the layer output (:mod:`ovrange.faults.linear`), one per
  batch element, for Convolution / GroupConvolution / MatMul with constant weights.
* ParameterWeightEngine: the weights become inputs and bits are flipped in place; one input per inference. Used
  for bit-error-rate mode, layers the delta engine does not cover, and models whose batch cannot change.

The fault-free output a trial is judged against comes from the compiled model the trial runs on, with no fault,
so a masked fault leaves the output bit-identical. Compiled models are built lazily and dropped when done: each
holds its own copy of the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openvino as ov

from ovrange.errors import ModelError
from ovrange.faults.faultlist import FaultList
from ovrange.faults.injectors import ScatterInjector, WeightInjector, check_batchable
from ovrange.faults.inputs import InputStore
from ovrange.faults.linear import LinearLayer, linear_layer
from ovrange.faults.model import Fault, NumberFormat, apply_mask
from ovrange.faults.outcomes import Judge
from ovrange.faults.sites import Site, site_outputs, static_clone
from ovrange.faults.spec import CampaignSpec

_BACKGROUND = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovrange-compile")
RecordFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]
WEIGHT_GROUP_LIMIT = 1 << 25  # above 32M weights, one weights-as-inputs model per layer instead of one for all
CHUNK = 64  # trials of a one-input-per-inference engine classified and checkpointed together


def _chunks(items: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _single_faults(plan: FaultList, pending: np.ndarray) -> tuple[np.ndarray, ...]:
    """(site index, element, mask, operation, input) of each pending trial of a one-fault-per-trial plan."""
    index = {site.name: i for i, site in enumerate(plan.sites)}
    by_trial = {f.trial: f for f in plan.faults}
    chosen = [by_trial[int(t)] for t in pending]
    return (np.array([index[f.site] for f in chosen], np.int64), np.array([f.element for f in chosen], np.int64),
            np.array([f.mask for f in chosen], np.uint64), np.array([f.op for f in chosen]),
            np.array([f.input for f in chosen], np.int64))


def _judge(judge: Judge, golden: dict[int, np.ndarray], inputs: np.ndarray, outputs: np.ndarray,
           trials: np.ndarray, record: RecordFn) -> None:
    codes, top1, deviation = judge.classify(np.stack([golden[int(i)] for i in inputs]), outputs)
    record(trials, codes, top1, deviation)


class _ScatterEngine:
    """Shared flow of the batched engines: probe (references, fault-free tensors), then an injector."""

    kind = "activations"
    description = ""

    def __init__(self, model: ov.Model, sites: list[Site], shapes: list[tuple[int, ...]], spec: CampaignSpec,
                 judge: Judge, rows: list[int] | None = None, batchable: bool = True):
        self.model, self.sites, self.shapes, self.spec, self.judge, self.rows = model, sites, shapes, spec, judge, rows
        self.trash = batchable
        self.batch = spec.batch_size if batchable else 1
        # Compile the injector in the background while the probe picks inputs and reads fault-free tensors
        # (OpenVINO releases the GIL while compiling); a fixed-batch model builds one per site later instead.
        self._pending = _BACKGROUND.submit(self._injector) if batchable else None
        self.probe: ScatterInjector | None = self._injector(probe=True)

    def _injector(self, probe: bool = False, names: list[str] | None = None) -> ScatterInjector:
        return ScatterInjector(self.model, self.kind, names or [s.name for s in self.sites], self.shapes, self.batch,
                               rows=self.rows if names is None else None, trash=self.trash, probe=probe,
                               device=self.spec.device)

    def reference(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Fault-free judged output for any number of rows (used to pick the inputs)."""
        parts = [self.probe.run([a[s:s + self.batch] for a in inputs])[0][self.judge.output]
                 for s in range(0, len(inputs[0]), self.batch)]
        return np.concatenate(parts)

    def _golden(self, injector: ScatterInjector, store: InputStore, used: np.ndarray) -> dict[int, np.ndarray]:
        golden = {}
        for chunk in _chunks(used, self.batch):
            outputs, _ = injector.run(store.batch(chunk))
            golden.update((int(i), outputs[self.judge.output][r]) for r, i in enumerate(chunk))
        return golden


class ActivationEngine(_ScatterEngine):
    kind = "activations"

    def __init__(self, model, sites, shapes, spec, judge):
        batchable = check_batchable(model, shapes, spec.batch_size)
        super().__init__(model, sites, shapes, spec, judge, batchable=batchable)
        self.description = (f"ScatterNDUpdate at {len(sites)} sites, {self.batch} faults per inference" if batchable
                            else "ScatterNDUpdate at one site per model, one fault per inference (fixed batch)")

    def run(self, plan: FaultList, pending: np.ndarray, store: InputStore, fmt: NumberFormat,
            record: RecordFn) -> None:
        site, element, mask, op, inputs = _single_faults(plan, pending)
        used = np.unique(inputs)
        original = np.zeros(len(pending), np.float32)
        golden: dict[int, np.ndarray] = {}
        for chunk in _chunks(used, self.batch):
            outputs, probes = self.probe.run(store.batch(chunk))
            here = np.nonzero(np.isin(inputs, chunk))[0]
            rows = np.searchsorted(chunk, inputs[here])  # ``used`` is sorted, so chunks are too
            for s in np.unique(site[here]):
                take = site[here] == s
                original[here[take]] = probes[s][0].reshape(len(chunk), -1)[rows[take], element[here[take]]]
            if not self.trash:  # single-site injectors always inject: the probe gives the fault-free output
                golden.update((int(i), outputs[self.judge.output][r]) for r, i in enumerate(chunk))
        self.probe = None
        faulty = apply_mask(original, mask, fmt, op)
        if self.trash:
            injector = self._pending.result()
            golden = self._golden(injector, store, used)
            for part in _chunks(np.arange(len(pending)), self.batch):
                outputs, _ = injector.run(store.batch(inputs[part]), site[part], np.arange(len(part)), element[part],
                                          faulty[part])
                _judge(self.judge, golden, inputs[part], outputs[self.judge.output], pending[part], record)
            return
        for s in np.unique(site):  # fixed-batch model: one single-site injector at a time
            injector = self._injector(names=[self.sites[s].name])
            for part in _chunks(np.nonzero(site == s)[0], CHUNK):
                outputs = [injector.run(store.batch(inputs[[k]]), np.zeros(1, np.int64), np.zeros(1, np.int64),
                                        element[[k]], faulty[[k]])[0][self.judge.output] for k in part]
                _judge(self.judge, golden, inputs[part], np.concatenate(outputs), pending[part], record)
            del injector


class DeltaWeightEngine(_ScatterEngine):
    kind = "weights"

    def __init__(self, model, sites, shapes, spec, judge, layers: list[LinearLayer]):
        self.layers = layers
        super().__init__(model, sites, shapes, spec, judge, rows=[layer.rows for layer in layers])
        self.description = f"weight faults as layer-output corrections at {len(sites)} layers, {self.batch} per inference"

    def run(self, plan: FaultList, pending: np.ndarray, store: InputStore, fmt: NumberFormat,
            record: RecordFn) -> None:
        site, element, mask, op, inputs = _single_faults(plan, pending)
        used = np.unique(inputs)
        writes: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(pending)
        for chunk in _chunks(used, self.batch):
            _, probes = self.probe.run(store.batch(chunk))
            here = np.nonzero(np.isin(inputs, chunk))[0]
            rows = np.searchsorted(chunk, inputs[here])
            for s in np.unique(site[here]):
                take = here[site[here] == s]
                x, y = probes[s]
                index, values = self.layers[s].faulty_slices(element[take], mask[take], fmt, x[rows[site[here] == s]],
                                                             y[rows[site[here] == s]], op[take])
                for k, trial in enumerate(take):
                    writes[trial] = (index[k], values[k])
        self.probe = None
        injector = self._pending.result()
        golden = self._golden(injector, store, used)
        for part in _chunks(np.arange(len(pending)), self.batch):
            sizes = [len(writes[k][0]) for k in part]
            taps = np.repeat(site[part], sizes)
            rows = np.repeat(np.arange(len(part)), sizes)
            elements = np.concatenate([writes[k][0] for k in part])
            values = np.concatenate([writes[k][1] for k in part])
            outputs, _ = injector.run(store.batch(inputs[part]), taps, rows, elements, values)
            _judge(self.judge, golden, inputs[part], outputs[self.judge.output], pending[part], record)


class ParameterWeightEngine:
    """Weights as inputs, one inference per trial; flips applied in place and undone."""

    def __init__(self, model, sites, shapes, spec, judge, fmt: NumberFormat):
        self.model, self.sites, self.shapes, self.spec, self.judge, self.fmt = model, sites, shapes, spec, judge, fmt
        total = sum(s.size for s in sites)
        self.groups = [sites] if spec.ber is not None or total <= WEIGHT_GROUP_LIMIT else [[s] for s in sites]
        self.injector: WeightInjector | None = self._injector(self.groups[0])
        self.batch = 1
        self.description = (f"weights as inputs ({len(self.groups)} compiled model(s)), one fault set per inference")

    def _injector(self, group: list[Site]) -> WeightInjector:
        return WeightInjector(self.model, group, self.shapes, device=self.spec.device, number_format=self.fmt)

    def reference(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([self.injector.run([a[i:i + 1] for a in inputs])[self.judge.output]
                               for i in range(len(inputs[0]))])

    def run(self, plan: FaultList, pending: np.ndarray, store: InputStore, fmt: NumberFormat,
            record: RecordFn) -> None:
        faults: dict[int, list[Fault]] = {int(t): [] for t in pending}
        trial_inputs = np.zeros(plan.trials, np.int64)
        if plan.trial_inputs:
            trial_inputs[:] = plan.trial_inputs
        for fault in plan.faults:
            trial_inputs[fault.trial] = fault.input
            if fault.trial in faults:
                faults[fault.trial].append(fault)
        for number, group in enumerate(self.groups):
            names = {s.name: i for i, s in enumerate(group)}
            trials = np.array([t for t in pending if all(f.site in names for f in faults[int(t)])
                               and (len(self.groups) == 1 or faults[int(t)])], np.int64)
            if not len(trials):
                continue
            injector = self.injector if number == 0 else self._injector(group)
            self.injector = None
            used = np.unique(trial_inputs[trials])
            rows = dict(zip(used.tolist(), store.load(used)))
            golden = {i: injector.run(rows[i])[self.judge.output][0] for i in rows}
            for part in _chunks(trials, CHUNK):
                outputs = [injector.run(rows[int(trial_inputs[t])],
                                        [(names[f.site], f.element, f.mask, f.op) for f in faults[int(t)]])[self.judge.output]
                           for t in part]
                _judge(self.judge, golden, trial_inputs[part], np.concatenate(outputs), part, record)
            del injector


def make_engine(model: ov.Model, target: str, sites: list[Site], shapes: list[tuple[int, ...]],
                spec: CampaignSpec, judge: Judge, fmt: NumberFormat):
    """The fastest engine that runs ``target`` faults on ``model`` (see the module docstring)."""
    if target == "activations" and spec.error_rate is not None:
        from ovrange.faults.rate_engine import RateActivationEngine  # many faults per trial, cascading

        return RateActivationEngine(model, sites, shapes, spec, judge)
    if target == "activations":
        return ActivationEngine(model, sites, shapes, spec, judge)
    if spec.weight_mode != "parameter" and spec.ber is None and spec.error_rate is None:
        layers = _linear_layers(model, sites, shapes)
        if layers is not None and check_batchable(model, shapes, spec.batch_size):
            return DeltaWeightEngine(model, sites, shapes, spec, judge, layers)
        if spec.weight_mode == "delta":
            raise ModelError("weight_mode delta needs Convolution/GroupConvolution/MatMul layers with 2-D MatMul "
                             "weights and a model that runs batches; use weight_mode parameter")
    return ParameterWeightEngine(model, sites, shapes, spec, judge, fmt)


def _linear_layers(model: ov.Model, sites: list[Site], shapes: list[tuple[int, ...]]) -> list[LinearLayer] | None:
    found = site_outputs(static_clone(model, shapes, batch=1), "weights")
    layers = [linear_layer(*found[s.name]) for s in sites]
    return None if any(layer is None for layer in layers) else layers
