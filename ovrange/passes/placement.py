"""Where each guard of a plan goes, so that the CPU plugin fuses it (pure: plan entries and graph facts in, out).

The CPU plugin fuses a ``Clamp`` (and per-channel ``Multiply``/``Add``) into the post-ops of the Convolution,
GroupConvolution, FullyConnected or MVN that produces its input; it cannot fuse anything into a pooling op, so a
guard after ``MaxPool`` runs as a kernel of its own (an extra pass over memory: +32.6% on a 0.58 ms face detector).
:func:`place` rewrites such guards, using two facts about monotone data movement (MaxPool, AvgPool, Reshape,
Squeeze, Unsqueeze, Transpose: their outputs hold values of their input, or averages of them):

- **covered**: a guard whose input comes, through monotone data movement only, from a guarded node is dropped.
  Its values already passed that guard, and the guard's bound, observed on the same calibration data, is never
  tighter than what MaxPool/AvgPool/reshapes can produce from it. (A fault inside the pooling op itself is left
  to the guards downstream.)
- **covered downstream**: a guard whose tensor is read by one op only, an activation that keeps a far value far
  (Relu, PReLU, Swish, HSwish, Gelu, Mish, Elu, SoftPlus: a flipped exponent stays beyond the bounds, or becomes
  the 0 the guard would have made of it), whose own output is guarded, is dropped: that guard sees every fault of
  the tensor. On a residual block (``Add -> PReLU``, both guarded) it halves the guards fused into the convolution
  that computes the Add: the cost of a fused guard is its post-op instructions per output element, which on a 1x1
  convolution with few input channels is as much as the convolution's own arithmetic (docs/zoo.md#cost). Not
  through saturating activations (Clamp/ReLU6, Sigmoid, Tanh, HSigmoid): a far value comes out of them in range.
- **moved**: a guard after a ``MaxPool`` whose input is that of no other node moves before it, onto the
  producer's output, where it fuses: ``clamp(maxpool(x)) == maxpool(clamp(x))`` for any monotone clamp, so
  outputs are identical. (Not AvgPool: the average of clamped values is not the clamped average.)

A bound Ranger carried through pooling or data movement (``propagate``, method ``propagated:``/``union:``) stays:
catching a fault inside the pooling op is what it is planned for. Every other guard stays where it was planned.
:func:`place` returns the new plan and a record of each guard it moved or dropped, with the reason, which the
protection's report carries (``placement`` in ``bounds.json``).
"""

from __future__ import annotations

from typing import Any

import openvino as ov

from ovrange.graph import node_ids

# Ops whose output holds values of their (first) input, or averages of them: True = channels keep their axis.
MONOTONE = {"MaxPool": True, "AvgPool": True, "Reshape": False, "Squeeze": False, "Unsqueeze": False,
            "Transpose": False}
CARRIED = ("propagated:", "union:")  # Ranger's bounds carried through pooling/data movement (range_guards.propagate)
# Element-wise activations that keep a far positive value far (and a far negative one far, or near 0): a guard on
# their output covers their input.
COVERING = {"Relu", "PRelu", "Swish", "HSwish", "Gelu", "Mish", "Elu", "SoftPlus"}
# Producers whose post-ops take a moved guard (the CPU plugin's fusing layers and element-wise ops).
FUSING = {"Convolution", "GroupConvolution", "MatMul", "MVN", "Add", "Multiply", "Subtract", "PRelu", "Relu",
          "Clamp", "Swish", "HSwish", "HSigmoid", "Sigmoid", "Tanh", "Elu", "Gelu", "Mish", "SoftPlus"}


def describe(model: ov.Model) -> dict[str, dict[str, Any]]:
    """Graph facts :func:`place` needs (pure data): per node id, its op type, the id of the node its first input
    comes from (output 0 only, else None) and how many inputs read its output 0."""
    ids = {node.get_name(): node_id for node_id, node in node_ids(model)}
    facts = {}
    for node_id, node in node_ids(model):
        source = None
        if node.get_input_size() and node.input_value(0).get_index() == 0:
            source = ids.get(node.input_value(0).get_node().get_name())
        readers = len(node.output(0).get_target_inputs()) if node.get_output_size() else 0
        facts[node_id] = {"op": node.get_type_name(), "source": source, "readers": readers}
    return facts


