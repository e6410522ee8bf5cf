"""Fault campaigns on stateful language models (optimum-intel exports): a trial is one prompt's generation.

A sample is a prompt. A trial runs it as a user's generation does (:mod:`ovrange.generate`): the state (KV cache)
reset, a prefill, then N - 1 greedy decode steps, each fed the token the step before chose; it is judged by the
``generation:N`` criterion (:mod:`ovrange.compare`) against the fault-free generation of the same compiled model,
run once per prompt and shard. The fault models (:attr:`ovrange.faults.faultlist.Fault.step`):

* ``activations``: one value of an op's output in the prefill (step 0) or in decode step k; the later steps see the
  token it changed and the KV entries it wrote.
* ``weights``: one stored weight (f32, f16, or INT8/INT4 as stored: :mod:`ovrange.faults.stored`), faulty for the
  whole generation.
* ``kv``: one value of a state variable (a layer's keys or values), struck after step k in the precision the
  compiled model keeps the cache in (``KV_CACHE_PRECISION``: the export's runtime option, else the plugin's), and
  persisting over every later step.

Activation and KV sites are found on the graph and run; a site's shape is the largest its tensor takes over the
campaign's prompts and steps, and an element is a flat index into the tensor of its step (so always inside the
site). A trial draws an input, then (step, site, element) in proportion to the values each step computes (holds,
for the KV cache): a long prefill computes more values than a decode step, and draws more faults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ovrange.compare import Judge, generation
from ovrange.errors import ConfigError, DataError, ModelError
from ovrange.faults.faultlist import Fault, FaultList, plan_faults
from ovrange.faults.formats import NumberFormat, apply_mask, parse_fault_model, parse_format, rebase_bits
from ovrange.faults.injectors import Stopped, _LANE
from ovrange.faults.inputs import InputStore
from ovrange.faults.outcomes import Outcomes
from ovrange.faults.sites import Site, site_outputs
from ovrange.faults.spec import CampaignSpec
from ovrange.generate import eos_token, input_roles, next_token, token_ids
from ovrange.graph import move_names
from ovrange.runtime import Runner, is_stateful, refuse_stateful
from ovrange.text import is_language_model

KV = "kv"  # the campaign target of KV-cache faults
KV_FORMATS = {"f32": "fp32", "f16": "fp16"}  # cache precisions a fault can strike exactly


class PromptStore(InputStore):
    """The campaign's prompts as token ids (one ``[1, T]`` array per sample), by dataset index."""

    def load(self, indices: Sequence[int]) -> list[list[np.ndarray]]:
        missing = [int(i) for i in indices if int(i) not in self.rows]
        if missing:
            for index, sample in zip(missing, self.dataset.get_inference_data(missing)):
                self.rows[index] = [token_ids(sample).reshape(1, -1)]
        return [self.rows[int(i)] for i in indices]


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


def find_state_sites(model: ov.Model, target: str, include: Sequence[str] = (), exclude: Sequence[str] = ()
                     ) -> list[Site]:
    """The activation (op outputs) or KV (state variables) sites of a stateful model, shapes to be measured."""
    from fnmatch import fnmatchcase

    if target == KV:
        found = sorted((v.get_info().variable_id, "Variable") for v in model.get_variables())  # listed unordered
    else:
        found = [(name, node.get_type_name()) for name, (node, _) in site_outputs(model, "activations").items()]
    sites = [Site(name, op, ()) for name, op in found
             if (not include or any(fnmatchcase(name, p) for p in include))
             and not any(fnmatchcase(name, p) for p in exclude)]
    if not sites:
        raise ModelError(f"no injectable {target} site in model {model.get_friendly_name()!r}"
                         + (" after the site filters" if include or exclude else ""))
    return sites


