"""Application-level SDC criteria: ``abs:<t>``, ``iou:<t>`` (masks), ``detections[:iou]`` and per-output
``NAME=CRITERION``, on hand-made arrays with known answers; then real runs on pose_detection from the zoo through
``ovrange evaluate`` (``--sdc detections``, ``--output-name``) and a 50-fault ``ovrange inject``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from ovrange.check import Thresholds, check
from ovrange.compare import DUE, MASKED, SDC, Judge, SdcCriterion, mask_iou
from ovrange.data import load
from ovrange.detections import MEDIAPIPE_SSD, Layout, detections_changed, iou_matrix, mediapipe_anchors, nms
from ovrange.errors import ConfigError
from ovrange.evaluate import judged_outputs, predict_outputs
from tests.test_zoo import zoo  # noqa: F401  (the session fixture building build/zoo when missing)


def codes(criterion: str, golden: np.ndarray, faulty: np.ndarray, **judge) -> list[int]:
    return Judge(SdcCriterion.parse(criterion), **judge).classify(golden, faulty)[0].tolist()


# --- parsing ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, text", [("abs:2", "abs:2"), ("iou:0.9", "iou:0.9"), ("detections", "detections:0.5"),
                                        ("detections:0.3", "detections:0.3"),
                                        ("Identity=abs:2, Identity_1=linf:0.01", "Identity=abs:2,Identity_1=linf:0.01"),
                                        ("a/b:0=detections", "a/b:0=detections:0.5")])
def test_criteria_parse_and_print_back(spec, text):
    criterion = SdcCriterion.parse(spec)
    assert str(criterion) == text and SdcCriterion.parse(text) == criterion


@pytest.mark.parametrize("spec, message", [("abs", "positive"), ("abs:0", "positive"), ("iou:1.5", "in \\(0, 1\\]"),
                                           ("detections:2", "in \\(0, 1\\]"), ("=abs:1", "NAME=CRITERION"),
                                           ("x=abs:1,y=nope", "unknown SDC criterion 'nope'"),
                                           ("x=y=abs:1", "NAME=CRITERION")])
def test_bad_criteria_are_one_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        SdcCriterion.parse(spec)


# --- abs and linf ---------------------------------------------------------------------------------------------------

def test_abs_is_in_the_outputs_units_and_linf_relative_to_its_largest_value():
    golden = np.array([[100.0, 0.5], [100.0, 0.5], [100.0, 0.5], [100.0, 0.5]], np.float32)
    faulty = np.array([[100.0, 0.9], [101.9, 0.5], [102.1, 0.5], [np.nan, 0.5]], np.float32)
    assert codes("abs:2", golden, faulty) == [MASKED, MASKED, SDC, DUE]
    assert codes("abs:0.1", golden, faulty) == [SDC, SDC, SDC, DUE]
    # linf divides by the whole output's max |value| (100): a 0.4 change of the small value is 0.4%
    assert codes("linf:0.01", golden, faulty) == [MASKED, SDC, SDC, DUE]


# --- masks ----------------------------------------------------------------------------------------------------------

def square(shift: int = 0, size: int = 8) -> np.ndarray:
    mask = np.full((size, size), 0.1, np.float32)
    mask[2:6, 2 + shift:6 + shift] = 0.9
    return mask


def test_mask_iou_of_probability_maps_in_each_layout():
    golden, moved = square(), square(1)  # 4x4 squares one column apart: 12 / 20 pixels
    for shape in ((1, 1, 8, 8), (1, 8, 8, 1), (1, 8, 8)):
        assert mask_iou(golden.reshape(shape), moved.reshape(shape)).tolist() == [pytest.approx(0.6)]
    empty = np.zeros((1, 1, 8, 8), np.float32)
    assert mask_iou(empty, empty).tolist() == [1.0]  # nothing segmented in either: no change
    g = np.stack([golden, golden])[:, None]
    f = np.stack([golden, moved])[:, None]
    assert codes("iou:0.5", g, f) == [MASKED, MASKED] and codes("iou:0.7", g, f) == [MASKED, SDC]


def test_mask_iou_of_class_scores_is_the_worst_class():
    classes = np.zeros((1, 3, 4, 4), np.float32)
    classes[0, 0] = 1.0  # background everywhere ...
    classes[0, 1, :2, :2] = 2.0  # ... class 1 in a 2x2 corner
    faulty = classes.copy()
    faulty[0, 2, 0, 0] = 3.0  # one pixel of class 1 becomes class 2
    assert mask_iou(classes, faulty).tolist() == [0.0]  # class 2: appeared where there was none
    faulty = classes.copy()
    faulty[0, 1, 3, 3] = 2.0  # one background pixel becomes class 1: class 1 IoU 4/5
    assert mask_iou(classes, faulty).tolist() == [pytest.approx(0.8)]
    nhwc = np.moveaxis(classes, 1, -1)
    assert mask_iou(nhwc, np.moveaxis(faulty, 1, -1)).tolist() == [pytest.approx(0.8)]


# --- detections -----------------------------------------------------------------------------------------------------

def test_mediapipe_anchor_counts_match_the_models_outputs():
    counts = {name: len(mediapipe_anchors(size, strides, per_layer))
              for name, (size, strides, per_layer, _) in MEDIAPIPE_SSD.items()}
    assert counts["palm_detection (full, lite)"] == 2016 and counts["pose_detection"] == 2254
    assert counts["face_detection_short_range"] == 896 and counts["face_detection_full_range"] == 2304
    anchors = mediapipe_anchors(192, (8, 16, 16, 16), 2)
    assert anchors[0].tolist() == [0.5 / 24, 0.5 / 24] and anchors[1].tolist() == anchors[0].tolist()
    assert anchors[1152].tolist() == [0.5 / 12, 0.5 / 12]  # the stride-16 grid starts after 24*24*2 anchors


def test_iou_nms_and_matching():
    a = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float64)
    assert iou_matrix(a, a)[0, 1] == pytest.approx(50 / 150)
    assert iou_matrix(a[:, [2, 3, 0, 1]], a)[0, 0] == pytest.approx(1.0)  # corners in either order
    assert nms(a, np.array([0.9, 0.8]), np.array([0, 0]), 0.3).tolist() == [0]  # overlap 0.33 > 0.3
    assert nms(a, np.array([0.9, 0.8]), np.array([0, 1]), 0.3).tolist() == [0, 1]  # other class: kept
    one = (a[:1], np.array([0]))
    assert not detections_changed(one, (a[:1] + [1, 0, 1, 0], np.array([0])), 0.5)  # IoU 90/110
    assert detections_changed(one, (a[1:], np.array([0])), 0.5)  # moved: IoU 1/3
    assert detections_changed(one, (a[:1], np.array([1])), 0.5)  # other class
    assert detections_changed(one, (a[:0], np.array([], int)), 0.5)  # lost
    assert detections_changed(one, (a, np.array([0, 0])), 0.5)  # one added
    two = (a, np.array([0, 0]))
    assert not detections_changed(two, (a[::-1], np.array([0, 0])), 0.5)  # same detections, other order


def palm_outputs(*hits: tuple[int, float, float]) -> np.ndarray:
    """palm_detection_full's outputs for one sample as a picked row: regressors [2016, 18] (zero: boxes on their
    anchors, keypoints unused), then logits [2016, 1]; each hit (anchor, logit, x offset in pixels)."""
    regressors = np.zeros((2016, 18), np.float32)
    regressors[:, 2:4] = 48.0  # 48x48-pixel boxes at 192x192: 0.25 of the image
    logits = np.full((2016, 1), -10.0, np.float32)
    for anchor, logit, dx in hits:
        logits[anchor] = logit
        regressors[anchor, 0] = dx
    return np.concatenate([regressors.reshape(1, -1), logits.reshape(1, -1)], axis=1)


PALM = Layout("anchors", (0, 1), 0.5, 0.3, 192.0, mediapipe_anchors(192, (8, 16, 16, 16), 2))
PALM_JUDGE = dict(output=0, outputs=(0, 1), shapes=((2016, 18), (2016, 1)), layout=PALM)
CENTER = 12 * 24 * 2 + 12 * 2  # the anchor at row 12, column 12 of the stride-8 grid


@pytest.mark.parametrize("faulty, outcome", [
    (palm_outputs((CENTER, 2.0, 0.0)), MASKED),  # score 0.95 -> 0.88: the same detection
    (palm_outputs((CENTER, 3.0, 8.0)), MASKED),  # moved 8 px of 48: IoU 40/56
    (palm_outputs((CENTER, 3.0, 20.0)), SDC),  # moved 20 px: IoU 28/68
    (palm_outputs((CENTER, -1.0, 0.0)), SDC),  # score 0.27: lost
    (palm_outputs((CENTER, 3.0, 0.0), (CENTER + 2, 1.0, 0.0)), MASKED),  # a neighbour anchor: suppressed by NMS
    (palm_outputs((CENTER, 3.0, 0.0), (0, 1.0, 0.0)), SDC),  # a detection in the corner: added
    (palm_outputs((CENTER, 3.0, 0.0), (5, np.inf, 0.0)), DUE),
])
def test_detections_of_mediapipe_anchor_outputs(faulty, outcome):
    golden = palm_outputs((CENTER, 3.0, 0.0))
    assert codes("detections", golden, faulty, **PALM_JUDGE) == [outcome]


def test_detections_of_a_yolov8_output():
    golden = np.zeros((1, 6, 100), np.float32)  # [4 + 2 classes, 100 candidates]: cx, cy, w, h, scores
    golden[0, :4, 7] = [50, 50, 20, 20]
    golden[0, 4, 7] = 0.9
    judge = dict(layout=Layout("yolo", (0,), 0.25, 0.7))
    other_class = golden.copy()
    other_class[0, 4:, 7] = [0.1, 0.8]
    weak = golden.copy()
    weak[0, 4, 7] = 0.2
    assert codes("detections", np.repeat(golden, 3, 0), np.concatenate([golden, other_class, weak]), **judge) \
        == [MASKED, SDC, SDC]


def two_outputs() -> ov.Model:
    """x [1, 4] -> y = x (named "y"), z = 2x (named "z")."""
    x = ops.parameter([1, 4], ov.Type.f32, name="x")
    y, z = ops.relu(x), ops.multiply(x, ops.constant(np.float32(2)))
    y.output(0).set_names({"y"})
    z.output(0).set_names({"z"})
    return ov.Model([ops.result(y), ops.result(z)], [x], "two")


def test_per_output_criteria_judge_each_output_by_its_own():
    model = two_outputs()
    judge = Judge.for_model(model, SdcCriterion.parse("z=abs:1,y=linf:0.5"))
    assert judge.indices == (1, 0) and [str(p.criterion) for p in judge.parts] == ["abs:1", "linf:0.5"]
    y = np.array([[1, 2, 3, 4]], np.float32)
    golden = judge.pick([y, 2 * y])
    assert golden.shape == (1, 8) and golden[0, :4].tolist() == [2, 4, 6, 8]  # z first, as the criterion names it
    cases = [([y, 2 * y + 0.9], MASKED), ([y, 2 * y + 1.1], SDC), ([y + 2.1, 2 * y], SDC), ([y + 1.9, 2 * y], MASKED),
             ([y, 2 * y * np.float32(np.nan)], DUE)]
    faulty = np.concatenate([judge.pick(outputs) for outputs, _ in cases])
    assert judge.classify(np.repeat(golden, len(cases), 0), faulty)[0].tolist() == [c for _, c in cases]
    with pytest.raises(ConfigError, match="no output named 'w'; outputs: y, z"):
        Judge.for_model(model, SdcCriterion.parse("w=abs:1"))
    with pytest.raises(ConfigError, match="not y: leave out --output-name"):
        Judge.for_model(model, SdcCriterion.parse("z=abs:1"), "y")
    assert Judge.for_model(model, SdcCriterion.parse("z=abs:1,y=abs:1"), "y").indices == (1, 0)
    with pytest.raises(ConfigError, match="needs detector outputs"):
        Judge.for_model(model, SdcCriterion.parse("detections"))


# --- real runs on the zoo ------------------------------------------------------------------------------------------

def ovrange(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def pose(zoo, tmp_path_factory):  # noqa: F811
    """pose_detection from the zoo, its held-out inputs (4), and a copy whose score logits are raised by 10 (every
    plausible anchor passes the 0.5 threshold: the detections change, the box regressors do not)."""
    folder = zoo[0] / "pose_detection"
    out = tmp_path_factory.mktemp("pose")
    np.savez(out / "x.npz", x=np.load(folder / "heldout.npz")["input_1"][:4])
    model = ov.Core().read_model(folder / "pose_detection.xml")
    scores = model.outputs[1]
    raised = ops.add(scores.get_node().input_value(0), ops.constant(np.float32(10)))
    scores.get_node().input(0).replace_source_output(raised.output(0))
    raised.output(0).set_names(set(scores.get_names()))
    ov.save_model(model, out / "raised.xml", compress_to_fp16=False)
    return folder / "pose_detection.xml", out / "raised.xml", out / "x.npz"


def test_evaluate_judges_detections_and_each_output(pose):
    original, raised, data = pose
    lines = ovrange("evaluate", original, raised, "--data", data, "--batch-size", 1, "--sdc", "detections",
                    "-q").stdout.splitlines()
    assert lines[-1].endswith("agrees with pose_detection.xml on 0.00% (detections:0.5)"), lines
    # the same comparison as the command makes it, under other criteria (one prediction per model)
    models = [ov.Core().read_model(path) for path in (original, raised)]
    dataset = load(data, models[0]).dataset
    outputs = [predict_outputs(model, dataset, batch_size=1) for model in models]

    def agreement(sdc: str | None, output: str | None = None) -> list[tuple[str | None, float]]:
        return [(view.label, view.agreement(*outputs)) for view in judged_outputs(models[0], sdc, output)]

    assert agreement("Identity=abs:0.001") == [(None, 1.0)]  # the boxes did not move
    assert agreement("Identity_1=abs:1,Identity=abs:0.001") == [(None, 0.0)]  # the scores rose by 10
    assert agreement("abs:1", "Identity_1") == [("Identity_1", 0.0)]
    assert agreement("abs:1") == [("Identity", 1.0), ("Identity_1", 0.0)]  # no --output-name: each output
    assert agreement(None) == [("Identity", 1.0), ("Identity_1", 1.0)]  # arg-max per anchor row: unchanged


def test_check_gates_the_judged_outputs(pose):
    original, raised, data = pose
    models = [ov.Core().read_model(path) for path in (original, raised)]
    labelled = load(data, models[0])
    gate = Thresholds(max_accuracy_drop=1.0)
    failed = check(*models, labelled, gate, batch_size=1, sdc="detections")
    assert failed.accuracy.protected == 0.0 and not failed.gates[0].passed


def test_a_50_fault_campaign_judged_by_detections(pose, tmp_path):
    original, _, data = pose
    done = ovrange("inject", original, "--data", data, "--sdc", "detections", "--trials", 50, "--seed", 1,
                   "--bits", 30, "--batch-size", 1, "--json", tmp_path / "r.json", "-q")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["spec"]["sdc"] == "detections:0.5"
    (rates,) = result["summary"]["models"].values()
    assert rates["masked"]["k"] + rates["sdc"]["k"] + rates["due"]["k"] == 50
    (run,) = result["models"]
    # each trial's relative L-infinity deviation of the judged outputs: an unchanged output is never an SDC, and an
    # SDC always changed them
    for outcome, deviation in zip(run["outcomes"], run["deviation"]):
        assert deviation != 0 or outcome == "m"
        assert outcome != "s" or deviation > 0


def test_protect_validates_held_out_images_by_their_detections(pose, tmp_path):
    """Held-out validation judges boxes and scores together under ``--sdc detections`` (two outputs, one row per
    image), as evaluate and inject do."""
    original = pose[0]
    done = ovrange("protect", original, "--data", original.parent / "calib.npz", "-a", "GlobalClipper", "--sdc",
                   "detections", "--num-samples", 20, "-o", tmp_path, "-q", "--json", tmp_path / "p.json")
    assert done.returncode == 0, done.stderr
    heldout = json.loads((tmp_path / "p.json").read_text())["heldout"]
    assert heldout["samples"] == 4
    assert {a["criterion"]: a["total"] for a in heldout["agreement"]} == {"linf:0.01": 4, "detections:0.5": 4}
