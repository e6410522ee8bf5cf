"""Orchestration only: targets -> statistics -> plan -> apply, the same four steps for every protection.

``protect(model, dataset, ...)`` is the NNCF-shaped entry point (cf. ``nncf.quantize``): it takes an ``ov.Model``
and a dataset and returns a new ``ov.Model``; the input model is not modified. The plan (algorithm, parameters,
bounds) is stored in the returned model's rt_info, so it is saved in the IR, :func:`protection_info` reads it back
from any protected model, and ``protect(model, plan=...)`` re-applies it without data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import openvino as ov

from ovrange.algorithms import QUANTIZATIONS, AlgorithmConfig, protection as algorithm_module
from ovrange.coverage import protection_coverage
from ovrange.errors import ConfigError, ModelError
from ovrange.graph import get_rt_json, set_rt_json
from ovrange.modelio import save_model
from ovrange.outputs import write_dir_atomically
from ovrange.params import COMMON_PARAMS, validate
from ovrange.plan import ProtectionPlan
from ovrange.data import Dataset, as_dataset, select_indices
from ovrange.stats import collect
from ovrange.validate import DEFAULT_HOLDOUT, WIDENED, check_fraction, split
from ovrange.validate import validate as validate_heldout
from ovrange.targets import outputs_by_id
from ovrange.version import __version__

ProgressFn = Callable[[int, int], None]


def protect(
    model: ov.Model,
    dataset: Any = None,
    *,
    algorithm: str = "RangeSupervision",
    plan: ProtectionPlan | None = None,
    subset_size: int = 300,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    device: str = "CPU",
    progress: ProgressFn | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    sdc: str | None = None,
    **params: Any,
) -> ov.Model:
    """Return a protected copy of ``model`` with bounds (or thresholds) learned from ``dataset``.

    Args:
        model: the model to protect (not modified).
        dataset: an ``ovrange.Dataset``, an ``nncf.Dataset``, a numpy array (samples on axis 0) or any iterable of
            samples (array, tuple of arrays, or ``{input name: array}``). Not needed with ``plan``.
        algorithm: a protection of ``ovrange.algorithms.PROTECTIONS``: ``RangeSupervision`` (POT), ``Ranger``,
            ``GradientSuppression``, ``BoundedWeights``, ``Checksum`` or ``GlobalClipper``.
        plan: a saved plan (``ovrange.plan.load_plan("bounds.json")``) to apply as it is, without calibration.
        subset_size, batch_size, shuffle, seed: POT's ``stat_subset_size``, ``stat_batch_size``,
            ``shuffle_data`` and ``seed``.
        device: OpenVINO device for the statistics run (always f32).
        progress: called as ``progress(samples_done, samples_total)`` during calibration.
        holdout: share of the calibration subset held out to check the protected model against the original
            (range protections: RangeSupervision, GlobalClipper; :mod:`ovrange.validate`); bounds get a
            margin and those that clip held-out values are widened. 0 disables it.
        sdc: the model's SDC criterion for that check (``linf:0.01`` on every output is always checked too);
            default ``auto`` (a classifier's top-1) where output 0's shape allows it.
        **params: the algorithm's own parameters, as in a config file (e.g. ``bound="percentile"``).
    """
    if get_rt_json(model, "protection") is not None:
        raise ModelError(f"model {model.get_friendly_name()!r} is already protected by ovrange")
    if plan is not None:
        return apply_plan(model, plan)
    module = algorithm_module(algorithm)
    common = {"stat_subset_size": subset_size, "stat_batch_size": batch_size, "shuffle_data": shuffle, "seed": seed}
    values = validate(algorithm, {**COMMON_PARAMS, **module.PARAMS}, {**common, **params}, "protect()",
                      getattr(module, "check_params", None))
    selection = module.select(model, values)
    wanted = module.requests(selection, values)
    holdout = check_fraction(holdout)
    stats, held = None, []
    if wanted:
        if dataset is None:
            raise ConfigError(f"{algorithm} needs calibration data (or a saved plan)")
        if holdout and algorithm in WIDENED:
            dataset, held = holdout_split(dataset, subset_size, shuffle, seed, holdout)
            subset_size, shuffle = None, False
        stats = collect(model, dataset, wanted, subset_size=subset_size, batch_size=batch_size, shuffle=shuffle,
                        seed=seed, device=device, progress=progress)
    guards, report = module.plan(selection, stats, values)
    made = ProtectionPlan(algorithm, values, guards, stats.samples if stats else 0, "f32", __version__, report)
    if held:
        guards, protected, entry = validate_heldout(
            model, guards, lambda g: apply_plan(model, replace(made, guards=g)), held, sdc=sdc, device=device)
        # every bound now covers the held-out samples too (those that did not fire held them already)
        made = replace(made, guards=guards, samples=made.samples + len(held),
                     report={**protection_info(protected).report, "heldout": entry})  # coverage kept
        set_rt_json(protected, "protection", made.to_json())
    else:
        protected = apply_plan(model, made)
    measure = getattr(module, "measure", None)
    if measure is not None and dataset is not None:
        measured, samples = measure(model, protected, dataset, values, device=device, progress=progress)
        made = ProtectionPlan(algorithm, values, guards, samples, "f32", __version__,
                              {**protection_info(protected).report, **measured})
        set_rt_json(protected, "protection", made.to_json())
    return protected


def holdout_split(dataset: Any, subset_size: int | None, shuffle: bool, seed: int, fraction: float
                  ) -> tuple[Dataset, list[Any]]:
    """(the calibration part of the subset, the held-out samples): :func:`ovrange.validate.split` of the POT
    subset (first ``subset_size`` samples, or a seeded random one); the calibration part is read lazily."""
    source = as_dataset(dataset)
    if source.has_len():
        indices = select_indices(len(source), subset_size, shuffle, seed)
        items: Any = None
    else:
        items = list(source.get_inference_data())
        indices = select_indices(len(items), subset_size, shuffle, seed)
    rest, held = split(len(indices), fraction, seed)
    if items is not None:
        return Dataset([items[i] for i in indices[rest]]), [items[i] for i in indices[held]]
    return Dataset(_Picked(source, indices[rest])), list(source.get_inference_data(indices[held]))


class _Picked:
    """Samples ``indices`` of ``source``, indexable (read one at a time, transformed by the source)."""

    def __init__(self, source: Dataset, indices: Any):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return next(iter(self.source.get_inference_data([int(self.indices[index])])))


def apply_plan(model: ov.Model, plan: ProtectionPlan) -> ov.Model:
    """A clone of ``model`` with ``plan`` applied; a plan that does not fit the model is a one-line ConfigError."""
    module = algorithm_module(plan.algorithm)
    check_plan_fits(model, plan)
    result = module.apply(model.clone(), plan)
    set_rt_json(result.model, "protection", plan.to_json())
    covered = protection_coverage(result.model)  # what the guards cover, recorded beside the plan
    if covered is not None:
        set_rt_json(result.model, "protection", replace(plan, report={**plan.report,
                                                                      "coverage": covered.to_json()}).to_json())
    return result.model


def check_plan_fits(model: ov.Model, plan: ProtectionPlan) -> None:
    """Every target of the plan exists in ``model`` with the op type and channel count the plan was made for."""
    outputs = outputs_by_id(model)
    where = f"the plan ({plan.algorithm}) does not fit model {model.get_friendly_name()!r}"
    for key, guard in plan.guards.items():
        key = guard.get("node", key)  # a guard on an input edge names the node whose output it guards
        if key not in outputs:
            raise ConfigError(f"{where}: it has no node {key!r}")
        node = outputs[key].get_node()
        if guard.get("type") not in (None, node.get_type_name()):
            raise ConfigError(f"{where}: node {key!r} is a {node.get_type_name()}, the plan has a {guard['type']}")
        axis, high = guard.get("axis"), guard.get("high")
        if isinstance(high, list) and axis is not None:
            shape = outputs[key].get_partial_shape()
            if (shape.rank.is_dynamic or axis >= shape.rank.get_length() or shape[axis].is_dynamic
                    or shape[axis].get_length() != len(high)):
                raise ConfigError(f"{where}: node {key!r} has shape {shape}, the plan has {len(high)} channels on "
                                  f"axis {axis}")


def run_chain(model: ov.Model, dataset: Any, algorithms: tuple[AlgorithmConfig, ...], *, device: str = "CPU",
              progress: ProgressFn | None = None, holdout: float = DEFAULT_HOLDOUT,
              sdc: str | None = None) -> ov.Model:
    """A POT chain: its quantization steps (nncf, in the order listed), then its one protection, on a copy;
    ``holdout`` and ``sdc`` as in :func:`protect`."""
    from ovrange import quantize

    for step in (a for a in algorithms if a.name in QUANTIZATIONS):
        model = quantize.apply(model, dataset, step, progress=progress)
    last = next(a for a in algorithms if a.name not in QUANTIZATIONS)
    own = {k: v for k, v in last.params.items() if k not in COMMON_PARAMS}
    return protect(model, dataset, algorithm=last.name, subset_size=last.subset_size, batch_size=last.batch_size,
                   shuffle=last.shuffle, seed=last.seed, device=device, progress=progress, holdout=holdout, sdc=sdc,
                   **own)


def chain_name(algorithms: tuple[AlgorithmConfig, ...]) -> str:
    """The result folder suffix: the steps in the order they run, e.g. ``DefaultQuantization_RangeSupervision``."""
    steps = [a for a in algorithms if a.name in QUANTIZATIONS]
    steps += [a for a in algorithms if a.name not in QUANTIZATIONS][:1]
    return "_".join(a.name for a in steps)


def protection_info(model: ov.Model) -> ProtectionPlan | None:
    """The plan ovrange recorded in a protected model, or None for a model it did not protect."""
    raw = get_rt_json(model, "protection")
    return None if raw is None else ProtectionPlan.from_json(raw)


def save_protected(model: ov.Model, out_dir: str | Path, model_name: str, *, force: bool = False,
                   copy: Sequence[Path] = ()) -> Path:
    """Write ``<out_dir>/<model_name>.xml/.bin``, ``bounds.json`` and a copy of the ``copy`` files (e.g. a language
    model's tokenizer, :func:`ovrange.text.export_files`) in one atomic step. Weights keep the element type the
    model holds them in (no fp16 compression: f32 stays f32, fp16 stays fp16, INT8 stays INT8)."""
    info = protection_info(model)
    if info is None:
        raise ModelError("save_protected() needs a model returned by ovrange.protect()")

    def write(tmp: Path) -> None:
        save_model(model, tmp / f"{model_name}.xml")
        (tmp / "bounds.json").write_text(json.dumps(info.to_json(), indent=2) + "\n")
        for path in copy:
            shutil.copy2(path, tmp / path.name)

    return write_dir_atomically(out_dir, write, force=force)
