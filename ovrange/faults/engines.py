"""Engines: how one model runs a fault plan. Fault-free references first, then the trials, in batches if possible.

* ActivationEngine: one fault per batch element; the struck value is read by a reader (the injection graph plus a
  GatherND per site, compiled beside it) and flipped in numpy.
* DeltaWeightEngine: weight faults as corrections of the layer output (:mod:`ovrange.faults.linear`), one per
  batch element, for Convolution / GroupConvolution / MatMul with constant weights.
* ParameterWeightEngine: the weights become inputs and bits are flipped in place; one input per inference. Used
  for bit-error-rate mode, layers the delta engine does not cover, and models whose batch cannot change.

Each engine (:class:`Engine`) runs a *shard* (any set of trial indices) and returns its Outcomes; it keeps its
compiled models between shards, so an executor builds one engine per model and feeds it shard after shard. The
fault-free output a trial is judged against comes from the compiled model the trial runs on, with no fault, so a
masked fault leaves the output bit-identical; it is computed per shard from the shard's own inputs, so a shard's
outcomes do not depend on which worker ran it or what ran before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import openvino as ov

from ovrange.compare import Judge
from ovrange.errors import ModelError
from ovrange.faults.faultlist import FaultArrays, FaultList
from ovrange.faults.formats import NumberFormat, apply_mask
from ovrange.faults.injectors import ScatterInjector, WeightFlip, WeightInjector, check_batchable
from ovrange.faults.inputs import InputStore
from ovrange.faults.linear import LinearLayer, linear_layer
from ovrange.faults.detection import detecting, read_flags
from ovrange.faults.outcomes import Outcomes
from ovrange.faults.rate_engine import RateActivationEngine  # many faults per trial, cascading
from ovrange.faults.sites import Site, site_outputs, static_clone
from ovrange.faults.spec import CampaignSpec
from ovrange.faults.stateful import GenerationEngine
from ovrange.runtime import is_stateful

WEIGHT_GROUP_LIMIT = 1 << 25  # above 32M weights, one weights-as-inputs model per layer instead of one for all
# The weight probe and injection model live side by side, each with a full model's intermediate tensors the estimates
# do not count: each gets 3/8 of ``memory`` (DeiT-Tiny-sized ViT, batch 64: the rest covered what was measured).
WEIGHT_SHARE = 3 / 8
CHUNK = 64  # trials of a one-input-per-inference engine classified and checkpointed together


@runtime_checkable
class Engine(Protocol):
    """What an executor needs from an engine: ``run`` a shard of one model's trials and return their outcomes."""

    kind: str  # "activations" or "weights"
    batch: int  # trials per inference
    description: str  # one line for the report: how the faults are injected

    def run(self, plan: FaultList, pending: np.ndarray, store: InputStore, fmt: NumberFormat) -> Outcomes:
        """Outcomes of the trials ``pending`` of ``plan``, their inputs read from ``store``."""
        ...


