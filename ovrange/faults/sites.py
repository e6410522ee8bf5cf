"""Where faults can strike: site discovery and matching two models by node name.

Weight sites are the constant weights of Convolution / GroupConvolution / MatMul (memory faults), as stored: f32,
f16 (decompressed by a Convert) or the integer Constant of a quantized layer (docs/quantized.md). A weight that
reaches its layer through data movement (TFLite depthwise weights: ``Constant -> Convert -> Transpose -> Reshape``)
is a site in its stored shape and order; the graph's own chain carries a fault to the layer element. Activation sites
are the outputs of compute operators (datapath faults, as in Ranger): convolutions, MatMul, element-wise arithmetic,
pooling and activations; data-movement ops (Reshape, Concat, Transpose...) are left out because a fault there is
the same as a fault in their input. Nodes that a protection pass inserted (recorded in the model's rt_info) are never
sites: a fault at a protected activation strikes the activation's output, before its guard, so the guard can act.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import openvino as ov

from ovrange.errors import ConfigError, ModelError
from ovrange.faults.formats import AUTO, STORED_FORMATS
from ovrange.faults.stored import INTEGER_FORMATS, constant_array, stored_integers
from ovrange.graph import (computed_nodes, constant_values, inserted_nodes, node_ids, stored_output, stored_weight,
                           weight_chain)
from ovrange.targets import (ACTIVATIONS, ADAPTIVE_POOLING, AFFINE, LINEAR, NORMS, POOLING, REDUCTIONS, SDPA, SOFTMAX,
                             WEIGHTED)

WEIGHT_OPS = WEIGHTED
ACTIVATION_OPS = (*LINEAR, *AFFINE, *POOLING, *ADAPTIVE_POOLING, *REDUCTIONS, *ACTIVATIONS, "Clamp", "Exp", "Sqrt",
                  "Power", *SOFTMAX, *NORMS, *SDPA)


@dataclass(frozen=True)
class Site:
    """One injectable tensor. ``shape`` is the weight shape, or one sample's output shape (no batch axis)."""

    name: str
    op: str
    shape: tuple[int, ...]
    format: str = "fp32"  # how the memory holds it: fp32, fp16, int8, uint8, int4, uint4 (docs/quantized.md)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "shape": list(self.shape), "format": self.format}


def weight_source(node: ov.Node, inserted: dict[str, str]) -> ov.Output | None:
    """The stored values a memory fault strikes for a Convolution/MatMul: the values a protection decodes into the
    weight (BoundedWeights' ``theta``, found through the inserted-node record), the integer Constant of a quantized
    layer, or its constant weight (f32, or f16 behind a decompression Convert)."""
    stored = stored_weight(node, inserted)
    if stored is not None and inserted.get(stored.get_node().get_friendly_name()) == "weight":
        return stored
    integers = stored_integers(node)
    if integers is not None:
        return integers
    # through a constant chain (Convert -> Transpose -> Reshape): the values as stored, in the stored order
    return None if stored is None else stored_output(stored)


STORAGE_FORMATS = {"f32": "fp32", "f16": "fp16", **INTEGER_FORMATS}


def storage_format(source: ov.Output) -> str:
    """The format of a weight site's stored values (the Constant behind its decompression Converts); fp32 for
    f32."""
    found = weight_chain(source)
    kind = found[0].get_element_type().to_string() if found is not None else "f32"
    return STORAGE_FORMATS.get(kind, "fp32")


def stored_through_transform(node: ov.Node, source: ov.Output) -> bool:
    """Whether ``source`` reaches the layer through a decoding subgraph or data movement (then faults need the
    graph to decode or move them)."""
    return source != node.input_value(1)


def weight_values(source: ov.Output) -> np.ndarray:
    """The stored values of a weight site as float32 (f32, f16, or the integers of a quantized layer)."""
    return constant_array(source) if source.get_node().get_type_name() == "Constant" else constant_values(source)


def find_sites(model: ov.Model, target: str, sample_shapes: list[tuple[int, ...]] | None = None,
               include: list[str] | None = None, exclude: list[str] | None = None) -> list[Site]:
    """The sites of ``model`` for ``target``, in topological order, filtered by glob patterns on their names."""
    found = site_outputs(static_clone(model, sample_shapes) if target == "activations" else model, target)
    sites = []
    for name, (node, out) in found.items():
        if (include and not _matches(name, include)) or _matches(name, exclude or []):
            continue
        if not out.get_partial_shape().is_static:
            raise ModelError(f"{target} site {name!r} has a dynamic shape {out.get_partial_shape()}")
        shape = tuple(int(d) for d in out.get_shape())
        if target == "weights":
            sites.append(Site(name, node.get_type_name(), shape, storage_format(out)))
        else:
            sites.append(Site(name, node.get_type_name(), shape[1:]))
    if not sites:
        raise ModelError(f"no injectable {target} site in model {model.get_friendly_name()!r}"
                         + (" after the site filters" if include or exclude else ""))
    return sites


