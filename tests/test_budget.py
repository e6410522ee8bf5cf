"""Protection under a latency budget on the bundled models: real campaigns, real timings, small subsets.

Timings on a shared machine are noisy, so the tests check what holds whatever the machine did: the kept guards are
the best-ranked prefix, the written IR holds exactly them, every timed set is smaller than the one before, the
kept set's recorded median is within the budget, and the expected reduction is what the campaign's counts give.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ovrange.budget import _coverage, parse_overhead
from ovrange.errors import ConfigError
from ovrange.modelio import read_model

ROOT = Path(__file__).resolve().parent.parent


def ovrange(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def check_budget(budget: dict, kept: set[str]) -> None:
    """What a budget record must satisfy, whatever the timings measured."""
    keys = [c["key"] for c in budget["candidates"]]
    chosen = budget["chosen"]
    assert chosen == keys[:len(chosen)]  # greedy: the best benefit/cost prefix
    ratios = [c["removed"] / c["cost"] if c["cost"] else float("inf") if c["removed"] else 0.0
              for c in budget["candidates"]]
    assert ratios == sorted(ratios, reverse=True)
    assert set(chosen) == kept  # the written model holds exactly the chosen guards
    sizes = [t["guards"] for t in budget["timings"]]
    assert sizes[0] == len(keys) and sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    for timing in budget["timings"]:
        assert timing["low"] <= timing["median"] <= timing["high"] and timing["sessions"] >= 3
    if chosen:
        assert budget["overhead"]["guards"] == len(chosen)
        assert budget["overhead"]["median"] <= budget["max_overhead"]
    removed = sum(c["removed"] for c in budget["candidates"] if c["key"] in set(chosen))
    full = sum(c["removed"] for c in budget["candidates"])
    assert budget["kept_share"] == (pytest.approx(removed / full) if full else None)
    left = budget["sdc_original"] - removed
    assert budget["expected_reduction"] == (pytest.approx(budget["sdc_original"] / left) if left > 0 else None)
    assert 0 <= full <= budget["sdc_original"]


def test_protect_max_overhead_records_the_chosen_guards_overhead_and_expected_reduction(bundled, tmp_path):
    seven = bundled["seven"]
    config = tmp_path / "seven.json"
    config.write_text(json.dumps({"model": {"model": str(seven["xml"])}, "engine": {"data_source": str(
        seven["calib_npz"])}, "compression": {"max_overhead": "0.3%", "algorithms": [
            {"name": "RangeSupervision", "params": {"stat_subset_size": 100}}]}}))
    done = ovrange("protect", "--config", config, "--trials", 200, "--time", 1, "-o", tmp_path / "out", "-q")
    assert done.returncode == 0, done.stderr
    bounds = json.loads(next((tmp_path / "out").glob("*/bounds.json")).read_text())
    budget = bounds["report"]["budget"]
    assert budget["max_overhead"] == pytest.approx(0.003) and budget["trials"] == 200
    check_budget(budget, set(bounds["nodes"]))
    assert len(budget["candidates"]) == 7  # FashionSevenAct: one guard per activation
    assert f"budget 0.30%: {len(budget['chosen'])} of 7 guards kept" in done.stdout
    assert "expected SDC reduction" in done.stdout and f"in {budget['trials']} activation faults" in done.stdout
    # the campaign ranks the first convolution block's guard first: its sites (conv, bias, ReLU) carry most SDC
    removed = {c["key"]: c["removed"] for c in budget["candidates"]}
    assert max(removed.values()) > 0 and budget["candidates"][0]["removed"] == max(removed.values())


def test_a_fault_is_credited_to_the_first_guard_downstream(bundled):
    lenet = read_model(bundled["lenet"]["xml"])
    keys = {"__module.features.1/aten::relu/Relu", "__module.classifier.2/aten::relu/Relu"}
    covers = _coverage(lenet, keys)
    assert covers["__module.features.0/aten::_convolution/Convolution"] == ("__module.features.1/aten::relu/Relu",)
    assert covers["__module.features.1/aten::relu/Relu"] == ("__module.features.1/aten::relu/Relu",)
    # between the two guards: the classifier guard is the first one a fault there meets
    assert covers["__module.features.4/aten::relu/Relu"] == ("__module.classifier.2/aten::relu/Relu",)
    assert covers["__module.classifier.4/aten::relu/Relu"] == ()  # after the last guard: nothing stops it


@pytest.mark.parametrize("text, fraction", [("1%", 0.01), ("0.3%", 0.003), ("2", 0.02), (" 0 % ".strip(), 0.0)])
def test_budgets_are_percentages_as_check_takes_them(text, fraction):
    assert parse_overhead(text) == pytest.approx(fraction)


@pytest.mark.parametrize("text", ["abc", "-1%", "nan", "inf%", "1%%"])
def test_a_bad_budget_is_refused(text):
    with pytest.raises(ConfigError, match="--max-overhead"):
        parse_overhead(text)


def test_budget_settings_without_a_budget_are_one_error_line_and_write_nothing(bundled, tmp_path):
    seven = bundled["seven"]
    done = ovrange("protect", seven["xml"], "--data", seven["calib_npz"], "-o", tmp_path / "out", "--trials", 50)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: --trials, --time and --sdc set how --max-overhead chooses guards: "
                                        "give --max-overhead (or compression.max_overhead)"]
    assert not (tmp_path / "out").exists()
