"""Targets by role on a decoder language model (Llama-style blocks), placed where the CPU plugin keeps its fused
kernels: ``ScaledDotProductAttention``, ``RMS`` (RMSNorm), ``RoPE`` and ``FullyConnected``.

:func:`ovrange.passes.roles.targets_by_role` guards the SDPA inputs, which on an optimum-intel export come through
the rotary embedding and the KV-cache ``Concat``: a guard there makes the plugin split the fused attention and
rotary kernels. On a decoder LM (:func:`is_decoder_lm`) GlobalClipper selects its roles with :func:`llm_targets`:

- ``activation``: the MLP activation (Swish, Gelu...) and the gated-MLP product ``act(gate) * up`` (a Multiply of
  an activation and a linear output); the guard joins the plugin's eltwise kernel;
- ``norm``: the output of each RMSNorm, which optimum exports decomposed (``x * 1/sqrt(mean(x^2) + eps)``, then
  the ``gamma`` Multiply): the plugin fuses the decomposition into one ``RMS`` kernel and runs the guard after it;
- ``residual``: the residual stream -- the token embedding (the ``Gather`` of a constant table that starts it) and
  each ``Add`` of a sublayer's output projection to the stream (the guard fuses into the Add). An Add read by the
  final RMSNorm only is left unguarded: a guard there makes the plugin split that RMS kernel (measured);
- ``attention``: the q, k and v projection outputs (the linear layers behind the SDPA inputs, before RoPE), and the
  output projection reading the SDPA output; guards there are post-ops of the ``FullyConnected`` kernels. Rotary
  tensors (``[N, heads, T, d]``, feature axis last) and the KV cache are not guarded: their faults reach the
  attention, whose output is bounded at the output projection;
- ``linear``, ``pooling``, ``probabilities``: as :func:`targets_by_role` (every constant-weight MatMul output...).
"""

from __future__ import annotations

from collections.abc import Iterable

import openvino as ov

from ovrange.graph import computed_nodes, node_ids
from ovrange.passes.roles import _behind_affine, _consumers, _follow_affine, targets_by_role
from ovrange.targets import ACTIVATIONS, DATA_MOVEMENT, SDPA, Target, make_target

LLM_ROLES = ("activation", "norm", "residual", "attention")  # the roles this module places differently
_STOP = ("Parameter", "ReadValue", "Constant", "ShapeOf", "MatMul")


def is_decoder_lm(model: ov.Model) -> bool:
    """Whether ``model`` is a decoder language model with fusable Llama-style blocks: it has an SDPA and a
    decomposed RMSNorm, or an SDPA fed by a KV-cache variable (``ReadValue``)."""
    ops = model.get_ordered_ops()
    if not any(n.get_type_name() in SDPA for n in ops):
        return False
    return bool(rms_norms(model)) or any(n.get_type_name() == "ReadValue" for n in ops)


def rms_norms(model: ov.Model) -> list[ov.Node]:
    """The op computing each decomposed RMSNorm's output before its affine: the ``Multiply`` (or ``Divide``) of ``x``
    by a value computed from ``ReduceMean(x^2)`` (``Power(x, 2)`` or ``x * x``)."""
    found = []
    for node in model.get_ordered_ops():
        if node.get_type_name() != "ReduceMean":
            continue
        square = node.input_value(0).get_node()
        if square.get_type_name() == "Power":
            x = square.input_value(0)
        elif square.get_type_name() == "Multiply" and square.input_value(0) == square.input_value(1):
            x = square.input_value(0)
        else:
            continue
        for target in x.get_target_inputs():
            user = target.get_node()
            if (user.get_type_name() in ("Multiply", "Divide") and user.get_name() != square.get_name()
                    and _reaches(user.input_value(1 - target.get_index()), node)):
                found.append(user)
    return found


