"""Held-out validation in ``protect`` (ovrange/validate.py): clean outputs untouched on inputs the bounds never saw.

Real OpenVINO inference: a tiny model built in code, the bundled Fashion LeNet, and one zoo model (small subsets).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

import ovrange
from ovrange import validate
from ovrange.check import Thresholds, check
from ovrange.data import load
from ovrange.errors import ConfigError
from ovrange.graph import set_rt_json
from ovrange.protect import protection_info
from ovrange.stats import MinMax
from tests.models import seven_activation_model

ZOO = Path(__file__).resolve().parent.parent / "build" / "zoo"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


# ---------------------------------------------------------------------------------------------------------------
# The rules (pure)


def test_widen_moves_only_the_side_that_fired_by_the_factor_times_the_covering_range():
    guard = {"node": "a", "type": "Relu", "low": 0.0, "high": 2.0, "method": "max"}
    seen = MinMax(np.array(0.5), np.array(3.0))  # the high side fired: 3 > 2
    assert validate.fires(guard, seen)
    wide = validate.widen(guard, seen, factor=4.0)
    assert wide["low"] == 0.0 and wide["high"] == 3.0 + 4.0 * 3.0  # covering range [0, 3]
    assert wide["method"] == "max+heldout" and not validate.fires(wide, seen)


def test_widen_per_channel_gives_a_constant_channel_a_tenth_of_the_tensor_range():
    guard = {"node": "a", "type": "Relu", "low": [0.0, 0.0], "high": [10.0, 0.0], "axis": 1, "method": "max"}
    seen = MinMax(np.array([0.0, 0.0]), np.array([5.0, 0.5]))  # channel 1 was always 0 on calibration data
    wide = validate.widen(guard, seen, factor=2.0)
    assert wide["high"] == [10.0, 0.5 + 2.0 * 1.0]  # unit: max(0.5, 0.1 * 10) = 1.0; channel 0 held
    assert wide["low"] == [0.0, 0.0]


def test_margin_grows_learned_bounds_only():
    guards = {"a": {"node": "a", "low": -1.0, "high": 3.0, "method": "max"},
              "p": {"node": "p", "low": 0.0, "high": 1.0, "form": "reset", "role": "probabilities"},
              "w": {"node": "w", "low": [0.0], "high": [1.0], "role": "weights"},
              "t": {"node": "t", "low": -1.0, "high": 1.0, "method": "inherent"}}
    grown = validate.with_margin(guards, 0.5)
    assert (grown["a"]["low"], grown["a"]["high"]) == (-3.0, 5.0)
    assert all(grown[k] == guards[k] for k in "pwt")


def test_split_is_seeded_disjoint_and_keeps_one_of_each():
    rest, held = validate.split(10, 0.2, seed=0)
    assert len(held) == 2 and len(rest) == 8 and not set(rest) & set(held)
    assert np.array_equal(held, validate.split(10, 0.2, seed=0)[1])
    assert [len(p) for p in validate.split(2, 0.9)] == [1, 1] and len(validate.split(5, 0.0)[1]) == 0
    with pytest.raises(ConfigError, match="holdout"):
        validate.check_fraction(1.0)


# ---------------------------------------------------------------------------------------------------------------
# protect: a tiny model, then the bundled LeNet


def test_bounds_that_fire_on_held_out_inputs_are_widened_and_agreement_is_reported():
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    loud_at = list(validate.split(10, 0.2, 0)[1])  # the two samples the seeded split holds out
    calib[loud_at] *= 8.0
    model = seven_activation_model()
    protected = ovrange.protect(model, calib, subset_size=10, holdout=0.2)
    entry = protection_info(protected).report["heldout"]
    assert entry["samples"] == 2 and entry["widened"] >= 1 and not entry["changes_outputs"]
    assert {a["criterion"] for a in entry["agreement"]} == {"linf:0.01", "top1"}  # output [N, classes]: top1
    assert all(a["agree"] == a["total"] == 2 and a["ci95"][1] == 1.0 for a in entry["agreement"])
    widened = [g for g in protection_info(protected).guards.values() if "heldout" in g["method"]]
    assert len(widened) == entry["widened"]
    assert protection_info(protected).samples == 10  # the bounds cover every sample of the subset
    # Without validation, the loud samples clip: the protected model then changes their outputs.
    plain = ovrange.protect(model, calib[[i for i in range(10) if i not in loud_at]], holdout=0)
    loud = calib[loud_at]
    runs = [ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}) for m in (model, plain, protected)]
    outs = [np.concatenate([r(loud[i:i + 1])[0] for i in range(2)]) for r in runs]
    assert not np.allclose(outs[1], outs[0], rtol=0, atol=1e-3) and np.array_equal(outs[2], outs[0])


def test_lenet_reports_top1_and_linf_agreement_and_a_clipping_protection_warns_and_fails_check(bundled):
    paths = bundled["lenet"]
    model = ov.Core().read_model(paths["xml"])
    data = load(paths["calib_npz"], model)
    protected = ovrange.protect(model, data.dataset, algorithm="GlobalClipper", subset_size=30)
    entry = protection_info(protected).report["heldout"]
    assert entry["samples"] == 6
    assert {a["criterion"] for a in entry["agreement"]} == {"linf:0.01", "top1"}
    assert not entry["changes_outputs"]
    assert [(g.name, g.passed) for g in check(model, protected, data, Thresholds(), limit=8).gates] == [
        ("heldout_agreement", True)]
    # Bounds from 3 samples, checked without widening on 12 others: they clip, and the report says so.
    samples = [s for s, _ in zip(data.dataset.get_inference_data(), range(15))]
    tight = ovrange.protect(model, samples[:3], algorithm="RangeSupervision", holdout=0)
    plan = protection_info(tight)
    guards, clipped, found = validate.validate(
        model, plan.guards, lambda g: ovrange.protect(model, plan=replace(plan, guards=g)), samples[3:],
        widen_bounds=False)
    assert found["changes_outputs"] and found["widened"] == 0 and guards == plan.guards
    assert validate.warning(found).startswith("warning: the protected model changes ")
    set_rt_json(clipped, "protection", replace(plan, report={"heldout": found}).to_json())
    gates = check(model, clipped, data, Thresholds(), limit=8).gates
    assert [g.name for g in gates] == ["heldout_agreement"] and not gates[0].passed
    assert "changed by the protection" in gates[0].message


# ---------------------------------------------------------------------------------------------------------------
# The command line on a zoo model (small subset)


@pytest.mark.skipif(not (ZOO / "iris_landmark" / "iris_landmark.xml").is_file(), reason="zoo not built")
def test_cli_prints_and_writes_the_agreement_and_check_gates_it(tmp_path):
    xml, calib = ZOO / "iris_landmark" / "iris_landmark.xml", ZOO / "iris_landmark" / "calib.npz"
    done = run("protect", xml, "--data", calib, "--num-samples", 5, "-a", "GlobalClipper", "--sdc", "linf:0.05",
               "-o", tmp_path, "--json", tmp_path / "r.json", "-q")
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("held-out agreement"))
    assert "on 1 samples" in line and "at linf:0.01" in line and "at linf:0.05" in line and "95% CI" in line
    result = json.loads((tmp_path / "r.json").read_text())
    assert [a["criterion"] for a in result["heldout"]["agreement"]] == ["linf:0.01", "linf:0.05"]
    bounds = json.loads((tmp_path / "iris_landmark_GlobalClipper" / "bounds.json").read_text())
    assert bounds["report"]["heldout"] == result["heldout"]
    core = ov.Core()
    original, guarded = core.read_model(xml), core.read_model(tmp_path / "iris_landmark_GlobalClipper" / "iris_landmark.xml")
    gates = check(original, guarded, load(ZOO / "iris_landmark" / "heldout.npz", original), Thresholds(),
                  batch_size=1, limit=2).gates
    assert [(g.name, g.passed) for g in gates] == [("heldout_agreement", True)]
    assert gates[0].message.startswith("held-out agreement 100.00% (1/1 clean samples")
    bad = run("protect", xml, "--data", calib, "--holdout", 1.5, "-o", tmp_path / "x", "-q")
    assert bad.returncode != 0 and bad.stderr.startswith("error: --holdout must be a fraction")
    assert not (tmp_path / "x").exists()
