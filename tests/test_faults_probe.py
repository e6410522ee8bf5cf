"""The fault-free probe: bounded memory, the same outcomes (real OpenVINO on FashionLeNet and a tiny LeNet)."""

from __future__ import annotations

import numpy as np

from ovrange.faults import inject
from ovrange.faults.injectors import ScatterInjector, ValueProbe
from ovrange.faults.sites import find_sites
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


def test_a_weight_campaign_in_a_small_probe_memory_gives_the_same_outcomes(bundled):
    lenet = bundled["lenet"]
    settings = dict(target="weights", trials=600, seed=3, inputs=40, bits="23-31")
    roomy = inject(str(lenet["xml"]), str(lenet["test_npz"]), **settings)
    tight = inject(str(lenet["xml"]), str(lenet["test_npz"]), probe_memory=1, **settings)
    assert "probe: 64 inputs" in next(iter(roomy.meta["engines"].values()))
    engine = next(iter(tight.meta["engines"].values()))
    assert "probe: 64 inputs" not in engine and "probe: " in engine  # 1 MB holds fewer than 64 inputs' tensors
    assert np.array_equal(roomy.models[0].outcome, tight.models[0].outcome)
    assert np.array_equal(roomy.models[0].deviation, tight.models[0].deviation)
    assert roomy.rates()["sdc"].k > 0
