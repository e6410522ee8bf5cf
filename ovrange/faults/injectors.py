"""Injection models: the model is edited once so faults become *inputs*, then compiled once and reused.

* ScatterInjector: a ScatterNDUpdate after every tap output (an activation site, or the output of a weight
  layer), fed with ``indices``/``updates`` Parameters of dynamic length: each batch element carries its own fault,
  and an inference passes exactly its writes (none at the other taps). One compiled model serves every site; a
  model whose batch cannot change runs it at batch 1. (Until 2026-11 the writes had a fixed length and idle rows
  wrote into a spare "trash" batch element: on a DeiT-Tiny-sized ViT that cost 14% more CPU per trial than empty
  writes, docs/distributed.md.)
* WeightInjector: each site's constant weight becomes a Parameter fed through shared-memory tensors; a trial
  flips bits in place, infers, and flips them back. One input per inference; any number of flips (bit-error-rate
  mode), any layer kind.

Faulty values are computed in numpy (OpenVINO has no bitcast): the campaign reads the fault-free tensors from a
*probe* (the same injection graph plus Results at the taps), flips the struck value, or for a weight fault
computes the corrected layer output (:mod:`ovrange.faults.linear`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.faults.model import FORMATS, NumberFormat, apply_mask
from ovrange.faults.sites import Site, site_outputs, static_clone
from ovrange.graph import move_names
from ovrange.runtime import compile_model, last_line
from ovrange.errors import DataError, ModelError


class Stopped(Exception):
    """A lane of a local executor was told to stop (Ctrl-C or an error elsewhere) before its next inference."""


_LANE = threading.local()  # the stop flag of the executor lane running in this thread, if any


@contextmanager
def lane_stop(stop: threading.Event) -> Iterator[None]:
    """Inferences in this thread raise :class:`Stopped` once ``stop`` is set."""
    _LANE.stop = stop
    try:
        yield
    finally:
        _LANE.stop = None


class _Runner:
    """A compiled model with preallocated shared-memory buffers for its static-shaped inputs; inputs of dynamic
    length (the writes and reads of a :class:`ScatterInjector`) are set per inference with :meth:`feed`."""

    def __init__(self, model: ov.Model, device: str, precision: str, config: dict | None = None):
        self.compiled = compile_model(model, device, precision=precision, config=config)
        self.request = self.compiled.create_infer_request()
        self.buffers = []
        for index, port in enumerate(self.compiled.inputs):
            if port.get_partial_shape().is_dynamic:
                continue
            buffer = np.zeros(tuple(port.get_shape()), dtype=port.get_element_type().to_dtype())
            self.request.set_input_tensor(index, ov.Tensor(buffer, shared_memory=True))
            self.buffers.append(buffer)

    def feed(self, index: int, array: np.ndarray) -> None:
        self.request.set_input_tensor(index, ov.Tensor(np.ascontiguousarray(array)))

    def run(self) -> None:
        stop = getattr(_LANE, "stop", None)
        if stop is not None and stop.is_set():
            raise Stopped()
        try:
            self.request.infer()
        except RuntimeError as exc:
            raise DataError(f"inference failed: {last_line(exc)}") from exc

    def infer(self, n: int, count: int | None = None) -> list[np.ndarray]:
        """Infer; copies of the first ``count`` outputs (default all), ``n`` rows each."""
        self.run()
        return [self.request.get_output_tensor(i).data[:n].copy() for i in range(count or len(self.compiled.outputs))]


def _coordinates(row: np.ndarray, element: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(row, index...) per write or read, as the i32 indices of ScatterNDUpdate / GatherND."""
    out = np.empty((len(row), 1 + len(shape)), np.int32)
    out[:, 0] = row
    if len(row):
        out[:, 1:] = np.stack(np.unravel_index(element, shape), axis=1)
    return out


