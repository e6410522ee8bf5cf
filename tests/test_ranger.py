"""Ranger: propagation through pooling/reshape/concat, estimators, correction variants (real OpenVINO)."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.errors import ConfigError
from tests.models import node_by_name
from tests.models import ranger_model, seven_activation_model

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((30, 3, 8, 8)).astype(np.float32) * 2


def guard_of(model: ov.Model, name: str) -> ov.Node | None:
    """The node ovrange inserted after ``name`` (None when unguarded)."""
    consumers = [t.get_node() for t in node_by_name(model, name).output(0).get_target_inputs()]
    guards = [c for c in consumers if c.get_friendly_name().startswith(name + "/")]
    return guards[0] if guards else None


def outputs(model: ov.Model, x: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", F32)
    return np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))])


def test_bounds_carried_through_pool_concat_reshape(calib):
    protected = ovrange.protect(ranger_model(), calib, algorithm="Ranger", subset_size=30)
    info = ovrange.protection_info(protected)
    methods = {name: bound.method for name, bound in info.bounds.items()}
    assert methods == {
        "relu_a": "max", "relu_fc": "max", "tanh": "inherent", "relu6_b": "max",
        "pool_a": "propagated:relu_a", "pool_b": "propagated:relu6_b",
        "concat": "union:pool_a,pool_b", "reshape": "propagated:concat",
    }
    bounds = info.bounds
    assert (bounds["pool_a"].low, bounds["pool_a"].high) == (bounds["relu_a"].low, bounds["relu_a"].high)
    assert 0.0 <= bounds["relu6_b"].low <= bounds["relu6_b"].high <= 6.0  # the observed range within the ReLU6's
    assert (bounds["pool_b"].low, bounds["pool_b"].high) == (bounds["relu6_b"].low, bounds["relu6_b"].high)
    assert bounds["concat"].high == max(bounds["relu_a"].high, bounds["relu6_b"].high)
    assert bounds["concat"].low == min(bounds["relu_a"].low, bounds["relu6_b"].low)
    assert (bounds["tanh"].low, bounds["tanh"].high) == (-1.0, 1.0)
    for name in methods:
        guard = guard_of(protected, name)
        assert guard is not None and guard.get_type_name() == "Clamp", name
    assert np.array_equal(outputs(protected, calib), outputs(ranger_model(), calib))


def test_fault_in_maxpool_is_caught_only_by_ranger(calib):
    """Ranger's motivating example: a fault in MaxPool after a protected ReLU. Plant a huge value between the
    MaxPool and whatever follows it; RangeSupervision (activations only) lets it through, Ranger clamps it."""

    def plant_fault(model: ov.Model) -> ov.Model:
        model = model.clone()
        pool = node_by_name(model, "pool_a").output(0)
        target = [t for t in pool.get_target_inputs()][0]  # the guard (Ranger) or the Concat (RangeSupervision)
        spike = np.zeros((1, 4, 4, 4), np.float32)
        spike[0, 1, 2, 2] = 2.0 ** 20
        target.replace_source_output(ops.add(pool, ops.constant(spike)).output(0))
        return model

    def fc_output(model: ov.Model) -> np.ndarray:  # the deviation reaching the next layer
        return outputs(ov.Model([ops.result(node_by_name(model, "fc").output(0))], model.get_parameters()), calib[:5])

    clean = fc_output(ranger_model())
    rs = ovrange.protect(ranger_model(), calib, algorithm="RangeSupervision", subset_size=30)
    ranger = ovrange.protect(ranger_model(), calib, algorithm="Ranger", subset_size=30)
    rs_error = np.abs(fc_output(plant_fault(rs)) - clean).max()
    ranger_error = np.abs(fc_output(plant_fault(ranger)) - clean).max()
    relu_a_high = ovrange.protection_info(ranger).bounds["relu_a"].high
    assert rs_error > 1e4  # the 2^20 spike reaches the next layer unchanged in scale
    assert ranger_error < 10 * relu_a_high  # clamped to relu_a's bound before it spreads


def test_skip_last_leaves_last_activations_unprotected(calib):
    info = ovrange.protection_info(ovrange.protect(ranger_model(), calib, algorithm="Ranger", skip_last=2))
    assert "tanh" not in info.bounds and "relu_fc" not in info.bounds and "relu_a" in info.bounds


def test_percentile_bounds_match_numpy_within_one_bin(calib):
    protected = ovrange.protect(seven_activation_model(), calib, algorithm="Ranger", bound="percentile",
                                percentile=99.0, histogram_bins=4096, inherent_bounds=False, propagate=False)
    bounds = ovrange.protection_info(protected).bounds
    original = seven_activation_model()
    node = node_by_name(original, "act_Relu")
    probe = ov.Model([ops.result(node.output(0))], original.get_parameters())
    values = outputs(probe, calib).ravel()
    width = (values.max() - values.min()) / 4096
    assert bounds["act_Relu"].method == "percentile:99"
    exact = np.percentile(values, 99.0, method="inverted_cdf")  # the smallest value with >= 99% at or below it
    assert exact <= bounds["act_Relu"].high <= exact + width * 1.001  # conservative, off by at most one bin
    assert bounds["act_Relu"].high < values.max()
    swish = outputs(ov.Model([ops.result(node_by_name(original, "act_Swish").output(0))], original.get_parameters()),
                    calib).ravel()
    low_exact = np.percentile(swish, 1.0, method="inverted_cdf")
    assert low_exact - (swish.max() - swish.min()) / 4096 * 1.001 <= bounds["act_Swish"].low <= low_exact


def test_per_channel_bounds_are_channel_extremes_and_exact(calib):
    protected = ovrange.protect(ranger_model(), calib, algorithm="Ranger", per_channel=True)
    bounds = ovrange.protection_info(protected).bounds
    original = ranger_model()
    probe = ov.Model([ops.result(node_by_name(original, "relu_a").output(0))], original.get_parameters())
    values = outputs(probe, calib)
    assert bounds["relu_a"].high == [float(v) for v in values.max(axis=(0, 2, 3))]
    assert len(bounds["pool_a"].high) == 4  # MaxPool keeps channels
    assert len(bounds["concat"].high) == 8  # both inputs per channel (the ReLU6's within its own range)
    assert bounds["concat"].high[4:] == bounds["relu6_b"].high and max(bounds["relu6_b"].high) <= 6.0
    assert isinstance(bounds["reshape"].high, float)  # channels are mixed by Reshape: scalar
    guard = guard_of(protected, "relu_a")
    assert guard.get_type_name() == "Maximum"
    assert [t.get_node().get_type_name() for t in guard.output(0).get_target_inputs()] == ["Minimum"]
    assert np.array_equal(outputs(protected, calib), outputs(ranger_model(), calib))


def test_zero_correction_resets_out_of_bound_values():
    data = np.random.default_rng(3).standard_normal((20, 3, 8, 8)).astype(np.float32)
    zero = ovrange.protect(seven_activation_model(), data, algorithm="Ranger", correction="zero", propagate=False)
    guard = node_by_name(zero, "act_Relu/range_zero")
    assert guard.get_type_name() == "Select"
    assert guard.input_value(2).get_node().get_friendly_name() == "act_Relu"
    assert np.array_equal(outputs(zero, data), outputs(seven_activation_model(), data))
    high = ovrange.protection_info(zero).bounds["act_Relu"].high
    probe = zero.clone()
    result = ov.Model([ops.result(node_by_name(probe, "act_Relu/range_zero").output(0))], probe.get_parameters())
    spike = data[:1] * 1000
    guarded = outputs(result, spike)
    assert guarded.max() <= high and (guarded == 0).sum() > (outputs(result, data[:1]) == 0).sum()


def test_tighten_existing_clamps(calib):
    info = ovrange.protection_info(ovrange.protect(ranger_model(), calib, algorithm="Ranger", tighten_clamps=True))
    bound = info.bounds["relu6_b"]
    assert bound.type == "Clamp" and 0.0 <= bound.low and bound.high <= 6.0


@pytest.mark.parametrize("params, message", [
    ({"percentile": 0.0}, "must be in"),
    ({"percentile": 100.5}, "must be in"),
    ({"bound": "mean"}, "must be one of max, percentile"),
    ({"correction": "random"}, "must be one of clamp, zero"),
    ({"activations": ["Relu", "Softmax"]}, "unsupported activation"),
    ({"skip_last": -1}, "must be >= 0"),
])
def test_bad_parameters_are_clear_errors(calib, params, message):
    with pytest.raises(ConfigError, match=message):
        ovrange.protect(ranger_model(), calib, algorithm="Ranger", **params)


def test_per_channel_without_channel_axis_is_an_error():
    x = ops.parameter([-1], np.float32, name="v")
    model = ov.Model([ops.result(ops.relu(x, name="relu_1d"))], [x], "vector")
    with pytest.raises(ConfigError, match="per-channel bounds need a channel axis.*relu_1d"):
        ovrange.protect(model, np.ones((4, 5), np.float32), algorithm="Ranger", per_channel=True)
