"""The fault-free probe: bounded memory, the same outcomes (real OpenVINO on FashionLeNet)."""

from __future__ import annotations

import numpy as np

from ovrange.faults import inject
from ovrange.faults.sites import find_sites
from ovrange.modelio import read_model


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


def test_the_activation_batch_shrinks_to_fit_the_memory_setting_with_the_same_outcomes(bundled):
    lenet = bundled["lenet"]
    settings = dict(trials=800, seed=2, inputs=30, bits="20-31", lanes=1)  # one engine holds the whole setting
    roomy = inject(str(lenet["xml"]), str(lenet["test_npz"]), **settings)
    tight = inject(str(lenet["xml"]), str(lenet["test_npz"]), memory=1, **settings)
    sites = find_sites(read_model(lenet["xml"]), "activations", [(1, 28, 28)])
    fitting = 2**19 // (5 * sum(s.size for s in sites))  # rows of every site's output (+1/4) in half of 1 MB
    assert "64 faults per inference" in next(iter(roomy.meta["engines"].values()))
    assert f"{fitting} faults per inference" in next(iter(tight.meta["engines"].values())) and fitting < 64
    assert np.array_equal(roomy.models[0].outcome, tight.models[0].outcome)
    assert np.array_equal(roomy.models[0].deviation, tight.models[0].deviation)
