"""Safety figures recomputed by hand (ovrange.evidence.safety): Wilson, FIT scaling, SPFM, DC, paired ratio."""

from __future__ import annotations

import pytest

from ovrange.errors import ConfigError
from ovrange.evidence.safety import paired_counts, paired_ratio, raw_rate, safety_figures

SPEC = {"weighting": "elements", "fault_model": "bit", "ber": None, "error_rate": None}
TABLE = {"masked": {"masked": 1978, "sdc": 0, "due": 0}, "sdc": {"masked": 17, "sdc": 5, "due": 0},
         "due": {"masked": 0, "sdc": 0, "due": 0}}
MODELS = [{"name": "original", "masked": 1978, "sdc": 22, "due": 0},
          {"name": "protected", "masked": 1995, "sdc": 5, "due": 0}]


def test_hand_example_of_a_lenet_campaign():
    """22/2000 SDC, 751,104 faulted bits, 1000 FIT/Mbit: every number below is worked out in docs/safety-case.md."""
    figures = safety_figures(SPEC, 751_104, MODELS, [TABLE], fit_raw=1000.0, unit="mbit")
    assert figures["lambda_fit"] == pytest.approx(1000.0 * 751_104 / 1_048_576)  # 716.31 FIT
    original, protected = figures["models"]
    # Wilson 95%: centre (p + z^2/2n)/(1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2)/(1 + z^2/n)
    assert (original["p_sdc"]["low"], original["p_sdc"]["high"]) == pytest.approx((0.0072754, 0.0165994), abs=1e-7)
    assert original["lambda_sdc_fit"]["value"] == pytest.approx(7.8794, abs=1e-4)
    assert (original["lambda_sdc_fit"]["low"], original["lambda_sdc_fit"]["high"]) == pytest.approx(
        (5.2114, 11.8903), abs=1e-4)
    assert original["spfm"]["value"] == pytest.approx(0.989)
    assert (original["spfm"]["low"], original["spfm"]["high"]) == pytest.approx((0.9834006, 0.9927246), abs=1e-7)
    assert original["dc"]["k"] == 0 and original["dc"]["n"] == 22 and original["dc"]["value"] == 0.0
    assert original["dc"]["high"] == pytest.approx(0.1486549, abs=1e-7)  # 0 of 22 detected: DC <= 14.9%
    assert protected["lambda_sdc_fit"]["value"] == pytest.approx(716.30859375 * 0.0025)
    comparison = figures["comparisons"][0]
    assert (comparison["sdc_both"], comparison["sdc_first_only"], comparison["sdc_second_only"]) == (5, 17, 0)
    red = comparison["sdc_reduction"]  # 22/5; var(ln R) = (17 + 0)/(22 * 5)
    assert (red["value"], red["low"], red["high"]) == pytest.approx((4.4, 2.03623, 9.50778), abs=1e-5)
    assert comparison["corrected"]["value"] == pytest.approx(17 / 22)


def test_paired_ratio_by_hand():
    # a=2, b=18, c=1: R = 20/3, var = 19/60, 1.96 * sqrt(19/60) = 1.10293, exp(+-1.10293) = 3.01302^(+-1)
    red = paired_ratio(2, 18, 1)
    assert (red["value"], red["low"], red["high"]) == pytest.approx((20 / 3, 2.21264, 20.0866), abs=1e-4)
    # no SDC left: 0.5 added to a, b, c: R' = 11, var = 11/11 = 1; no finite upper end, no point value
    zero = paired_ratio(0, 10, 0)
    assert zero["value"] is None and zero["high"] is None
    assert zero["low"] == pytest.approx(11 * 0.1408635, abs=1e-5)  # 11 exp(-1.96)
    assert paired_ratio(0, 0, 0) == {"value": None, "low": None, "high": None}
    assert paired_counts(TABLE) == (5, 17, 0)


def test_per_device_rate_and_refusals():
    assert raw_rate(50.0, "device", 123) == 50.0
    with pytest.raises(ConfigError, match="fit-unit"):
        raw_rate(50.0, "gbit", 123)
    uniform = {**SPEC, "weighting": "uniform"}
    with pytest.raises(ConfigError, match="uniformly"):
        safety_figures(uniform, 100, MODELS, [TABLE], fit_raw=10.0)
    figures = safety_figures(uniform, 100, MODELS, [TABLE])  # without a rate: shown, marked, no SPFM
    assert figures["unsuitable"] and figures["models"][0]["spfm"] is None and figures["lambda_fit"] is None
    multi = {**SPEC, "ber": 1e-5}
    assert "several faults" in safety_figures(multi, 100, MODELS, [TABLE])["unsuitable"]
