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

from ovrange.compare import Judge, generation
from ovrange.errors import ConfigError, DataError, ModelError
from ovrange.faults.faultlist import Fault, FaultList, plan_faults
from ovrange.faults.formats import NumberFormat, apply_mask, parse_fault_model, parse_format, rebase_bits
from ovrange.faults.generator import KV, Generator
from ovrange.faults.inputs import InputStore
from ovrange.faults.outcomes import Outcomes
from ovrange.faults.sites import Site, site_outputs
from ovrange.faults.spec import CampaignSpec
from ovrange.generate import eos_token, token_ids
from ovrange.runtime import is_stateful, refuse_stateful
from ovrange.text import is_language_model


class PromptStore(InputStore):
    """The campaign's prompts as token ids (one ``[1, T]`` array per sample), by dataset index."""

    def load(self, indices: Sequence[int]) -> list[list[np.ndarray]]:
        missing = [int(i) for i in indices if int(i) not in self.rows]
        if missing:
            for index, sample in zip(missing, self.dataset.get_inference_data(missing)):
                self.rows[index] = [token_ids(sample).reshape(1, -1)]
        return [self.rows[int(i)] for i in indices]


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
        raise ConfigError("KV-cache faults strike the state between steps: use --sdc generation:N with N >= 2")
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


def one_fault_per_trial(spec: CampaignSpec) -> None:
    if spec.ber is not None or spec.error_rate is not None:
        raise ConfigError("campaigns on stateful language models strike one value per trial (no ber or error_rate)")


class GenerationEngine:
    """Runs a shard of a stateful language model's trials (see the module docstring), one generation per trial."""

    batch = 1

    def __init__(self, model: ov.Model, sites: list[Site], spec: CampaignSpec, judge: Judge, fmt: NumberFormat,
                 config: dict[str, Any] | None = None):
        one_fault_per_trial(spec)
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


def generation_judge(spec: CampaignSpec, models: Sequence[tuple[str, ov.Model]], remote: bool = False
                     ) -> tuple[CampaignSpec, Judge] | None:
    """For stateful language models, the campaign's ``generation:N`` judge (``auto``: 16 tokens) with the
    end-of-sequence token of the export beside the first model's path; None for other models (which
    ``generation:N`` cannot judge: a ConfigError). Other criteria, ``--output`` and Ray are ConfigErrors."""
    if not check_models(models):
        if spec.sdc.metric == "generation":
            raise ConfigError(f"--sdc {spec.sdc} judges the generations of stateful language models (optimum-intel "
                              f"exports with past); {models[0][0]} is not one")
        return None
    if remote:
        raise ConfigError("campaigns on stateful language models run locally (no --workers or --ray-address)")
    criterion = generation("generation") if spec.sdc.metric == "auto" else spec.sdc
    if criterion.metric != "generation":
        raise ConfigError(f"a stateful language model's campaign judges its greedy generations: use --sdc "
                          f"generation:N, not {criterion}")
    if spec.output is not None:
        raise ConfigError("--output does not apply to generation:N (the logits choose the tokens)")
    path = Path(models[0][0])
    eos = eos_token(path.parent) if path.is_file() else None
    return replace(spec, sdc=criterion), Judge(criterion, eos=eos)


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
    one_fault_per_trial(spec)
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
