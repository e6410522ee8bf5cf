"""GradientSuppression on real OpenVINO inference: statistics, graph structure, clean outputs, suppression."""

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
from ovrange.passes.gradient_suppression import SUFFIX, RunningMoments
from tests.models import activation_output_model, no_activation_model, seven_activation_model

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
C, H, W = 4, 6, 6


def two_layer_model() -> ov.Model:
    """input -> conv1 -> Relu 'act1' -> conv2 -> Relu 'act2' -> flatten -> MatMul 'logits'."""
    rng = np.random.default_rng(7)
    x = ops.parameter([-1, 3, H, W], np.float32, name="input")
    w1 = ops.constant((rng.standard_normal((C, 3, 3, 3)) * 0.4).astype(np.float32))
    act1 = ops.relu(ops.convolution(x, w1, [1, 1], [1, 1], [1, 1], [1, 1], name="conv1"), name="act1")
    w2 = ops.constant((rng.standard_normal((C, C, 3, 3)) * 0.4).astype(np.float32))
    act2 = ops.relu(ops.convolution(act1, w2, [1, 1], [1, 1], [1, 1], [1, 1], name="conv2"), name="act2")
    flat = ops.reshape(act2, ops.constant(np.array([0, -1], np.int64)), special_zero=True)
    w3 = ops.constant((rng.standard_normal((C * H * W, 3)) * 0.1).astype(np.float32))
    logits = ops.matmul(flat, w3, False, False, name="logits")
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([ops.result(logits)], [x], "two_layer")


def with_fault(model: ov.Model, position: tuple[int, int, int], value: float, op=ops.add) -> ov.Model:
    """A clone with ``op(act1, planted)`` between act1 and all its consumers, as the activation injector does:
    ``planted`` is 0 (Add) or 1 (Multiply) except ``value`` at ``position`` -- a datapath fault at act1's output."""
    clone = model.clone()
    out = node_by_name(clone, "act1").output(0)
    planted = np.full((1, C, H, W), 0.0 if op is ops.add else 1.0, np.float32)
    planted[(0, *position)] = value
    targets = list(out.get_target_inputs())
    fault = op(out, ops.constant(planted), name="fault")
    for target in targets:
        target.replace_source_output(fault.output(0))
    return clone


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((30, 3, H, W)).astype(np.float32)


@pytest.fixture(scope="module")
def protected(calib):
    return ovrange.protect(two_layer_model(), calib, algorithm="GradientSuppression", subset_size=30)


def compile_f32(model: ov.Model) -> ov.CompiledModel:
    return ov.Core().compile_model(model, "CPU", F32)


