"""BoundedWeights on real OpenVINO inference: graph rewrite, reconstruction error, and bit flips in theta."""

from __future__ import annotations

from collections import Counter

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.config import make_algorithm, parse_config
from ovrange.errors import ConfigError, ModelError
from tests.models import node_by_name
from ovrange.passes.bounded_weights import (GAIN_SUFFIX, SCALE_SUFFIX, THETA_SUFFIX, WEIGHT_SUFFIX, bounded_theta,
                                            folded)
from tests.models import SEVEN_LAYERS, no_activation_model, seven_activation_model, seven_calibration

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return seven_calibration()


@pytest.fixture(scope="module")
def protected(calib):
    return ovrange.protect(seven_activation_model(), calib, algorithm="BoundedWeights")


def compile_f32(model: ov.Model) -> ov.CompiledModel:
    return ov.Core().compile_model(model, "CPU", F32)


def original_weight(model: ov.Model, layer: str) -> np.ndarray:
    return np.array(node_by_name(model, layer).input_value(1).get_node().get_data())


def chain_parts(model: ov.Model, layer: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(theta, s, g) read back from a protected layer's graph."""
    theta = bounded_theta(model, node_by_name(model, layer))
    scale = node_by_name(model, layer + SCALE_SUFFIX).get_data()
    gain_ops = [op for op in model.get_ops() if op.get_friendly_name() == layer + GAIN_SUFFIX]
    gain = float(gain_ops[0].input_value(1).get_node().get_data()) if gain_ops else 1.0
    return np.array(theta.get_data()), np.array(scale), gain


def with_constant(model: ov.Model, name: str, values: np.ndarray) -> ov.Model:
    """A clone whose Constant ``name`` holds ``values`` (a memory fault in that constant)."""
    clone = model.clone()
    old = node_by_name(clone, name)
    new = ops.constant(values.astype(np.float32), name=name)
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(new.output(0))
    return clone


def flip(values: np.ndarray, index: tuple[int, ...], bit: int) -> np.ndarray:
    flipped = values.astype(np.float32).copy()
    flipped.view(np.uint32)[index] ^= np.uint32(1 << bit)
    return flipped


# ---------------------------------------------------------------------------------------------------------------
# Graph


def test_every_weight_layer_reads_s_tanh_g_theta(protected):
    added = Counter(op.get_type_name() for op in protected.get_ops()) - Counter(
        op.get_type_name() for op in seven_activation_model().get_ops())
    # per layer: Multiply (gain 2: scale_margin 1.05 puts artanh(1/1.05) = 1.86 above 1), Tanh, Multiply (s)
    assert {k: v for k, v in added.items() if k != "Constant"} == {"Multiply": 16, "Tanh": 8}
    original = seven_activation_model()
    for layer in SEVEN_LAYERS:
        node = node_by_name(protected, layer)
        weight = node.input_value(1).get_node()
        assert (weight.get_type_name(), weight.get_friendly_name()) == ("Multiply", layer + WEIGHT_SUFFIX)
        theta = bounded_theta(protected, node)
        assert theta.get_friendly_name() == layer + THETA_SUFFIX
        assert tuple(theta.get_output_shape(0)) == original_weight(original, layer).shape
        assert np.abs(theta.get_data()).max() < 1.0  # no single bit flip can make a stored theta NaN
    conv_scale = node_by_name(protected, "conv_Relu" + SCALE_SUFFIX).get_data()
    assert conv_scale.shape == (4, 1, 1, 1)  # per output channel
    assert node_by_name(protected, "logits" + SCALE_SUFFIX).get_data().shape == (1, 5)
    info = ovrange.protection_info(protected)
    assert set(info.nodes) == set(SEVEN_LAYERS) and info.nodes["logits"]["gain"] == 2.0


def test_large_margin_needs_no_gain(calib):
    model = ovrange.protect(seven_activation_model(), calib, algorithm="BoundedWeights", scale_margin=1.5,
                            granularity="layer")
    types = Counter(op.get_type_name() for op in model.get_ops())
    assert types["Multiply"] == 8  # artanh(1 / 1.5) = 0.80 < 1: theta is stored as is
    assert node_by_name(model, "conv_Relu" + SCALE_SUFFIX).get_data().shape == (1, 1, 1, 1)
    theta, scale, gain = chain_parts(model, "conv_Relu")
    assert gain == 1.0 and np.abs(theta).max() < 1.0
    assert float(scale.max()) == pytest.approx(1.5 * np.abs(original_weight(seven_activation_model(),
                                                                             "conv_Relu")).max(), rel=1e-6)


def test_group_convolution_transposed_matmul_and_f16_weights():
    rng = np.random.default_rng(3)
    x = ops.parameter([1, 4, 5, 5], np.float32, name="input")
    gw = ops.constant((rng.standard_normal((2, 3, 2, 3, 3)) * 0.3).astype(np.float32))
    group = ops.group_convolution(x, gw, [1, 1], [0, 0], [0, 0], [1, 1], name="group")
    flat = ops.reshape(group, ops.constant(np.array([1, -1], np.int64)), special_zero=False)
    half = ops.convert(ops.constant((rng.standard_normal((7, 54)) * 0.2).astype(np.float16)), "f32")
    head = ops.matmul(flat, half, False, True, name="head")
    model = ov.Model([ops.result(head)], [x], "mixed")
    data = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)
    protected = ovrange.protect(model, data, algorithm="BoundedWeights")
    assert node_by_name(protected, "group" + SCALE_SUFFIX).get_data().shape == (2, 3, 1, 1, 1)
    assert node_by_name(protected, "head" + SCALE_SUFFIX).get_data().shape == (7, 1)  # transpose_b: rows
    assert bounded_theta(protected, node_by_name(protected, "head")).get_element_type() == ov.Type.f16  # kept
    assert bounded_theta(protected, node_by_name(protected, "group")).get_element_type() == ov.Type.f32
    a, b = compile_f32(model)(data[:1])[0], compile_f32(protected)(data[:1])[0]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3 * np.abs(a).max())  # theta rounded to fp16


