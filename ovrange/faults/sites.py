"""Where faults can strike: site discovery, matching two models by node name, and the seeded fault plan.

Weight sites are the constant weights of Convolution / GroupConvolution / MatMul (memory faults). Activation sites
are the outputs of compute operators (datapath faults, as in Ranger): convolutions, MatMul, element-wise arithmetic,
pooling and activations; data-movement ops (Reshape, Concat, Transpose...) are left out because a fault there is
the same as a fault in their input. Clamps that a protection pass inserted are never sites: a fault at a protected
activation strikes the activation's output, before its Clamp, so the Clamp can correct it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import openvino as ov

from ovrange.errors import ModelError
from ovrange.faults.model import Fault
from ovrange.graph import constant_values, constant_weight

WEIGHT_OPS = ("Convolution", "GroupConvolution", "MatMul")
ACTIVATION_OPS = (
    "Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul",
    "Add", "Subtract", "Multiply", "Divide", "MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool",
    "ReduceMean", "ReduceMax", "ReduceSum", "Relu", "PRelu", "Sigmoid", "Tanh", "Elu", "Gelu", "Swish", "HSwish",
    "HSigmoid", "Mish", "SoftPlus", "Clamp", "Exp", "Sqrt", "Power", "Softmax", "SoftMax", "MVN", "NormalizeL2",
    "BatchNormInference", "ScaledDotProductAttention",
)
PROTECTION_SUFFIXES = ("/min_max_Clamp",)


@dataclass(frozen=True)
class Site:
    """One injectable tensor. ``shape`` is the weight shape, or one sample's output shape (no batch axis)."""

    name: str
    op: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "shape": list(self.shape)}


def is_protection(node: ov.Node) -> bool:
    return node.get_type_name() == "Clamp" and node.get_friendly_name().endswith(PROTECTION_SUFFIXES)


def weight_source(node: ov.Node) -> ov.Output | None:
    """The stored f32 values a memory fault strikes for a Convolution/MatMul: its constant weight, or, for a layer
    protected by BoundedWeights, the stored ``theta`` that the graph decodes into the weight (``s * tanh(theta)``)."""
    from ovrange.passes.bounded_weights import bounded_theta  # the one protection that changes how weights are stored

    theta = bounded_theta(node) if node.get_input_size() > 1 else None
    return theta.output(0) if theta is not None else constant_weight(node)


def stored_through_transform(node: ov.Node, source: ov.Output) -> bool:
    """Whether ``source`` reaches the layer through a decoding subgraph (then faults need the graph to decode)."""
    return source != node.input_value(1)


weight_values = constant_values


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
        sites.append(Site(name, node.get_type_name(), shape if target == "weights" else shape[1:]))
    if not sites:
        raise ModelError(f"no injectable {target} site in model {model.get_friendly_name()!r}"
                         + (" after the site filters" if include or exclude else ""))
    return sites


def site_outputs(model: ov.Model, target: str) -> dict[str, tuple[ov.Node, ov.Output]]:
    """Site name -> (node, the f32 output a fault strikes): the weight feeding the layer, or the op's output.

    Names are friendly names (``:port`` for ports > 0); a repeated name gets ``#k``, in topological order, so
    the same model always yields the same names.
    """
    found: dict[str, tuple[ov.Node, ov.Output]] = {}
    live: set[str] = set()  # nodes computed from the model inputs (constant subgraphs are not datapath)
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind == "Parameter" or any(node.input_value(k).get_node().get_name() in live
                                      for k in range(node.get_input_size())):
            live.add(node.get_name())
        if target == "weights":
            source = weight_source(node) if kind in WEIGHT_OPS else None
            if source is not None:
                _add(found, node.get_friendly_name(), node, source)
            continue
        if node.get_name() not in live or kind not in ACTIVATION_OPS or is_protection(node):
            continue
        for port, out in enumerate(node.outputs()):
            rank = out.get_partial_shape().rank
            if out.get_element_type() == ov.Type.f32 and rank.is_static and rank.get_length() >= 2:
                _add(found, node.get_friendly_name() + (f":{port}" if port else ""), node, out)
    return found


def _add(found: dict, name: str, node: ov.Node, out: ov.Output) -> None:
    key, k = name, 1
    while key in found:
        k += 1
        key = f"{name}#{k}"
    found[key] = (node, out)


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


def plan_faults(sites: list[Site], inputs: np.ndarray, trials: int, bits: tuple[int, ...], seed: int,
                weighting: str = "elements", ber: float | None = None) -> tuple[list[Fault], np.ndarray]:
    """The whole fault list and each trial's input, drawn up front from ``seed`` (replayable, same for all models).

    Single-fault mode: per trial a site (in proportion to its element count, or uniformly), an element, a bit from
    ``bits`` and an input from ``inputs``. Bit-error-rate mode (``ber``): per trial every allowed bit of every
    site flips with probability ``ber`` (a binomial count per site, then distinct positions); a trial may have none.
    """
    rng = np.random.default_rng(seed)
    trial_inputs = rng.choice(np.asarray(inputs), size=trials)
    if ber is not None:
        return _plan_ber(sites, trial_inputs, bits, rng, ber), trial_inputs
    sizes = np.array([s.size for s in sites], dtype=np.float64)
    p = sizes / sizes.sum() if weighting == "elements" else np.full(len(sites), 1.0 / len(sites))
    site_idx = rng.choice(len(sites), size=trials, p=p)
    elements = np.minimum((rng.random(trials) * sizes[site_idx]).astype(np.int64), sizes[site_idx].astype(np.int64) - 1)
    bit_values = rng.choice(np.asarray(bits), size=trials)
    faults = [Fault(t, int(trial_inputs[t]), sites[site_idx[t]].name, int(elements[t]), int(bit_values[t]))
              for t in range(trials)]
    return faults, trial_inputs


def _plan_ber(sites: list[Site], inputs: np.ndarray, bits: tuple[int, ...], rng: np.random.Generator,
              ber: float) -> list[Fault]:
    faults = []
    for trial, input_index in enumerate(inputs):
        for site in sites:
            population = site.size * len(bits)
            count = min(int(rng.binomial(population, ber)), population)
            if not count:
                continue
            slots = np.sort(rng.choice(population, size=count, replace=False))
            faults += [Fault(trial, int(input_index), site.name, int(slot // len(bits)), int(bits[slot % len(bits)]))
                       for slot in slots]
    return faults
