"""Campaigns end to end on real OpenVINO: seeding, replay, comparison, resume, JSON, modes, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

import ovrange
from ovrange.errors import ConfigError, DataError, ModelError
from ovrange.faults import CampaignResult, FaultList, inject
from ovrange.faults.campaign import FAULTS_FILE
from ovrange.faults.metrics import DUE, SDC
from ovrange.runtime import compile_model
from tests.test_faults_sites import images, tiny_lenet


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """120 images labelled by the model itself, every 4th label wrong (those inputs must never be drawn)."""
    x = images(120, seed=7)
    labels = compile_model(tiny_lenet(), "CPU").create_infer_request().infer([x.astype(np.float32)])[0].argmax(1)
    labels[::4] = (labels[::4] + 1) % 5
    return x, labels


@pytest.fixture(scope="module")
def protected(data):
    return ovrange.protect(tiny_lenet(), data[0][:64], subset_size=64)


def test_same_seed_gives_the_same_faults_and_counts(data):
    x, y = data
    first = inject(tiny_lenet(), x, labels=y, trials=300, seed=11, inputs=20, bits="23-31")
    again = inject(tiny_lenet(), x, labels=y, trials=300, seed=11, inputs=20, bits="23-31")
    other = inject(tiny_lenet(), x, labels=y, trials=300, seed=12, inputs=20, bits="23-31")
    assert first.fingerprint == again.fingerprint != other.fingerprint
    assert np.array_equal(first.models[0].outcome, again.models[0].outcome)
    assert first.rates()["sdc"].k > 0  # exponent flips do cause SDCs on this model
    assert set(first.trial_input.tolist()) <= {i for i in range(120) if i % 4}  # only correctly classified inputs
    assert first.models[0].inputs_correct <= first.models[0].inputs_checked


def test_compare_replays_the_same_faults_and_protection_reduces_sdc(data, protected):
    x, y = data
    result = inject(tiny_lenet(), x, labels=y, compare=protected, trials=600, seed=2, inputs=30, bits="30")
    original, clamped = result.rates(0), result.rates(1)
    table = result.comparison()["paired"]
    assert sum(sum(row.values()) for row in table.values()) == 600
    assert original["sdc"].k > 60  # bit 30 is the exponent MSB: many critical faults (123 of 600 seen)
    assert clamped["sdc"].k * 5 < original["sdc"].k  # the Clamps correct most of them (7 of 600 seen)
    assert table["sdc"]["masked"] > 50  # trial by trial: the same faults, now masked
    per_layer = result.per_layer(1)
    assert "relu1" in per_layer and not any(name.endswith("min_max_Clamp") for name in per_layer)


def test_replay_of_a_saved_fault_list_reproduces_the_campaign(data, protected, tmp_path):
    x, y = data
    first = inject(tiny_lenet(), x, labels=y, target="weights", trials=120, seed=5, inputs=10, bits="exponent",
                   checkpoint_dir=tmp_path / "run")
    plan = FaultList.load(tmp_path / "run" / FAULTS_FILE)
    assert len(plan.faults) == 120 and plan.fingerprint() == first.fingerprint
    replayed = inject(tiny_lenet(), x, labels=y, replay=tmp_path / "run" / FAULTS_FILE, trials=5, seed=99)
    assert replayed.trials == 120 and replayed.fingerprint == first.fingerprint
    assert np.array_equal(replayed.models[0].outcome, first.models[0].outcome)
    assert np.array_equal(replayed.models[0].deviation, first.models[0].deviation)
    on_protected = inject(protected, x, labels=y, replay=plan)
    assert on_protected.models[0].done.all()


def test_an_interrupted_campaign_resumes_to_the_same_result(data, tmp_path):
    x, y = data
    settings = dict(labels=y, trials=400, seed=3, inputs=16, batch_size=16, bits="20-31")
    full = inject(tiny_lenet(), x, **settings)

    def stop_midway(done: int, total: int) -> None:
        if done >= 160:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        inject(tiny_lenet(), x, checkpoint_dir=tmp_path, progress=stop_midway, **settings)
    calls = []
    resumed = inject(tiny_lenet(), x, checkpoint_dir=tmp_path, resume=True, progress=lambda d, t: calls.append(d),
                     **settings)
    assert calls[0] >= 160  # the checkpointed trials were not run again
    assert np.array_equal(resumed.models[0].outcome, full.models[0].outcome)
    with pytest.raises(ConfigError, match="different campaign"):
        inject(tiny_lenet(seed=1), x, checkpoint_dir=tmp_path, resume=True, **settings)


def test_result_round_trips_through_json(data, protected):
    x, y = data
    result = inject(tiny_lenet(), x, labels=y, compare=protected, trials=200, seed=4, inputs=10)
    again = CampaignResult.from_json(result.to_json())
    assert again.summary() == result.summary()
    assert again.spec == result.spec and [s.name for s in again.sites] == [s.name for s in result.sites]
    assert np.array_equal(again.models[1].outcome, result.models[1].outcome)


def test_bit_error_rate_and_fixed_point_modes(data):
    x, y = data
    ber = inject(tiny_lenet(), x, labels=y, target="weights", trials=40, ber=2e-3, seed=1, inputs=8)
    assert ber.faults_per_trial.sum() > 40 and (ber.trial_site == -1).any() and ber.models[0].done.all()
    assert ber.rates()["sdc"].k + ber.rates()["due"].k > 0  # ~8 flips per trial in 1,500 weights hurt
    fixed = inject(tiny_lenet(), x, labels=y, trials=300, seed=1, inputs=8, number_format="fixed16", bits="13")
    assert fixed.rates()["due"].k == 0  # fixed point cannot make NaN/Inf ...
    assert fixed.rates()["sdc"].k > 0  # ... but bit 13 of 14/2 adds +-2048


def test_a_fixed_batch_model_gets_one_fault_per_inference_with_the_same_outcomes(data):
    x, y = data
    settings = dict(labels=y, trials=150, seed=8, inputs=12, bits="25-31")
    batched = inject(tiny_lenet(), x, **settings)
    single = inject(tiny_lenet(batch=1, fixed_reshape=True), x, **settings)
    assert "fixed batch" in next(iter(single.meta["engines"].values()))
    assert single.fingerprint == batched.fingerprint
    assert np.array_equal(single.models[0].outcome, batched.models[0].outcome)


def test_outputs_that_are_not_class_scores_need_a_deviation_threshold(data):
    x, _ = data
    with pytest.raises(ConfigError, match="choose an SDC threshold"):
        inject(tiny_lenet(regression=True), x, trials=10)
    linf = inject(tiny_lenet(regression=True), x, trials=200, seed=1, inputs=8, sdc="linf:0.1", bits="30")
    cosine = inject(tiny_lenet(regression=True), x, trials=200, seed=1, inputs=8, sdc="cosine:0.01", bits="30")
    assert linf.fingerprint == cosine.fingerprint
    assert 0 < linf.rates()["sdc"].k + linf.rates()["due"].k
    assert (linf.models[0].outcome == DUE).sum() == (cosine.models[0].outcome == DUE).sum()
    dev = linf.models[0].deviation
    assert ((dev > 0.1) == (linf.models[0].outcome == SDC))[np.isfinite(dev)].all()


def test_bad_settings_and_data_fail_with_one_line_errors(data, protected):
    x, y = data
    with pytest.raises(ConfigError, match="trials must be a positive integer"):
        inject(tiny_lenet(), x, trials=0)
    with pytest.raises(ConfigError, match="outside 0..31"):
        inject(tiny_lenet(), x, bits="33")
    with pytest.raises(DataError, match="does not fit"):
        inject(tiny_lenet(), np.zeros((4, 3, 12, 12), np.float32), trials=5)
    with pytest.raises(ModelError, match="does not match"):
        inject(tiny_lenet(), x, compare=tiny_lenet(regression=True), trials=5, sdc="linf:0.1")
    with pytest.raises(DataError, match="no input is handled correctly"):
        inject(tiny_lenet(), x, labels=np.full(120, 9), trials=5)


def test_batched_and_weights_as_inputs_engines_agree_trial_by_trial(data):
    x, y = data
    settings = dict(labels=y, target="weights", trials=300, seed=9, inputs=20, bits="30")
    delta = inject(tiny_lenet(), x, weight_mode="delta", **settings)
    parameter = inject(tiny_lenet(), x, weight_mode="parameter", **settings)
    assert "corrections" in next(iter(delta.meta["engines"].values()))
    assert "weights as inputs" in next(iter(parameter.meta["engines"].values()))
    assert delta.fingerprint == parameter.fingerprint and delta.rates()["sdc"].k > 30
    assert np.array_equal(delta.models[0].outcome, parameter.models[0].outcome)
    a, b = delta.models[0].deviation, parameter.models[0].deviation
    finite = np.isfinite(a) & np.isfinite(b)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    assert np.allclose(a[finite], b[finite], rtol=1e-3, atol=1e-6)  # f32 rounding of 1e34-scale sums
    with pytest.raises(ModelError, match="weight_mode delta"):
        inject(tiny_lenet(batch=1, fixed_reshape=True), x, weight_mode="delta", **settings)
