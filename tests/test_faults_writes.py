"""The activation injector on a model with many sites (the bundled Fashion ViT, 83 sites; real OpenVINO): writes of
dynamic length strike only their own batch row, a batch gives each trial the output it gets alone, reads after the
scatter are the fault-free values, and writes never outlive their inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ovrange.faults import inject
from ovrange.faults.injectors import ScatterInjector
from ovrange.faults.formats import flip
from ovrange.faults.sites import find_sites
from ovrange.modelio import read_model

SHAPES = [(1, 28, 28)]


@pytest.fixture(scope="module")
def vit() -> dict[str, Path]:
    from scripts.build_vit import build_vit

    return build_vit(Path(__file__).resolve().parent.parent / "build", log=False)


@pytest.fixture(scope="module")
def injector(vit):
    model = read_model(vit["xml"])
    sites = find_sites(model, "activations", SHAPES)
    return ScatterInjector(model, "activations", [s.name for s in sites], SHAPES, 8, reads=True), sites


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, np.float32).view(np.uint32)


def test_a_batch_gives_each_trial_the_output_it_gets_alone(vit, injector):
    injector, sites = injector
    assert len(sites) >= 80
    x = np.load(vit["test_npz"])["x"][:8].astype(np.float32)
    rng = np.random.default_rng(4)
    tap = rng.choice(len(sites), 8, replace=False)  # eight different sites: eight taps written at once
    element = np.array([rng.integers(sites[t].size) for t in tap])
    golden, values = injector.read([x], tap, np.arange(8), element)
    faulty = flip(values, np.full(8, 30))
    batched, _ = injector.run([x], tap, np.arange(8), element, faulty)
    changed = 0
    for r in range(8):
        alone, _ = injector.run([x], tap[[r]], np.array([r]), element[[r]], faulty[[r]])
        assert np.array_equal(bits(alone[0][r]), bits(batched[0][r]))  # the other rows' writes do not reach row r
        others = np.arange(8) != r
        assert np.array_equal(bits(alone[0][others]), bits(golden[0][others]))  # row r's write reaches no other row
        changed += not np.array_equal(bits(alone[0][r]), bits(golden[0][r]))
    assert changed >= 2  # the faults did something


def test_reads_are_the_fault_free_values_and_writes_do_not_outlive_their_inference(vit, injector):
    injector, sites = injector
    x = np.load(vit["test_npz"])["x"][8:16].astype(np.float32)
    probe = ScatterInjector(read_model(vit["xml"]), "activations", [s.name for s in sites], SHAPES, 8, probe=True)
    reference, tensors = probe.run([x])
    rng = np.random.default_rng(5)
    tap = rng.choice(len(sites), 40)
    row, element = rng.integers(0, 8, 40), np.array([rng.integers(sites[t].size) for t in tap])
    golden, values = injector.read([x], tap, row, element)
    expected = [tensors[t][0].reshape(8, -1)[r, e] for t, r, e in zip(tap, row, element)]
    assert np.array_equal(bits(values), bits(np.array(expected)))
    assert np.array_equal(bits(golden[0]), bits(reference[0]))
    injector.run([x], tap[:8], np.arange(8), element[:8], np.full(8, 3e38, np.float32))
    after, _ = injector.run([x])  # no writes: the fault-free output again, bit for bit
    assert np.array_equal(bits(after[0]), bits(golden[0]))
    again, _ = injector.read([x], tap, row, element)
    assert np.array_equal(bits(again[0]), bits(golden[0]))


def test_outcomes_do_not_depend_on_the_batch_on_a_model_with_many_sites(vit):
    settings = dict(target="activations", trials=1500, seed=9, inputs=30, bits="23-31", lanes=1)
    one = inject(str(vit["xml"]), str(vit["test_npz"]), batch_size=1, **settings)
    many = inject(str(vit["xml"]), str(vit["test_npz"]), batch_size=48, **settings)
    a, b = one.models[0], many.models[0]
    assert "48 faults per inference" in next(iter(many.meta["engines"].values()))
    assert np.array_equal(a.outcome, b.outcome) and np.array_equal(a.top1, b.top1)
    assert np.array_equal(a.deviation, b.deviation, equal_nan=True)
    assert one.rates()["sdc"].k > 0