def site_outputs(model: ov.Model, target: str) -> dict[str, tuple[ov.Node, ov.Output]]:
    """Site name -> (node, the f32 output a fault strikes): the weight feeding the layer, or the op's output.

    Names are the node ids of :func:`ovrange.graph.node_ids` (the friendly name, ``name#k`` for its k-th use in
    topological order; ``:port`` for ports > 0): the target ids of :mod:`ovrange.targets`, stable for a model.
    """
    found: dict[str, tuple[ov.Node, ov.Output]] = {}
    ids = {node.get_name(): node_id for node_id, node in node_ids(model)}
    inserted = inserted_nodes(model)  # nodes a protection added are never sites: a fault strikes what they guard
    live = computed_nodes(model)  # constant subgraphs are not datapath
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if target == "weights":
            source = weight_source(node, inserted) if kind in WEIGHT_OPS else None
            if source is not None:
                found[ids[node.get_name()]] = (node, source)
            continue
        if node.get_name() not in live or kind not in ACTIVATION_OPS or node.get_friendly_name() in inserted:
            continue
        for port, out in enumerate(node.outputs()):
            rank = out.get_partial_shape().rank
            if out.get_element_type() == ov.Type.f32 and rank.is_static and rank.get_length() >= 2:
                found[ids[node.get_name()] + (f":{port}" if port else "")] = (node, out)
    return found


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def static_clone(model: ov.Model, sample_shapes: list[tuple[int, ...]] | None, batch: int = 1) -> ov.Model:
    """A clone whose inputs are ``[batch, *sample_shape]``; raises ModelError when the model cannot be reshaped."""
    clone = model.clone()
    if sample_shapes is None:
        return clone
    shapes = {port: ov.PartialShape([batch, *shape]) for port, shape in zip(clone.inputs, sample_shapes)}
    if all(port.get_partial_shape() == shape for port, shape in shapes.items()):
        return clone
    try:
        clone.reshape(shapes)
    except RuntimeError as exc:
        raise ModelError(f"model cannot run a batch of {batch}: {str(exc).strip().splitlines()[-1]}") from exc
    return clone


def sites_in_format(sites: list[Site], number_format: str, model_name: str) -> tuple[str, list[Site]]:
    """(the campaign's format, the sites it strikes). ``auto``: the one format the sites are stored in (a model
    mixing formats, e.g. INT4 layers plus INT8 first/last layers, needs ``--number-format``). A storage format keeps
    the sites stored in it; fp32 and fixed-point formats (emulated on the f32 value) keep the fp32 and fp16 sites."""
    counts: dict[str, int] = {}
    for site in sites:
        counts[site.format] = counts.get(site.format, 0) + 1
    if number_format == AUTO:
        if len(counts) > 1:
            listed = ", ".join(f"{k}: {n} site(s)" for k, n in sorted(counts.items()))
            options = " or ".join(f"--number-format {name}" for name in sorted(counts))
            raise ConfigError(f"the weights of {model_name} are stored in several formats ({listed}); run one "
                              f"campaign per format with {options}")
        return (next(iter(counts)) if counts else "fp32"), sites
    if number_format in STORED_FORMATS:
        kept = [s for s in sites if s.format == number_format]
    else:
        kept = [s for s in sites if s.format in ("fp32", "fp16")]
    if not kept:
        wanted = number_format if number_format in STORED_FORMATS else f"fp32 or fp16 (for {number_format})"
        raise ConfigError(f"no weights of {model_name} are stored as {wanted}: they are "
                          f"{', '.join(sorted(counts))} (use --number-format auto)")
    return number_format, kept


def match_sites(reference: list[Site], other: list[Site], other_name: str, allow_extra: bool = False) -> None:
    """Raise ModelError unless ``other`` has exactly the sites of ``reference`` (same names, ops and shapes).

    ``allow_extra``: ``other`` is a protected twin, whose protection added nodes of its own (e.g. gradient
    suppression's Subtract); those are not sites of the comparison, all of ``reference``'s must still be there.
    """
    theirs = {s.name: s for s in other}
    ours = {s.name for s in reference}
    missing = [s.name for s in reference if s.name not in theirs]
    extra = [] if allow_extra else [name for name in theirs if name not in ours]
    differ = [s.name for s in reference if s.name in theirs and (theirs[s.name].op, theirs[s.name].shape) !=
              (s.op, s.shape)]
    if missing or extra or differ:
        detail = (f"missing {missing[:3]}" if missing else f"extra {extra[:3]}" if extra
                  else f"different op or shape at {differ[:3]}")
        raise ModelError(f"--compare model {other_name} does not match the structure of the first model: {detail}")
