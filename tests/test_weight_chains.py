"""Weights that reach their layer through a constant chain, as MediaPipe's TFLite depthwise weights do
(fp16 ``Constant -> Convert -> Transpose -> Reshape -> GroupConvolution``): they are fault sites in their stored
shape, order and format, a flip changes exactly the layer element the chain moves the stored element to (both
weight engines), GlobalClipper bounds them and keeps them fp16, and a saved protected IR stays the original's size."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.faults.formats import STORED_FORMATS, apply_mask
from ovrange.faults.injectors import WeightFlip, WeightInjector
from ovrange.faults.linear import linear_layer
from ovrange.faults.sites import find_sites, site_outputs, static_clone
from ovrange.graph import constant_values, inserted_nodes, stored_order, stored_weight
from ovrange.protect import save_protected
from ovrange.runtime import compile_model
from tests.models import node_by_name

SHAPE = (4, 8, 8)
STORED = (1, 3, 3, 4)  # TFLite depthwise kernel [1, kh, kw, C]
ORDER = (3, 0, 1, 2)  # -> [C, 1, kh, kw]
LAYER = (4, 1, 1, 3, 3)  # GroupConvolution [groups, out/group, in/group, kh, kw]
EXPONENT_TOP = 1 << 14  # fp16 exponent MSB: a value below 1 becomes ~2^15 times larger


def stored_values(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal(STORED) * 0.4).astype(np.float16),
            (rng.standard_normal((3, 4, 1, 1)) * 0.4).astype(np.float16))


def depthwise_model(depthwise: np.ndarray, pointwise: np.ndarray, head_only: bool = False) -> ov.Model:
    """input -> GroupConvolution (weights through the TFLite chain) -> Relu -> Convolution 1x1 (fp16 -> Convert)."""
    x = ops.parameter([1, *SHAPE], np.float32, name="input")
    moved = ops.transpose(ops.convert(ops.constant(depthwise, name="dw_stored"), "f32"),
                          ops.constant(np.array(ORDER, np.int64)))
    weight = ops.reshape(moved, ops.constant(np.array(LAYER, np.int64)), special_zero=False)
    group = ops.group_convolution(x, weight, [1, 1], [1, 1], [1, 1], [1, 1], name="depthwise")
    if head_only:
        return ov.Model([ops.result(group)], [x], "head")
    relu = ops.relu(group, name="relu")
    conv = ops.convolution(relu, ops.convert(ops.constant(pointwise, name="pw_stored"), "f32"), [1, 1], [0, 0],
                           [0, 0], [1, 1], name="pointwise")
    return ov.Model([ops.result(conv)], [x], "depthwise")


def layer_weight(depthwise: np.ndarray) -> np.ndarray:
    """What the chain makes of the stored kernel, in numpy."""
    return np.transpose(depthwise.astype(np.float32), ORDER).reshape(LAYER)


def flipped(values: np.ndarray, element: int, mask: int) -> np.ndarray:
    flat = values.reshape(-1).copy()
    flat[element] = apply_mask(flat[element:element + 1].astype(np.float32), np.array([mask]),
                               STORED_FORMATS["fp16"])[0]
    return flat.reshape(values.shape)


def run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return compile_model(model, "CPU", precision="f32")(x)[0]


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((6, *SHAPE)).astype(np.float32)


def test_chain_weight_is_a_site_in_its_stored_shape_and_format():
    model = depthwise_model(*stored_values())
    sites = {s.name: s for s in find_sites(model, "weights")}
    assert set(sites) == {"depthwise", "pointwise"}  # every weighted layer is a site
    assert (sites["depthwise"].shape, sites["depthwise"].format, sites["depthwise"].op) == (
        STORED, "fp16", "GroupConvolution")
    layer_side = node_by_name(model, "depthwise").input_value(1)
    np.testing.assert_array_equal(constant_values(layer_side), layer_weight(stored_values()[0]))
    order = stored_order(layer_side)
    np.testing.assert_array_equal(np.sort(order), np.arange(int(np.prod(STORED))))  # a permutation
    np.testing.assert_array_equal(stored_values()[0].reshape(-1)[order], layer_weight(stored_values()[0]).reshape(-1))


@pytest.mark.parametrize("element", [0, 7, 29])
def test_a_flip_of_a_stored_element_changes_exactly_its_layer_element(data, element):
    depthwise, pointwise = stored_values()
    faulty = flipped(depthwise, element, EXPONENT_TOP)
    changed = np.nonzero(layer_weight(faulty).reshape(-1) != layer_weight(depthwise).reshape(-1))[0]
    order = stored_order(node_by_name(depthwise_model(depthwise, pointwise), "depthwise").input_value(1))
    assert changed.tolist() == [int(np.nonzero(order == element)[0][0])]
    model = depthwise_model(depthwise, pointwise)
    sites = find_sites(model, "weights")
    index = next(i for i, s in enumerate(sites) if s.name == "depthwise")
    injector = WeightInjector(model, sites, [SHAPE], number_format=STORED_FORMATS["fp16"])
    expected = run(depthwise_model(faulty, pointwise), data[:1])
    got = injector.run([data[:1]], [WeightFlip(index, element, EXPONENT_TOP)])[0]
    assert np.abs(expected).max() > 100 * np.abs(run(model, data[:1])).max()  # the flip matters
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the layer-output correction engine maps the stored element to the same layer element
    clone = static_clone(model, [SHAPE])
    layer = linear_layer(*site_outputs(clone, "weights")["depthwise"])
    head = depthwise_model(depthwise, pointwise, head_only=True)
    indices, values = layer.faulty_slices(np.array([element]), np.array([EXPONENT_TOP], np.uint64),
                                          STORED_FORMATS["fp16"], data[:1], run(head, data[:1]))
    reference = run(depthwise_model(faulty, pointwise, head_only=True), data[:1]).reshape(-1)
    np.testing.assert_allclose(values[0], reference[indices[0]], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def clipped(data):
    return ovrange.protect(depthwise_model(*stored_values()), data, algorithm="GlobalClipper", targets=["weights"])


def test_global_clipper_bounds_the_chain_weight_and_keeps_it_fp16(clipped, data):
    depthwise, pointwise = stored_values()
    model = depthwise_model(depthwise, pointwise)
    for row in range(3):  # clean outputs bit-identical
        np.testing.assert_array_equal(run(clipped, data[row:row + 1]), run(model, data[row:row + 1]))
    stored = stored_weight(node_by_name(clipped, "depthwise"), inserted_nodes(clipped)).get_node()
    assert inserted_nodes(clipped)[stored.get_friendly_name()] == "weight"
    assert stored.get_element_type() == ov.Type.f16 and tuple(stored.get_shape()) == STORED
    sites = {s.name: s for s in find_sites(clipped, "weights")}
    assert (sites["depthwise"].shape, sites["depthwise"].format) == (STORED, "fp16")
    # a flipped stored value outside its output channel's range: the layer sees 0 in its place
    element = 7
    weight = layer_weight(depthwise)
    faulty = layer_weight(flipped(depthwise, element, EXPONENT_TOP))
    channel_low = weight.min(axis=(2, 3, 4), keepdims=True)
    channel_high = weight.max(axis=(2, 3, 4), keepdims=True)
    expected = np.where((faulty >= channel_low) & (faulty <= channel_high), faulty, 0)
    assert not np.array_equal(expected, weight)  # the zeroed value differs: the test can tell
    index = next(i for i, s in enumerate(find_sites(clipped, "weights")) if s.name == "depthwise")
    injector = WeightInjector(clipped, find_sites(clipped, "weights"), [SHAPE],
                              number_format=STORED_FORMATS["fp16"])
    got = injector.run([data[:1]], [WeightFlip(index, element, EXPONENT_TOP)])[0]
    reference = f32_weight_model(expected, pointwise)
    np.testing.assert_allclose(got, run(reference, data[:1]), rtol=1e-5, atol=1e-6)


def f32_weight_model(weight: np.ndarray, pointwise: np.ndarray) -> ov.Model:
    x = ops.parameter([1, *SHAPE], np.float32, name="input")
    group = ops.group_convolution(x, ops.constant(weight.astype(np.float32)), [1, 1], [1, 1], [1, 1], [1, 1])
    conv = ops.convolution(ops.relu(group), ops.constant(pointwise.astype(np.float32)), [1, 1], [0, 0], [0, 0],
                           [1, 1])
    return ov.Model([ops.result(conv)], [x], "reference")


@pytest.mark.parametrize("algorithm", ["GlobalClipper", "BoundedWeights"])
def test_saved_protected_ir_keeps_fp16_and_f32_weights(tmp_path, data, algorithm):
    sizes = {}
    for kind, convert in (("fp16", lambda a: a), ("fp32", lambda a: a.astype(np.float32))):
        model = depthwise_model(*(convert(a) for a in stored_values()))
        ov.save_model(model, tmp_path / f"{kind}.xml", compress_to_fp16=False)
        protected = ovrange.protect(model, data, algorithm=algorithm, **(
            {"targets": ["weights"]} if algorithm == "GlobalClipper" else {}))
        out = save_protected(protected, tmp_path / f"{kind}-{algorithm}", "model")
        saved = ov.Core().read_model(out / "model.xml")
        formats = {s.format for s in find_sites(saved, "weights")}
        assert formats == {kind}
        sizes[kind] = ((tmp_path / f"{kind}.bin").stat().st_size, (out / "model.bin").stat().st_size)
    added = {kind: protected - original for kind, (original, protected) in sizes.items()}
    assert abs(added["fp16"] - added["fp32"]) <= 8  # the same bounds (or scales) whatever the weights' format
    assert sizes["fp16"][1] < sizes["fp32"][0]  # the fp16 weights were not written back as f32
