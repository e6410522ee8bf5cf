"""Coverage accounting: which value tensors of a protected model a range guard covers, and why the others are not.

A *value tensor* is an output of an op computed from the model inputs that some op reads: not a model input, not a
Constant or a constant subgraph (weights and their decompression, which are weight sites), not a node ovrange
inserted, not an output nothing reads (MaxPool's indices). Every value tensor is exactly one of:

- ``guarded``: a guard reads it directly (every consumer is an ovrange guard, or every other path is covered);
- ``covered``: every path from it reaches a guard through ops that carry an out-of-range value to that guard as an
  out-of-range value or drop it: data movement (:data:`ovrange.targets.DATA_MOVEMENT`), MaxPool/AvgPool, Pad,
  linear or nearest Interpolate, Concat, element-wise activations, an affine op with a constant operand (a bias Add,
  a BatchNorm scale), Add/Subtract/Maximum/Minimum of two tensors. A flip there is cut by the guard downstream;
  a linear layer's output before its guarded activation is the common case;
- ``uncovered``, with the reason: ``integer`` (shape, index or boolean tensors, which no range guard bounds),
  ``output`` (the value reaches a model output with no guard on the way: the outputs themselves, the head layers),
  ``before <Op>`` (it enters a computation unguarded: a Convolution, a product of two tensors, a normalization...),
  ``unused`` (only ``ShapeOf`` reads it: its values reach nothing).
The reason is where the value stops being carried: a ReLU output that goes through MaxPool into an unguarded
Convolution is ``before Convolution``.

What a fused CPU kernel computes inside (a convolution's accumulators, an attention kernel's scores, an LSTM's gates)
is no tensor of the graph, so it is neither counted nor covered. The figure is a property of the graph, not of a
fault campaign: a covered tensor's fault is cut to the guard's bound, which is not always the clean value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import openvino as ov

from ovrange.graph import computed_nodes, get_rt_json, inserted_nodes, node_ids
from ovrange.targets import ACTIVATIONS, DATA_MOVEMENT, POOLING

# Protections whose inserted datapath nodes are range guards (a Checksum or GradientSuppression node is a detector
# or a corrector of another kind: no coverage figure is given for them).
RANGE_PROTECTIONS = ("RangeSupervision", "Ranger", "GlobalClipper")

# Consumers that carry a value on (input ports; None: every input) without computing anything a fault could hide in.
_CARRY: dict[str, tuple[int, ...] | None] = {**DATA_MOVEMENT, **{p: (0,) for p in POOLING}, "Pad": (0,),
                                             "Interpolate": (0,)}
_SHAPE_ONLY = ("ShapeOf",)
_TWO_TENSOR = ("Add", "Subtract", "Maximum", "Minimum")  # monotone in each input
_CONSTANT_AFFINE = ("Add", "Subtract", "Multiply", "Divide")
_ELEMENTWISE = (*ACTIVATIONS, "Convert")
_INTERPOLATE_MODES = ("nearest", "linear", "linear_onnx", "bilinear_pillow")  # not cubic: negative weights


@dataclass(frozen=True)
class Coverage:
    """Value tensor id (``node`` or ``node:port``) -> status, in topological order; reasons of the uncovered."""

    guarded: tuple[str, ...]
    covered: tuple[str, ...]
    uncovered: dict[str, str]

    @property
    def total(self) -> int:
        return len(self.guarded) + len(self.covered) + len(self.uncovered)

    def reasons(self) -> dict[str, int]:
        """Uncovered tensors per reason, most frequent first (ties by name)."""
        return dict(sorted(Counter(self.uncovered.values()).items(), key=lambda item: (-item[1], item[0])))

    def line(self) -> str:
        """The one line ``protect`` prints."""
        return coverage_line(self.to_json())

    def to_json(self) -> dict:
        return {"value_tensors": self.total, "guarded": len(self.guarded), "covered": len(self.covered),
                "uncovered": len(self.uncovered), "reasons": self.reasons(), "uncovered_tensors": self.uncovered}


def coverage_line(report: dict) -> str:
    """``coverage: N of M value tensors guarded, K covered downstream, L uncovered: reasons`` from
    :meth:`Coverage.to_json` (as the protection report stores it)."""
    reasons = ", ".join(f"{n} {reason}" for reason, n in report["reasons"].items())
    return (f"coverage: {report['guarded']} of {report['value_tensors']} value tensors guarded, {report['covered']} "
            f"covered downstream, {report['uncovered']} uncovered" + (f": {reasons}" if reasons else ""))


def coverage(model: ov.Model) -> Coverage:
    """Classify every value tensor of ``model`` (pure: the model is only read). Guards are the datapath nodes
    ovrange recorded as inserted (:func:`ovrange.graph.inserted_nodes`); an unprotected model has none."""
    inserted = set(inserted_nodes(model))
    live = computed_nodes(model)
    ids = {node.get_name(): key for key, node in node_ids(model)}
    status: dict[tuple[str, int], str] = {}  # "guarded", "covered" or the reason
    order: list[tuple[str, str]] = []
    for node in reversed(model.get_ordered_ops()):
        if (node.get_name() not in live or node.get_type_name() in ("Parameter", "Result")
                or node.get_friendly_name() in inserted):
            continue
        for port, out in enumerate(node.outputs()):
            if not out.get_target_inputs():
                continue  # an output nothing reads (MaxPool's indices, an LSTM's last cell state)
            key = ids[node.get_name()] + (f":{port}" if port else "")
            status[node.get_name(), port] = _classify(out, status, inserted, live)
            order.append((key, status[node.get_name(), port]))
    order.reverse()
    return Coverage(tuple(k for k, s in order if s == "guarded"), tuple(k for k, s in order if s == "covered"),
                    {k: s for k, s in order if s not in ("guarded", "covered")})


def protection_coverage(model: ov.Model) -> Coverage | None:
    """:func:`coverage` of a model a range protection made (None for other protections and unprotected models)."""
    plan = get_rt_json(model, "protection")
    return coverage(model) if plan and plan.get("algorithm") in RANGE_PROTECTIONS else None


def _classify(out: ov.Output, status: dict[tuple[str, int], str], inserted: set[str], live: set[str]) -> str:
    """The status of one output from its consumers' (every consumer comes later in topological order)."""
    if not out.get_element_type().is_real():
        return "integer"
    consumers = list(out.get_target_inputs())
    paths = [p for p in (_path(target, status, inserted, live) for target in consumers) if p != "unused"]
    if not paths:
        return "unused"
    failed = [p for p in paths if p not in ("guarded", "covered")]
    if failed:
        return "output" if "output" in failed else min(failed)  # consumers come in no fixed order
    return "guarded" if "guarded" in paths else "covered"