def plan_generation_faults(generator: Generator, store: PromptStore, spec: CampaignSpec, inputs: Sequence[int],
                           sites: list[Site], fmt: NumberFormat) -> tuple[list[Site], list[Fault], np.ndarray]:
    """Sites with their measured shapes, the faults (one per trial) and each trial's input, drawn from the seed."""
    new_tokens = spec.sdc.new_tokens
    steps = new_tokens - 1 if spec.target == KV else new_tokens  # the state after the last step is never read
    if steps < 1:
        raise ConfigError(f"KV-cache faults strike the state between steps: use --sdc generation:N with N >= 2")
    rng = np.random.default_rng(spec.seed)
    trial_inputs = rng.choice(np.asarray(inputs), size=spec.trials)
    tables = {}
    for i in np.unique(trial_inputs):
        tables[int(i)] = generator.shapes(store.load([int(i)])[0][0], new_tokens)[:steps]
    sizes_of = {i: np.array([[int(np.prod(s)) for s in row] for row in t], np.int64) for i, t in tables.items()}
    largest = [tuple(np.max([t[k][s] for t in tables.values() for k in range(steps)], axis=0).tolist())
               for s in range(len(sites))]
    sites = [Site(site.name, site.op, shape, fmt.name if spec.target == KV else "fp32")
             for site, shape in zip(sites, largest)]
    model_of = parse_fault_model(spec.fault_model)
    masks = model_of.draw_masks(rng, spec.trials, spec.bits, fmt)
    faults = []
    for trial, i in enumerate(trial_inputs):
        sizes = sizes_of[int(i)].astype(np.float64)
        if spec.weighting == "elements":
            p = sizes.reshape(-1) / sizes.sum()
        else:  # a site uniformly, then a step uniformly
            p = ((sizes > 0) / np.maximum((sizes > 0).sum(axis=0), 1) / len(sites)).reshape(-1)
        cell = int(rng.choice(p.size, p=p / p.sum()))
        step, site = divmod(cell, len(sites))
        element = min(int(rng.random() * sizes[step, site]), int(sizes[step, site]) - 1)
        faults.append(Fault(trial, int(i), sites[site].name, element, int(masks[trial]), model_of.op, step))
    return sites, faults, trial_inputs


class GenerationEngine:
    """Runs a shard of a stateful language model's trials (see the module docstring), one generation per trial."""

    batch = 1

    def __init__(self, model: ov.Model, sites: list[Site], spec: CampaignSpec, judge: Judge, fmt: NumberFormat,
                 config: dict[str, Any] | None = None):
        if spec.ber is not None or spec.error_rate is not None:
            raise ConfigError("campaigns on stateful language models strike one value per trial (no ber or "
                              "error_rate)")
        self.kind, self.spec, self.judge, self.fmt = spec.target, spec, judge, fmt
        self.new_tokens = judge.criterion.new_tokens
        self.generator = Generator(model, spec.target, sites, device=spec.device, config=config)
        if self.kind == KV and self.generator.kv_format.name != fmt.name:
            raise ModelError(f"the fault list strikes a {fmt.name} KV cache; this model keeps it as "
                             f"{self.generator.kv_format.name}")
        where = {"activations": "an op output in one step", "weights": "a stored weight",
                 KV: f"the KV cache ({fmt.name}) after one step"}[self.kind]
        self.description = f"generations of {self.new_tokens} tokens, one fault in {where} per trial"

    def run(self, plan, pending: np.ndarray, store: InputStore, fmt: NumberFormat) -> Outcomes:
        f = plan.arrays.single(pending)
        parts = []
        for i in np.unique(f.input):
            here = np.flatnonzero(f.input == i)
            prompt = store.load([int(i)])[0][0]
            reads = (f.step[here], f.site[here], f.element[here]) if self.kind == "activations" else None
            golden, values = self.generator.run(prompt, self.new_tokens, reads=reads)
            if self.kind == "activations":
                values = apply_mask(values, f.mask[here], fmt, f.op[here])
            rows = []
            for k, row in enumerate(here):
                if self.kind == "activations":
                    fault = (int(f.step[row]), int(f.site[row]), int(f.element[row]), float(values[k]))
                else:
                    fault = (int(f.step[row]), int(f.site[row]), int(f.element[row]), int(f.mask[row]), str(f.op[row]),
                             fmt)
                rows.append(self.generator.run(prompt, self.new_tokens, fault)[0])
            parts.append(Outcomes.judged(self.judge, {int(i): golden}, f.input[here], np.stack(rows), pending[here]))
        return Outcomes.concat(parts)


