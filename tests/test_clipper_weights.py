"""GlobalClipper's ``weights`` role on real OpenVINO inference: each layer's stored weight bounded to its own
per-output-channel range (a recorded Constant -> Maximum -> Minimum), so clean outputs stay bit-identical, an
exponent flip in a stored weight is cut to the channel's range, and the weight injector strikes the stored values."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.faults import inject
from ovrange.faults.metrics import DUE, SDC
from ovrange.faults.sites import find_sites
from ovrange.graph import inserted_nodes, stored_weight
from ovrange.runtime import compile_model
from tests.models import SEVEN_LAYERS, node_by_name, seven_activation_model, seven_calibration



@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return seven_calibration()


@pytest.fixture(scope="module")
def protected(calib):
    return ovrange.protect(seven_activation_model(), calib, algorithm="GlobalClipper", targets=["weights"])


def run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return compile_model(model, "CPU", precision="f32")(x)[0]


def stored(model: ov.Model, layer: str) -> ov.Node:
    return stored_weight(node_by_name(model, layer), inserted_nodes(model)).get_node()


def with_values(model: ov.Model, constant: ov.Node, values: np.ndarray) -> ov.Model:
    """A clone in which ``constant`` (found by friendly name) holds ``values``: a memory fault in it."""
    clone = model.clone()
    old = node_by_name(clone, constant.get_friendly_name())
    new = ops.constant(values.astype(np.float32), name=constant.get_friendly_name())
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(new.output(0))
    return clone


def test_every_layer_reads_its_stored_weight_through_recorded_bounds(protected):
    original = seven_activation_model()
    record = inserted_nodes(protected)
    for layer in SEVEN_LAYERS:
        port = node_by_name(protected, layer).input_value(1).get_node()
        assert port.get_type_name() == "Select" and record[port.get_friendly_name()] == "decode"
        weight = stored(protected, layer)
        assert record[weight.get_friendly_name()] == "weight"
        np.testing.assert_array_equal(weight.get_data(),
                                      node_by_name(original, layer).input_value(1).get_node().get_data())


def test_clean_outputs_bit_identical(protected, calib):
    np.testing.assert_array_equal(run(protected, calib), run(seven_activation_model(), calib))


def test_exponent_flip_that_leaves_the_channel_range_makes_the_weight_zero(protected, calib):
    layer = "conv_Relu"
    original = seven_activation_model()
    w = np.array(node_by_name(original, layer).input_value(1).get_node().get_data())
    index = np.unravel_index(np.argmax(np.abs(w)), w.shape)
    flipped = w.copy()
    flipped.view(np.uint32)[index] ^= np.uint32(1 << 30)
    assert abs(flipped[index]) > 1e30
    faulty = run(with_values(protected, stored(protected, layer), flipped), calib)
    # the layer sees 0 where the flipped weight left its output channel's [min, max]
    expected = w.copy()
    expected[index] = 0
    weight = node_by_name(original, layer).input_value(1).get_node()
    np.testing.assert_array_equal(faulty, run(with_values(original, weight, expected), calib))
    plain = run(with_values(original, weight, flipped), calib)
    assert np.abs(faulty - run(original, calib)).max() < np.nan_to_num(np.abs(plain - run(original, calib)),
                                                                      nan=np.inf).max()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_stored_weight_is_bounded_after_folding(protected, calib, value):
    """NaN and +-Inf compare outside every range: 0, also where constant folding (reference kernels) runs the
    chain at compile time."""
    layer = "conv_Relu"
    w = np.array(stored(protected, layer).get_data())
    faulty = w.copy()
    faulty[0, 0, 0, 0] = value
    out = run(with_values(protected, stored(protected, layer), faulty), calib)
    assert np.all(np.isfinite(out))


def test_weight_injector_strikes_the_stored_values(protected, calib):
    """Weight sites are the stored Constants; exponent-MSB flips end as NaN/Inf or wild outputs unprotected, and
    never as NaN/Inf through the bounds."""
    sites = {s.name: s for s in find_sites(protected, "weights")}
    assert {s.name for s in find_sites(seven_activation_model(), "weights")} == set(sites)
    result = inject(seven_activation_model(), calib, compare=[protected], target="weights", trials=200, seed=0,
                    bits="30", sdc="linf:0.5", inputs=10, batch_size=8)
    plain, bounded = result.models
    assert np.sum(bounded.outcome == DUE) == 0 < np.sum(plain.outcome == DUE) + np.sum(plain.outcome == SDC)
    assert np.sum(bounded.outcome == SDC) < np.sum(plain.outcome == SDC) + np.sum(plain.outcome == DUE)


def test_plan_holds_per_channel_ranges(protected):
    info = ovrange.protection_info(protected)
    entry = info.guards["conv_Relu/weight"]
    w = np.array(node_by_name(seven_activation_model(), "conv_Relu").input_value(1).get_node().get_data())
    assert entry["role"] == "weights" and entry["shape"] == [w.shape[0], 1, 1, 1]
    assert entry["low"] == [float(v) for v in w.reshape(len(w), -1).min(axis=1)]
