"""Coverage by construction: existing Clamps (ReLU6) and PReLU are guard targets, and ``ovrange.coverage`` classifies
every value tensor of a protected model (guarded, covered downstream, uncovered with a reason).

The classification is checked on a small model built here where the answer is known, then on real models: the
MediaPipe TFLite detectors of the zoo (ReLU6 as Clamp, PReLU); ``ovrange protect`` prints and records it.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.algorithms import protection as algorithm_module
from ovrange.cli import main
from ovrange.coverage import coverage, protection_coverage
from ovrange.graph import node_ids
from ovrange.params import COMMON_PARAMS, validate
from tests.test_zoo import zoo  # noqa: F401  (the session fixture building build/zoo when missing)



def _small_model() -> ov.Model:
    """x -> conv -> bias -> relu -> pool -> reshape(pool, shape_of(pool)) -> conv2 -> out, and relu * relu -> out2."""
    rng = np.random.default_rng(0)
    x = ops.parameter([1, 2, 8, 8], np.float32, name="x")
    conv = ops.convolution(x, ops.constant(rng.normal(size=(4, 2, 3, 3)).astype(np.float32)), [1, 1], [1, 1],
                           [1, 1], [1, 1], name="conv")
    bias = ops.add(conv, ops.constant(rng.normal(size=(1, 4, 1, 1)).astype(np.float32)), name="bias")
    relu = ops.relu(bias, name="relu")
    pool = ops.max_pool(relu, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], name="pool").output(0)
    shape = ops.shape_of(pool, name="shape")
    reshape = ops.reshape(pool, shape, special_zero=False, name="reshape")
    conv2 = ops.convolution(reshape, ops.constant(rng.normal(size=(3, 4, 1, 1)).astype(np.float32)), [1, 1],
                            [0, 0], [0, 0], [1, 1], name="conv2")
    square = ops.multiply(relu, relu, name="square")
    return ov.Model([ops.result(conv2, name="out"), ops.result(square, name="out2")], [x], "small")


def _data(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 2, 8, 8)).astype(np.float32)


def test_unprotected_model_has_nothing_guarded():
    found = coverage(_small_model())
    assert found.guarded == () and found.covered == ()
    # the reason is where the value stops being carried (MaxPool's unread indices are no value tensor)
    assert found.uncovered == {"conv": "before Convolution", "bias": "before Convolution",
                               "relu": "before Convolution", "pool": "before Convolution", "shape": "integer",
                               "reshape": "before Convolution", "conv2": "output", "square": "output"}


def test_range_supervision_coverage_is_known():
    protected = ovrange.protect(_small_model(), _data(), algorithm="RangeSupervision", subset_size=6)
    found = protection_coverage(protected)
    assert found.guarded == ("relu",)  # RS guards the activation only (no propagation)
    assert found.covered == ("conv", "bias")  # carried to the ReLU's guard by the bias Add and the ReLU
    # what the guard's output feeds (the MaxPool, the product) is computed after it: a fault there is not cut
    assert found.uncovered == {"pool": "before Convolution", "shape": "integer", "reshape": "before Convolution",
                               "conv2": "output", "square": "output"}
    assert found.total == 8
    report = ovrange.protection_info(protected).report["coverage"]
    assert (report["value_tensors"], report["guarded"], report["covered"], report["uncovered"]) == (8, 1, 2, 5)
    assert report["reasons"] == {"before Convolution": 2, "output": 2, "integer": 1}
    assert found.line() == ("coverage: 1 of 8 value tensors guarded, 2 covered downstream, 5 uncovered: "
                            "2 before Convolution, 2 output, 1 integer")


def test_ranger_propagation_guards_the_pool_and_the_reshape():
    protected = ovrange.protect(_small_model(), _data(), algorithm="Ranger", subset_size=6)
    found = protection_coverage(protected)
    assert set(found.guarded) == {"relu", "pool", "reshape"}
    assert set(found.covered) == {"conv", "bias"}
    assert found.uncovered == {"shape": "integer", "conv2": "output", "square": "output"}


def test_other_protections_report_no_coverage():
    protected = ovrange.protect(_small_model(), _data(), algorithm="Checksum", subset_size=6)
    assert protection_coverage(protected) is None
    assert "coverage" not in ovrange.protection_info(protected).report


@functools.cache
def _read(xml: Path) -> ov.Model:
    return ov.Core().read_model(xml)  # read once: select() and protect() leave their input model unchanged


def _zoo_model(folder: Path, name: str) -> ov.Model:
    return _read(folder / name / f"{name}.xml")


def _ids_of(model: ov.Model, kind: str) -> set[str]:
    return {key for key, node in node_ids(model) if node.get_type_name() == kind}


@pytest.mark.parametrize("algorithm", ["RangeSupervision", "Ranger", "GlobalClipper"])
def test_relu6_clamps_prelus_and_hard_sigmoids_are_targets(algorithm, zoo):  # noqa: F811
    module = algorithm_module(algorithm)
    values = validate(algorithm, {**COMMON_PARAMS, **module.PARAMS}, {}, "test", module.check_params)
    for name, kind in (("pose_detection", "Clamp"), ("palm_detection_full", "PRelu"), ("ppocr_cls", "HardSigmoid")):
        model = _zoo_model(zoo[0], name)
        wanted = _ids_of(model, kind)
        assert wanted and wanted <= {t.id for t in module.select(model, values).targets}, name


def test_range_supervision_guards_every_relu6_clamp_of_pose_detection(zoo):  # noqa: F811
    model = _zoo_model(zoo[0], "pose_detection")
    clamps = _ids_of(model, "Clamp")
    assert len(clamps) == 40
    calib = np.load(zoo[0] / "pose_detection" / "calib.npz")
    protected = ovrange.protect(model, calib["input_1"][:1], algorithm="RangeSupervision", subset_size=1)
    bounds = ovrange.protection_info(protected).bounds
    assert set(bounds) == clamps
    assert all(0.0 <= b.low <= b.high <= 6.0 for b in bounds.values())  # within the ReLU6's own range
    found = protection_coverage(protected)
    assert set(found.guarded) == clamps
    assert len(found.covered) > len(clamps)  # each Clamp's Convolution and bias Add
    # the depthwise convolutions feed 1x1 convolutions with no activation between; the heads feed the outputs
    assert set(found.uncovered.values()) == {"before Convolution", "before GroupConvolution", "output"}


def test_protect_prints_and_records_coverage(tmp_path, monkeypatch, capsys):
    ov.save_model(_small_model(), tmp_path / "small.xml", compress_to_fp16=False)
    np.save(tmp_path / "calib.npy", _data())
    monkeypatch.setattr(sys, "argv", ["ovrange", "protect", str(tmp_path / "small.xml"), "--data",
                                      str(tmp_path / "calib.npy"), "-o", str(tmp_path), "-q", "--json",
                                      str(tmp_path / "r.json")])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("coverage:")]
    assert lines == ["coverage: 1 of 8 value tensors guarded, 2 covered downstream, 5 uncovered: "
                     "2 before Convolution, 2 output, 1 integer"]
    report = json.loads((tmp_path / "r.json").read_text())["coverage"]
    assert (report["value_tensors"], report["guarded"], report["covered"], report["uncovered"]) == (8, 1, 2, 5)
    bounds = json.loads((tmp_path / "small_RangeSupervision" / "bounds.json").read_text())
    assert bounds["report"]["coverage"] == report