def _chunks(items: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _fitting(batch: int, memory_mb: float, per_sample: int) -> int:
    """The largest batch up to ``batch`` whose rows of ``per_sample`` bytes fit in ``memory_mb``."""
    return int(max(1, min(batch, memory_mb * 2**20 // max(per_sample, 1))))


def _by_site(site: np.ndarray) -> np.ndarray:
    """Trial positions ordered by site: a batch then writes into few taps, and each tap whose writes change costs
    two input tensors per inference (outcomes do not depend on the order)."""
    return np.argsort(site, kind="stable")


class _ScatterEngine:
    """Shared flow of the batched engines: probe (fault-free tensors at the struck sites), then an injector."""

    kind = "activations"
    description = ""

    def __init__(self, model: ov.Model, sites: list[Site], shapes: list[tuple[int, ...]], spec: CampaignSpec,
                 judge: Judge, batchable: bool = True, config: dict[str, Any] | None = None):
        model, self.detector = detecting(model)  # a Checksum flag: read beside the outputs, then stripped
        self.model, self.sites, self.shapes, self.spec, self.judge = model, sites, shapes, spec, judge
        self.config = config
        # Every tap's batch-sized output stays alive in the injection model, and the ops between taps (reshapes,
        # transposes) add about a quarter on a ViT: the batch is what fits in the injection model's share of memory.
        # A model whose batch cannot change runs one input (one fault) per inference.
        self.batch = _fitting(spec.batch_size, self._share(), 5 * self._tap_elements()) if batchable else 1
        self.probe = self._probe()
        self.injector = self._injector()

    def _tap_elements(self) -> int:
        return sum(s.size for s in self.sites)

    def _share(self) -> float:
        """MB of ``memory`` for the injection model's batch buffers."""
        return self.spec.memory

    def _probe(self):
        return self._injector(probe=True)

    def _injector(self, probe: bool = False, batch: int | None = None) -> ScatterInjector:
        return ScatterInjector(self.model, self.kind, [s.name for s in self.sites], self.shapes, batch or self.batch,
                               probe=probe, device=self.spec.device, config=self.config)

    def _golden(self, store: InputStore, used: np.ndarray) -> dict[int, np.ndarray]:
        golden = {}
        for chunk in _chunks(used, self.batch):
            outputs, _ = self.injector.run(store.batch(chunk))
            picked = self.judge.pick(outputs)
            golden.update((int(i), picked[r]) for r, i in enumerate(chunk))
        return golden


class ActivationEngine(_ScatterEngine):
    kind = "activations"

    def __init__(self, model, sites, shapes, spec, judge, config=None):
        batchable = check_batchable(model, shapes, spec.batch_size)
        super().__init__(model, sites, shapes, spec, judge, batchable=batchable, config=config)
        self.description = (f"ScatterNDUpdate at {len(sites)} sites, {self.batch} faults per inference"
                            + ("" if batchable else " (fixed batch)"))

    def _share(self) -> float:
        return self.spec.memory / 2  # the reader holds as many rows as the injection model

    def _probe(self) -> ScatterInjector:
        """The reader: the injection graph plus a GatherND per site after its scatter (``reads``), so the struck
        values are the ones the injection model computes. A separate compiled model: a read is a second consumer of
        every site's tensor, which stops the plugin computing the next op in place (on the DeiT-sized ViT the
        injection model with reads cost 7-10% more CPU per trial than without)."""
        return ScatterInjector(self.model, self.kind, [s.name for s in self.sites], self.shapes, self.batch,
                               reads=True, device=self.spec.device, config=self.config)

    def run(self, plan: FaultList, pending: np.ndarray, store: InputStore, fmt: NumberFormat) -> Outcomes:
        f = plan.arrays.single(pending)
        original, golden = self._read(store, np.unique(f.input), f.site, f.element, f.input)
        faulty = apply_mask(original, f.mask, fmt, f.op)
        return self._inject(store, _Trials(pending, f.site, f.element, f.input, faulty), golden)

    def _read(self, store: InputStore, used: np.ndarray, site: np.ndarray, element: np.ndarray, inputs: np.ndarray
              ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Fault-free: the struck values (from the reader) and the outputs (from the injection model), per input."""
        original = np.zeros(len(site), np.float32)
        for chunk in _chunks(used, self.batch):
            here = np.nonzero(np.isin(inputs, chunk))[0]
            rows = np.searchsorted(chunk, inputs[here])  # ``used`` is sorted, so chunks are too
            _, original[here] = self.probe.read(store.batch(chunk), site[here], rows, element[here])
        return original, self._golden(store, used)  # from the model the trials run on

    def _inject(self, store: InputStore, trial: _Trials, golden: dict[int, np.ndarray]) -> Outcomes:
        """Whole-model trials, a batch of faults per inference."""
        parts = []
        for part in _chunks(_by_site(trial.site), self.batch):
            outputs, _ = self.injector.run(store.batch(trial.inputs[part]), trial.site[part], np.arange(len(part)),
                                           trial.element[part], trial.faulty[part])
            parts.append(Outcomes.judged(self.judge, golden, trial.inputs[part], self.judge.pick(outputs),
                                         trial.pending[part], read_flags(outputs, self.detector)))
        return Outcomes.concat(parts)


@dataclass(frozen=True)
class _Trials:
    """The trials of a shard, one fault each: trial index, site index, flat element, input, faulty value."""

    pending: np.ndarray
    site: np.ndarray
    element: np.ndarray
    inputs: np.ndarray
    faulty: np.ndarray


class DeltaWeightEngine(_ScatterEngine):
    kind = "weights"

    def __init__(self, model, sites, shapes, spec, judge, layers: list[LinearLayer], config=None):
        self.layers = layers
        # The probe returns each layer's whole input and output: its batch is what fits in the probe's memory.
        per_sample = 2 * 4 * sum(int(np.prod(layer.in_shape)) + int(np.prod(layer.out_shape))  # f32, held by
                                 for layer in layers)  # OpenVINO and copied out
        self.probe_batch = _fitting(spec.batch_size, spec.memory * WEIGHT_SHARE, per_sample)
        super().__init__(model, sites, shapes, spec, judge, config=config)
        self.description = (f"weight faults as layer-output corrections at {len(sites)} layers, {self.batch} per "
                            f"inference (probe: {self.probe_batch} inputs per inference)")

    def _probe(self):
        return self._injector(probe=True, batch=self.probe_batch)

    def _tap_elements(self) -> int:
        return sum(int(np.prod(layer.out_shape)) for layer in self.layers)

    def _share(self) -> float:
        return self.spec.memory * WEIGHT_SHARE

    def run(self, plan: FaultList, pending: np.ndarray, store: InputStore, fmt: NumberFormat) -> Outcomes:
        f = plan.arrays.single(pending)
        site, element, mask, op, inputs = f.site, f.element, f.mask, f.op, f.input
        used = np.unique(inputs)
        writes: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(pending)
        for chunk in _chunks(used, self.probe_batch):
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
        golden = self._golden(store, used)
        parts = []
        for part in _chunks(_by_site(site), self.batch):
            sizes = [len(writes[k][0]) for k in part]
            taps = np.repeat(site[part], sizes)
            rows = np.repeat(np.arange(len(part)), sizes)
            elements = np.concatenate([writes[k][0] for k in part])
            values = np.concatenate([writes[k][1] for k in part])
            outputs, _ = self.injector.run(store.batch(inputs[part]), taps, rows, elements, values)
            parts.append(Outcomes.judged(self.judge, golden, inputs[part], self.judge.pick(outputs), pending[part],
                                         read_flags(outputs, self.detector)))
        return Outcomes.concat(parts)


class ParameterWeightEngine:
    """Weights as inputs, one inference per trial; flips applied in place and undone."""

    kind = "weights"

    def __init__(self, model, sites, shapes, spec, judge, fmt: NumberFormat, config=None):
        self.model, self.sites, self.shapes, self.spec, self.judge, self.fmt = model, sites, shapes, spec, judge, fmt
        self.config = config
        total = sum(s.size for s in sites)
        self.groups = [sites] if spec.ber is not None or total <= WEIGHT_GROUP_LIMIT else [[s] for s in sites]
        self.injector = self._injector(self.groups[0])  # kept between shards; other groups are rebuilt per shard
        self.batch = 1
        self.description = (f"weights as inputs ({len(self.groups)} compiled model(s)), one fault set per inference")

    def _injector(self, group: list[Site]) -> WeightInjector:
        return WeightInjector(self.model, group, self.shapes, device=self.spec.device, number_format=self.fmt,
                              config=self.config)

    def run(self, plan: FaultList, pending: np.ndarray, store: InputStore, fmt: NumberFormat) -> Outcomes:
        faults = plan.arrays.per_trial(pending)
        none = plan.arrays.take(np.zeros(0, np.int64))
        trial_inputs = plan.trial_input
        plan_index = {site.name: i for i, site in enumerate(plan.sites)}
        parts = []
        for number, group in enumerate(self.groups):
            local = np.full(len(plan.sites) + 1, -1, np.int64)  # plan site index -> index in the group (-1: other)
            for i, site in enumerate(group):
                local[plan_index[site.name]] = i
            trials = np.array([t for t in pending if (local[faults.get(int(t), none).site] >= 0).all()
                               and (len(self.groups) == 1 or int(t) in faults)], np.int64)
            if not len(trials):
                continue
            injector = self.injector if number == 0 else self._injector(group)
            used = np.unique(trial_inputs[trials])
            rows = dict(zip(used.tolist(), store.load(used)))
            golden = {i: self.judge.pick(injector.run(rows[i]))[0] for i in rows}
            for part in _chunks(trials, CHUNK):
                flips = [weight_flips(faults.get(int(t), none), local) for t in part]
                outputs = [self.judge.pick(injector.run(rows[int(trial_inputs[t])], flip))
                           for t, flip in zip(part, flips)]
                parts.append(Outcomes.judged(self.judge, golden, trial_inputs[part], np.concatenate(outputs), part))
            del injector
        return Outcomes.concat(parts)


def weight_flips(faults: FaultArrays, local: np.ndarray) -> list[WeightFlip]:
    """The flips of one trial, sites numbered as in the injector (``local``: plan site index -> injector's)."""
    return [WeightFlip(int(local[s]), int(e), int(m), str(o))
            for s, e, m, o in zip(faults.site, faults.element, faults.mask, faults.op)]


def make_engine(model: ov.Model, target: str, sites: list[Site], shapes: list[tuple[int, ...]],
                spec: CampaignSpec, judge: Judge, fmt: NumberFormat, config: dict[str, Any] | None = None) -> Engine:
    """The fastest engine that runs ``target`` faults on ``model`` (see the module docstring); ``config`` holds
    extra OpenVINO compile properties (a Ray worker turns CPU pinning off). A stateful language model runs one
    generation per trial (:mod:`ovrange.faults.stateful`)."""
    if is_stateful(model):
        return GenerationEngine(model, sites, spec, judge, fmt, config)
    if target == "activations" and spec.error_rate is not None:
        return RateActivationEngine(model, sites, shapes, spec, judge, config)
    if target == "activations":
        return ActivationEngine(model, sites, shapes, spec, judge, config)
    if spec.weight_mode != "parameter" and spec.ber is None and spec.error_rate is None:
        layers = _linear_layers(model, sites, shapes)
        if layers is not None and check_batchable(model, shapes, spec.batch_size):
            return DeltaWeightEngine(model, sites, shapes, spec, judge, layers, config)
        if spec.weight_mode == "delta":
            raise ModelError("weight_mode delta needs Convolution/GroupConvolution/MatMul layers with 2-D MatMul "
                             "weights and a model that runs batches; use weight_mode parameter")
    return ParameterWeightEngine(model, sites, shapes, spec, judge, fmt, config)


def _linear_layers(model: ov.Model, sites: list[Site], shapes: list[tuple[int, ...]]) -> list[LinearLayer] | None:
    found = site_outputs(static_clone(model, shapes, batch=1), "weights")
    layers = [linear_layer(*found[s.name]) for s in sites]
    return None if any(layer is None for layer in layers) else layers