def with_probes(model: ov.Model, names: list[str]) -> ov.CompiledModel:
    """``model`` with output 0 of each named node as an extra output, compiled in f32."""
    clone = model.clone()
    clone.add_results([ops.result(node_by_name(clone, name).output(0)) for name in names])
    return ov.Core().compile_model(clone, "CPU", F32)


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def test_welford_merge_matches_numpy():
    values = np.random.default_rng(1).standard_normal((1000, 3)) * [1.0, 1e-3, 1e4] + [5.0, -2.0, 1e6]
    one_by_one = RunningMoments.empty(3)
    one_by_one.push(values)
    batched = RunningMoments.empty(3)
    for chunk in np.array_split(values, 7):
        batched.merge(np.full(3, len(chunk)), chunk.mean(0), ((chunk - chunk.mean(0)) ** 2).sum(0), chunk.min(0),
                      chunk.max(0))
    for moments in (one_by_one, batched):
        np.testing.assert_allclose(moments.mean, values.mean(0), rtol=1e-12)
        np.testing.assert_allclose(moments.std, values.std(0), rtol=1e-9)
        np.testing.assert_array_equal(moments.low, values.min(0))
        np.testing.assert_array_equal(moments.count, 1000)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_statistics_are_those_of_the_neighbour_differences(calib, granularity):
    """Mean/std/min/max recorded per layer (or channel) equal numpy's over y - roll(y, 1, axis=1)."""
    model = two_layer_model()
    info = ovrange.protection_info(ovrange.protect(model, calib, algorithm="GradientSuppression", subset_size=30,
                                                   batch_size=7, granularity=granularity))
    acts = with_probes(model, ["act1", "act2"])(calib)
    for index, name in enumerate(["act1", "act2"]):
        y = acts[index + 1].astype(np.float64)
        d = y - np.roll(y, 1, axis=1)
        per = np.moveaxis(d, 1, 0).reshape(C, -1) if granularity == "channel" else d.reshape(1, -1)
        node = info.nodes[name]
        assert node["count"] == d.size
        np.testing.assert_allclose(node["mean"], per.mean(1).squeeze(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(node["std"], per.std(1).squeeze(), rtol=1e-5)
        np.testing.assert_allclose(node["max_difference"], per.max(1).squeeze(), rtol=1e-6)
        np.testing.assert_allclose(node["min_difference"], per.min(1).squeeze(), rtol=1e-6)
        deviation = np.abs(per - np.reshape(node["centre"], (-1, 1))).max(1)
        np.testing.assert_allclose(node["threshold"], deviation.squeeze(), rtol=2e-5)  # margin 1 (+ 1e-5 slack)
        assert np.all(np.asarray(node["threshold"]) >= deviation.astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Graph


def test_graph_structure_and_names(protected):
    added = Counter(op.get_type_name() for op in protected.get_ops()) - Counter(
        op.get_type_name() for op in two_layer_model().get_ops())
    # per layer: 2 x (Slice, Slice, Concat) for the previous neuron and the previous mask, Subtract, Abs, LessEqual,
    # LogicalNot, LogicalAnd, Select; no Subtract of the mean: circular differences have mean 0 over a layer
    assert {k: v for k, v in added.items() if k != "Constant"} == {
        "Slice": 8, "Concat": 4, "Subtract": 2, "Abs": 2, "LessEqual": 2, "LogicalNot": 2, "LogicalAnd": 2,
        "Select": 2}
    for name in ("act1", "act2"):
        select = node_by_name(protected, name + SUFFIX)
        assert select.get_type_name() == "Select"
        assert select.input_value(2).get_node().get_friendly_name() == name
        consumers = {t.get_node().get_friendly_name() for t in node_by_name(protected, name).output(0)
                     .get_target_inputs()}
        assert consumers == {name + SUFFIX, name + SUFFIX + "/previous/last", name + SUFFIX + "/previous/head",
                             name + SUFFIX + "/difference"}
    assert node_by_name(protected, "conv2").input_value(0).get_node().get_friendly_name() == "act1" + SUFFIX
    inserted = [op for op in protected.get_ops() if op.get_type_name() in added and op.get_type_name() != "Constant"]
    assert all(SUFFIX in op.get_friendly_name() for op in inserted)  # fault-injection site lists can skip them
    info = ovrange.protection_info(protected)
    assert info.algorithm == "GradientSuppression" and set(info.nodes) == {"act1", "act2"}
    assert info.bounds == {}


def test_per_channel_channel_axis_subtracts_the_mean(calib):
    model = ovrange.protect(two_layer_model(), calib, algorithm="GradientSuppression", granularity="channel")
    centred = [op for op in model.get_ops() if op.get_friendly_name().endswith(SUFFIX + "/centred")]
    assert len(centred) == 2
    assert tuple(centred[0].input_value(1).get_shape()) == (1, C, 1, 1)


def test_last_layer_is_not_protected(calib):
    """An activation that is a model output is the network's last layer: skipped, as in the paper."""
    model = seven_activation_model()
    flat = node_by_name(model, "act_Tanh")
    model.add_results([ops.result(flat.output(0))])
    info = ovrange.protection_info(ovrange.protect(model, np.random.default_rng(0).standard_normal(
        (5, 3, 8, 8)).astype(np.float32), algorithm="GradientSuppression"))
    assert "act_Tanh" not in info.nodes and len(info.nodes) == 6
    assert "last layer" in info.report["skipped"]["act_Tanh"]
    with pytest.raises(ModelError, match="nothing to protect|no activation GradientSuppression can protect"):
        ovrange.protect(activation_output_model("Relu"), np.ones((2, 3, 6, 6), np.float32),
                        algorithm="GradientSuppression")


def test_model_without_activations_is_an_error():
    with pytest.raises(ModelError, match="no supported activations"):
        ovrange.protect(no_activation_model(), np.ones((2, 4), np.float32), algorithm="GradientSuppression")


def test_input_model_is_not_modified(calib):
    model = two_layer_model()
    before = Counter(op.get_type_name() for op in model.get_ops())
    ovrange.protect(model, calib, algorithm="GradientSuppression")
    assert Counter(op.get_type_name() for op in model.get_ops()) == before


# ---------------------------------------------------------------------------------------------------------------
# Behaviour


@pytest.mark.parametrize("options", [{}, {"granularity": "channel"}, {"axis": "width"}, {"batch_size": 8}])
def test_calibration_outputs_unchanged(calib, options):
    model = seven_activation_model()
    data = np.random.default_rng(2).standard_normal((24, 3, 8, 8)).astype(np.float32)
    protected = ovrange.protect(model, data, algorithm="GradientSuppression", **options)
    core = ov.Core()
    original, guarded = core.compile_model(model, "CPU", F32), core.compile_model(protected, "CPU", F32)
    assert np.array_equal(original(data)[0], guarded(data)[0])


@pytest.mark.parametrize("position", [(2, 3, 4), (0, 0, 0), (C - 1, H - 1, W - 1)])
@pytest.mark.parametrize("value", [1e4, -1e4, np.inf, np.nan])
def test_exactly_the_faulty_neuron_is_zeroed(protected, calib, position, value):
    """A huge/inf/NaN value in one neuron (channel 0 and C-1 test the circular wrap) is set to 0; the rest stays."""
    probes = ["fault", "act1" + SUFFIX]
    clean = with_probes(with_fault(protected, position, 0.0), probes)(calib)
    faulty = with_probes(with_fault(protected, position, value), probes)(calib)
    struck = faulty[1][(slice(None), *position)]
    assert np.all(~np.isfinite(struck) | (np.abs(struck) > 1e3))  # the fault is there, in every sample
    expected = clean[2].copy()
    expected[(slice(None), *position)] = 0.0
    assert np.array_equal(faulty[2], expected)
    assert np.all(np.isfinite(faulty[0]))


def test_suppression_restores_the_output(protected, calib):
    """With the fault, the protected model computes what the clean model computes with that one neuron at 0."""
    position = (1, 2, 2)
    clean = compile_f32(two_layer_model())(calib)[0]
    unprotected = compile_f32(with_fault(two_layer_model(), position, 1e5))(calib)[0]
    guarded = compile_f32(with_fault(protected, position, 1e5))(calib)[0]
    neuron_zeroed = compile_f32(with_fault(two_layer_model(), position, 0.0, op=ops.multiply))(calib)[0]
    assert np.abs(unprotected - clean).max() > 100 * np.abs(clean).max()
    assert np.array_equal(guarded, neuron_zeroed)


def test_sigma_threshold(calib):
    model = ovrange.protect(two_layer_model(), calib, algorithm="GradientSuppression", threshold="sigma", k=2.0)
    node = ovrange.protection_info(model).nodes["act1"]
    assert node["threshold"] == pytest.approx(2.0 * node["std"], rel=1e-6)
    acts = with_probes(model, ["act1", "act1" + SUFFIX])(calib)
    assert np.count_nonzero(acts[1] != acts[2]) > 0  # a 2-sigma test zeroes clean values too: k trades accuracy


def test_selected_from_a_config_file():
    config = parse_config({"compression": {"algorithms": [
        {"name": "GradientSuppression", "params": {"axis": "width", "margin": 1.2, "stat_subset_size": 10}}]}})
    assert config.algorithm.name == "GradientSuppression"
    assert config.algorithm.params["axis"] == "width" and config.algorithm.params["margin"] == 1.2


@pytest.mark.parametrize("params, message", [
    ({"axis": "depth"}, "must be one of channel, width"),
    ({"granularity": "pixel"}, "must be one of layer, channel"),
    ({"threshold": "median"}, "must be one of max, sigma"),
    ({"margin": 0}, "must be > 0"),
    ({"margin": "1.5"}, "must be float"),
    ({"k": -1.0, "threshold": "sigma"}, "must be > 0"),
    ({"k": 3.0}, "k applies to threshold 'sigma'"),
    ({"threshold": "sigma", "margin": 2.0}, "margin applies to threshold 'max'"),
    ({"activations": ["Softmax"]}, "unsupported activation"),
    ({"bound": "max"}, "unknown parameter 'bound'"),
])
def test_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        make_algorithm("GradientSuppression", params, "test")
