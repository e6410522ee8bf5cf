"""GlobalClipper's guard forms on a small CNN with a softmax head (real OpenVINO, CPU f32): per-channel NCHW guards
whose scale folds into the consuming convolutions, a standalone Minimum/Maximum on logits entering Softmax, and a
weights role that folds away at compile time."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.bench.fusion import fusion_report
from ovrange.bounds import Bound
from ovrange.faults.injectors import WeightInjector
from ovrange.faults.sites import find_sites
from ovrange.graph import inserted_nodes
from ovrange.passes.channel_guards import FOLD_SUFFIX
from ovrange.passes.global_clipper import DEFAULT_ROLES, protected_copy
from ovrange.passes.guards import reset_guard
from ovrange.runtime import compile_model

SHAPE = (3, 8, 8)


def _conv(x, rng, cin: int, cout: int, k: int, name: str, groups: int = 1) -> ov.Node:
    pad = [k // 2] * 2
    if groups == 1:
        w = ops.constant((rng.standard_normal((cout, cin, k, k)) * 0.4).astype(np.float32))
        y = ops.convolution(x, w, [1, 1], pad, pad, [1, 1], name=f"{name}/conv")
    else:  # depthwise: [G, 1, 1, k, k]
        w = ops.constant((rng.standard_normal((groups, 1, 1, k, k)) * 0.4).astype(np.float32))
        y = ops.group_convolution(x, w, [1, 1], pad, pad, [1, 1], name=f"{name}/conv")
    return ops.add(y, ops.constant((rng.standard_normal((1, cout, 1, 1)) * 0.1).astype(np.float32)), name=name)


def cnn() -> ov.Model:
    """conv 3x3 -> relu1 -> {1x1 conv -> relu2 -> depthwise 3x3 -> relu3, and relu1 also into the mean} -> head ->
    Softmax: relu1 feeds a convolution and a non-convolution; relu2 only a (grouped) convolution."""
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, *SHAPE], np.float32, name="image")
    relu1 = ops.relu(_conv(x, rng, 3, 4, 3, "c1"), name="relu1")
    relu2 = ops.relu(_conv(relu1, rng, 4, 6, 1, "c2"), name="relu2")
    relu3 = ops.relu(_conv(relu2, rng, 6, 6, 3, "dw", groups=6), name="relu3")
    axes = ops.constant(np.array([2, 3], np.int64))
    pooled = ops.concat([ops.reduce_mean(relu3, axes, False), ops.reduce_mean(relu1, axes, False)], 1)
    w = ops.constant((rng.standard_normal((5, 10)) * 0.5).astype(np.float32))
    bias = ops.constant(np.zeros(5, np.float32))
    logits = ops.add(ops.matmul(pooled, w, False, True, name="head"), bias, name="logits")
    probs = ops.softmax(logits, 1, name="probs")
    probs.output(0).get_tensor().set_names({"probs"})
    return ov.Model([ops.result(probs)], [x], "cnn")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return compile_model(model, "CPU", precision="f32")(x)[0]


@pytest.fixture(scope="module")
def protected() -> ov.Model:
    # the guards alone (nonfinite: bound): the forms whose fusion these tests check
    return ovrange.protect(cnn(), images(32), algorithm="GlobalClipper", subset_size=32, nonfinite="bound")


def test_nchw_guards_fold_their_scale_into_the_consuming_convolutions(protected):
    nodes = ovrange.protection_info(protected).nodes
    assert nodes["relu1"]["axis"] == 1 and nodes["relu2"]["axis"] == 1 and nodes["relu3"]["axis"] == 1
    folds = sorted(n for n, role in inserted_nodes(protected).items() if n.endswith(FOLD_SUFFIX))
    # relu2 feeds only a convolution: folded; relu1 also feeds the mean, where the unscaled copy would be a kernel of
    # its own (face_landmark: 19 of them), so relu1 keeps the affine form
    assert folds == [f"relu2/to/dw/conv{FOLD_SUFFIX}"]
    assert all(inserted_nodes(protected)[n] == "decode" for n in folds)
    calib = images(32)
    a, b = run(cnn(), calib), run(protected, calib)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # scaled, clamped, scaled back: f32 rounding
    report = fusion_report(compile_model(protected, "CPU", precision="f32"), protected)
    hosts = {c.name.split("/")[0]: c for c in report.clamps}
    for guard in ("relu1", "relu2", "relu3"):
        assert hosts[guard].status == "fused" and hosts[guard].layer_type == "Convolution", hosts[guard]


def test_the_folded_guard_bounds_each_channel_like_an_exact_clamp():
    """Out of range (inputs x30), the folded form of ``beyond: clamp`` gives what exact per-channel Minimum/Maximum
    guards give."""
    protected = ovrange.protect(cnn(), images(32), algorithm="GlobalClipper", subset_size=32, nonfinite="bound",
                                beyond="clamp")
    plan = {key: {**entry, "form": "standalone"} for key, entry in ovrange.protection_info(protected).nodes.items()
            if entry["role"] != "weights"}
    exact = protected_copy(cnn(), plan)
    wild = images(16, seed=3) * 30
    assert not np.allclose(run(cnn(), wild), run(exact, wild), atol=1e-3)  # the bounds do cut here
    np.testing.assert_allclose(run(protected, wild), run(exact, wild), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axis", [1, None])
def test_beyond_zero_keeps_the_range_and_sends_far_values_to_zero_or_the_nearest_bound(axis):
    """``beyond: zero`` (the default): identity inside the bounds, a value far beyond them (a flipped exponent, Inf)
    becomes 0 where 0 is inside the bounds and the bound nearest 0 where it is not; fused like a Clamp."""
    x = ops.parameter([1, 3, 4, 4], np.float32, name="x")
    w = ops.constant(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1))
    conv = ops.convolution(x, w, [1, 1], [0, 0], [0, 0], [1, 1], name="conv")
    model = ov.Model([ops.result(ops.relu(conv, name="relu"))], [x])
    low, high = ([0.0, -2.0, 1.0], [4.0, 2.0, 3.0]) if axis else (-1.0, 5.0)
    entry = {"node": "conv", "type": "Convolution", "role": "linear", "edge": None, "axis": axis, "rank": 4,
             "low": low, "high": high, "samples": 1, "method": "max", "form": "fused", "beyond": "zero"}
    guarded = protected_copy(model, {"conv": entry}, "bound")
    compiled = compile_model(guarded, "CPU", precision="f32")
    far = np.array([0.0, 0.0, 1.0]) if axis else np.zeros(3)  # relu(0, 0, 1): 0 inside [0, 4] and [-2, 2]
    inside = np.array([0.5, -1.5, 2.9]) if axis else np.array([-0.5, 0.5, 4.9])
    for value, expected in ((inside, np.maximum(inside, 0)), (np.full(3, 1e6), far), (np.full(3, 3e38), far),
                            (np.full(3, -1e30), far), (np.full(3, np.inf), far)):
        out = compiled(np.broadcast_to(value.reshape(1, 3, 1, 1), (1, 3, 4, 4)).astype(np.float32))[0]
        np.testing.assert_allclose(out[0, :, 0, 0], expected, atol=1e-5)
        lo, hi = np.broadcast_to(low, 3), np.broadcast_to(high, 3)
        assert np.all(out[0, :, 0, 0] <= np.maximum(hi, 0) + 1e-5) and np.all(out >= 0)
    report = fusion_report(compiled, guarded)
    assert all(c.status == "fused" for c in report.clamps) and report.clamps


@pytest.mark.parametrize("low,high,far", [(-7.0, 5.0, 0.0), (0.5, 5.0, 0.5)])
def test_scalar_beyond_zero_sends_far_values_to_zero_and_keeps_nan_detectable(low, high, far):
    """The ``[N, T, C]`` form of a decoder LM's guards (one bound per tensor, ``nan: inf``): identity inside the
    bounds, a far value (a flipped exponent, +-Inf) to 0 (or the bound nearest 0), a NaN to +Inf (a DUE, not a
    plausible value); fused into the producer's eltwise kernel like a Clamp."""
    a, b = (ops.parameter([1, -1, 8], np.float32, name=n) for n in "ab")
    model = ov.Model([ops.result(ops.add(a, b, name="add"))], [a, b])
    entry = {"node": "add", "type": "Add", "role": "residual", "edge": None, "axis": None, "rank": 3, "low": low,
             "high": high, "samples": 1, "method": "max", "form": "fused", "beyond": "zero", "nan": "inf"}
    guarded = protected_copy(model, {"add": entry}, "bound")
    compiled = compile_model(guarded, "CPU", precision="f32")
    inside = np.random.default_rng(0).uniform(low, high, (1, 64, 8)).astype(np.float32)
    np.testing.assert_allclose(compiled([inside, np.zeros_like(inside)])[0], inside, atol=(high - low) * 1e-6)
    for value, expected in ((1e6, far), (-3e38, far), (np.inf, far), (-np.inf, far), (np.nan, np.inf)):
        x = np.full((1, 2, 8), value, np.float32)
        assert np.all(compiled([x, np.zeros_like(x)])[0] == expected), value
    assert fusion_report(compiled, guarded).counts["fused"] == 1
    assert len(compiled.get_runtime_model().get_ops()) == 4  # two inputs, the Add with its guard, the result


