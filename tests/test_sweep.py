"""``ovrange inject --sweep`` / ``--error-rate`` / ``--fault-model``: curves with intervals, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ovrange.errors import ConfigError
from ovrange.faults.sweep import parse_rates
from tests.test_faults_cli import cli, workspace  # noqa: F401 - the shared fixture


def test_parse_rates():
    assert parse_rates("1e-3,1e-5,1e-4") == ("error_rate", (1e-5, 1e-4, 1e-3))
    assert parse_rates("ber:1e-6") == ("ber", (1e-6,))
    for bad in ("0,1e-3", "1e-3,1", "x,y", "", "rate:1e-3"):
        with pytest.raises(ConfigError):
            parse_rates(bad)


def test_sweep_writes_curves_for_every_compared_model(workspace, capsys):  # noqa: F811
    report = workspace / "sweep"
    code, out, err = cli(capsys, "inject", workspace / "tiny.xml", "--compare", workspace / "protected.xml",
                         "--data", workspace / "data.npz", "--trials", "40", "--num-samples", "8", "--fault-model",
                         "bits:6", "--sweep", "1e-3,3e-2", "--report", report, "-q")
    assert code == 0, err
    summary = json.loads((report / "sweep.json").read_text())
    assert summary["kind"] == "error_rate" and summary["rates"] == [1e-3, 3e-2]
    assert summary["settings"]["fault_model"] == "bits:6"
    assert len(summary["models"]) == 2
    for points in summary["models"].values():
        assert [p["trials"] for p in points] == [40, 40]
        for p in points:
            assert p["kept"]["low"] <= p["kept"]["rate"] <= p["kept"]["high"]
            assert p["kept"]["k"] + p["sdc"]["k"] + p["due"]["k"] == 40
    plain = summary["models"][str(workspace / "tiny.xml")]
    assert plain[1]["kept"]["rate"] < plain[0]["kept"]["rate"]  # a 30x higher rate costs accuracy
    assert "| 0.03 |" in out and (report / "sweep.md").exists() and (report / "sweep.png").stat().st_size > 1000


def test_weight_ber_sweep(workspace, capsys):  # noqa: F811
    code, out, err = cli(capsys, "inject", workspace / "tiny.xml", "--data", workspace / "data.npz", "--target",
                         "weights", "--trials", "20", "--num-samples", "4", "--sweep", "ber:1e-4,1e-2", "--json",
                         workspace / "ber.json", "-q")
    assert code == 0, err
    summary = json.loads((workspace / "ber.json").read_text())
    assert summary["kind"] == "ber" and np.isfinite(summary["models"][str(workspace / "tiny.xml")][0]["kept"]["rate"])


BAD = {
    "rate zero": ["--error-rate", "0"],
    "rate above one": ["--error-rate", "1.5"],
    "unknown fault model": ["--fault-model", "flip3"],
    "word probability": ["--fault-model", "word:1.5"],
    "too many bits": ["--fault-model", "bits:5", "--bits", "30,31"],
    "sweep rate": ["--sweep", "1e-3,2"],
    "ber with bursts": ["--target", "weights", "--ber", "1e-3", "--fault-model", "word:0.5"],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rates_and_fault_models_are_one_line_errors_and_write_nothing(workspace, capsys, case):  # noqa: F811
    report = workspace / f"bad-{case.replace(' ', '-')}"
    code, _, err = cli(capsys, "inject", workspace / "tiny.xml", "--data", workspace / "data.npz", "--trials", "10",
                       *BAD[case], "--report", report, "-q")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not report.exists()
