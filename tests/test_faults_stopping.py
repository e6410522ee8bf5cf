"""Statistical stopping: campaigns that run until their SDC intervals are as narrow as asked (real OpenVINO)."""

from __future__ import annotations

import json

import pytest

from ovrange.errors import ConfigError
from ovrange.faults import CampaignResult, inject
from ovrange.faults.metrics import wilson
from ovrange.faults.stopping import half_width, z_value
from tests.test_faults_cli import cli
from tests.test_faults_sites import images, tiny_lenet


def test_fashion_lenet_stops_when_its_sdc_interval_is_within_the_margin(bundled, tmp_path, capsys):
    lenet = bundled["lenet"]
    code, out, err = cli(capsys, "inject", lenet["xml"], "--data", lenet["test_npz"], "--margin", "0.002",
                         "--confidence", "0.95", "--report", tmp_path / "run", "--no-plots", "-q")
    assert code == 0, err
    result = CampaignResult.load(tmp_path / "run" / "result.json")
    stop = result.meta["stopping"]
    run = result.models[0]
    n, k = int(run.done.sum()), result.rates()["sdc"].k
    low, high = wilson(k, n, z_value(0.95))
    assert (high - low) / 2 <= 0.002 < stop["rounds"][-2]["half_width"][0]  # reached, and not one round earlier
    assert stop["trials"] == n < result.trials == 100_000  # the default cap was not needed
    assert run.done[:n].all() and not run.done[n:].any()  # a prefix of the fault list: an unbiased sample
    assert f"stopped after {n} trials" in out
    assert f"Stopped after {n} of 100000 trials" in (tmp_path / "run" / "summary.md").read_text()
    checkpoint = (tmp_path / "run" / "checkpoint.jsonl").read_text().splitlines()[1:]
    assert sum(len(json.loads(line)["t"]) for line in checkpoint) == n


def test_a_small_fault_space_stops_earlier_with_the_finite_population_correction():
    x = images(120, seed=7)
    result = inject(tiny_lenet(), x, trials=3000, seed=1, inputs=4, bits="30", sites=["pool2", "conv1"],
                    margin=0.02, sdc="linf:0.1")
    stop = result.meta["stopping"]
    population = 4 * (24 + 400) * 1  # inputs x elements x bits
    assert f"N={population}" in stop["method"]
    sdc = result.rates()["sdc"]
    assert stop["rounds"][-1]["half_width"][0] <= 0.02 < half_width(sdc.k, sdc.n, z_value(0.95))
    assert sdc.n == stop["trials"] < 3000


def test_the_trial_cap_ends_a_campaign_that_cannot_reach_its_margin():
    x = images(120, seed=7)
    result = inject(tiny_lenet(), x, compare=tiny_lenet(), trials=2500, seed=2, inputs=10, bits="20-31",
                    margin=0.001, sdc="linf:0.1")
    stop = result.meta["stopping"]
    assert "cap 2500" in stop["reason"] and stop["trials"] == 2500
    assert all(run.done.all() for run in result.models) and len(stop["rounds"][-1]["half_width"]) == 2


def test_half_width_with_and_without_the_population():
    z = z_value(0.95)
    assert half_width(5, 100, z) == pytest.approx((wilson(5, 100)[1] - wilson(5, 100)[0]) / 2)
    assert half_width(5, 100, z, population=100) == 0.0  # the whole space seen: no uncertainty left
    assert half_width(5, 100, z, population=200) < half_width(5, 100, z)
    with pytest.raises(ConfigError):
        z_value(1.5)


@pytest.mark.parametrize("args", [["--margin", "0"], ["--margin", "0.6"], ["--margin", "0.01", "--confidence",
                                                                          "1"]])
def test_bad_margins_fail_in_one_line(bundled, tmp_path, capsys, args):
    lenet = bundled["lenet"]
    code, _, err = cli(capsys, "inject", lenet["xml"], "--data", lenet["test_npz"], *args, "--report",
                       tmp_path / "r")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()