def generation_judge(spec: CampaignSpec, model_path: str | None) -> tuple[CampaignSpec, Judge]:
    """The campaign's ``generation:N`` judge (``auto``: :data:`ovrange.compare.DEFAULT_NEW_TOKENS` tokens), with the
    end-of-sequence token of the export beside ``model_path``; any other criterion is a ConfigError."""
    criterion = generation("generation") if spec.sdc.metric == "auto" else spec.sdc
    if criterion.metric != "generation":
        raise ConfigError(f"a stateful language model's campaign judges its greedy generations: use --sdc "
                          f"generation:N, not {criterion}")
    if spec.output is not None:
        raise ConfigError("--output does not apply to generation:N (the logits choose the tokens)")
    folder = Path(model_path).parent if model_path and Path(model_path).is_file() else None
    return replace(spec, sdc=criterion), Judge(criterion, eos=eos_token(folder) if folder else None)


def check_models(models: Sequence[tuple[str, ov.Model]], command: str = "inject") -> bool:
    """True when the campaign's models are stateful language models (all of them); a stateful model of another
    kind, or a mix, is a one-line ModelError."""
    stateful = [is_stateful(model) for _, model in models]
    if not any(stateful):
        return False
    for (name, model), flag in zip(models, stateful):
        if not (flag and is_language_model(model)):
            refuse_stateful(model, command)
            raise ModelError(f"{name} is not a stateful language model: a campaign compares models of one kind")
    return True


def plan_campaign(models: Sequence[tuple[str, ov.Model]], store: PromptStore, spec: CampaignSpec, data: str,
                  weight_sites) -> tuple[CampaignSpec, FaultList]:
    """The spec (number format and bits resolved) and fault plan of a campaign on stateful language models.
    ``weight_sites(models, spec)`` resolves weight sites and their format as for any model."""
    total = len(store.dataset)
    if total == 0:
        raise DataError("the dataset is empty")
    inputs = np.random.default_rng([spec.seed, 1]).permutation(total)[:spec.inputs]  # as select_inputs draws
    inputs = np.sort(inputs)
    if spec.target == "weights":
        spec, sites = weight_sites(models, spec)
        faults, trial_inputs = plan_faults(sites, inputs, spec.trials, spec.bits, spec.seed, spec.weighting,
                                           None, spec.fault_model, parse_format(spec.number_format))
    else:
        include, exclude = list(spec.sites), list(spec.exclude)
        sites = find_state_sites(models[0][1], spec.target, include, exclude)
        for name, model in models[1:]:
            theirs = {site.name for site in find_state_sites(model, spec.target, include, exclude)}
            missing = [site.name for site in sites if site.name not in theirs]
            if missing:
                raise ModelError(f"--compare model {name} does not match the structure of the first model: "
                                 f"missing {missing[:3]}")
        generator = Generator(models[0][1], spec.target, sites, device=spec.device)  # measures the shapes
        fmt = generator.kv_format or parse_format("fp32")
        if spec.number_format not in ("auto", fmt.name):
            raise ConfigError(f"{spec.target} faults strike {fmt.name} values here, not {spec.number_format}")
        if spec.number_format != fmt.name:
            spec = spec.with_overrides(number_format=fmt.name, bits=list(rebase_bits(spec.bits, fmt)))
        sites, faults, trial_inputs = plan_generation_faults(generator, store, spec, inputs, sites, fmt)
    plan = FaultList(spec.target, spec.number_format, tuple(sites), tuple(int(i) for i in inputs), tuple(faults),
                     spec.trials, spec.seed, None, data, (), spec.fault_model, None)
    return spec, plan


def check_plan(plan: FaultList, models: Sequence[tuple[str, ov.Model]]) -> None:
    """A replayed plan's activation or KV sites exist in every model (weights: checked as for any model)."""
    for name, model in models:
        theirs = {site.name for site in find_state_sites(model, plan.target)}
        missing = [site.name for site in plan.sites if site.name not in theirs]
        if missing:
            raise ModelError(f"fault list site {missing[0]!r} does not exist in model {name}")
