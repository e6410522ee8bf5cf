"""Protection under a latency budget on the bundled models: real campaigns, real timings, small subsets.

Timings on a shared machine are noisy, so the tests check what holds whatever the machine did: the kept guards
are in benefit/cost order, the written IR holds exactly them, every timed set is smaller than the one before, the
kept set's recorded median is within the budget, and the expected reduction is what the campaign's counts give.
"""

from __future__ import annotations

import json
import sys

import pytest

from ovrange.budget import _coverage, parse_overhead
from ovrange.errors import ConfigError
from ovrange.modelio import read_model


def ovrange(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The command line, in this process (exit code, stdout, stderr)."""
    from ovrange.cli import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["ovrange", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def check_budget(budget: dict, kept: set[str]) -> None:
    """What a budget record must satisfy, whatever the timings measured."""
    keys = [c["key"] for c in budget["candidates"]]
    chosen = budget["chosen"]
    assert chosen == [k for k in keys if k in set(chosen)]  # in benefit/cost order
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


def test_protect_max_overhead_records_the_chosen_guards_overhead_and_expected_reduction(bundled, tmp_path,
                                                                                        monkeypatch, capsys):
    seven = bundled["seven"]
    config = tmp_path / "seven.json"
    config.write_text(json.dumps({"model": {"model": str(seven["xml"])}, "engine": {"data_source": str(
        seven["calib_npz"])}, "compression": {"max_overhead": "3%", "algorithms": [
            {"name": "RangeSupervision", "params": {"stat_subset_size": 100}}]}}))
    code, out, err = ovrange(monkeypatch, capsys, "protect", "--config", config, "--trials", 200, "--time", 0.5,
                             "-o", tmp_path / "out", "-q")
    assert code == 0, err
    bounds = json.loads(next((tmp_path / "out").glob("*/bounds.json")).read_text())
    budget = bounds["report"]["budget"]
    assert budget["max_overhead"] == pytest.approx(0.03) and budget["trials"] == 200
    check_budget(budget, set(bounds["nodes"]))
    assert len(budget["candidates"]) == 7  # FashionSevenAct: one guard per activation
    assert f"budget 3.00%: {len(budget['chosen'])} of 7 guards kept" in out
    assert "expected SDC reduction" in out and f"in {budget['trials']} activation faults in bits 23-30" \
        in out
    # the exponent-bit campaign finds SDCs the full protection removes; guards credited with none rank last
    removed = [c["removed"] for c in budget["candidates"]]
    assert removed[0] > 0 and sorted(removed, key=lambda r: r == 0) == removed


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


def test_budget_settings_without_a_budget_are_one_error_line_and_write_nothing(bundled, tmp_path, monkeypatch,
                                                                                capsys):
    seven = bundled["seven"]
    code, _, err = ovrange(monkeypatch, capsys, "protect", seven["xml"], "--data", seven["calib_npz"], "-o",
                           tmp_path / "out", "--trials", 50)
    assert code == 2
    assert err.splitlines() == ["error: --trials and --time set how --max-overhead chooses guards: "
                                        "give --max-overhead (or compression.max_overhead)"]
    assert not (tmp_path / "out").exists()
