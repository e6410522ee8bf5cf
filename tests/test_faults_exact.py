"""Acceptance 1: injected outputs equal independent references, on real OpenVINO (no mocks).

References are compiled separately: the model recompiled with the weight bit flipped in its Constant, and the
model split at the struck node (the head gives the value, numpy flips it, the tail takes it as an input). A
separately compiled graph is fused differently by the CPU plugin (a Constant weight folds the input scale into
the convolution, a MatMul with a Constant becomes a FullyConnected with prepacked weights), so whole-network
outputs agree to f32 rounding, not bit for bit: we require the same non-finite pattern, the same top-1 and a
difference within 1e-5 of the output's magnitude. Where no other kernel is involved (the struck value itself,
a fault in the output tensor), the match is bit-exact.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from ovrange.faults.injectors import ScatterInjector, WeightFlip, WeightInjector
from ovrange.faults.formats import FORMATS, flip
from ovrange.faults.faultlist import plan_faults
from ovrange.faults.sites import find_sites, site_outputs, static_clone
from ovrange.runtime import compile_model
from ovrange.faults.linear import linear_layer
from tests.test_faults_sites import SHAPES, images, tiny_geometry, tiny_lenet

BITS = (0, 10, 22, 23, 27, 29, 30, 31)


def assert_same_output(ours: np.ndarray, reference: np.ndarray) -> None:
    assert np.array_equal(np.isfinite(ours), np.isfinite(reference))
    finite = np.isfinite(reference)
    if finite.any():
        scale = max(float(np.abs(reference[finite]).max()), 1e-30)
        assert float(np.abs(ours[finite] - reference[finite]).max()) <= 1e-5 * scale
    if finite.all():
        assert ours.argmax() == reference.argmax()


def run(model: ov.Model, *inputs: np.ndarray) -> np.ndarray:
    return compile_model(model, "CPU", precision="f32").create_infer_request().infer(list(inputs))[0].copy()


def test_weight_faults_equal_the_model_recompiled_with_the_flipped_constant():
    model = tiny_lenet()
    x = images(8).astype(np.float32)
    sites = find_sites(model, "weights")
    injector = WeightInjector(model, sites, SHAPES)
    golden = [injector.run([x[i:i + 1]])[0] for i in range(8)]
    # fc1 mostly reads zeros (ReLU + pooling) and would mask most faults: strike the other layers
    struck = [s for s in sites if s.name != "fc1"]
    faults, _ = plan_faults(struck, np.arange(8), 12, (23, 27, 30, 31), seed=3)
    index = {s.name: i for i, s in enumerate(sites)}
    changed = 0
    for fault in faults:
        flip_at = WeightFlip(index[fault.site], fault.element, fault.mask)
        ours = injector.run([x[fault.input:fault.input + 1]], [flip_at])[0]
        clone = recompiled_with_flip(model, fault.site, fault.element, fault.bit)
        assert_same_output(ours, run(clone, x[fault.input:fault.input + 1]))
        changed += not np.array_equal(ours, golden[fault.input], equal_nan=True)
    assert changed >= 4  # the faults did something: this is not a comparison of two golden runs
    for i in range(8):  # every flip was undone: the fed weights are golden again, bit for bit
        assert np.array_equal(injector.run([x[i:i + 1]])[0], golden[i])
        assert_same_output(golden[i], run(model, x[i:i + 1]))


def recompiled_with_flip(model: ov.Model, site: str, element: int, bit: int) -> ov.Model:
    clone = model.clone()
    node, source = site_outputs(clone, "weights")[site]
    weights = source.get_node().get_data().copy()
    weights.reshape(-1)[element] = flip(weights.reshape(-1)[element:element + 1], np.array([bit]))[0]
    node.input(1).replace_source_output(ops.constant(weights).output(0))
    return clone


@pytest.mark.parametrize("build, shapes", [(tiny_lenet, SHAPES), (tiny_geometry, [(2, 9, 9)])])
def test_batched_weight_faults_as_output_corrections_equal_the_recompiled_model(build, shapes):
    """The delta engine's mechanism: probe the layer's input and output, correct the struck output slice."""
    model = build()
    x = np.random.default_rng(5).uniform(-1, 255, (8, *shapes[0])).astype(np.float32)
    sites = find_sites(model, "weights")
    names = [s.name for s in sites]
    found = site_outputs(static_clone(model, shapes), "weights")
    layers = [linear_layer(*found[name]) for name in names]
    assert all(layers)
    faults, _ = plan_faults(sites, np.arange(8), 8, (23, 27, 30, 31), seed=6, weighting="uniform")
    _, probes = ScatterInjector(model, "weights", names, shapes, 8,
                                probe=True).run([x])
    taps, rows, elements, values = [], [], [], []
    for b, fault in enumerate(faults):  # fault b strikes input b
        s = names.index(fault.site)
        index, value = layers[s].faulty_slices(np.array([fault.element]), np.array([fault.mask]),
                                               FORMATS["fp32"], probes[s][0][b:b + 1], probes[s][1][b:b + 1])
        taps += [s] * index.shape[1]
        rows += [b] * index.shape[1]
        elements.append(index[0])
        values.append(value[0])
    injector = ScatterInjector(model, "weights", names, shapes, 8)
    ours, _ = injector.run([x], np.array(taps), np.array(rows), np.concatenate(elements), np.concatenate(values))
    golden, _ = injector.run([x])
    assert (np.abs(ours[0] - golden[0]) > 1e-3).any(axis=1).sum() >= 3  # most of these faults show
    for b, fault in enumerate(faults):
        assert_same_output(ours[0][b:b + 1], run(recompiled_with_flip(model, fault.site, fault.element, fault.bit),
                                                 x[b:b + 1]))


def split_reference(model: ov.Model, site: str, x: np.ndarray, element: int, bit: int) -> tuple[np.ndarray, np.ndarray]:
    """(fault-free site tensor, output with its ``element`` flipped) from a head and a tail model."""
    head = model.clone()
    _, out = site_outputs(head, "activations")[site]
    value = run(ov.Model([ops.result(out)], list(head.get_parameters()), "head"), x)
    tail = model.clone()
    _, out = site_outputs(tail, "activations")[site]
    fed = ops.parameter(list(value.shape), ov.Type.f32, name="fed")
    for target in list(out.get_target_inputs()):
        target.replace_source_output(fed.output(0))
    names = set(out.get_names())
    if names:  # the struck tensor may be the model output itself
        out.get_tensor().set_names(set())
        fed.output(0).get_tensor().set_names(names)
    tail.add_parameters([fed])
    tail.validate_nodes_and_infer_types()
    flat = value.reshape(-1).copy()
    flat[element] = flip(flat[element:element + 1], np.array([bit]))[0]
    return value, run(tail, x, flat.reshape(value.shape))


def test_activation_faults_equal_the_split_model_with_the_flipped_value_fed_in():
    model = tiny_lenet(clamp_relu1=3.0)  # protected: faults at relu1 strike before its Clamp
    x = images(16, seed=1).astype(np.float32)
    sites = find_sites(model, "activations", SHAPES)
    faults, _ = plan_faults(sites, np.arange(16), 16, BITS, seed=4, weighting="uniform")
    faults[0] = type(faults[0])(0, 0, "relu1", 57, 30)  # make sure one fault is large and gets clamped
    index = {s.name: i for i, s in enumerate(sites)}
    site = np.array([index[f.site] for f in faults])
    element = np.array([f.element for f in faults])
    bit = np.array([f.bit for f in faults])
    names = [s.name for s in sites]
    _, probes = ScatterInjector(model, "activations", names, SHAPES, 16, probe=True).run([x])
    original = np.array([probes[s][0][b].reshape(-1)[e] for b, (s, e) in enumerate(zip(site, element))])
    injector = ScatterInjector(model, "activations", names, SHAPES, 16)
    golden, _ = injector.run([x])
    ours, _ = injector.run([x], site, np.arange(16), element, flip(original, bit))
    for b, fault in enumerate(faults):
        head, reference = split_reference(model, fault.site, x[b:b + 1], fault.element, fault.bit)
        assert abs(original[b] - head.reshape(-1)[fault.element]) <= 1e-5 * np.abs(head).max()
        assert_same_output(ours[0][b:b + 1], reference)
    clamped = ours[0][0]
    assert np.isfinite(clamped).all() and np.abs(clamped - golden[0][0]).max() < 1e3  # 2^128-scale value clamped
    assert not np.array_equal(ours[0], golden[0])


def test_a_fault_in_the_output_tensor_changes_exactly_that_element_bit_for_bit():
    model = tiny_lenet()
    x = images(6, seed=2).astype(np.float32)
    sites = find_sites(model, "activations", SHAPES)
    logits = [s.name for s in sites].index("logits")
    injector = ScatterInjector(model, "activations", [s.name for s in sites], SHAPES, 8)
    golden, _ = injector.run([x])
    element, bit = np.array([0, 1, 2, 3, 4, 0]), np.array([30, 31, 0, 22, 29, 23])
    values = flip(golden[0][np.arange(6), element], bit)
    ours, _ = injector.run([x], np.full(6, logits), np.arange(6), element, values)
    expected = golden[0].copy()
    expected[np.arange(6), element] = values
    assert np.array_equal(ours[0].view(np.uint32), expected.view(np.uint32))
    again, _ = injector.run([x])  # idle rows went back to the spare batch element: no fault leaks
    assert np.array_equal(again[0], golden[0])


def test_weight_faults_strike_the_stored_theta_of_bounded_weights():
    """With BoundedWeights the stored values are theta; a flip there goes through s * tanh(g * theta) in the graph,
    equal to recompiling with that theta bit flipped, and stays bounded where the same flip in w explodes."""
    import ovrange
    from ovrange.passes.bounded_weights import bounded_theta

    model = tiny_lenet()
    x = images(8).astype(np.float32)
    protected = ovrange.protect(model, x, algorithm="BoundedWeights", subset_size=8)
    sites = find_sites(protected, "weights")
    assert [s.name for s in sites] == [s.name for s in find_sites(model, "weights")]  # same sites, same shapes
    injector = WeightInjector(protected, sites, SHAPES)
    plain = WeightInjector(model, sites, SHAPES)
    index = {s.name: i for i, s in enumerate(sites)}
    exploded = 0
    for site in sites:
        flip_at = WeightFlip(index[site.name], 0, 1 << 30)  # exponent MSB of the first stored value
        ours = injector.run([x[:1]], [flip_at])[0]
        clone = protected.clone()
        theta = bounded_theta(clone, site_outputs(clone, "weights")[site.name][0])
        values = theta.get_data().copy()
        values.reshape(-1)[0] = flip(values.reshape(-1)[:1], np.array([30]))[0]
        theta.output(0).replace(ops.constant(values).output(0))
        assert_same_output(ours, run(clone, x[:1]))
        assert np.isfinite(ours).all()
        golden = plain.run([x[:1]])[0]
        unprotected = np.nan_to_num(np.abs(plain.run([x[:1]], [flip_at])[0] - golden), nan=np.inf).max()
        if unprotected > 1.0:  # the same flip in the plain weight did real damage (not masked by a zero input)
            exploded += 1
            assert np.abs(ours - golden).max() < 1e-3 * unprotected
    assert exploded >= 2
