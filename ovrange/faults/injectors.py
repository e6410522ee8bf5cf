"""Injection models: the model is edited once so faults become *inputs*, then compiled once and reused.

* ScatterInjector: a ScatterNDUpdate after every tap output (an activation site, or the output of a weight
  layer), fed with small ``indices``/``updates`` Parameters. The model runs a batch of B inputs plus one spare
  "trash" element: each real batch element carries its own fault, and idle scatter rows write into the trash
  element, whose output is discarded. One compiled model serves every site. Models whose batch cannot change get
  one site and one fault per inference.
* WeightInjector: each site's constant weight becomes a Parameter fed through shared-memory tensors; a trial
  flips bits in place, infers, and flips them back. One input per inference; any number of flips (bit-error-rate
  mode), any layer kind.

Faulty values are computed in numpy (OpenVINO has no bitcast): the campaign reads the fault-free tensors from a
*probe* (the same injection graph plus Results at the taps), flips the struck value, or for a weight fault
computes the corrected layer output (:mod:`ovrange.faults.linear`).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.faults.model import FORMATS, NumberFormat, apply_mask
from ovrange.faults.sites import Site, site_outputs, static_clone
from ovrange.runtime import compile_model, last_line
from ovrange.errors import DataError, ModelError


def _move_names(old: ov.Output, new: ov.Output) -> None:
    names = set(old.get_names())
    if names:
        old.get_tensor().set_names(set())
        new.get_tensor().set_names(names)


class _Runner:
    """A compiled model with preallocated shared-memory input buffers."""

    def __init__(self, model: ov.Model, device: str, precision: str):
        self.compiled = compile_model(model, device, precision=precision)
        self.request = self.compiled.create_infer_request()
        self.buffers = []
        for index, port in enumerate(self.compiled.inputs):
            buffer = np.zeros(tuple(port.get_shape()), dtype=port.get_element_type().to_dtype())
            self.request.set_input_tensor(index, ov.Tensor(buffer, shared_memory=True))
            self.buffers.append(buffer)

    def infer(self, n: int) -> list[np.ndarray]:
        try:
            self.request.infer()
        except RuntimeError as exc:
            raise DataError(f"inference failed: {last_line(exc)}") from exc
        return [self.request.get_output_tensor(i).data[:n].copy() for i in range(len(self.compiled.outputs))]


class ScatterInjector:
    """Runs up to ``batch`` inputs per inference, writing chosen values into chosen elements of *tap* outputs.

    Taps are activation sites (the site output) or weight sites (the layer output, corrected by
    :mod:`ovrange.faults.linear`). A tap takes ``batch * rows[i]`` writes per inference. With ``probe`` the model
    also returns, per tap, the fault-free tensors needed to compute faulty values: the site output, or the
    layer's input and output.
    """

    def __init__(self, model: ov.Model, kind: str, names: list[str], sample_shapes: list[tuple[int, ...]],
                 batch: int, *, rows: list[int] | None = None, trash: bool = True, probe: bool = False,
                 device: str = "CPU", precision: str = "f32"):
        if not trash and batch != 1:
            raise ValueError("without a trash element the injector runs one input at a time")
        self.batch = batch
        self.rows = batch + 1 if trash else 1
        # Without a trash element every scatter row must strike a real element: a probe then has no scatter at all.
        per_fault = rows or [1] * len(names)
        self.capacity = [0 if (probe and not trash) else batch * r for r in per_fault]
        self.n_inputs = len(sample_shapes)
        clone = static_clone(model, sample_shapes, batch=self.rows)
        params, probes, self.shapes, self.probe_counts = [], [], [], []
        for i, (out, reads) in enumerate(_taps(clone, kind, names)):
            shape = tuple(int(d) for d in out.get_shape()[1:])
            self.shapes.append(shape)
            targets = list(out.get_target_inputs())  # snapshot before the scatter and probes become consumers
            if probe:
                probes += [ops.result(r) for r in reads]
                self.probe_counts.append(len(reads))
            if not self.capacity[i]:
                continue
            indices = ops.parameter([self.capacity[i], 1 + len(shape)], ov.Type.i32, name=f"ovrange_fi_idx_{i}")
            updates = ops.parameter([self.capacity[i]], ov.Type.f32, name=f"ovrange_fi_upd_{i}")
            scatter = ops.scatter_nd_update(out, indices, updates)
            for target in targets:
                target.replace_source_output(scatter.output(0))
            _move_names(out, scatter.output(0))
            params += [indices, updates]
        clone.add_parameters(params)
        if probes:
            clone.add_results(probes)
        clone.validate_nodes_and_infer_types()
        self.n_outputs = len(clone.outputs) - len(probes)
        self.runner = _Runner(clone, device, precision)
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        position = self.n_inputs
        for i, shape in enumerate(self.shapes):
            if not self.capacity[i]:
                continue
            # Idle rows point at elements of the trash batch element (index ``batch``), spread to avoid repeats.
            idle = np.zeros((self.capacity[i], 1 + len(shape)), np.int32)
            idle[:, 0] = self.rows - 1
            idle[:, 1:] = np.stack(np.unravel_index(np.arange(self.capacity[i]) % int(np.prod(shape)), shape), 1)
            self._buffers[i] = (self.runner.buffers[position], self.runner.buffers[position + 1], idle)
            position += 2
        self._reset(self._buffers)

    def _reset(self, taps) -> None:
        for i in taps:
            indices, updates, idle = self._buffers[i]
            indices[...] = idle
            updates[...] = 0.0

    def run(self, inputs: list[np.ndarray], tap: np.ndarray | None = None, row: np.ndarray | None = None,
            element: np.ndarray | None = None, value: np.ndarray | None = None
            ) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """Infer ``inputs`` (n rows each) with ``value[w]`` written at ``element[w]`` (flat, per sample) of tap
        ``tap[w]`` in batch row ``row[w]``, for every write w. Returns (model outputs, probe tensors per tap)."""
        n = len(inputs[0])
        if n > self.batch:
            raise ValueError(f"{n} rows for an injector of batch {self.batch}")
        for buffer, array in zip(self.runner.buffers, inputs):
            buffer[:n] = array
        dirty = []
        if tap is not None and len(tap):
            order = np.argsort(tap, kind="stable")
            taps, starts = np.unique(tap[order], return_index=True)
            for i, start, stop in zip(taps, starts, [*starts[1:], len(order)]):
                writes = order[start:stop]
                indices, updates, _ = self._buffers[int(i)]
                if len(writes) > len(updates):
                    raise ValueError(f"{len(writes)} writes into tap {i} of capacity {len(updates)}")
                indices[: len(writes), 0] = row[writes]
                indices[: len(writes), 1:] = np.stack(np.unravel_index(element[writes], self.shapes[i]), axis=1)
                updates[: len(writes)] = value[writes]
                dirty.append(int(i))
        outputs = self.runner.infer(n)
        self._reset(dirty)
        probes, position = [], self.n_outputs
        for count in self.probe_counts:
            probes.append(outputs[position:position + count])
            position += count
        return outputs[: self.n_outputs], probes


def _taps(clone: ov.Model, kind: str, names: list[str]) -> list[tuple[ov.Output, list[ov.Output]]]:
    """(output to write into, tensors a probe reads) per site."""
    found = site_outputs(clone, kind)
    if kind == "activations":
        return [(found[name][1], [found[name][1]]) for name in names]
    return [(found[name][0].output(0), [found[name][0].input_value(0), found[name][0].output(0)]) for name in names]


class WeightInjector:
    """Runs one input per inference with the weights of ``sites`` as inputs, some bits flipped."""

    def __init__(self, model: ov.Model, sites: list[Site], sample_shapes: list[tuple[int, ...]], *,
                 device: str = "CPU", precision: str = "f32", number_format: NumberFormat = FORMATS["fp32"]):
        from ovrange.faults.sites import stored_through_transform, weight_values

        self.sites = sites
        self.index = {site.name: i for i, site in enumerate(sites)}
        self.format = number_format
        clone = static_clone(model, sample_shapes, batch=1)
        found = site_outputs(clone, "weights")
        self.n_inputs = len(clone.inputs)
        params, golden = [], []
        for i, site in enumerate(sites):
            node, source = found[site.name]
            golden.append(weight_values(source))
            param = ops.parameter(list(site.shape), ov.Type.f32, name=f"ovrange_fi_w_{i}")
            if stored_through_transform(node, source):  # e.g. BoundedWeights: the graph decodes theta
                for target in list(source.get_target_inputs()):
                    target.replace_source_output(param.output(0))
            else:
                node.input(1).replace_source_output(param.output(0))
            params.append(param)
        clone.add_parameters(params)
        clone.validate_nodes_and_infer_types()
        self.runner = _Runner(clone, device, precision)
        self.weights = [self.runner.buffers[self.n_inputs + i].reshape(-1) for i in range(len(sites))]
        for flat, values in zip(self.weights, golden):
            flat[...] = values.reshape(-1)
        self._bits = [flat.view(np.uint32) for flat in self.weights]

    def run(self, inputs: list[np.ndarray], flips: list[tuple] = ()) -> list[np.ndarray]:
        """Infer one input with ``mask`` applied to element ``element`` of site ``site`` (by ``op``, default flip),
        for each ``(site, element, mask[, op])`` of ``flips``."""
        for buffer, array in zip(self.runner.buffers, inputs):
            buffer[...] = array
        if self.format.is_float and self.format.bits == 32 and all(len(f) < 4 or f[3] == "flip" for f in flips):
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
            if len(np.unique(elements)) < len(elements):  # the same value struck twice: apply one after the other
                groups = [[f] for f in mine]
            else:
                groups = [mine]
            for group in groups:
                where = np.array([f[1] for f in group], np.int64)
                saved.append((site, where, self.weights[site][where].copy()))
                self.weights[site][where] = apply_mask(self.weights[site][where], np.array([f[2] for f in group]),
                                                       self.format, np.array([f[3] if len(f) > 3 else "flip"
                                                                              for f in group]))
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
