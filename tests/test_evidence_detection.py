"""A Checksum flag in a campaign: the engines read the protection's detector beside the outputs, the outcome stays
what the real outputs show, and the safety figures count flagged trials as detected (diagnostic coverage)."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

import ovrange
from ovrange.evidence import safety_figures
from ovrange.faults import inject
from ovrange.faults.metrics import DUE, MASKED, SDC
from ovrange.faults.result import CampaignResult
from ovrange.passes.checksum import DETECTED, with_detector
from tests.test_checksum import LAYER_SITES, infer
from tests.test_faults_sites import images, tiny_lenet


X = images(48, seed=3)
SETTINGS = {"trials": 300, "inputs": 24, "bits": "27-31", "sites": LAYER_SITES, "weighting": "uniform", "seed": 2}


@pytest.fixture(scope="module")
def protected() -> dict[str, ov.Model]:
    modes = {"recompute": {}, "zero": {"correction": "zero"}}
    return {mode: ovrange.protect(tiny_lenet(), X.astype(np.float32), algorithm="Checksum", subset_size=48,
                                  **params) for mode, params in modes.items()}


@pytest.fixture(scope="module")
def campaign(protected) -> CampaignResult:
    y = infer(tiny_lenet(), X.astype(np.float32))[0].argmax(1)
    return inject(tiny_lenet(), X, labels=y, compare=[protected["recompute"], protected["zero"]], batch_size=1,
                  **SETTINGS)


def test_the_detector_is_one_more_output_that_stays_0_on_clean_data():
    x = images(16, seed=1).astype(np.float32)
    protected = ovrange.protect(tiny_lenet(), x, algorithm="Checksum", subset_size=16)
    found = with_detector(protected)
    assert len(found.outputs) == len(protected.outputs) + 1 and found.outputs[-1].get_any_name() == DETECTED
    clean = infer(found, x[:1])
    assert clean[-1].tolist() == [0.0] and np.array_equal(clean[0], infer(protected, x[:1])[0])
    assert with_detector(tiny_lenet()) is None  # no Checksum, no detector


def test_flagged_trials_are_recorded_and_count_as_detected(campaign):
    original, recompute, zero = campaign.models
    assert original.flagged is None and recompute.flagged is not None and zero.flagged is not None
    # every fault that changed the original's answer at a checked layer is flagged by both protections
    failing = original.outcome != MASKED
    assert failing.sum() >= 20 and recompute.flagged[failing].all() and zero.flagged[failing].all()
    # recompute corrects what it flags: the outputs show nothing, only the flag tells a detection happened
    assert (recompute.outcome[recompute.flagged] == MASKED).all() and (recompute.outcome == SDC).sum() == 0
    figures = safety_figures(campaign)
    first, second, third = figures["models"]
    n = campaign.trials
    assert first["flagged"] is None and first["dc"]["k"] == (original.outcome == DUE).sum()
    assert second["flagged"]["k"] == recompute.flagged.sum() and second["flagged"]["n"] == n
    detected = int(((zero.outcome == DUE) | zero.flagged).sum())
    silent = int(((zero.outcome == SDC) & ~zero.flagged).sum())
    assert (third["dc"]["k"], third["dc"]["n"]) == (detected, detected + silent)
    for comparison in figures["comparisons"]:  # the original's failures the protection detects: all of them here
        assert comparison["failures_detected"]["k"] == comparison["failures_detected"]["n"] == failing.sum()


def test_flags_round_trip_through_result_json(campaign):
    again = CampaignResult.from_json(campaign.to_json())
    assert again.models[0].flagged is None
    assert np.array_equal(again.models[1].flagged, campaign.models[1].flagged)


def test_flags_are_read_per_batch_row(campaign, protected):
    """Without an If (correction zero) a batch holds many trials: each row's flag is its own trial's."""
    y = infer(tiny_lenet(), X.astype(np.float32))[0].argmax(1)
    batched = inject(tiny_lenet(), X, labels=y, compare=[protected["zero"]], **SETTINGS)
    assert batched.spec.batch_size > 1 and 0 < batched.models[1].flagged.sum()
    assert np.array_equal(batched.models[1].flagged, campaign.models[2].flagged)
    assert np.array_equal(batched.models[1].outcome, campaign.models[2].outcome)


def test_the_html_report_shows_the_flags(campaign):
    from ovrange.evidence.html import render, report_data, with_interval

    data = report_data(campaign)
    page = render(data)
    flagged = data["safety"]["models"][1]["flagged"]
    assert "flagged by the model's detector" in page and with_interval(flagged) in page
    detected = data["safety"]["comparisons"][0]["failures_detected"]
    assert f"the second one detects {with_interval(detected)}" in page