def test_logits_entering_softmax_get_a_standalone_min_max(protected):
    """A fused post-op on a classifier's logits moves an MLAS FullyConnected to oneDNN (docs/transformers.md)."""
    entry = ovrange.protection_info(protected).nodes["logits>probs:0"]
    assert entry["form"] == "standalone" and len(entry["high"]) == 5  # one bound repeated over the classes
    assert len(set(entry["high"])) == 1
    kinds = {n.get_type_name() for n in protected.get_ops() if n.get_friendly_name().startswith("logits/to/probs")}
    assert {"Minimum", "Maximum"} <= kinds and "Clamp" not in kinds
    report = fusion_report(compile_model(protected, "CPU", precision="f32"), protected)
    assert report.names("standalone") == ["logits/to/probs:0/min_max_Clamp", "probs/min_max_Clamp"]


def test_output_probabilities_are_reset_outside_zero_to_one(protected):
    """The Softmax the model returns: bounds [0, 1] known, not observed; clean outputs pass bit-identically (the
    output keeps its name); a value outside, NaN or Inf becomes 0 -- a clamp would make it a confident 1."""
    entry = ovrange.protection_info(protected).nodes["probs"]
    assert (entry["role"], entry["low"], entry["high"], entry["form"]) == ("probabilities", 0.0, 1.0, "reset")
    guard = next(n for n in protected.get_ops() if n.get_friendly_name() == "probs/min_max_Clamp")
    assert guard.get_type_name() == "Select" and protected.output("probs").get_node().input_value(0).get_node() == guard
    without = ovrange.protect(cnn(), images(32), algorithm="GlobalClipper", subset_size=32, nonfinite="bound",
                              targets=[r for r in DEFAULT_ROLES if r != "probabilities"])
    np.testing.assert_array_equal(run(protected, images(16, seed=5)), run(without, images(16, seed=5)))
    x = ops.parameter([9], np.float32)
    reset = ov.Model([ops.result(reset_guard(x, Bound("x", "Parameter", 0.0, 1.0, 1), "x/reset"))], [x])
    values = np.array([np.nan, np.inf, -np.inf, 1e30, 0.3, 1.0, 0.0, -0.2, 1.5], np.float32)
    np.testing.assert_array_equal(run(reset, values), np.array([0, 0, 0, 0, 0.3, 1, 0, 0, 0], np.float32))