def place(guards: dict[str, dict[str, Any]], graph: dict[str, dict[str, Any]]
          ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``guards`` (plan entries with ``node``, ``type``, ``low``/``high``, ``axis``; an ``edge`` entry guards one
    input only and is left alone) placed for fusion: (new guards, record of the moved and dropped ones)."""
    at = {e.get("node", k): k for k, e in guards.items() if "high" in e and not e.get("edge")}
    reader = _single_readers(graph)
    placed: dict[str, dict[str, Any]] = {}
    record: dict[str, dict[str, Any]] = {}
    for key, entry in guards.items():
        node = entry.get("node", key)
        if ("high" not in entry or entry.get("edge") or node not in graph
                or str(entry.get("method", "")).startswith(CARRIED)):
            placed[key] = entry
            continue
        covering, path = _upstream_guard(node, graph, at)
        if covering is not None:
            record[key] = {"action": "dropped", "node": node, "covered_by": covering, "through": path,
                           "why": f"its input passed guard {covering!r} through {' -> '.join(path)} (monotone data "
                                  "movement)"}
            continue
        after = reader.get(node)
        if after is not None and graph[after]["op"] in COVERING and after in at and not _carried(guards[at[after]]):
            record[key] = {"action": "dropped", "node": node, "covered_by": at[after], "through": [graph[after]["op"]],
                           "why": f"its only reader, {graph[after]['op']} {after!r}, keeps a far value far and is "
                                  f"guarded by {at[after]!r}"}
            continue
        source = graph[node]["source"]
        if (graph[node]["op"] == "MaxPool" and source is not None and source not in at and source not in placed
                and graph[source]["readers"] == 1 and graph[source]["op"] in FUSING):
            moved = dict(entry, node=source, type=graph[source]["op"])
            if "name" in moved:
                moved["name"] = source
            if moved.get("form") == "standalone":
                moved["form"] = "fused"
                moved.update(_scalar(moved))
            new_key = source if key == node else key
            placed[new_key] = moved
            record[key] = {"action": "moved", "node": node, "to": source,
                           "why": f"before MaxPool, into the post-ops of {graph[source]['op']} {source!r} "
                                  "(clamp(maxpool(x)) == maxpool(clamp(x)))"}
            continue
        placed[key] = entry
    return placed, record


def _carried(entry: dict[str, Any]) -> bool:
    return str(entry.get("method", "")).startswith(CARRIED)


def _single_readers(graph: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Node id -> the one node reading its output 0, for nodes read by one input only (through input 0)."""
    readers: dict[str, list[str]] = {}
    for node_id, facts in graph.items():
        if facts["source"] is not None:
            readers.setdefault(facts["source"], []).append(node_id)
    return {source: ids[0] for source, ids in readers.items()
            if len(ids) == 1 and graph.get(source, {}).get("readers") == 1}


def _upstream_guard(node: str, graph: dict[str, dict[str, Any]], at: dict[str, str]) -> tuple[str | None, list[str]]:
    """The guard reached from ``node``'s input through monotone data movement only, and the ops passed."""
    path: list[str] = []
    while graph[node]["op"] in MONOTONE and graph[node]["source"] in graph:
        path.append(graph[node]["op"])
        node = graph[node]["source"]
        if node in at:
            return at[node], path
    return None, path


def _scalar(entry: dict[str, Any]) -> dict[str, Any]:
    """Per-channel bounds that are all equal (a standalone guard's form) back to one scalar pair, which fuses."""
    low, high = entry["low"], entry["high"]
    if isinstance(high, list) and len(set(low)) == 1 and len(set(high)) == 1:
        return {"low": float(low[0]), "high": float(high[0]), "axis": None}
    return {}
