"""Guard placement for less overhead: drop the guards that are provably redundant, keep every other one.

A guard is a Clamp a protection pass inserted (recorded as a ``guard`` in the model's inserted-node record). Ranger also guards the outputs of
value-preserving ops after a protected activation -- pooling, Reshape-like ops, Concat. The CPU plugin cannot fuse a
Clamp into a Pooling or a Concat, so these guards run as kernels of their own and are most of Ranger's overhead.

**Rule (the only one).** A scalar guard ``G = Clamp[l, h]`` whose input comes, through data-movement ops only
(:data:`DATA_MOVEMENT`), from guards ``G_i = [l_i, h_i]`` with ``l <= l_i`` and ``h_i <= h`` on every path, is
removed. Proof: data-movement ops only copy, drop or permute values, so every value reaching ``G`` left some
``G_i`` and lies in ``[l_i, h_i]`` within ``[l, h]`` (or is a NaN that ``G_i`` let through, which ``G`` passes too)
-- ``G`` is the identity. This holds under every fault ovrange injects: fault sites are weights and the outputs of
compute ops (:mod:`ovrange.faults.sites`); data-movement ops are not sites, so no fault can enter between ``G_i``
and ``G``; a fault before ``G_i`` is corrected by ``G_i`` exactly as before. Outputs are bit-identical, fault-free
and faulty (``tests/test_placement.py`` checks both on the CPU plugin, NaN and Inf faults included).

**What stays, and why.** A guard after MaxPool or AvgPool protects against faults in the pooling op itself (a fault
site), so it must stay after it; no op the CPU plugin can fuse a Clamp into computes a max-pool as fast
(MaxPool as Reshape + ReduceMax is exact, but measured 2.7x slower on the bundled LeNet, and its Clamp still ran
on its own). A guard after an activation is fused into the producer's post-ops by the CPU plugin in every model we
measured, so moving it cannot gain anything. See docs/benchmarks.md for the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import openvino as ov

from ovrange.graph import inserted_nodes, set_rt_json
from ovrange.passes import PassResult

# Ops whose outputs are values of their data inputs, moved or dropped, never computed or made up (Gather and Pad
# are not here: out-of-range indices and padding create zeros). None of them is a fault site.
DATA_MOVEMENT = {
    "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Transpose": (0,), "StridedSlice": (0,), "Slice": (0,),
    "Split": (0,), "VariadicSplit": (0,), "DepthToSpace": (0,), "SpaceToDepth": (0,), "ShuffleChannels": (0,),
    "Concat": None,  # None: every input carries data
}


@dataclass
class PlacementResult(PassResult):
    """The optimized clone, whether anything changed, and the guards removed (friendly names)."""

    removed: tuple[str, ...] = ()


def optimize_placement(model: ov.Model) -> PlacementResult:
    """A clone of ``model`` without its redundant guards (the rule above); ``model`` itself is not modified."""
    clone = model.clone()
    record = inserted_nodes(clone)
    guards = {name for name, role in record.items() if role == "guard"}

    def is_guard(node: ov.Node) -> bool:
        return node.get_type_name() == "Clamp" and node.get_friendly_name() in guards

    removed = []
    for node in clone.get_ordered_ops():  # topological: an upstream guard is judged before the ones it feeds
        if is_guard(node) and _redundant(node, is_guard):
            _bypass(node)
            removed.append(node.get_friendly_name())
    if removed:
        clone.validate_nodes_and_infer_types()
        set_rt_json(clone, "inserted", {k: v for k, v in record.items() if k not in removed})
        set_rt_json(clone, "placement", {"removed_guards": removed, "rule": "guard after data movement from "
                                         "guards within its range (ovrange.passes.placement)"})
    return PlacementResult(clone, bool(removed), tuple(removed))


def _redundant(guard: ov.Node, is_guard) -> bool:
    attrs = guard.get_attributes()
    return _bounded_within(guard.input_value(0), float(attrs["min"]), float(attrs["max"]), is_guard)


def _bounded_within(value: ov.Output, low: float, high: float, is_guard) -> bool:
    """True when every element of ``value`` comes unchanged from a guard whose range lies within [low, high]."""
    node = value.get_node()
    if is_guard(node):
        attrs = node.get_attributes()
        return low <= float(attrs["min"]) and float(attrs["max"]) <= high
    kind = node.get_type_name()
    if kind not in DATA_MOVEMENT:
        return False
    ports = DATA_MOVEMENT[kind]
    inputs = node.input_values() if ports is None else [node.input_value(i) for i in ports]
    return all(_bounded_within(source, low, high, is_guard) for source in inputs)


def _bypass(guard: ov.Node) -> None:
    """Connect the guard's consumers to its input and hand its tensor names back (model outputs keep theirs)."""
    source, output = guard.input_value(0), guard.output(0)
    for target in list(output.get_target_inputs()):
        target.replace_source_output(source)
    names = set(output.get_names())
    if names:
        output.get_tensor().set_names(set())
        source.get_tensor().set_names(set(source.get_names()) | names)

