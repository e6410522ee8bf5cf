"""The bundled trained model, protected through the POT-layout config the README uses (real OpenVINO)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

import ovrange
from ovrange.evaluate import predict, top1

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def protected_via_cli(bundled, tmp_path_factory) -> Path:
    """Run the README's protect command with the POT-style JSON config (comments and all), unchanged."""
    out = tmp_path_factory.mktemp("results")
    result = subprocess.run([sys.executable, "-m", "ovrange", "protect", "--config",
                             str(REPO / "configs/fashion_lenet.json"), "--output-dir", str(out), "-q"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "Relu x4" in result.stdout and "from 300 samples" in result.stdout
    return out / "fashion_lenet_RangeSupervision" / "fashion_lenet.xml"


def test_test_set_accuracy_unchanged(bundled, protected_via_cli):
    test = np.load(bundled["lenet"]["test_npz"])
    core = ov.Core()
    original = top1(predict(core.read_model(bundled["lenet"]["xml"]), test["x"], batch_size=500))
    protected = top1(predict(core.read_model(protected_via_cli), test["x"], batch_size=500))
    accuracy = (original == test["y"]).mean()
    assert accuracy > 0.85
    assert (protected == test["y"]).mean() == accuracy
    assert np.array_equal(protected, original)


def test_bit_identical_on_the_calibration_images(bundled, protected_via_cli):
    """The first 300 images of the calibration folder are the statistics subset (POT's rule, no shuffle)."""
    model = ov.Core().read_model(bundled["lenet"]["xml"])
    dataset = ovrange.data.load(bundled["lenet"]["calib_dir"], model).dataset
    images = np.stack([s for s, _ in zip(dataset.get_inference_data(), range(300))])
    a = predict(model, images, batch_size=1)
    b = predict(ov.Core().read_model(protected_via_cli), images, batch_size=1)
    assert np.array_equal(a, b)


def test_yaml_config_gives_the_same_bounds(bundled, protected_via_cli, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ovrange", "protect", "--config",
                             str(REPO / "configs/fashion_lenet.yaml"), "--output-dir", str(tmp_path), "-q"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    via_yaml = (tmp_path / "fashion_lenet_RangeSupervision" / "bounds.json").read_text()
    via_json = (protected_via_cli.parent / "bounds.json").read_text()
    assert via_yaml == via_json
