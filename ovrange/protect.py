"""Orchestration only: pick the algorithm, run its pass, record what it did in the model.

``protect(model, dataset, ...)`` is the NNCF-shaped entry point (cf. ``nncf.quantize``): it takes an
``ov.Model`` and a dataset and returns a new ``ov.Model``; the input model is not modified. Everything the
protection decided (algorithm, parameters, bounds) is stored in the returned model's rt_info, so it is saved in
the IR and :func:`protection_info` can read it back from any protected model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov

from ovrange import __version__
from ovrange.bounds import Bound
from ovrange.config import COMMON_PARAMS, QUANTIZATION_ALGORITHMS, AlgorithmConfig, algorithm_module, make_algorithm
from ovrange.errors import ModelError
from ovrange.graph import get_rt_json, set_rt_json
from ovrange.modelio import save_model, write_dir_atomically

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ProtectionInfo:
    """What a protected model records about its protection (read back from rt_info)."""

    algorithm: str
    params: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    samples: int
    precision: str
    tool_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bounds(self) -> dict[str, Bound]:
        """The range bounds among the protected nodes (RangeSupervision, Ranger)."""
        return {name: Bound.from_json(node) for name, node in self.nodes.items() if "high" in node}

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": "ovrange",
            "tool_version": self.tool_version,
            "algorithm": self.algorithm,
            "params": self.params,
            "samples": self.samples,
            "statistics_precision": self.precision,
            **({"report": self.extra} if self.extra else {}),
            "nodes": self.nodes,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "ProtectionInfo":
        return cls(raw["algorithm"], raw["params"], raw["nodes"], raw["samples"], raw["statistics_precision"],
                   raw["tool_version"], raw.get("report", {}))


def protect(
    model: ov.Model,
    dataset: Any,
    *,
    algorithm: str = "RangeSupervision",
    subset_size: int = 300,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    device: str = "CPU",
    progress: ProgressFn | None = None,
    **params: Any,
) -> ov.Model:
    """Return a protected copy of ``model`` with bounds (or thresholds) learned from ``dataset``.

    Args:
        model: the model to protect (not modified).
        dataset: an ``ovrange.Dataset``, an ``nncf.Dataset``, a numpy array (samples on axis 0) or any iterable of
            samples (array, tuple of arrays, or ``{input name: array}``).
        algorithm: ``RangeSupervision`` (POT), ``Ranger``, ``GradientSuppression`` or ``BoundedWeights``.
        subset_size, batch_size, shuffle, seed: POT's ``stat_subset_size``, ``stat_batch_size``,
            ``shuffle_data`` and ``seed``.
        device: OpenVINO device for the statistics run (always f32).
        progress: called as ``progress(samples_done, samples_total)`` during calibration.
        **params: the algorithm's own parameters, as in a config file (e.g. ``bound="percentile"``).
    """
    common = {"stat_subset_size": subset_size, "stat_batch_size": batch_size, "shuffle_data": shuffle, "seed": seed}
    config = make_algorithm(algorithm, {**common, **params}, "protect()")
    if get_rt_json(model, "protection") is not None:
        raise ModelError(f"model {model.get_friendly_name()!r} is already protected by ovrange")
    result = algorithm_module(config.name).run(model, dataset, config, device=device, progress=progress)
    info = ProtectionInfo(config.name, config.params, result.nodes, result.samples, result.precision, __version__,
                          result.extra)
    set_rt_json(result.model, "protection", info.to_json())
    return result.model


def run_chain(model: ov.Model, dataset: Any, algorithms: tuple[AlgorithmConfig, ...], *, device: str = "CPU",
              progress: ProgressFn | None = None) -> ov.Model:
    """A POT chain: its quantization steps (nncf, in the order listed), then its one protection, on a copy."""
    from ovrange import quantize

    for step in (a for a in algorithms if a.name in QUANTIZATION_ALGORITHMS):
        model = quantize.apply(model, dataset, step, progress=progress)
    last = next(a for a in algorithms if a.name not in QUANTIZATION_ALGORITHMS)
    own = {k: v for k, v in last.params.items() if k not in COMMON_PARAMS}
    return protect(model, dataset, algorithm=last.name, subset_size=last.subset_size, batch_size=last.batch_size,
                   shuffle=last.shuffle, seed=last.seed, device=device, progress=progress, **own)


def chain_name(algorithms: tuple[AlgorithmConfig, ...]) -> str:
    """The result folder suffix: the steps in the order they run, e.g. ``DefaultQuantization_RangeSupervision``."""
    steps = [a for a in algorithms if a.name in QUANTIZATION_ALGORITHMS]
    steps += [a for a in algorithms if a.name not in QUANTIZATION_ALGORITHMS][:1]
    return "_".join(a.name for a in steps)


def protection_info(model: ov.Model) -> ProtectionInfo | None:
    """What ovrange recorded in a protected model, or None for a model ovrange did not protect."""
    raw = get_rt_json(model, "protection")
    return None if raw is None else ProtectionInfo.from_json(raw)


def save_protected(model: ov.Model, out_dir: str | Path, model_name: str, *, force: bool = False) -> Path:
    """Write ``<out_dir>/<model_name>.xml/.bin`` (f32 weights) and ``bounds.json`` in one atomic step."""
    info = protection_info(model)
    if info is None:
        raise ModelError("save_protected() needs a model returned by ovrange.protect()")

    def write(tmp: Path) -> None:
        save_model(model, tmp / f"{model_name}.xml")
        (tmp / "bounds.json").write_text(json.dumps(info.to_json(), indent=2) + "\n")

    return write_dir_atomically(out_dir, write, force=force)