def test_model_without_constant_weights_is_an_error():
    x = ops.parameter([1, 4], np.float32, name="input")
    y = ops.parameter([4, 2], np.float32, name="weights")
    model = ov.Model([ops.result(ops.matmul(x, y, False, False))], [x, y], "dynamic_weights")
    with pytest.raises(ModelError, match="nothing to protect"):
        ovrange.protect(model, [(np.ones((1, 4), np.float32), np.ones((4, 2), np.float32))],
                        algorithm="BoundedWeights")


def test_protects_a_model_without_activations():
    protected = ovrange.protect(no_activation_model(), np.ones((3, 4), np.float32), algorithm="BoundedWeights")
    theta = bounded_theta(protected, node_by_name(protected, "mm"))
    original = node_by_name(no_activation_model(), "mm").input_value(1).get_node().get_data()
    assert theta is not None and theta.get_data().shape == original.shape and np.isfinite(theta.get_data()).all()


def test_input_model_is_not_modified(calib):
    model = seven_activation_model()
    before = Counter(op.get_type_name() for op in model.get_ops())
    ovrange.protect(model, calib, algorithm="BoundedWeights")
    assert Counter(op.get_type_name() for op in model.get_ops()) == before


# ---------------------------------------------------------------------------------------------------------------
# Accuracy


def test_reconstruction_error_is_about_one_ulp_and_reported(protected):
    info = ovrange.protection_info(protected)
    original = seven_activation_model()
    for layer in SEVEN_LAYERS:
        w = original_weight(original, layer)
        rebuilt = folded(*chain_parts(protected, layer))
        error = np.abs(rebuilt.astype(np.float64) - w)
        assert np.all(error <= 2 * np.spacing(np.abs(w).max()))
        reported = info.report["reconstruction"]["layers"][layer]
        assert reported["max_abs_error"] == float(error.max())
    assert info.report["reconstruction"]["max_rel_error"] < 1e-6


def test_cpu_plugin_folds_the_chain_into_the_reconstructed_weight(protected, calib):
    """The compiled protected model computes exactly the original model with the reconstructed weights."""
    reference = seven_activation_model()
    for layer in SEVEN_LAYERS:
        rebuilt = folded(*chain_parts(protected, layer))
        node_by_name(reference, layer).input(1).replace_source_output(ops.constant(rebuilt).output(0))
    assert np.array_equal(compile_f32(protected)(calib)[0], compile_f32(reference)(calib)[0])


