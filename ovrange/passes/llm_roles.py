"""Targets by role on a decoder language model (Llama-style blocks), placed where a guard runs inside a kernel the
CPU plugin already runs for the original model, without changing that kernel: the fused ``ScaledDotProductAttention``,
``RMS`` (RMSNorm), ``RoPE`` and ``FullyConnected`` kernels stay, and so do their implementations.

:func:`ovrange.passes.roles.targets_by_role` guards the SDPA inputs, which on an optimum-intel export come through
the rotary embedding and the KV-cache ``Concat``: a guard there makes the plugin split the fused attention and
rotary kernels. On a decoder LM (:func:`is_decoder_lm`) GlobalClipper selects its roles with :func:`llm_targets`:

- ``activation``: the MLP activation (Swish, Gelu...) and the gated-MLP product ``act(gate) * up`` (a Multiply of
  an activation and a linear output); the guards join the gate projection's post-ops (already there for the
  activation) and the product's eltwise kernel;
- ``residual``: each ``Add`` of a sublayer's output projection to the residual stream (the guard joins the Add's
  eltwise kernel). An Add read by the final RMSNorm only is left unguarded: a guard there makes the plugin split
  that RMS kernel (measured);
- ``norm``: no tensor guard. A guard on an RMSNorm output is an eltwise kernel of its own after the fused ``RMS``
  kernel (which takes no post-ops), and on the bundled model it caught no SDC the other guards let through
  (docs/llm.md): the opt-in roles ``final_norm`` (the final RMSNorm's output, read by ``lm_head``) and
  ``layer_norm`` (the decoder layers' RMSNorm outputs) place them;
- ``attention``: no tensor guard. A guard on a q/k/v/o projection's output is a post-op of its ``FullyConnected``,
  which makes the CPU plugin run that layer with oneDNN's brgemm kernel instead of MLAS on f32, at a cost far above
  the clamp's (docs/llm.md, "What the guards cost, and why"); the rotary tensors and the KV cache are inside the
  fused RoPE and SDPA kernels. Their faults stay bounded downstream: the attention output is a softmax-weighted mean
  of the values, and the output projection's result is bounded by the residual Add's guard;
- ``qkv`` (opt-in): the q, k and v projection outputs (a post-op of each ``FullyConnected``);
- ``logits`` (opt-in): the ``lm_head`` output, the logits the next token is chosen from (a post-op of its
  ``FullyConnected``); a far logit goes to 0 instead of winning the arg-max;
- ``linear``, ``pooling``, ``probabilities``: as :func:`targets_by_role` (every constant-weight MatMul output...).

The decoder layers' RMSNorm outputs and the token embedding are not guarded either (each would be an eltwise kernel
of its own per layer): an RMSNorm's output is at most ``sqrt(C) * max|gamma|`` in magnitude whatever its input, and
what a fault there or in the embedding changes reaches a guarded gated product or residual Add.
"""

from __future__ import annotations

from collections.abc import Iterable

import openvino as ov

from ovrange.graph import computed_nodes, node_ids
from ovrange.passes.roles import _behind_affine, _consumers, _follow_affine, targets_by_role
from ovrange.targets import ACTIVATIONS, DATA_MOVEMENT, SDPA, Target, make_target

LLM_ROLES = ("activation", "norm", "residual", "attention")  # the roles this module places differently
# Opt-in roles of the LLM placement only (not defaults: each costs a kernel or a FullyConnected implementation,
# docs/llm.md): the final and the decoder layers' RMSNorm outputs (an eltwise kernel each after the fused RMS kernel;
# no SDC caught on the bundled model), the q, k, v projection outputs and the lm_head output (a post-op of each
# FullyConnected: brgemm instead of MLAS on f32; logits caught SDCs, at a cost past the 3% the default stays within)
LLM_ONLY_ROLES = ("final_norm", "layer_norm", "qkv", "logits")
ROTARY = ("Multiply", "Add", "Subtract", "Negative", "Convert", "Broadcast", *DATA_MOVEMENT)  # q/k/v to SDPA


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
    if "final_norm" in roles or "layer_norm" in roles:
        for node in rms_norms(model):
            final = _read_by_head(_follow_affine(node, live), live)
            if final and "final_norm" in roles or not final and "layer_norm" in roles:
                add(_follow_affine(node, live), "final_norm" if final else "layer_norm")
    if "qkv" in roles:
        for node in ops:
            if _linear(node, live) and _feeds_attention(node):
                add(node, "qkv")
    if "logits" in roles:
        for node in ops:
            if _linear(node, live) and any(user.get_type_name() == "Result" for user in _consumers(node)):
                add(node, "logits")
    if "residual" in roles:
        norm_inputs = {v.get_node().get_name() for n in rms_norms(model) for v in n.input_values()}
        for node in ops:
            if node.get_type_name() == "Add" and _projection_added(node, live) and (
                    node.get_name() not in norm_inputs or any(c.get_type_name() == "Add" for c in _consumers(node))):
                add(node, "residual")
    targets = [make_target(id_of[n.get_name()], id_of[n.get_name()], n, 0, role) for n, role in found.values()]
    rest = roles - set(LLM_ROLES) - set(LLM_ONLY_ROLES)
    others = targets_by_role(model, rest, activations) if rest else []
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


def _projection_added(node: ov.Node, live: set[str]) -> bool:
    """An Add of two computed tensors, one of which a linear layer computed (a sublayer's output projection)."""
    inputs = [v.get_node() for v in node.input_values() if v.get_node().get_name() in live]
    return len(inputs) == 2 and any(_linear(_behind_affine(n, live), live) for n in inputs)


def _feeds_attention(node: ov.Node, depth: int = 12) -> bool:
    """Whether ``node``'s output reaches a ``ScaledDotProductAttention`` through rotary and data-movement ops only
    (a q, k or v projection)."""
    for user in _consumers(node):
        if user.get_type_name() in SDPA:
            return True
        if depth and user.get_type_name() in ROTARY and _feeds_attention(user, depth - 1):
            return True
    return False


def _read_by_head(node: ov.Node, live: set[str], depth: int = 4) -> bool:
    """Whether ``node``'s output reaches a model output through linear layers and data movement only (the final
    norm, read by ``lm_head``), not through an attention or an MLP."""
    for user in _consumers(node):
        if user.get_type_name() == "Result":
            return True
        if depth and (_linear(user, live) or user.get_type_name() in DATA_MOVEMENT) and _read_by_head(
                user, live, depth - 1):
            return True
    return False