def test_weight_sites_and_injection_see_through_the_fold(protected):
    """The stored weights of the folded convolutions stay fault sites; an injector without flips reproduces the
    protected model (the fold's scale is applied after the struck values), with and without the weights role."""
    original = find_sites(cnn(), "weights")
    calib = images(8)
    without = ovrange.protect(cnn(), images(32), algorithm="GlobalClipper", subset_size=32,
                              targets=["activation", "attention"])
    for model in (protected, without):
        sites = find_sites(model, "weights")
        assert [(s.name, s.shape) for s in sites] == [(s.name, s.shape) for s in original]
        injector = WeightInjector(model, sites, [SHAPE])
        clean = run(model, calib[:1])
        np.testing.assert_allclose(injector.run([calib[:1]])[0], clean, rtol=1e-6, atol=1e-7)


def test_the_weights_role_folds_away_at_compile_time():
    """Its NaN filter is Equal(w, w): constant-foldable, so the plugin runs no weight-decoding node per inference
    (IsNaN did not fold: 95 runtime nodes and +0.7% on PP-OCRv4 rec)."""
    bounded = ovrange.protect(cnn(), images(8), algorithm="GlobalClipper", subset_size=8, targets=["weights"])

    def runtime_nodes(model: ov.Model) -> int:
        graph = compile_model(model, "CPU", precision="f32").get_runtime_model()
        return sum(n.get_rt_info()["layerType"].astype(str) != "Const" for n in graph.get_ordered_ops())

    assert runtime_nodes(bounded) == runtime_nodes(cnn())
    np.testing.assert_array_equal(run(bounded, images(8)), run(cnn(), images(8)))


def int8_weights(model: ov.Model, layer: str) -> ov.Model:
    """``model`` with ``layer``'s weight stored as int8: Constant(i8) -> Convert -> Multiply(scale per output)."""
    conv = next(n for n in model.get_ops() if n.get_friendly_name() == layer)
    w = conv.input_value(1).get_node().get_data()
    scale = np.abs(w).reshape(len(w), -1).max(1).reshape(-1, *[1] * (w.ndim - 1)) / 127
    q = ops.constant(np.round(w / scale).astype(np.int8))
    conv.input(1).replace_source_output(ops.multiply(ops.convert(q, ov.Type.f32), ops.constant(
        scale.astype(np.float32))).output(0))
    model.validate_nodes_and_infer_types()
    return model


def test_a_scale_folded_after_a_dequantization_is_decoded_with_it():
    """int8 weights: the injector decodes the stored integers with the dequantization scale *and* the folded one."""
    model = int8_weights(cnn(), "dw/conv")  # relu2 feeds only this (depthwise) convolution: its scale folds
    protected = ovrange.protect(model, images(32), algorithm="GlobalClipper", subset_size=32, targets=["activation"])
    assert f"relu2/to/dw/conv{FOLD_SUFFIX}" in inserted_nodes(protected)
    sites = find_sites(protected, "weights")
    assert {s.name: s.format for s in sites}["dw/conv"] == "int8"
    x = images(1)
    np.testing.assert_allclose(WeightInjector(protected, sites, [SHAPE]).run([x])[0], run(protected, x), rtol=1e-5,
                               atol=1e-6)