def test_calibration_outputs_within_tolerance(protected, calib):
    report = ovrange.protection_info(protected).report["calibration_outputs"]
    assert report["samples"] == len(calib) and report["argmax_changed"] == 0
    assert report["max_rel_diff"]["logits"] < 1e-5
    a, b = compile_f32(seven_activation_model())(calib)[0], compile_f32(protected)(calib)[0]
    assert float(np.abs(a.astype(np.float64) - b).max()) == report["max_abs_diff"]["logits"]


# ---------------------------------------------------------------------------------------------------------------
# Protective effect


def test_exponent_msb_flip_in_theta_is_harmless_but_destroys_a_plain_weight(protected, calib):
    layer = "conv_Swish"
    original = seven_activation_model()
    w = original_weight(original, layer)
    index = np.unravel_index(np.argmax(np.abs(w)), w.shape)  # the most exposed weight
    theta, _, _ = chain_parts(protected, layer)
    clean = compile_f32(original)(calib)[0]
    plain = compile_f32(with_constant(original, f"{layer}/weights", flip(w, index, 30)))(calib)[0]
    guarded = compile_f32(with_constant(protected, layer + THETA_SUFFIX, flip(theta, index, 30)))(calib)[0]
    scale = np.abs(clean).max()
    assert not np.all(np.isfinite(plain)) or np.abs(plain - clean).max() > 1e6 * scale
    assert np.all(np.isfinite(guarded))
    assert np.abs(guarded - clean).max() < 0.5 * scale


@pytest.mark.parametrize("layer", ["conv_Relu", "logits"])
def test_no_bit_flip_in_theta_leaves_the_saturation_range(protected, layer):
    """Every one of the 32 bits of every theta: the weight stays finite and within [-s, s]."""
    theta, scale, gain = chain_parts(protected, layer)
    for bit in range(32):
        flipped = theta.copy()
        flipped.view(np.uint32)[...] ^= np.uint32(1 << bit)
        weights = folded(flipped, scale, gain)
        assert np.all(np.isfinite(weights)), bit
        assert np.all(np.abs(weights) <= np.broadcast_to(scale, weights.shape)), bit


def test_runtime_theta_parameter_as_the_weight_injector_uses_it(protected, calib):
    """theta as a Parameter (how the weight injector sees a site): tanh runs at inference time, same bound."""
    layer = "conv_Relu"
    clone = protected.clone()
    theta_node = bounded_theta(clone, node_by_name(clone, layer))
    values = np.array(theta_node.get_data())
    param = ops.parameter(list(values.shape), np.float32, name="theta_in")
    for target in list(theta_node.output(0).get_target_inputs()):
        target.replace_source_output(param.output(0))
    clone.add_parameters([param])
    clone.validate_nodes_and_infer_types()
    compiled = compile_f32(clone)
    clean = compile_f32(protected)(calib[:1])[0]
    runtime = compiled([calib[:1], values])[0]
    np.testing.assert_allclose(runtime, clean, rtol=1e-5, atol=1e-5)  # runtime tanh kernel vs folded: ~1 ulp
    faulty = compiled([calib[:1], flip(values, (0, 0, 1, 1), 30)])[0]
    assert np.all(np.isfinite(faulty)) and np.abs(faulty - clean).max() < 0.5 * np.abs(clean).max()


# ---------------------------------------------------------------------------------------------------------------
# Configuration


def test_selected_from_a_config_file():
    config = parse_config({"compression": {"algorithms": [
        {"name": "BoundedWeights", "params": {"scale_margin": 1.2, "granularity": "layer"}}]}})
    assert config.algorithm.name == "BoundedWeights"
    assert config.algorithm.params["scale_margin"] == 1.2 and config.algorithm.params["granularity"] == "layer"


@pytest.mark.parametrize("params, message", [
    ({"scale_margin": 1.0}, "must be > 1"),
    ({"scale_margin": 0.5}, "must be > 1"),
    ({"scale_margin": "big"}, "must be float"),
    ({"granularity": "row"}, "must be one of channel, layer"),
    ({"margin": 1.1}, "unknown parameter 'margin'"),
])
def test_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        make_algorithm("BoundedWeights", params, "test")
