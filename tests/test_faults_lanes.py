"""Local lanes: shards on parallel engines in one process give the outcomes of one engine, trial by trial, within the
memory setting, with a checkpoint a stopped campaign resumes from (real OpenVINO on FashionLeNet)."""

from __future__ import annotations

import numpy as np
import pytest

from ovrange.errors import ConfigError
from ovrange.faults import inject
from ovrange.faults.executors import local_lanes
from ovrange.faults.sites import find_sites
from ovrange.modelio import read_model


def same(a, b) -> bool:
    x, y = a.models[0], b.models[0]
    return (np.array_equal(x.outcome, y.outcome) and np.array_equal(x.top1, y.top1)
            and np.array_equal(x.deviation, y.deviation, equal_nan=True))


@pytest.mark.parametrize("target", ["activations", "weights"])
def test_two_lanes_give_the_outcomes_of_one(bundled, target):
    lenet = bundled["lenet"]
    settings = dict(target=target, trials=3000, seed=5, inputs=40, bits="20-31", shard_size=256)
    one = inject(str(lenet["xml"]), str(lenet["test_npz"]), lanes=1, **settings)
    two = inject(str(lenet["xml"]), str(lenet["test_npz"]), lanes=2, **settings)
    assert same(one, two)
    assert one.rates()["sdc"].k > 0 and one.rates()["masked"].k > 0
    assert one.meta["executor"]["workers"] == 1 and two.meta["executor"]["workers"] == 2
    assert len(two.meta["workers"]) == 2  # both lanes ran shards
    assert sum(w["trials"] for w in two.meta["workers"].values()) == 3000


def test_lanes_share_the_memory_setting(bundled):
    lenet = bundled["lenet"]
    settings = dict(trials=800, seed=2, inputs=30, bits="20-31")
    roomy = inject(str(lenet["xml"]), str(lenet["test_npz"]), lanes=2, **settings)
    tight = inject(str(lenet["xml"]), str(lenet["test_npz"]), lanes=2, memory=2, **settings)
    sites = find_sites(read_model(lenet["xml"]), "activations", [(1, 28, 28)])
    fitting = 2**19 // (5 * sum(s.size for s in sites))  # each lane: 1 of the 2 MB, half for the reader
    assert f"{fitting} faults per inference" in next(iter(tight.meta["engines"].values())) and fitting < 64
    assert same(roomy, tight)


def test_a_campaign_stopped_mid_way_on_two_lanes_resumes_to_the_same_outcomes(bundled, tmp_path):
    lenet = bundled["lenet"]
    settings = dict(trials=4000, seed=7, inputs=40, bits="20-31", shard_size=256, lanes=2)
    whole = inject(str(lenet["xml"]), str(lenet["test_npz"]), **settings)
    seen = []

    def interrupt(done: int, total: int) -> None:
        seen.append(done)
        if done >= 1000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        inject(str(lenet["xml"]), str(lenet["test_npz"]), checkpoint_dir=tmp_path, progress=interrupt, **settings)
    assert 1000 <= seen[-1] < 4000 and seen == sorted(seen)
    resumed = inject(str(lenet["xml"]), str(lenet["test_npz"]), checkpoint_dir=tmp_path, resume=True, **settings)
    assert same(whole, resumed)


def test_lanes_default_to_the_cores_at_most_two_and_must_be_positive(bundled):
    assert local_lanes(1) == 1 and local_lanes(2) == 2 and local_lanes(64) == 2
    assert local_lanes(2, trials=399) == 1 and local_lanes(2, trials=400) == 2  # a second lane's engines pay off
    lenet = bundled["lenet"]
    with pytest.raises(ConfigError, match="lanes"):
        inject(str(lenet["xml"]), str(lenet["test_npz"]), trials=10, lanes=0)
