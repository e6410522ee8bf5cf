"""GlobalClipper on a decoder language model: the Llama-style roles (gated MLP, residual stream; the RMSNorm outputs,
q/k/v projections and logits opt-in) placed where the CPU plugin keeps its fused SDPA, RMS, RoPE and FullyConnected
kernels and their implementations, on the bundled model's stateful exports, with real compilation and inference."""

from __future__ import annotations

from collections import Counter

import numpy as np
import openvino as ov
import pytest

import ovrange
from ovrange import generate, text
from ovrange.bench.fusion import fusion_report
from ovrange.bench.llm import KERNELS
from ovrange.params import COMMON_PARAMS
from ovrange.passes import global_clipper
from ovrange.passes.llm_roles import is_decoder_lm, rms_norms
from tests.test_global_clipper import block_model
from tests.test_llm_fixture import llm  # noqa: F401 - the session fixture that builds build/llm

LAYERS = 4  # the bundled model's decoder layers


def _defaults(**changes: object) -> dict:
    return {**{k: p.default for k, p in {**COMMON_PARAMS, **global_clipper.PARAMS}.items()}, **changes}


@pytest.mark.parametrize("export", ["fp32", "int8"])
def test_llm_roles_guard_the_llama_blocks_and_no_fused_kernel_input(llm, export):  # noqa: F811
    model = ov.Core().read_model(llm[export] / "openvino_model.xml")
    assert is_decoder_lm(model) and len(rms_norms(model)) == 2 * LAYERS + 1
    targets = global_clipper.select(model, _defaults()).targets
    roles = Counter(t.role for t in targets)
    # Swish and the gated product per layer; both residual Adds per layer but the last (read by the final RMSNorm
    # only). No projection output (a post-op would change the FC kernel), no norm or embedding (a kernel each)
    assert roles == {"activation": 2 * LAYERS, "residual": 2 * LAYERS - 1}
    by_role = {role: Counter(t.op for t in targets if t.role == role) for role in roles}
    assert by_role["activation"] == {"Swish": LAYERS, "Multiply": LAYERS}
    assert by_role["residual"] == {"Add": 2 * LAYERS - 1}
    assert all(t.edge is None and t.feature_axis == 2 for t in targets)  # [N, T, C]: never a per-head tensor
    assert not [t for t in targets if "self_attn" in t.name]  # no projection, rotary or attention tensor


def test_opt_in_llm_roles_guard_the_layer_norms_the_qkv_projections_and_the_logits(llm):  # noqa: F811
    model = ov.Core().read_model(llm["fp32"] / "openvino_model.xml")
    targets = global_clipper.select(model, _defaults(targets=["final_norm", "layer_norm", "qkv", "logits"])).targets
    assert Counter(t.role for t in targets) == {"final_norm": 1, "layer_norm": 2 * LAYERS, "qkv": 3 * LAYERS,
                                                "logits": 1}
    assert [t.name for t in targets if t.role == "final_norm"] == ["__module.model.norm/aten::mul/Multiply_1"]
    assert [t.name for t in targets if t.role == "logits"] == ["__module.lm_head/aten::linear/MatMul"]
    assert {t.name.split(".")[-1].split("/")[0] for t in targets if t.role == "qkv"} == {"q_proj", "k_proj", "v_proj"}
    assert all("layernorm/" in t.name for t in targets if t.role == "layer_norm")  # not the final norm
    plan = global_clipper.make_plan(targets, [-1.0] * len(targets), [1.0] * len(targets), 1, beyond="zero",
                                   scalar_zero=True)
    assert {(e["beyond"], e["nan"], e["axis"]) for e in plan.values()} == {("zero", "inf", None)}


def test_llm_roles_are_off_on_other_models_and_on_request(llm):  # noqa: F811
    model = ov.Core().read_model(llm["fp32"] / "openvino_model.xml")
    old = global_clipper.select(model, _defaults(llm=False)).targets
    assert any(t.op == "ScaledDotProductAttention" for t in old)  # the generic placement guards the attention
    block = block_model()  # a transformer block with an SDPA and LayerNorms: the generic placement
    assert not is_decoder_lm(block)
    generic = global_clipper.select(block, _defaults(llm=False)).targets
    assert global_clipper.select(block, _defaults()).targets == generic


def _kernels(model: ov.Model, prompt: np.ndarray) -> tuple[Counter, Counter, ov.CompiledModel]:
    """The runtime layer types of ``model`` compiled in f32, the implementation each FullyConnected ran with in a
    prefill and a decode step (the profiler's exec type: MLAS, brgemm...), and the compiled model."""
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"})
    layers = Counter(n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops())
    request = compiled.create_infer_request()
    kinds: Counter = Counter()
    roles = generate.input_roles(model)
    for past, ids in ((0, prompt), (prompt.size, prompt[-1:])):
        request.infer(generate._arrays(model, roles, ids, past))
        kinds.update(p.exec_type for p in request.profiling_info if p.node_type.startswith("FullyConnected"))
    return layers, kinds, compiled


def test_protected_llm_keeps_every_fused_kernel_its_implementation_and_the_greedy_text(llm):  # noqa: F811
    xml = llm["fp32"] / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    calibration = text.load(llm["calib_prompts"], model, xml)[:8]
    protected = ovrange.protect(model, calibration, algorithm="GlobalClipper")
    prompts = text.load(llm["prompts"], model, xml)[:3]
    layers, kinds, compiled = _kernels(protected, prompts[0])
    original, original_kinds, _ = _kernels(model, prompts[0])
    # the fused kernels of the original (tests/test_llm_bench.py): 29 = 7 projections per layer + lm_head
    assert {kind: layers[kind] for kind in KERNELS} == {
        "ScaledDotProductAttention": LAYERS, "RMS": 2 * LAYERS + 1, "RoPE": 2 * LAYERS, "FullyConnected": 29}
    # every FullyConnected runs with the original's implementation (a post-op moves an f32 FC from MLAS to brgemm)
    assert kinds == original_kinds and sum(kinds.values()) == 2 * 29
    # the original's runtime graph, layer for layer: every guard runs inside a kernel the original has
    assert layers == original
    report = fusion_report(compiled, protected)
    assert report.counts["standalone"] == 0 and report.counts["fused"] == 2 * LAYERS + 2 * LAYERS - 1
    clean = generate.generations(model, prompts, 8).argmax(-1)
    assert np.array_equal(generate.generations(protected, prompts, 8).argmax(-1), clean)