def llm_targets(model: ov.Model, roles: Iterable[str], activations: Iterable[str] = ACTIVATIONS) -> list[Target]:
    """Every target of ``roles`` in ``model`` (a decoder LM), placed for the fused kernels; topological order."""
    roles, activations = set(roles), set(activations)
    id_of = {node.get_name(): key for key, node in node_ids(model)}
    order = {node.get_name(): k for k, node in enumerate(model.get_ordered_ops())}
    live = computed_nodes(model)
    found: dict[str, tuple[ov.Node, str]] = {}

    def add(node: ov.Node, role: str) -> None:
        if node.get_name() in live and node.output(0).get_element_type() == ov.Type.f32:
            found.setdefault(node.get_name(), (node, role))

    ops = [n for n in model.get_ordered_ops() if n.get_name() in live]
    if "activation" in roles:
        for node in ops:
            if node.get_type_name() in activations:
                add(_follow_affine(node, live), "activation")
            elif node.get_type_name() == "Multiply" and _gated(node, activations, live):
                add(_follow_affine(node, live), "activation")
    if "norm" in roles:
        for node in rms_norms(model):
            add(_follow_affine(node, live), "norm")
    if "residual" in roles:
        norm_inputs = {v.get_node().get_name() for n in rms_norms(model) for v in n.input_values()}
        for node in ops:
            if node.get_type_name() == "Gather" and _embedding(node, live):
                add(node, "residual")
            elif node.get_type_name() == "Add" and _projection_added(node, live) and (
                    node.get_name() not in norm_inputs or any(c.get_type_name() == "Add" for c in _consumers(node))):
                add(node, "residual")
    if "attention" in roles:
        for node in ops:
            if node.get_type_name() in SDPA:
                for port in range(min(3, node.get_input_size())):
                    for layer in _projections(node.input_value(port), live):
                        add(_follow_affine(layer, live), "attention")
                for layer in _readers(node, live):
                    add(_follow_affine(layer, live), "attention")
    targets = [make_target(id_of[n.get_name()], id_of[n.get_name()], n, 0, role) for n, role in found.values()]
    others = targets_by_role(model, roles - set(LLM_ROLES), activations) if roles - set(LLM_ROLES) else []
    taken = {t.id for t in targets}
    targets += [t for t in others if t.id not in taken]
    index = {key: order[node.get_name()] for key, node in node_ids(model)}
    return sorted(targets, key=lambda t: index[t.node])


def _reaches(value: ov.Output, goal: ov.Node, depth: int = 6) -> bool:
    """Whether ``goal`` lies behind ``value`` within ``depth`` ops (first inputs and computed inputs only)."""
    node = value.get_node()
    if node.get_name() == goal.get_name():
        return True
    if depth == 0 or node.get_type_name() in ("Constant", "Parameter"):
        return False
    return any(_reaches(v, goal, depth - 1) for v in node.input_values())


def _linear(node: ov.Node, live: set[str]) -> bool:
    """A MatMul reading a computed input 0 and a constant weight on input 1 (not the rotary frequencies'
    ``inv_freq @ positions``, whose constant is input 0)."""
    return (node.get_type_name() == "MatMul" and node.get_input_size() == 2
            and node.input_value(0).get_node().get_name() in live
            and node.input_value(1).get_node().get_name() not in live)


def _gated(node: ov.Node, activations: set[str], live: set[str]) -> bool:
    """A gated-MLP product: Multiply of an activation's output and a linear layer's output."""
    kinds = {_behind_affine(v.get_node(), live).get_type_name() for v in node.input_values()
             if v.get_node().get_name() in live}
    return len(kinds) == 2 and bool(kinds & activations) and "MatMul" in kinds


def _embedding(node: ov.Node, live: set[str]) -> bool:
    """A Gather of rows of a constant f32 table (the token embedding)."""
    rank = node.output(0).get_partial_shape().rank
    return (node.input_value(0).get_node().get_name() not in live and node.input_value(1).get_node().get_name() in live
            and rank.is_static and rank.get_length() == 3)


def _projection_added(node: ov.Node, live: set[str]) -> bool:
    """An Add of two computed tensors, one of which a linear layer computed (a sublayer's output projection)."""
    inputs = [v.get_node() for v in node.input_values() if v.get_node().get_name() in live]
    return len(inputs) == 2 and any(_linear(_behind_affine(n, live), live) for n in inputs)


def _projections(value: ov.Output, live: set[str], limit: int = 64) -> list[ov.Node]:
    """The linear layers behind an SDPA input, through data movement, the rotary embedding and the KV-cache
    Concat (stopping at any MatMul, variable, parameter or constant)."""
    found, stack, seen = [], [value.get_node()], set()
    while stack and len(seen) < limit:
        node = stack.pop()
        if node.get_name() in seen:
            continue
        seen.add(node.get_name())
        if _linear(node, live):
            found.append(node)
        elif node.get_type_name() not in _STOP and node.get_name() in live:
            stack.extend(v.get_node() for v in node.input_values())
    return found


def _readers(node: ov.Node, live: set[str]) -> list[ov.Node]:
    """The linear layers reading ``node``'s output through data movement only (the output projection)."""
    found, stack = [], list(_consumers(node))
    while stack:
        user = stack.pop()
        if _linear(user, live):
            found.append(user)
        elif user.get_type_name() in DATA_MOVEMENT:
            stack.extend(_consumers(user))
    return found