def _groups(tap: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of each tap's entries in ``tap``, in order."""
    order = np.argsort(tap, kind="stable")
    taps, starts = np.unique(tap[order], return_index=True)
    return {int(t): order[a:b] for t, a, b in zip(taps, starts, [*starts[1:], len(order)])}


class ScatterInjector:
    """Runs up to ``batch`` inputs per inference, writing chosen values into chosen elements of *tap* outputs.

    Taps are activation sites (the site output) or weight sites (the layer output, corrected by
    :mod:`ovrange.faults.linear`). Each tap's ScatterNDUpdate takes indices and updates of dynamic length: an
    inference passes exactly its writes, none at the other taps (an empty write costs nothing, and the scatter
    runs in place on its tap's buffer). With ``probe`` the model also returns, per tap, the fault-free tensors
    needed to compute faulty values: the site output, or the layer's input and output. With ``reads``
    (activations) :meth:`read` returns chosen elements of the taps, from the very compiled model the trials run on.
    """

    def __init__(self, model: ov.Model, kind: str, names: list[str], sample_shapes: list[tuple[int, ...]],
                 batch: int, *, probe: bool = False, reads: bool = False, device: str = "CPU",
                 precision: str = "f32", config: dict | None = None):
        self.batch = batch
        self.n_inputs = len(sample_shapes)
        clone = static_clone(model, sample_shapes, batch=batch)
        params, probes, self.shapes, self.probe_counts = [], [], [], []
        read_params, read_results = [], []
        for i, (out, tensors) in enumerate(_taps(clone, kind, names)):
            shape = tuple(int(d) for d in out.get_shape()[1:])
            self.shapes.append(shape)
            targets = list(out.get_target_inputs())  # snapshot before the scatter and probes become consumers
            if probe:
                probes += [ops.result(r) for r in tensors]
                self.probe_counts.append(len(tensors))
            indices = ops.parameter(ov.PartialShape([-1, 1 + len(shape)]), ov.Type.i32, name=f"ovrange_fi_idx_{i}")
            updates = ops.parameter(ov.PartialShape([-1]), ov.Type.f32, name=f"ovrange_fi_upd_{i}")
            written = ops.scatter_nd_update(out, indices, updates).output(0)
            for target in targets:
                target.replace_source_output(written)
            move_names(out, written)
            params += [indices, updates]
            if reads:
                # Read after the scatter: a read run writes nothing, and the scatter stays the tap's one consumer
                # (a second consumer of the tap forces a copy of it per inference).
                where = ops.parameter(ov.PartialShape([-1, 1 + len(shape)]), ov.Type.i32, name=f"ovrange_fi_read_{i}")
                read_results.append(ops.result(ops.gather_nd(written, where)))
                read_params.append(where)
        clone.add_parameters(params + read_params)
        if probes or read_results:
            clone.add_results(probes + read_results)
        clone.validate_nodes_and_infer_types()
        self.n_outputs = len(clone.outputs) - len(probes) - len(read_results)
        self.runner = _Runner(clone, device, precision, config)
        self.read_at = self.n_inputs + len(params)
        self._none = [_coordinates(np.zeros(0, np.int64), np.zeros(0, np.int64), shape) for shape in self.shapes]
        self._dirty: set[int] = set(range(len(self.shapes)))  # taps whose writes are not empty
        self._clear(set())
        for i, shape in enumerate(self.shapes[:len(read_params)]):  # one dummy read where none is asked
            self.runner.feed(self.read_at + i, _coordinates(np.zeros(1, np.int64), np.zeros(1, np.int64), shape))

    def _clear(self, keep: set[int]) -> None:
        """Empty the writes of every tap but ``keep`` (those get new writes next: one call per tap saved)."""
        for i in self._dirty - keep:
            self.runner.feed(self.n_inputs + 2 * i, self._none[i])
            self.runner.feed(self.n_inputs + 2 * i + 1, np.zeros(0, np.float32))
        self._dirty &= keep

    def _fill(self, inputs: list[np.ndarray]) -> int:
        n = len(inputs[0])
        if n > self.batch:
            raise ValueError(f"{n} rows for an injector of batch {self.batch}")
        for buffer, array in zip(self.runner.buffers, inputs):
            buffer[:n] = array
        return n

    def run(self, inputs: list[np.ndarray], tap: np.ndarray | None = None, row: np.ndarray | None = None,
            element: np.ndarray | None = None, value: np.ndarray | None = None
            ) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """Infer ``inputs`` (n rows each) with ``value[w]`` written at ``element[w]`` (flat, per sample) of tap
        ``tap[w]`` in batch row ``row[w]``, for every write w. Returns (model outputs, probe tensors per tap)."""
        n = self._fill(inputs)
        groups = _groups(tap) if tap is not None and len(tap) else {}
        self._clear(set(groups))
        for i, writes in groups.items():
            self.runner.feed(self.n_inputs + 2 * i, _coordinates(row[writes], element[writes], self.shapes[i]))
            self.runner.feed(self.n_inputs + 2 * i + 1, np.asarray(value[writes], np.float32))
            self._dirty.add(i)
        outputs = self.runner.infer(n, self.n_outputs + sum(self.probe_counts))  # not the read outputs
        probes, position = [], self.n_outputs
        for count in self.probe_counts:
            probes.append(outputs[position:position + count])
            position += count
        return outputs[: self.n_outputs], probes

    def read(self, inputs: list[np.ndarray], site: np.ndarray, row: np.ndarray, element: np.ndarray
             ) -> tuple[list[np.ndarray], np.ndarray]:
        """Fault-free model outputs for ``inputs`` and the value of flat element ``element[k]`` of tap ``site[k]``
        in row ``row[k]`` (needs ``reads``): one inference, whatever the number of reads."""
        n = self._fill(inputs)
        self._clear(set())  # fault-free
        groups = _groups(site)
        for s, take in groups.items():
            self.runner.feed(self.read_at + s, _coordinates(row[take], element[take], self.shapes[s]))
        self.runner.run()
        request, first = self.runner.request, self.n_outputs + sum(self.probe_counts)
        values = np.zeros(len(site), np.float32)
        for s, take in groups.items():
            values[take] = request.get_output_tensor(first + s).data[: len(take)]
        outputs = [request.get_output_tensor(i).data[:n].copy() for i in range(self.n_outputs)]
        return outputs, values


def _taps(clone: ov.Model, kind: str, names: list[str]) -> list[tuple[ov.Output, list[ov.Output]]]:
    """(output to write into, tensors a probe reads) per site."""
    found = site_outputs(clone, kind)
    if kind == "activations":
        return [(found[name][1], [found[name][1]]) for name in names]
    return [(found[name][0].output(0), [found[name][0].input_value(0), found[name][0].output(0)]) for name in names]


class WeightInjector:
    """Runs one input per inference with the weights of ``sites`` as inputs, some bits flipped."""

    def __init__(self, model: ov.Model, sites: list[Site], sample_shapes: list[tuple[int, ...]], *,
                 device: str = "CPU", precision: str = "f32", number_format: NumberFormat = FORMATS["fp32"],
                 config: dict | None = None):
        from ovrange.faults.sites import stored_through_transform, weight_values
        from ovrange.faults.stored import stored_weight

        self.sites = sites
        self.index = {site.name: i for i, site in enumerate(sites)}
        self.format = number_format
        clone = static_clone(model, sample_shapes, batch=1)
        found = site_outputs(clone, "weights")
        self.n_inputs = len(clone.inputs)
        params, golden = [], []
        self.stored = [stored_weight(found[site.name][0]) for site in sites]  # quantized layers: decoded here
        for i, site in enumerate(sites):
            node, source = found[site.name]
            stored = self.stored[i]
            golden.append(weight_values(source) if stored is None else stored.decoded())
            param = ops.parameter(list(golden[-1].shape), ov.Type.f32, name=f"ovrange_fi_w_{i}")
            if stored is None and stored_through_transform(node, source):  # BoundedWeights: the graph decodes theta
                for target in list(source.get_target_inputs()):
                    target.replace_source_output(param.output(0))
            else:
                node.input(1).replace_source_output(param.output(0))
            params.append(param)
        clone.add_parameters(params)
        clone.validate_nodes_and_infer_types()
        self.runner = _Runner(clone, device, precision, config)
        self.weights = [self.runner.buffers[self.n_inputs + i].reshape(-1) for i in range(len(sites))]
        for flat, values in zip(self.weights, golden):
            flat[...] = values.reshape(-1)
        self._bits = [flat.view(np.uint32) for flat in self.weights]

    def run(self, inputs: list[np.ndarray], flips: list[tuple] = ()) -> list[np.ndarray]:
        """Infer one input with ``mask`` applied to element ``element`` of site ``site`` (by ``op``, default flip),
        for each ``(site, element, mask[, op])`` of ``flips``."""
        for buffer, array in zip(self.runner.buffers, inputs):
            buffer[...] = array
        if self.format == FORMATS["fp32"] and all(len(f) < 4 or f[3] == "flip" for f in flips):
            for site, element, mask, *_ in flips:  # XOR in place and XOR back: exact, and no copy of the weights
                self._bits[site][element] ^= np.uint32(mask)
            try:
                return self.runner.infer(1)
            finally:
                for site, element, mask, *_ in reversed(flips):
                    self._bits[site][element] ^= np.uint32(mask)
        saved = []
        for site in sorted({f[0] for f in flips}):  # one vectorized apply per site (a BER trial has thousands)
            mine = [f for f in flips if f[0] == site]
            elements = np.array([f[1] for f in mine], np.int64)
            # the same value struck twice: apply one after the other
            groups = [[f] for f in mine] if len(np.unique(elements)) < len(elements) else [mine]
            stored = self.stored[site]
            struck: dict[int, float] = {}  # stored integers already struck in this run
            for group in groups:
                where = np.array([f[1] for f in group], np.int64)
                masks = np.array([f[2] for f in group])
                operations = np.array([f[3] if len(f) > 3 else "flip" for f in group])
                saved.append((site, where, self.weights[site][where].copy()))
                if stored is None:
                    self.weights[site][where] = apply_mask(self.weights[site][where], masks, self.format, operations)
                    continue
                base = np.array([struck.get(int(e), stored.stored[int(e)]) for e in where], np.float32)
                value = apply_mask(base, masks, self.format, operations)
                struck.update(zip(where.tolist(), value.tolist()))
                self.weights[site][where] = stored.decode(value, where)
        try:
            return self.runner.infer(1)
        finally:
            for site, where, original in reversed(saved):
                self.weights[site][where] = original


def check_batchable(model: ov.Model, sample_shapes: list[tuple[int, ...]], batch: int) -> bool:
    """Whether ``model`` runs ``batch`` + 1 independent samples: it reshapes, and every output keeps the batch axis.

    A model with a hard-coded ``Reshape([1, -1])`` reshapes fine but mixes samples; its outputs lose the batch.
    """
    rows = batch + 1
    try:
        clone = static_clone(model, sample_shapes, batch=rows)
    except ModelError:
        return False
    ports = list(clone.outputs) + [out for _, out in site_outputs(clone, "activations").values()]
    return all(p.get_partial_shape().rank.get_length() > 0 and p.get_partial_shape()[0] == rows for p in ports)
