"""``ovrange check``: each gate passing and failing on real OpenVINO inference and fault injection, the exit code
and one-line reason, and the JSON report. Thresholds are chosen far from the measured values (the overhead gate
with +-1000%), so no test depends on how fast or loaded the machine is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

import ovrange
from ovrange.check import Thresholds, check
from ovrange.data import Dataset, LabelledData
from ovrange.errors import CheckFailed, ConfigError
from ovrange.evaluate import predict
from tests.test_bench import small_cnn


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Original, properly protected and over-tight ("broken") models; data labelled with the original's classes."""
    x = np.random.default_rng(0).standard_normal((64, 3, 12, 12)).astype(np.float32)
    original = small_cnn(False)
    # POT's bounds (no held-out margin): the SDC gate's thresholds below are set for the tight protection
    protected = ovrange.protect(original, x, subset_size=64, holdout=0)
    broken = small_cnn(True, high=0.05)
    labels = predict(original, x).argmax(axis=1)
    folder = tmp_path_factory.mktemp("check")
    for name, model in (("original", original), ("protected", protected), ("broken", broken)):
        ov.save_model(model, str(folder / f"{name}.xml"), compress_to_fp16=False)
    np.savez(folder / "data.npz", x=x, y=labels)
    np.save(folder / "unlabelled.npy", x)
    return {"original": original, "protected": protected, "broken": broken,
            "data": LabelledData(Dataset(x), labels, "data.npz"), "folder": folder}


def gate(result, name):
    (found,) = [g for g in result.gates if g.name == name]
    return found


def test_accuracy_gate_passes_for_a_faithful_protection(setup):
    result = check(setup["original"], setup["protected"], setup["data"], Thresholds(max_accuracy_drop=0.0))
    assert result.passed and result.accuracy.drop_pp == 0.0 and result.accuracy.reference == "labels"
    assert gate(result, "accuracy_drop").passed


def test_accuracy_gate_fails_for_too_tight_bounds(setup):
    result = check(setup["original"], setup["broken"], setup["data"], Thresholds(max_accuracy_drop=1.0))
    failed = gate(result, "accuracy_drop")
    assert not result.passed and not failed.passed and failed.measured > 1.0
    assert "exceeds the limit of 1 pp" in failed.message
    with pytest.raises(CheckFailed, match="^check failed: top-1 accuracy drop"):
        result.raise_for_failure()


@pytest.mark.parametrize("limit, passes", [(1000.0, True), (-1000.0, False)])
def test_overhead_gate(setup, limit, passes):
    result = check(setup["original"], setup["protected"], setup["data"], Thresholds(max_overhead=limit),
                   bench_seconds=0.4)
    overhead = gate(result, "overhead")
    assert overhead.passed is passes and result.passed is passes
    assert overhead.measured == pytest.approx(result.benchmark.latency_overhead_pct)
    assert "95% CI" in overhead.message


@pytest.mark.parametrize("limit, passes", [(2.0, True), (1000.0, False)])
def test_sdc_reduction_gate(setup, limit, passes):
    result = check(setup["original"], setup["protected"], setup["data"],
                   Thresholds(min_sdc_reduction=limit, trials=600))
    sdc = gate(result, "sdc_reduction")
    assert sdc.passed is passes, sdc.message
    assert "fewer SDCs" in sdc.message or "no SDC left" in sdc.message
    assert result.fault_injection["summary"]["comparison"]["trials"] == 600


def test_sdc_gate_fails_without_protection(setup):
    result = check(setup["original"], setup["original"], setup["data"], Thresholds(min_sdc_reduction=1.5, trials=600))
    sdc = gate(result, "sdc_reduction")
    assert not sdc.passed and sdc.measured == pytest.approx(1.0)


def test_unlabelled_data_compares_with_the_original_predictions(setup):
    data = LabelledData(setup["data"].dataset, None, "x.npy")
    result = check(setup["original"], setup["broken"], data, Thresholds(max_accuracy_drop=0.0))
    assert result.accuracy.reference == "original predictions" and result.accuracy.original == 1.0
    assert not result.passed


def test_thresholds_are_validated():
    with pytest.raises(ConfigError, match="trials"):
        Thresholds(trials=0)
    with pytest.raises(ConfigError, match="min_sdc_reduction"):
        Thresholds(min_sdc_reduction=0.0)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_failure_is_exit_10_one_line_and_json(setup):
    folder = setup["folder"]
    out = folder / "fail.json"
    result = run_cli("check", folder / "original.xml", folder / "broken.xml", "--data", folder / "data.npz",
                     "--max-accuracy-drop", "0.5", "--max-overhead=1000", "-t", "0.4", "--json", out)
    assert result.returncode == CheckFailed.exit_code == 10
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: check failed: top-1 accuracy drop"), result.stderr
    assert "overhead" not in lines[0]  # only failed gates are named
    assert "FAIL" in result.stdout and "PASS" in result.stdout
    report = json.loads(out.read_text())
    assert report["passed"] is False and report["thresholds"]["max_accuracy_drop_pp"] == 0.5
    assert [g["name"] for g in report["gates"]] == ["accuracy_drop", "overhead"]
    assert report["benchmark"]["fusion"]["counts"]["standalone"] == 1


def test_cli_pass_exits_0(setup):
    folder = setup["folder"]
    out = folder / "pass.json"
    result = run_cli("check", folder / "original.xml", folder / "protected.xml", "--data", folder / "data.npz",
                     "--max-accuracy-drop", "0", "--min-sdc-reduction", "2", "--trials", "600", "-q",
                     "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["fault_injection"]["trials"] == 600
