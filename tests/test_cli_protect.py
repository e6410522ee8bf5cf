"""``ovrange protect`` / ``evaluate`` through the real console entry point (subprocesses, real OpenVINO)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from PIL import Image

from tests.models import seven_activation_model


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    """A tiny IR, .npy calibration data and an image folder."""
    ov.save_model(seven_activation_model(size=8), str(tmp_path / "m.xml"), compress_to_fp16=False)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.standard_normal((12, 3, 8, 8)).astype(np.float32))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return tmp_path


def test_protect_writes_result_and_summary(workspace: Path):
    result = run("protect", workspace / "m.xml", "--data", workspace / "calib.npy", "-o", workspace / "out", "-q")
    assert result.returncode == 0, result.stderr
    out = workspace / "out" / "m_RangeSupervision"
    assert sorted(p.name for p in out.iterdir()) == ["bounds.json", "m.bin", "m.xml"]
    bounds = json.loads((out / "bounds.json").read_text())
    assert len(bounds["nodes"]) == 7 and bounds["samples"] == 12
    assert "7 node(s) protected" in result.stdout and str(out / "m.xml") in result.stdout


def test_image_folder_and_yaml_config(workspace: Path):
    (workspace / "cfg.yaml").write_text(
        "model: {model_name: tiny, model: m.xml}\nengine: {type: simplified, data_source: images, layout: NCHW}\n"
        "compression:\n  algorithms:\n    - name: RangeSupervision\n      params: {stat_subset_size: 4}\n")
    result = run("protect", "--config", workspace / "cfg.yaml", "-o", workspace / "out", "-q")
    assert result.returncode == 0, result.stderr
    assert json.loads((workspace / "out/tiny_RangeSupervision/bounds.json").read_text())["samples"] == 4


def test_statistics_parameters_as_p_assignments(workspace: Path):
    """``-p stat_subset_size=5`` works like ``--subset-size 5`` (POT's name for it, as in a config)."""
    result = run("protect", workspace / "m.xml", "--data", workspace / "calib.npy", "-o", workspace / "out", "-q",
                 "-p", "stat_subset_size=5", "-p", "stat_batch_size=2", "--num-samples", "5")
    assert result.returncode == 0, result.stderr
    bounds = json.loads((workspace / "out/m_RangeSupervision/bounds.json").read_text())
    assert bounds["samples"] == 5 and bounds["params"]["stat_batch_size"] == 2


def test_force_overwrites(workspace: Path):
    args = ("protect", workspace / "m.xml", "--data", workspace / "calib.npy", "-o", workspace / "out", "-q")
    assert run(*args).returncode == 0
    assert run(*args, "--num-samples", "3", "--force").returncode == 0
    assert json.loads((workspace / "out/m_RangeSupervision/bounds.json").read_text())["samples"] == 3


def _corrupt(workspace: Path, case: str) -> list[str | Path]:
    """Set up one kind of bad input; return the protect arguments that should fail."""
    xml, npy = workspace / "m.xml", workspace / "calib.npy"
    args: list[str | Path] = [xml, "--data", npy]
    if case == "missing xml":
        args[0] = workspace / "nope.xml"
    elif case == "malformed xml":
        xml.write_text("<net><layers><layer id='0'")
    elif case == "missing bin":
        (workspace / "m.bin").unlink()
    elif case == "truncated bin":
        blob = (workspace / "m.bin").read_bytes()
        (workspace / "m.bin").write_bytes(blob[: len(blob) // 2])
    elif case == "missing data dir":
        args[2] = workspace / "no_such_dir"
    elif case == "empty data dir":
        (workspace / "empty").mkdir()
        args[2] = workspace / "empty"
    elif case == "data shape":
        np.save(npy, np.zeros((4, 3, 5, 5), np.float32))
    elif case == "unknown config key":
        (workspace / "c.json").write_text('{"engine": {"data_source": "calib.npy", "colour": "red"}}')
        args = [xml, "--config", workspace / "c.json"]
    elif case == "subset size <= 0":
        args += ["--num-samples", "0"]
    elif case == "subset size <= 0 in config":
        (workspace / "c.json").write_text('{"compression": {"algorithms": [{"name": "RangeSupervision", '
                                          '"params": {"stat_subset_size": -1}}]}}')
        args += ["--config", workspace / "c.json"]
    elif case == "unknown algorithm":
        (workspace / "c.json").write_text('{"compression": {"algorithms": [{"name": "RangeSuper"}]}}')
        args += ["--config", workspace / "c.json"]
    elif case == "existing output":
        (workspace / "out" / "m_RangeSupervision").mkdir(parents=True)
        (workspace / "out" / "m_RangeSupervision" / "keep.txt").write_text("user file")
    return args


BAD_INPUTS = {
    "missing xml": "model file not found",
    "malformed xml": "malformed model XML",
    "missing bin": "weights file not found",
    "truncated bin": "truncated",
    "missing data dir": "data not found",
    "empty data dir": "no images",
    "data shape": "does not fit model input",
    "unknown config key": "unknown key engine.'colour'",
    "subset size <= 0": "must be > 0",
    "subset size <= 0 in config": "must be > 0",
    "unknown algorithm": "unknown algorithm 'RangeSuper'",
    "existing output": "already exists",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error_and_nothing_written(workspace: Path, case: str):
    args = _corrupt(workspace, case)
    before = {p: p.stat().st_mtime_ns for p in workspace.rglob("*") if p.is_file()}
    result = run("protect", *args, "-o", workspace / "out", "-q")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert BAD_INPUTS[case] in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    after = {p: p.stat().st_mtime_ns for p in workspace.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing modified (the input model included)
    leftovers = [p for p in (workspace / "out").glob("*")] if (workspace / "out").exists() else []
    assert all(p.name == "m_RangeSupervision" for p in leftovers)


def test_help_reads_well():
    top = run("--help")
    assert top.returncode == 0 and "protect" in top.stdout and "Traceback" not in top.stderr
    sub = run("protect", "--help")
    assert sub.returncode == 0 and "--num-samples" in sub.stdout and "--force" in sub.stdout


def test_evaluate_reports_accuracy_and_agreement(workspace: Path):
    x = np.random.default_rng(1).standard_normal((30, 3, 8, 8)).astype(np.float32)
    np.savez(workspace / "test.npz", x=x, y=np.zeros(30, np.int64))
    assert run("protect", workspace / "m.xml", "--data", workspace / "calib.npy", "-o", workspace / "o", "-q"
               ).returncode == 0
    result = run("evaluate", workspace / "m.xml", workspace / "o/m_RangeSupervision/m.xml", "--data",
                 workspace / "test.npz", "-q")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and "top-1" in lines[0] and "agrees with m.xml on" in lines[1]


def test_unwritable_output(workspace: Path):
    if shutil.which("id") and subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0":
        target = Path("/proc/ovrange-cannot-write")  # root may write anywhere else
    else:
        (workspace / "ro").mkdir(mode=0o500)
        target = workspace / "ro" / "sub"
    result = run("protect", workspace / "m.xml", "--data", workspace / "calib.npy", "-o", target, "-q")
    assert result.returncode != 0 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
