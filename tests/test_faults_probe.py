"""The fault-free probe: bounded memory, the same outcomes (real OpenVINO on FashionLeNet and a tiny LeNet)."""

from __future__ import annotations

import numpy as np

from ovrange.faults import inject
from ovrange.faults.injectors import ScatterInjector, ValueProbe
from ovrange.faults.sites import find_sites
from ovrange.modelio import read_model
from tests.test_faults_sites import SHAPES, images, tiny_lenet


def test_the_value_probe_reads_exactly_the_elements_of_the_whole_tensor_probe():
    model, x = tiny_lenet(), images(6, seed=3).astype(np.float32)
    sites = find_sites(model, "activations", SHAPES)
    names = [s.name for s in sites]
    whole = ScatterInjector(model, "activations", names, SHAPES, 6, probe=True)
    reader = ValueProbe(model, names, SHAPES, 6)
    rng = np.random.default_rng(0)
    site = rng.integers(0, len(sites), 200)  # 200 reads of 6 rows: many sites read more than a batch's worth
    row = rng.integers(0, 6, 200)
    element = np.array([rng.integers(0, sites[s].size) for s in site])
    outputs, values = reader.read([x], site, row, element)
    expected_outputs, tensors = whole.run([x])
    expected = np.array([tensors[s][0].reshape(6, -1)[r, e] for s, r, e in zip(site, row, element)])
    assert np.array_equal(values, expected) and np.array_equal(outputs[0], expected_outputs[0])


def test_a_weight_campaign_in_a_small_memory_gives_the_same_outcomes(bundled):
    lenet = bundled["lenet"]
    settings = dict(target="weights", trials=600, seed=3, inputs=40, bits="23-31")
    roomy = inject(str(lenet["xml"]), str(lenet["test_npz"]), **settings)
    tight = inject(str(lenet["xml"]), str(lenet["test_npz"]), memory=1, **settings)
    assert "probe: 64 inputs" in next(iter(roomy.meta["engines"].values()))
    engine = next(iter(tight.meta["engines"].values()))
    assert "probe: 64 inputs" not in engine and "probe: " in engine  # 1 MB holds fewer than 64 inputs' tensors
    assert np.array_equal(roomy.models[0].outcome, tight.models[0].outcome)
    assert np.array_equal(roomy.models[0].deviation, tight.models[0].deviation)
    assert roomy.rates()["sdc"].k > 0


def residual_mlp(blocks: int = 3, seed: int = 0):
    """[N, 8, 16] tokens -> ``blocks`` residual MLP blocks with a softmax gate -> mean over tokens -> 5 classes:
    each cut between blocks is crossed by two tensors (the residual stream and the gate)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(seed)
    x = ops.parameter([-1, 8, 16], ov.Type.f32, name="x")
    stream, gate = x, ops.softmax(x, -1)
    for b in range(blocks):
        hidden = ops.relu(ops.matmul(stream, rng.standard_normal((16, 32)).astype(np.float32) * 0.3, False, False))
        out = ops.matmul(hidden, rng.standard_normal((32, 16)).astype(np.float32) * 0.3, False, False)
        stream = ops.add(stream, ops.multiply(out, gate))
        stream.set_friendly_name(f"block{b}")
    pooled = ops.reduce_mean(stream, np.array([1], np.int64), False)
    logits = ops.matmul(pooled, rng.standard_normal((16, 5)).astype(np.float32), False, False)
    return ov.Model([ops.result(logits)], [x], "residual_mlp")


def test_suffix_only_trials_equal_whole_model_trials_bit_for_bit():
    from ovrange.faults.suffix import plan_segments, prepared

    model, x = residual_mlp(), np.random.default_rng(1).standard_normal((40, 8, 16)).astype(np.float32)
    sites = find_sites(model, "activations", [(8, 16)])
    segments = plan_segments(prepared(model, sites), sites, [(8, 16)], count=4)
    assert len(segments) >= 3 and max(len(s.frontier) for s in segments) >= 2
    settings = dict(trials=1500, seed=4, inputs=20, bits="20-31", sdc="linf:0.05", batch_size=16)
    whole = inject(model, x, suffix="off", **settings)
    suffix = inject(model, x, suffix="on", **settings)
    assert "bit-exact cuts" in next(iter(suffix.meta["engines"].values()))
    assert " 0 bit-exact" not in next(iter(suffix.meta["engines"].values()))
    assert np.array_equal(whole.models[0].outcome, suffix.models[0].outcome)
    assert np.array_equal(whole.models[0].deviation, suffix.models[0].deviation)  # the very same faulty outputs
    assert whole.rates()["sdc"].k > 20 and whole.rates()["masked"].k > 20


def test_suffix_only_on_lenet_keeps_only_bit_exact_cuts_and_the_same_outcomes(bundled):
    lenet = bundled["lenet"]
    settings = dict(trials=1000, seed=6, inputs=30, bits="20-31")
    whole = inject(str(lenet["xml"]), str(lenet["test_npz"]), suffix="off", **settings)
    suffix = inject(str(lenet["xml"]), str(lenet["test_npz"]), suffix="on", **settings)
    assert "bit-exact cuts" in next(iter(suffix.meta["engines"].values()))
    assert np.array_equal(whole.models[0].outcome, suffix.models[0].outcome)
    assert np.array_equal(whole.models[0].deviation, suffix.models[0].deviation)
    default = inject(str(lenet["xml"]), str(lenet["test_npz"]), **settings)
    assert "suffix" not in next(iter(default.meta["engines"].values()))  # only when asked


def test_the_activation_batch_shrinks_to_fit_the_memory_setting_with_the_same_outcomes(bundled):
    lenet = bundled["lenet"]
    settings = dict(trials=800, seed=2, inputs=30, bits="20-31")
    roomy = inject(str(lenet["xml"]), str(lenet["test_npz"]), **settings)
    tight = inject(str(lenet["xml"]), str(lenet["test_npz"]), memory=1, **settings)
    sites = find_sites(read_model(lenet["xml"]), "activations", [(1, 28, 28)])
    fitting = 2**20 // (5 * sum(s.size for s in sites)) - 1  # batch + 1 rows of every site's output (+1/4) in 1 MB
    assert "64 faults per inference" in next(iter(roomy.meta["engines"].values()))
    assert f"{fitting} faults per inference" in next(iter(tight.meta["engines"].values())) and fitting < 64
    assert np.array_equal(roomy.models[0].outcome, tight.models[0].outcome)
    assert np.array_equal(roomy.models[0].deviation, tight.models[0].deviation)
