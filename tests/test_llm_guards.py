"""GlobalClipper on a decoder language model: the Llama-style roles (RMSNorm, gated MLP, projections, residual
stream with the embedding) placed where the CPU plugin keeps its fused SDPA, RMS, RoPE and FullyConnected kernels,
on the bundled model's stateful exports, with real compilation and inference."""

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
    # 2 RMSNorms per layer + the final one; q, k, v, o per layer; Swish and the gated product per layer; the
    # embedding and both residual Adds per layer but the last (read by the final RMSNorm only)
    assert roles == {"norm": 2 * LAYERS + 1, "attention": 4 * LAYERS, "activation": 2 * LAYERS,
                     "residual": 1 + 2 * LAYERS - 1}
    by_role = {role: Counter(t.op for t in targets if t.role == role) for role in roles}
    assert by_role["attention"] == {"MatMul": 4 * LAYERS} and by_role["norm"] == {"Multiply": 2 * LAYERS + 1}
    assert by_role["activation"] == {"Swish": LAYERS, "Multiply": LAYERS}
    assert by_role["residual"] == {"Gather": 1, "Add": 2 * LAYERS - 1}
    assert all(t.edge is None and t.feature_axis == 2 for t in targets)  # [N, T, C]: never a per-head tensor
    assert not [t for t in targets if "rotary" in t.name or "self_attn/aten::add" in t.name]  # RoPE's own ops
    # the q/k/v projections, not the rotary frequencies' MatMul (constant first input)
    assert {t.name.split(".")[-1].split("/")[0] for t in targets if t.role == "attention"} == {
        "q_proj", "k_proj", "v_proj", "o_proj"}


def test_llm_roles_are_off_on_other_models_and_on_request(llm):  # noqa: F811
    model = ov.Core().read_model(llm["fp32"] / "openvino_model.xml")
    old = global_clipper.select(model, _defaults(llm=False)).targets
    assert any(t.op == "ScaledDotProductAttention" for t in old)  # the generic placement guards the attention
    block = block_model()  # a transformer block with an SDPA and LayerNorms: the generic placement
    assert not is_decoder_lm(block)
    generic = global_clipper.select(block, _defaults(llm=False)).targets
    assert global_clipper.select(block, _defaults()).targets == generic


def test_protected_llm_keeps_every_fused_kernel_and_the_greedy_text(llm):  # noqa: F811
    xml = llm["fp32"] / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    calibration = text.load(llm["calib_prompts"], model, xml)[:8]
    protected = ovrange.protect(model, calibration, algorithm="GlobalClipper")
    compiled = ov.Core().compile_model(protected, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    layers = Counter(n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops())
    # the fused kernels of the original (tests/test_llm_bench.py): 29 = 7 projections per layer + lm_head
    assert {kind: layers[kind] for kind in KERNELS} == {
        "ScaledDotProductAttention": LAYERS, "RMS": 2 * LAYERS + 1, "RoPE": 2 * LAYERS, "FullyConnected": 29}
    report = fusion_report(compiled, protected)
    # the norms (after the RMS kernel, which takes no post-ops) and the embedding run as small eltwise kernels; the
    # projections, residual Adds and the gated MLP's guards are post-ops of the kernels computing them
    assert report.counts["standalone"] == 2 * LAYERS + 2 and report.counts["fused"] == 31
    prompts = text.load(llm["prompts"], model, xml)[:3]
    clean = generate.generations(model, prompts, 8).argmax(-1)
    assert np.array_equal(generate.generations(protected, prompts, 8).argmax(-1), clean)
