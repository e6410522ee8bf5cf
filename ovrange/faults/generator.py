"""A stateful language model compiled once for fault trials (:mod:`ovrange.faults.stateful`): one generation per
call (reset, prefill, greedy decode steps) with one fault at its step -- an activation value written through a tap,
a stored weight struck in its buffer, or a KV-cache value struck in the request's state between steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.errors import ModelError
from ovrange.faults.formats import NumberFormat, apply_mask, parse_format
from ovrange.faults.injectors import Stopped, _LANE
from ovrange.faults.sites import Site, site_outputs
from ovrange.generate import input_roles, next_token
from ovrange.graph import move_names
from ovrange.runtime import Runner

KV = "kv"  # the campaign target of KV-cache faults
KV_FORMATS = {"f32": "fp32", "f16": "fp16"}  # cache precisions a fault can strike exactly


class Generator:
    """One stateful model compiled once for trials of ``target``: activation sites become taps (a value written at
    one step, values read at a step, the tensor's shape returned), weight sites inputs fed from buffers struck in
    place, and the KV cache is read and written between steps through the infer request's state."""

    def __init__(self, model: ov.Model, target: str, sites: Sequence[Site], *, device: str = "CPU",
                 config: dict[str, Any] | None = None):
        self.model, self.target, self.sites = model, target, list(sites)
        self.roles = input_roles(model)
        clone = model.clone()
        self.n_inputs, self.n_outputs = len(clone.inputs), len(clone.outputs)
        params: list[ov.Node] = []
        results: list[ov.Node] = []
        if target == "activations":
            found = site_outputs(clone, "activations")
            for i, site in enumerate(self.sites):
                params += _tap(found[site.name][1], i, results)
        elif target == "weights":
            params = self._weight_parameters(clone)
        if params:
            clone.add_parameters(params)
        if results:
            clone.add_results(results)
        clone.validate_nodes_and_infer_types()
        self.runner = Runner(clone, device=device, stateful=True, batched_outputs=False, config=config,
                             command="inject")
        self.request = self.runner.requests[0]
        if target == "activations":
            self._empty = ov.Tensor(np.zeros(0, np.int64))
            self._writing: set[int] = set()
            self._reading: set[int] = set()
            for i in range(len(self.sites)):
                self._clear(i)
                self.request.set_input_tensor(self.n_inputs + 3 * i + 2, self._empty)
        elif target == "weights":
            for i, buffer in enumerate(self.buffers):
                self.request.set_input_tensor(self.n_inputs + i, ov.Tensor(buffer, shared_memory=True))
        self.kv_format = kv_format(self.runner.compiled) if target == KV else None

    def _weight_parameters(self, clone: ov.Model) -> list[ov.Node]:
        """Each weight site's layer input becomes a Parameter fed from a buffer of its decoded f32 values."""
        from ovrange.faults.sites import stored_through_transform, weight_values
        from ovrange.faults.stored import stored_weight

        found = site_outputs(clone, "weights")
        params, self.buffers, self.stored = [], [], []
        for i, site in enumerate(self.sites):
            node, source = found[site.name]
            stored = stored_weight(node)
            values = np.ascontiguousarray(weight_values(source) if stored is None else stored.decoded(), np.float32)
            param = ops.parameter(list(values.shape), ov.Type.f32, name=f"ovrange_fi_w_{i}")
            if stored is None and stored_through_transform(node, source):
                for target in list(source.get_target_inputs()):
                    target.replace_source_output(param.output(0))
            else:
                node.input(1).replace_source_output(param.output(0))
            params.append(param)
            self.buffers.append(values)
            self.stored.append(stored)
        return params

    def _clear(self, site: int) -> None:
        self.request.set_input_tensor(self.n_inputs + 3 * site, self._empty)
        self.request.set_input_tensor(self.n_inputs + 3 * site + 1, ov.Tensor(np.zeros(0, np.float32)))

    def run(self, prompt: np.ndarray, new_tokens: int, fault: tuple | None = None,
            reads: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One generation: ``[new_tokens, vocabulary]`` last-position logits of each step (a row of NaN for a step
        with a non-finite logit anywhere). ``fault``: (step, site, element, value) with the value to write (an
        activation), or (step, site, element, mask, op, format) for a weight (step -1) or KV-cache fault. ``reads``
        (activations): (steps, sites, elements) of fault-free values to return, in that order."""
        stop = getattr(_LANE, "stop", None)
        if stop is not None and stop.is_set():
            raise Stopped()
        restore = self._strike_weight(fault) if self.target == "weights" and fault is not None else None
        try:
            return self._generate(np.asarray(prompt).reshape(-1), new_tokens, fault, reads)
        finally:
            if restore is not None:
                site, element, value = restore
                self.buffers[site].reshape(-1)[element] = value

    def _generate(self, ids: np.ndarray, new_tokens: int, fault: tuple | None, reads) -> tuple[np.ndarray, np.ndarray]:
        rows, past, found = [], 0, np.zeros(0 if reads is None else len(reads[0]), np.float32)
        for step in range(new_tokens):
            if self.target == "activations":
                self._feed_taps(step, fault, reads)
            values = {"input_ids": ids.reshape(1, -1), "attention_mask": np.ones((1, past + ids.size), np.int64),
                      "position_ids": np.arange(past, past + ids.size, dtype=np.int64).reshape(1, -1),
                      "beam_idx": np.zeros(1, np.int64)}
            arrays = [values[role].astype(port.get_element_type().to_dtype())
                      for role, port in zip(self.roles, self.model.inputs)]
            outputs = self.runner.step(arrays, first=step == 0)
            logits = np.asarray(outputs[0])
            rows.append(logits[0, -1].astype(np.float32) if np.isfinite(logits).all()
                        else np.full(logits.shape[-1], np.nan, np.float32))
            if reads is not None:
                for s in np.unique(reads[1][reads[0] == step]):
                    take = np.flatnonzero((reads[0] == step) & (reads[1] == s))
                    found[take] = outputs[self.n_outputs + 2 * s][: len(take)]
            if self.target == KV and fault is not None and fault[0] == step:
                self._strike_state(*fault[1:])
            past += ids.size
            ids = np.array([next_token(outputs[0])], np.int64)
        return np.stack(rows), found

    def shapes(self, prompt: np.ndarray, new_tokens: int) -> list[tuple[int, ...]]:
        """The shape (no batch axis) of each site at each step, ``[steps][sites]``, for one prompt."""
        found = []
        ids = np.asarray(prompt).reshape(-1)
        for step in range(new_tokens):
            if self.target == "activations":
                self._feed_taps(step, None, None)
            past = 0 if step == 0 else ids.size + step - 1
            width = ids.size if step == 0 else 1
            values = {"input_ids": (ids if step == 0 else ids[:1]).reshape(1, -1),
                      "attention_mask": np.ones((1, past + width), np.int64),
                      "position_ids": np.arange(past, past + width, dtype=np.int64).reshape(1, -1),
                      "beam_idx": np.zeros(1, np.int64)}
            arrays = [values[role].astype(port.get_element_type().to_dtype())
                      for role, port in zip(self.roles, self.model.inputs)]
            outputs = self.runner.step(arrays, first=step == 0)
            if self.target == "activations":
                found.append([tuple(int(d) for d in outputs[self.n_outputs + 2 * s + 1][1:])
                              for s in range(len(self.sites))])
            else:
                states = {state.name: state for state in self.request.query_state()}
                found.append([tuple(int(d) for d in states[site.name].state.shape[1:]) for site in self.sites])
        return found

    def _feed_taps(self, step: int, fault: tuple | None, reads) -> None:
        """Writes and reads of this step: the fault's value at its step, empty everywhere else."""
        writing = {fault[1]} if fault is not None and fault[0] == step else set()
        for site in self._writing - writing:
            self._clear(site)
        if writing:
            _, site, element, value = fault
            self.request.set_input_tensor(self.n_inputs + 3 * site, ov.Tensor(np.array([element], np.int64)))
            self.request.set_input_tensor(self.n_inputs + 3 * site + 1, ov.Tensor(np.array([value], np.float32)))
        self._writing = writing
        reading = {}
        if reads is not None:
            now = reads[0] == step
            reading = {int(s): reads[2][now & (reads[1] == s)] for s in np.unique(reads[1][now])}
        for site in self._reading - set(reading):
            self.request.set_input_tensor(self.n_inputs + 3 * site + 2, self._empty)
        for site, elements in reading.items():
            self.request.set_input_tensor(self.n_inputs + 3 * site + 2, ov.Tensor(elements.astype(np.int64)))
        self._reading = set(reading)

    def _strike_weight(self, fault: tuple) -> tuple[int, int, float]:
        _, site, element, mask, op, fmt = fault
        flat = self.buffers[site].reshape(-1)
        before = float(flat[element])
        stored = self.stored[site]
        base = np.array([before if stored is None else stored.stored[element]], np.float32)
        value = apply_mask(base, np.array([mask]), fmt, op)
        flat[element] = value[0] if stored is None else stored.decode(value, np.array([element]))[0]
        return site, element, before

    def _strike_state(self, site: int, element: int, mask: int, op: str, fmt: NumberFormat) -> None:
        """Strike one value of the KV cache. Every variable is read and written back: the CPU plugin keeps the keys
        and values of a layer in one cache (with one beam table), so writing one alone corrupts its twin."""
        states = self.request.query_state()
        values = [np.array(state.state.data, dtype=np.float32) for state in states]
        struck = next(k for k, state in enumerate(states) if state.name == self.sites[site].name)
        flat = values[struck].reshape(-1)
        flat[element] = apply_mask(flat[element:element + 1], np.array([mask]), fmt, op)[0]
        self._struck_state = [ov.Tensor(v) for v in values]  # kept alive while the request may use them
        for state, tensor in zip(states, self._struck_state):
            state.state = tensor


def _tap(out: ov.Output, index: int, results: list[ov.Node]) -> list[ov.Node]:
    """Rewire ``out`` through a flat ScatterUpdate (write ``value`` at flat ``element``) and add Results reading flat
    elements of it (before any write) and its shape; the Parameters (element, value, read elements)."""
    element = ops.parameter(ov.PartialShape([-1]), ov.Type.i64, name=f"ovrange_fi_idx_{index}")
    value = ops.parameter(ov.PartialShape([-1]), ov.Type.f32, name=f"ovrange_fi_upd_{index}")
    where = ops.parameter(ov.PartialShape([-1]), ov.Type.i64, name=f"ovrange_fi_read_{index}")
    consumers = list(out.get_target_inputs())
    axis = ops.constant(np.int64(0))
    flat = ops.reshape(out, ops.constant(np.array([-1], np.int64)), special_zero=False)
    shape = ops.shape_of(out, output_type="i64")
    written = ops.reshape(ops.scatter_update(flat, element, value, axis), shape, special_zero=False)
    for consumer in consumers:
        consumer.replace_source_output(written.output(0))
    move_names(out, written.output(0))
    results += [ops.result(ops.gather(flat, where, axis)), ops.result(shape)]
    return [element, value, where]


def kv_format(compiled: ov.CompiledModel) -> NumberFormat:
    """The number format the compiled model keeps its KV cache in; a cache a fault cannot strike exactly (an
    integer cache with per-token scales) is a ModelError."""
    try:
        kind = compiled.get_property("KV_CACHE_PRECISION")
    except RuntimeError:
        kind = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = kind.to_string() if isinstance(kind, ov.Type) else str(kind)
    if name not in KV_FORMATS:
        raise ModelError(f"the compiled model keeps its KV cache as {name} (KV_CACHE_PRECISION); KV-cache faults "
                         f"strike {' or '.join(KV_FORMATS)} caches only")
    return parse_format(KV_FORMATS[name])
