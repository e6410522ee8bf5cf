"""Site discovery, structure matching and the seeded fault plan; also the tiny models the fault tests share."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from tests.models import record_guards
import pytest

from ovrange.errors import ModelError
from ovrange.faults.faultlist import plan_faults
from ovrange.faults.sites import find_sites, match_sites

SHAPES = [(1, 12, 12)]


def tiny_lenet(seed: int = 0, batch: int = -1, fixed_reshape: bool = False, clamp_relu1: float | None = None,
               regression: bool = False) -> ov.Model:
    """Raw 0..255 input -> scale -> Conv/Relu/MaxPool x2 -> MatMul/Add/Relu -> MatMul/Add ("logits").

    ``fixed_reshape`` hard-codes the flatten to batch 1 (a model whose batch cannot change); ``clamp_relu1`` adds
    a protection-style Clamp named ``relu1/min_max_Clamp``; ``regression`` ends at the last Conv (no classes).
    """
    rng = np.random.default_rng(seed)

    def const(*shape, scale=0.3):
        return ops.constant((rng.standard_normal(shape) * scale).astype(np.float32))

    x = ops.parameter([batch, 1, 12, 12], ov.Type.f32, name="image")
    x.output(0).get_tensor().set_names({"image"})
    h = ops.multiply(x, ops.constant(np.float32(1 / 255)), name="scale")
    h = ops.convolution(h, const(4, 1, 3, 3), [1, 1], [0, 0], [0, 0], [1, 1], name="conv1")
    h = ops.add(h, const(1, 4, 1, 1), name="conv1/bias")
    h = ops.relu(h, name="relu1")
    if clamp_relu1 is not None:
        h = ops.clamp(h, 0.0, clamp_relu1, name="relu1/min_max_Clamp")
    h = ops.max_pool(h, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], name="pool1").output(0)  # 10 -> 5
    h = ops.convolution(h, const(6, 4, 2, 2), [1, 1], [0, 0], [0, 0], [1, 1], name="conv2")  # 5 -> 4
    h = ops.relu(ops.add(h, const(1, 6, 1, 1), name="conv2/bias"), name="relu2")
    if regression:
        h.output(0).get_tensor().set_names({"features"})
        return ov.Model([ops.result(h)], [x], "tiny_regression")
    h = ops.max_pool(h, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], name="pool2").output(0)  # 4 -> 2
    if fixed_reshape:  # through [2, 12]: OpenVINO's smart reshape cannot re-batch this, as in many exported models
        h = ops.reshape(h, ops.constant(np.array([2, 12], np.int64)), False)
    flat = ops.reshape(h, ops.constant(np.array([1 if fixed_reshape else -1, 24], np.int64)), False, name="flatten")
    h = ops.relu(ops.add(ops.matmul(flat, const(16, 24), False, True, name="fc1"), const(1, 16), name="fc1/bias"),
                 name="relu3")
    logits = ops.add(ops.matmul(h, const(5, 16), False, True, name="fc2"), const(1, 5), name="logits")
    logits.output(0).get_tensor().set_names({"logits"})
    return record_guards(ov.Model([ops.result(logits)], [x], "tiny_lenet"))


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 12, 12)).astype(np.uint8)


def test_activation_sites_are_compute_outputs_in_graph_order():
    sites = find_sites(tiny_lenet(), "activations", SHAPES)
    assert [s.name for s in sites] == ["scale", "conv1", "conv1/bias", "relu1", "pool1", "conv2", "conv2/bias",
                                       "relu2", "pool2", "fc1", "fc1/bias", "relu3", "fc2", "logits"]
    by_name = {s.name: s for s in sites}
    assert by_name["conv1"].shape == (4, 10, 10) and by_name["pool2"].shape == (6, 2, 2)
    assert by_name["fc1"].shape == (16,) and by_name["conv1"].size == 400


def test_protection_clamps_are_not_sites_but_everything_else_matches():
    original = find_sites(tiny_lenet(), "activations", SHAPES)
    protected = find_sites(tiny_lenet(clamp_relu1=2.0), "activations", SHAPES)
    assert [s.name for s in protected] == [s.name for s in original]
    match_sites(original, protected, "protected.xml")  # no error


def test_weight_sites_are_constant_conv_and_matmul_weights():
    sites = find_sites(tiny_lenet(), "weights")
    assert [(s.name, s.op, s.shape) for s in sites] == [
        ("conv1", "Convolution", (4, 1, 3, 3)), ("conv2", "Convolution", (6, 4, 2, 2)),
        ("fc1", "MatMul", (16, 24)), ("fc2", "MatMul", (5, 16))]


def test_structure_mismatch_and_filters():
    with pytest.raises(ModelError, match="does not match"):
        match_sites(find_sites(tiny_lenet(), "weights"), find_sites(tiny_lenet(regression=True), "weights"), "b")
    only_relu = find_sites(tiny_lenet(), "activations", SHAPES, include=["relu*"], exclude=["relu3"])
    assert [s.name for s in only_relu] == ["relu1", "relu2"]
    with pytest.raises(ModelError, match="no injectable activations site"):
        find_sites(tiny_lenet(), "activations", SHAPES, include=["nothing*"])


def test_model_without_sites():
    x = ops.parameter([1, 4], ov.Type.f32, name="x")
    model = ov.Model([ops.result(ops.reshape(x, ops.constant(np.array([2, 2], np.int64)), False))], [x], "movement")
    for target in ("weights", "activations"):
        with pytest.raises(ModelError, match=f"no injectable {target} site"):
            find_sites(model, target, [(4,)])


def test_plan_is_seeded_and_proportional_to_element_count():
    sites = find_sites(tiny_lenet(), "activations", SHAPES)
    inputs = np.array([3, 7, 11])
    first, inputs_a = plan_faults(sites, inputs, 4000, (23, 30), seed=5)
    again, inputs_b = plan_faults(sites, inputs, 4000, (23, 30), seed=5)
    other, _ = plan_faults(sites, inputs, 4000, (23, 30), seed=6)
    assert first == again and np.array_equal(inputs_a, inputs_b) and first != other
    sizes = {s.name: s.size for s in sites}
    assert {f.bit for f in first} == {23, 30} and {f.input for f in first} == {3, 7, 11}
    assert all(0 <= f.element < sizes[f.site] for f in first)
    counts = {name: sum(f.site == name for f in first) for name in sizes}
    expected = {name: 4000 * size / sum(sizes.values()) for name, size in sizes.items()}
    for name in ("conv1", "relu1", "pool1", "fc1"):  # within 5 standard deviations of the binomial count
        assert abs(counts[name] - expected[name]) < 5 * np.sqrt(expected[name]) + 1
    uniform, _ = plan_faults(sites, inputs, 1400, (30,), seed=5, weighting="uniform")
    assert min(sum(f.site == s.name for f in uniform) for s in sites) > 50  # 100 expected per site


def test_bit_error_rate_plan_flips_about_p_times_the_bits():
    sites = find_sites(tiny_lenet(), "weights")
    bits = tuple(range(32))
    faults, trial_inputs = plan_faults(sites, np.array([0, 1]), 200, bits, seed=1, ber=1e-3)
    expected = 200 * 1e-3 * 32 * sum(s.size for s in sites)  # ~4,700 flips
    assert abs(len(faults) - expected) < 5 * np.sqrt(expected)
    assert len(trial_inputs) == 200 and {f.trial for f in faults} <= set(range(200))
    keys = [(f.trial, f.site, f.element, f.bit) for f in faults]
    assert len(keys) == len(set(keys))  # a bit flips at most once per trial


def tiny_geometry(seed: int = 0) -> ov.Model:
    """Strided padded Conv -> dilated padded depthwise GroupConvolution -> Relu -> MatMul [K, N] -> "logits"."""
    rng = np.random.default_rng(seed)
    x = ops.parameter([-1, 2, 9, 9], ov.Type.f32, name="input")
    h = ops.convolution(x, ops.constant(rng.standard_normal((4, 2, 3, 3)).astype(np.float32)), [2, 2], [1, 1],
                        [1, 1], [1, 1], name="conv")  # 9 -> 5
    h = ops.group_convolution(h, ops.constant(rng.standard_normal((4, 1, 1, 3, 3)).astype(np.float32)), [1, 1],
                              [2, 1], [2, 1], [2, 2], name="depthwise")  # 5 -> 5 x 3
    h = ops.reshape(ops.relu(h, name="relu"), ops.constant(np.array([-1, 60], np.int64)), False)
    logits = ops.matmul(h, ops.constant(rng.standard_normal((60, 3)).astype(np.float32) * 0.3), False, False,
                        name="logits")
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([ops.result(logits)], [x], "tiny_geometry")


def test_site_names_are_the_node_ids_of_targets_even_with_repeated_friendly_names():
    from ovrange.targets import find_targets

    x = ops.parameter([-1, 4, 6, 6], ov.Type.f32, name="x")
    mask = ops.convert(ops.greater(x, np.float32(0)), "i32", name="act")  # not a site, but it holds the name first
    h = ops.relu(ops.multiply(x, ops.convert(mask, "f32")), name="act")
    h = ops.convolution(h, np.ones((4, 4, 1, 1), np.float32), [1, 1], [0, 0], [0, 0], [1, 1], name="conv")
    h = ops.relu(h, name="act")
    model = ov.Model([ops.result(h)], [x], "repeats")
    names = [s.name for s in find_sites(model, "activations", [(4, 6, 6)])]
    assert "act#2" in names and "act#3" in names and "act" not in names
    targets = {t.id for t in find_targets(model)}
    assert set(names) <= targets  # one id scheme: a fault's site is the target a protection would guard


def test_data_movement_ops_are_not_fault_sites():
    # A fault there would be a fault in their input: data-movement ops copy values, never compute them.
    from ovrange.faults.sites import ACTIVATION_OPS
    from ovrange.targets import DATA_MOVEMENT

    assert not set(DATA_MOVEMENT) & set(ACTIVATION_OPS)
