"""GlobalClipper: guards by role on small transformer graphs built with openvino opsets, and on the bundled ViT."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.compare import Judge, SdcCriterion
from ovrange.errors import ConfigError
from ovrange.faults.sites import site_outputs
from ovrange.passes.global_clipper import protected_copy
from ovrange.passes.roles import ROLES, targets_by_role
from ovrange.runtime import compile_model

DIM, HEADS = 8, 2


def _linear(x, rng, cin: int, cout: int, name: str) -> ov.Node:
    w = ops.constant((rng.standard_normal((cout, cin)) * 0.5).astype(np.float32))
    b = ops.constant((rng.standard_normal(cout) * 0.1).astype(np.float32))
    return ops.add(ops.matmul(x, w, False, True, name=f"{name}/MatMul"), b, name=f"{name}/Add")


def _layer_norm(x, rng, name: str) -> ov.Node:
    mvn = ops.mvn(x, ops.constant(np.array([-1], np.int64)), True, 1e-5, "inside_sqrt", name=f"{name}/MVN")
    scale = ops.multiply(mvn, ops.constant((1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)))
    return ops.add(scale, ops.constant((0.1 * rng.standard_normal(DIM)).astype(np.float32)), name=f"{name}/Add")


def _heads(x) -> ov.Node:
    """[N, T, C] -> [N, heads, T, C / heads]"""
    split = ops.reshape(x, ops.constant(np.array([0, 0, HEADS, DIM // HEADS], np.int64)), special_zero=True)
    return ops.transpose(split, ops.constant(np.array([0, 2, 1, 3], np.int64)))


def block_model(decomposed: bool = False, seed: int = 0) -> ov.Model:
    """One pre-norm transformer block on ``[N, T, 8]`` with a dynamic T: LayerNorm (MVN + affine) -> q/k/v linears
    -> attention (an SDPA op, or MatMul/Softmax/MatMul) -> proj -> residual Add -> LayerNorm -> fc1 -> Gelu -> fc2 ->
    residual Add -> mean over T -> linear head ``[N, 3]``."""
    rng = np.random.default_rng(seed)
    x = ops.parameter([-1, -1, DIM], np.float32, name="tokens")
    x.output(0).get_tensor().set_names({"tokens"})
    h = _layer_norm(x, rng, "norm1")
    q, k, v = (_heads(_linear(h, rng, DIM, DIM, name)) for name in ("q", "k", "v"))
    if decomposed:
        scores = ops.multiply(ops.matmul(q, k, False, True, name="scores"),
                              ops.constant(np.float32(1 / np.sqrt(DIM // HEADS))), name="scaled")
        attn = ops.matmul(ops.softmax(scores, -1, name="softmax"), v, False, False, name="context")
    else:
        attn = ops.scaled_dot_product_attention(q, k, v, causal=False, name="sdpa")
    merged = ops.reshape(ops.transpose(attn, ops.constant(np.array([0, 2, 1, 3], np.int64))),
                         ops.constant(np.array([0, 0, DIM], np.int64)), special_zero=True)
    x1 = ops.add(x, _linear(merged, rng, DIM, DIM, "proj"), name="residual1")
    hidden = ops.gelu(_linear(_layer_norm(x1, rng, "norm2"), rng, DIM, 16, "fc1"), "erf", name="gelu")
    x2 = ops.add(x1, _linear(hidden, rng, 16, DIM, "fc2"), name="residual2")
    pooled = ops.reduce_mean(x2, ops.constant(np.array([1], np.int64)), False)
    logits = _linear(pooled, rng, DIM, 3, "head")
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([ops.result(logits)], [x], "block")


def tokens(n: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, t, DIM)).astype(np.float32)


def run_model(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return compile_model(model, "CPU", precision="f32")(x)[0]


def roles_of(model: ov.Model, roles=ROLES) -> Counter:
    return Counter(t.role for t in targets_by_role(model, roles))


def test_roles_of_an_sdpa_block():
    found = {t.id: t for t in targets_by_role(block_model(), ROLES)}
    counts = Counter(t.role for t in found.values())
    # SDPA output; 2 residual Adds; 2 LayerNorms after their affine Add; q, k, v, proj, fc2 and head linears (fc1
    # feeds the Gelu, whose guard covers it); the Gelu. The q/k/v inputs of SDPA are the q/k/v linears' outputs.
    assert counts == {"attention": 1, "residual": 2, "norm": 2, "linear": 6, "activation": 1}
    assert {"norm1/Add", "norm2/Add", "residual1", "residual2", "sdpa", "gelu", "proj/Add"} <= set(found)
    assert "fc1/Add" not in found
    assert all(t.feature_axis == t.rank - 1 for t in found.values())  # [N, T, C] and [N, heads, T, d]: the last axis
    assert found["norm1/Add"].channels == DIM


def test_attention_inputs_hoisted_through_data_movement_or_on_the_edges():
    hoisted = [t.id for t in targets_by_role(block_model(), ["attention"])]
    assert hoisted == ["q/Add", "k/Add", "v/Add", "sdpa"]  # through Reshape + Transpose, fusable into the linear
    edges = [t for t in targets_by_role(block_model(), ["attention"], hoist=False, skip=["attention_output"])]
    assert [t.edge for t in edges] == [("sdpa", 0), ("sdpa", 1), ("sdpa", 2)]
    assert all(t.op == "Transpose" and t.feature_axis == 3 for t in edges)


def test_roles_of_decomposed_attention():
    found = {t.id: t for t in targets_by_role(block_model(decomposed=True), ["attention"])}
    assert list(found) == ["scaled>softmax:0"]  # the scores entering Softmax
    assert found["scaled>softmax:0"].edge == ("softmax", 0)
    # attention weights feed a MatMul (guarded downstream): not the probabilities role, which is for model outputs
    assert targets_by_role(block_model(decomposed=True), ["probabilities"]) == []


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("per_channel", [True, False])
def test_every_role_guarded_and_calibration_outputs_unchanged(decomposed, per_channel):
    model = block_model(decomposed)
    calib = tokens(16, 5)
    protected = ovrange.protect(model, calib, algorithm="GlobalClipper", subset_size=16, targets=list(ROLES),
                                per_channel=per_channel)
    info = ovrange.protection_info(protected)
    assert Counter(n["role"] for n in info.nodes.values()) == roles_of(model)
    widths = {key: len(n["high"]) if isinstance(n["high"], list) else 1 for key, n in info.nodes.items()}
    assert widths["residual1"] == (DIM if per_channel else 1)
    a, b = run_model(model, calib), run_model(protected, calib)
    # bounds are the observed extremes, so the calibration inputs pass unchanged (up to the rounding of a kernel
    # fused differently) and keep their top-1
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_per_channel_with_dynamic_sequence_length():
    model = block_model()
    protected = ovrange.protect(model, tokens(8, 5), algorithm="GlobalClipper", subset_size=8, per_channel=True)
    bounds = ovrange.protection_info(protected).nodes["residual2"]
    assert bounds["axis"] == 2 and len(bounds["high"]) == DIM
    longer = tokens(4, 11, seed=1) * 0.5  # another T, values well inside the range
    assert run_model(protected, longer).shape == (4, 3)


def _guarded_add(nonfinite: str) -> tuple[ov.Model, np.ndarray]:
    x = ops.parameter([1, 4, DIM], np.float32, name="x")
    y = ops.add(x, ops.constant(np.zeros(DIM, np.float32)), name="y")
    model = ov.Model([ops.result(y)], [x])
    plan = {"y": {"node": "y", "type": "Add", "role": "linear", "edge": None, "axis": 2, "rank": 3,
                  "low": [-1.0] * DIM, "high": [2.0] * DIM, "samples": 1, "method": "max"}}
    values = np.tile(np.array([np.nan, np.inf, -np.inf, 1e30, 0.5, -0.5, 3.0, -3.0], np.float32), (1, 4, 1))
    return protected_copy(model, plan, nonfinite), values


@pytest.mark.parametrize("nonfinite, nan_becomes", [("bound", -1.0), ("zero", 0.0)])
def test_nonfinite_values_do_not_survive_a_guard(nonfinite, nan_becomes):
    model, values = _guarded_add(nonfinite)
    out = run_model(model, values)[0, 0]
    assert np.isfinite(out).all()
    # a per-channel guard scales each channel to [-1, 1] and back: exact up to f32 rounding
    np.testing.assert_allclose(out, [nan_becomes, 2.0, -1.0, 2.0, 0.5, -0.5, 2.0, -1.0], rtol=1e-6, atol=1e-6)


def test_nonfinite_keep_lets_nan_and_inf_through_for_a_runtime_check():
    model, values = _guarded_add("keep")
    out = run_model(model, values)[0, 0]
    assert np.isnan(out[0]) and np.array_equal(out[1:], [np.inf, -np.inf, 2.0, 0.5, -0.5, 2.0, -1.0])


def test_a_fault_in_a_linear_output_is_cut_by_the_residual_guard():
    model = block_model()
    calib = tokens(16, 5)
    protected = ovrange.protect(model, calib, algorithm="GlobalClipper", subset_size=16, per_channel=True)
    # a huge value in the proj output (as an exponent-bit flip makes) reaches the guarded residual Add
    faulty = {}
    for label, m in (("original", model), ("protected", protected)):
        clone = m.clone()
        node = next(n for n in clone.get_ordered_ops() if n.get_friendly_name() == "proj/Add")
        spike = ops.constant(np.pad(np.array([[[3e8]]], np.float32), ((0, 0), (0, 4), (0, DIM - 1))))
        bad = ops.add(node, spike)
        for target in [t for t in node.output(0).get_target_inputs() if t.get_node() != bad]:
            target.replace_source_output(bad.output(0))
        faulty[label] = run_model(clone, calib[:1])
    golden = run_model(model, calib[:1])
    assert np.abs(faulty["original"] - golden).max() > 1e3
    assert np.abs(faulty["protected"] - golden).max() < 10 * np.abs(golden).max()


def test_bad_combinations_are_config_errors():
    with pytest.raises(ConfigError, match="unknown target role"):
        ovrange.protect(block_model(), tokens(2, 3), algorithm="GlobalClipper", targets=["attention", "mlp"])
    x = ops.parameter([4], np.float32, name="x")
    flat = ov.Model([ops.result(ops.relu(ops.add(x, ops.constant(np.ones(4, np.float32)))))], [x])
    with pytest.raises(ConfigError, match="per-channel bounds need a feature axis"):
        ovrange.protect(flat, np.ones((2, 4), np.float32), algorithm="GlobalClipper", subset_size=2,
                        per_channel=True)
    with pytest.raises(ConfigError, match="nonfinite"):
        ovrange.protect(block_model(), tokens(2, 3), algorithm="GlobalClipper", nonfinite="drop")
    with pytest.raises(ConfigError, match="must be true, false or nchw"):
        ovrange.protect(block_model(), tokens(2, 3), algorithm="GlobalClipper", per_channel="nhwc")


def test_cli_rejects_an_unknown_role_in_one_line(tmp_path: Path):
    ov.save_model(block_model(), str(tmp_path / "m.xml"), compress_to_fp16=False)
    np.save(tmp_path / "calib.npy", tokens(4, 5))
    done = subprocess.run([sys.executable, "-m", "ovrange", "protect", str(tmp_path / "m.xml"), "--data",
                           str(tmp_path / "calib.npy"), "-a", "GlobalClipper", "--param", "targets=[mlp]", "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_sdpa_output_is_a_fault_site():
    names = set(site_outputs(block_model(), "activations"))
    assert {"sdpa", "norm1/MVN", "gelu"} <= names
    assert "softmax" in set(site_outputs(block_model(decomposed=True), "activations"))


def test_boxes_criterion_counts_flipped_pixels_of_the_binarized_map():
    golden = np.full((3, 1, 4, 4), 0.1, np.float32)
    golden[:, :, 1:3, 1:3] = 0.9
    faulty = golden.copy()
    faulty[1, 0, 0, 0] = 0.35  # one pixel crosses 0.3
    faulty[2, 0, 0, 0] = 0.29  # moves, but stays below 0.3
    codes, _, _ = Judge(SdcCriterion.parse("boxes")).classify(golden, faulty)
    assert codes.tolist() == [0, 1, 0]  # masked, SDC, masked
    codes, _, _ = Judge(SdcCriterion.parse("boxes:1")).classify(golden, faulty)
    assert codes.tolist() == [0, 0, 0]
    assert str(SdcCriterion.parse("boxes:4")) == "boxes:4"
    with pytest.raises(ConfigError):
        SdcCriterion.parse("boxes:0.5")


@pytest.fixture(scope="module")
def vit() -> dict[str, Path]:
    from scripts.build_vit import build_vit

    return build_vit(Path(__file__).resolve().parent.parent / "build", log=False)


def test_bundled_vit_is_a_users_export(vit):
    from scripts.build_default_model import op_type_counts

    counts = op_type_counts(ov.Core().read_model(str(vit["xml"])))
    assert counts["ScaledDotProductAttention"] == 4 and counts["MVN"] == 9 and counts["Gelu"] == 4


def test_protected_vit_agrees_with_the_original(vit):
    model = ov.Core().read_model(str(vit["xml"]))
    calib = np.load(vit["calib_npz"])["x"][:300].astype(np.float32)
    test = np.load(vit["test_npz"])["x"][:2000].astype(np.float32)
    protected = ovrange.protect(model, calib, algorithm="GlobalClipper", subset_size=300, stat_batch_size=50)
    info = ovrange.protection_info(protected)
    assert set(Counter(n["role"] for n in info.nodes.values())) == {"activation", "norm", "residual", "attention",
                                                                         "weights"}
    assert (run_model(model, test).argmax(1) == run_model(protected, test).argmax(1)).all()
    np.testing.assert_array_equal(run_model(model, calib[:50]), run_model(protected, calib[:50]))


def test_ppocr_rec_reads_the_same_text_with_global_clipper():
    from ovrange.modelio import read_model
    from scripts import ocr_data

    model = read_model(ocr_data.rec_model_path())
    protected = ovrange.protect(model, ocr_data.calibration_inputs(32, seed=0), algorithm="GlobalClipper",
                                subset_size=32, nonfinite="bound")  # the guards alone: the forms that fuse
    roles = Counter(n["role"] for n in ovrange.protection_info(protected).nodes.values())
    assert roles["attention"] >= 4 and roles["norm"] == 5 and roles["residual"] >= 4  # the SVTR neck is guarded
    texts = ocr_data.sample_texts(16, seed=123)  # unseen lines
    images = np.concatenate([ocr_data.preprocess(ocr_data.render_line(t)) for t in texts])
    assert ocr_data.recognize(protected, images) == ocr_data.recognize(model, images)
    # the fusion report names every guard: the CPU plugin's attention fusion rewrites the guard on the scaled q
    # together with its MatMul into a node it names itself; the report finds it through the consumer
    from ovrange.bench.fusion import fusion_report
    from ovrange.bench.shapes import static_shapes, with_static_shapes

    fixed = with_static_shapes(protected, static_shapes(protected, {protected.inputs[0].get_any_name(): [1, 3, 48,
                                                                                                          320]}))
    counts = fusion_report(compile_model(fixed, "CPU", precision="f32"), fixed).counts
    assert counts["not found"] == 0 and counts["fused"] >= counts["standalone"] > 0


def test_ppocr_det_maps_identical_on_unseen_pages():
    from ovrange.modelio import read_model
    from scripts import ocr_det

    model = read_model(ocr_det.det_model_path())
    protected = ovrange.protect(model, ocr_det.pages(64, seed=0), algorithm="GlobalClipper", subset_size=64,
                                stat_batch_size=8, margin=0.25, per_channel=False)  # as docs/transformers.md
    pages = ocr_det.pages(12, seed=123)
    original = ocr_det.binary_maps(model, pages)
    assert original.mean() > 0.02  # the pages hold text the model finds
    np.testing.assert_array_equal(ocr_det.binary_maps(protected, pages), original)


def conv_then_tokens() -> ov.Model:
    """Conv -> Relu on NCHW ``[N, 4, 6, 6]``, then the pixels as tokens ``[N, 36, 4]`` -> linear (+bias) -> Relu ->
    mean -> head: one NCHW target and one ``[N, T, C]`` target of the activation role."""
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, 3, 6, 6], np.float32, name="image")
    w = ops.constant((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32))
    h = ops.relu(ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1], name="conv"), name="relu_nchw")
    t = ops.transpose(ops.reshape(h, ops.constant(np.array([0, 4, -1], np.int64)), True),
                      ops.constant(np.array([0, 2, 1], np.int64)))
    t = ops.relu(_linear(t, rng, 4, 8, "fc"), name="relu_tokens")
    logits = _linear(ops.reduce_mean(t, ops.constant(np.array([1], np.int64)), False), rng, 8, 3, "head")
    return ov.Model([ops.result(logits)], [x], "conv_then_tokens")


def test_default_bounds_are_per_channel_on_nchw_only_and_fuse_into_the_convolution():
    from ovrange.bench.fusion import fusion_report

    model = conv_then_tokens()
    calib = np.random.default_rng(1).standard_normal((16, 3, 6, 6)).astype(np.float32)
    protected = ovrange.protect(model, calib, algorithm="GlobalClipper", subset_size=16, nonfinite="bound")
    nodes = ovrange.protection_info(protected).nodes
    assert nodes["relu_nchw"]["axis"] == 1 and len(nodes["relu_nchw"]["high"]) == 4
    assert nodes["relu_tokens"]["axis"] is None  # [N, T, C]: one bound (the default, "nchw")
    a, b = run_model(model, calib), run_model(protected, calib)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # the per-channel guard rounds (scale, shift, back)
    assert (a.argmax(1) == b.argmax(1)).all()
    report = fusion_report(compile_model(protected, "CPU", precision="f32"), protected)
    hosts = {c.name.split("/")[0]: c for c in report.clamps}
    assert report.counts["standalone"] == 0 and report.counts["not found"] == 0
    assert hosts["relu_nchw"].layer_type == "Convolution" and "conv" in hosts["relu_nchw"].fused_with


def test_per_channel_guard_on_a_linear_output_fuses_and_still_bounds_each_channel():
    from ovrange.bench.fusion import fusion_report

    model = conv_then_tokens()
    calib = np.random.default_rng(1).standard_normal((16, 3, 6, 6)).astype(np.float32)
    protected = ovrange.protect(model, calib, algorithm="GlobalClipper", subset_size=16, per_channel=True,
                                nonfinite="bound")  # the guard alone: the form that fuses
    entry = ovrange.protection_info(protected).nodes["relu_tokens"]
    assert entry["axis"] == 2 and len(entry["high"]) == 8
    report = fusion_report(compile_model(protected, "CPU", precision="f32"), protected)
    host = next(c for c in report.clamps if c.name.startswith("relu_tokens"))
    assert host.status == "fused" and host.layer_type == "FullyConnected"
    # every channel is cut at its own bound: a huge input saturates each channel's output at (about) its high
    plan = {"relu_tokens": {**entry, "node": "fc/Add"}}
    probe = protected_copy(positive_linear(), plan)
    out = run_model(probe, np.full((1, 5, 4), 1e6, np.float32))[0]
    np.testing.assert_allclose(out, np.tile(entry["high"], (5, 1)), rtol=1e-6)


def positive_linear() -> ov.Model:
    """x ``[N, T, 4]`` (dynamic T) -> linear 4 -> 8 with positive weights (named ``fc/Add``, as in conv_then_tokens)."""
    x = ops.parameter([-1, -1, 4], np.float32, name="x")
    y = ops.add(ops.matmul(x, ops.constant(np.ones((8, 4), np.float32)), False, True), ops.constant(np.zeros(8,
                np.float32)), name="fc/Add")
    return ov.Model([ops.result(y)], [x], "linear")


def softmax_classifier() -> ov.Model:
    """x ``[N, 4]`` -> linear 4 -> 3 -> Softmax, returned (the model's probabilities)."""
    x = ops.parameter([-1, 4], np.float32, name="x")
    logits = ops.matmul(x, ops.constant(np.ones((4, 3), np.float32)), False, False, name="fc")
    return ov.Model([ops.result(ops.softmax(logits, 1, name="probs"))], [x], "classifier")


def test_one_target_one_role_vocabulary_for_both_selectors():
    from ovrange.targets import ROLES as TARGET_ROLES
    from ovrange.targets import find_targets

    model = softmax_classifier()
    every = {t.id: t for t in find_targets(model)}
    assert "probabilities" in TARGET_ROLES and set(ROLES) <= set(TARGET_ROLES)
    assert every["probs"].role == "probabilities" and every["fc"].role == "linear"
    by_role = {t.id: t for t in targets_by_role(model, ["linear", "probabilities"])}
    assert sorted(by_role) == ["fc", "probs"]
    for key, target in by_role.items():  # the same tensor: the same node, layout and role in both
        assert (target.node, target.op, target.role, target.rank, target.feature_axis, target.channels) == (
            every[key].node, every[key].op, every[key].role, every[key].rank, every[key].feature_axis,
            every[key].channels)


def se_gate() -> ov.Model:
    """Conv -> HardSigmoid (an SE block's gate, as ONNX exports it) on ``[N, 4, 4, 4]``: the gate's calibration
    values fill a narrow part of [0, 1] when the inputs are small."""
    w = ops.constant((np.random.default_rng(0).standard_normal((4, 3, 1, 1)) * 0.3).astype(np.float32))
    conv = ops.convolution(ops.parameter([-1, 3, 4, 4], np.float32, name="image"), w, [1, 1], [0, 0], [0, 0],
                           [1, 1], name="conv")
    gate = ops.hard_sigmoid(conv, ops.constant(np.float32(0.2)), ops.constant(np.float32(0.5)), name="gate")
    return ov.Model([ops.result(gate)], [conv.input_value(0).get_node()], "se_gate")


@pytest.mark.parametrize("per_channel", [False, "nchw"])
def test_a_saturating_activation_is_bounded_by_its_own_range(per_channel):
    """A HardSigmoid can only answer in [0, 1]: its guard is that range, so an input larger than every calibration
    input passes unchanged; a bound learned from data (``inherent_bounds: false``) clips it."""
    model = se_gate()
    rng = np.random.default_rng(1)
    calib = (0.5 * rng.standard_normal((16, 3, 4, 4))).astype(np.float32)
    unseen = 8 * calib[:2]  # the gate reaches 0 and 1 here
    kwargs = dict(algorithm="GlobalClipper", subset_size=16, holdout=0, per_channel=per_channel, nonfinite="bound")
    protected = ovrange.protect(model, calib, **kwargs)
    entry = ovrange.protection_info(protected).nodes["gate"]
    assert (entry["low"], entry["high"], entry["method"]) == (0.0, 1.0, "inherent")
    original = run_model(model, unseen)
    assert original.min() == 0 and original.max() == 1
    np.testing.assert_array_equal(run_model(protected, unseen), original)
    learned = ovrange.protect(model, calib, inherent_bounds=False, **kwargs)
    assert ovrange.protection_info(learned).nodes["gate"]["method"] != "inherent"
    assert not np.array_equal(run_model(learned, unseen), original)