def _path(target: ov.Input, status: dict[tuple[str, int], str], inserted: set[str], live: set[str]) -> str:
    """Where a value entering ``target`` ends: at a guard ("guarded"), carried to one ("covered"), or a reason."""
    node = target.get_node()
    kind = node.get_type_name()
    if node.get_friendly_name() in inserted:
        return "guarded"
    if kind == "Result":
        return "output"
    if kind in _SHAPE_ONLY:
        return "unused"  # reads the shape, never the values
    if not _carries(node, target.get_index(), live):
        return f"before {kind}"
    results = [status.get((node.get_name(), port), "unused") for port in range(node.get_output_size())]
    if all(r in ("unused", "integer") for r in results):
        return "unused" if "integer" not in results else f"before {kind}"
    failed = [r for r in results if r not in ("guarded", "covered", "unused")]
    return ("output" if "output" in failed else min(failed)) if failed else "covered"


def _carries(node: ov.Node, port: int, live: set[str]) -> bool:
    """Whether ``node`` carries an out-of-range value at input ``port`` to its output(s) as out of range or drops
    it (see the module docstring)."""
    kind = node.get_type_name()
    computed = sum(v.get_node().get_name() in live for v in node.input_values())
    if kind in _CARRY:
        ports = _CARRY[kind]
        if kind == "Interpolate" and node.get_attributes().get("mode") not in _INTERPOLATE_MODES:
            return False
        return ports is None or port in ports
    if kind in _ELEMENTWISE and computed == 1:
        return True
    if kind in _CONSTANT_AFFINE and computed == 1:
        return True
    return kind in _TWO_TENSOR
