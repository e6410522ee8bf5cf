"""The real-model zoo (scripts/build_zoo.py): trained models from PyPI wheels, with real OpenVINO inference.

The zoo is built once per session into ``build/zoo`` (``OVRANGE_ZOO_DIR`` overrides the folder); it needs the
``zoo`` extra and espeak-ng (``make test`` installs both). Every readable model is protected with
RangeSupervision and GlobalClipper through the command line, evaluated on held-out inputs and fault-injected
(tiny campaigns); the model OpenVINO cannot read must be refused in one line naming the op.

A failure that is not one clean ``error:`` line (a traceback) fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import pytest

from tests.console import run

ROOT = Path(__file__).resolve().parent.parent
ZOO_DIR = Path(os.environ.get("OVRANGE_ZOO_DIR", ROOT / "build" / "zoo"))
READABLE = ("palm_detection_full", "face_landmark", "iris_landmark", "pose_detection", "silero_vad", "ppocr_det",
            "ppocr_rec", "ppocr_cls")
CRITERIA = {"palm_detection_full": "detections", "pose_detection": "detections", "face_landmark": "linf:0.05",
            "iris_landmark": "linf:0.05", "silero_vad": "linf:0.05", "ppocr_det": "boxes", "ppocr_rec": "tokens",
            "ppocr_cls": "top1"}
FP16_STORED = ("palm_detection_full", "face_landmark", "pose_detection")
VALUE_RANGE = {"palm_detection_full": (0, 1), "face_landmark": (0, 1), "iris_landmark": (0, 1),
               "pose_detection": (-1, 1), "ppocr_det": (-1, 1), "ppocr_rec": (-1, 1), "ppocr_cls": (-1, 1)}
F32 = {"INFERENCE_PRECISION_HINT": "f32"}



class CommandFailed(Exception):
    """An ovrange command failed cleanly: non-zero exit and exactly one ``error:`` line."""


def ovrange(*args: Any) -> subprocess.CompletedProcess:
    """``ovrange ARGS`` through the console entry point, in this process (the subprocess behaviour of the same entry
    point is checked by the safety tests): the result when it succeeds; CommandFailed (one clean error line) or an
    AssertionError (anything else, e.g. a traceback) when it does not."""
    result = subprocess.CompletedProcess(["ovrange", *map(str, args)], *run(*args))
    if result.returncode:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        raise CommandFailed(lines[0])
    return result


@pytest.fixture(scope="session")
def zoo() -> tuple[Path, dict[str, dict[str, Any]]]:
    """The zoo folder and its manifest entries by model name (built when missing or stale)."""
    from scripts.build_zoo import build_zoo

    manifest = build_zoo(ZOO_DIR, log=False)
    return ZOO_DIR, {entry["name"]: entry for entry in manifest["models"]}


@pytest.fixture(scope="session")
def protected(zoo, tmp_path_factory) -> Callable[[str, str], Path]:
    """``protected(name, algorithm)``: the IR ``ovrange protect`` writes (small calibration subset), made once."""
    folder, entries = zoo
    out = tmp_path_factory.mktemp("zoo-protected")
    made: dict[tuple[str, str], Path | CommandFailed] = {}

    def get(name: str, algorithm: str) -> Path:
        if (name, algorithm) not in made:
            entry = entries[name]
            try:
                ovrange("protect", folder / entry["model"], "--data", folder / entry["calib"]["file"],
                        "--num-samples", 8, "-a", algorithm, "-o", out, "-q")
                made[name, algorithm] = out / f"{name}_{algorithm}" / f"{name}.xml"
            except CommandFailed as exc:
                made[name, algorithm] = exc
        result = made[name, algorithm]
        if isinstance(result, CommandFailed):
            raise result
        return result

    return get


def _arrays(folder: Path, entry: dict[str, Any], split: str) -> dict[str, np.ndarray]:
    with np.load(folder / entry[split]["file"], allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _infer(model: ov.Model, arrays: dict[str, np.ndarray], index: int) -> list[np.ndarray]:
    compiled = ov.Core().compile_model(model, "CPU", F32)
    feed = {port.get_any_name(): arrays[port.get_any_name() if len(model.inputs) > 1 else
                                        next(k for k in arrays if k != "sources")][index] for port in model.inputs}
    if len(model.inputs) == 1:  # image models: one sample of the [N, ...] array, fed as a batch of one
        feed = {k: v[None] for k, v in feed.items()}
    result = compiled(feed)
    return [np.asarray(result[out]) for out in compiled.outputs]


# ---------------------------------------------------------------------------------------------------------------
# The zoo itself


def test_manifest_lists_every_model_and_why_one_is_unreadable(zoo):
    folder, entries = zoo
    assert set(entries) == {*READABLE, "face_landmark_with_attention"}
    attention = entries["face_landmark_with_attention"]
    assert not attention["readable"] and "Landmarks2TransformMatrix" in attention["reason"]
    assert (folder / attention["original"]).stat().st_size > 1_000_000  # the file is there, only unreadable
    for name in READABLE:
        entry = entries[name]
        assert entry["readable"] and entry["sdc"] == CRITERIA[name]
        assert (folder / entry["model"]).is_file() and (folder / entry["original"]).is_file()
        assert entry["calib"]["n"] >= 32 and entry["heldout"]["n"] >= 40
    for name in FP16_STORED:  # MediaPipe's TFLite weights are stored fp16 and the IR keeps them so
        assert entries[name]["stored_weights"].get("f16", 0) > 50
        assert entries[name]["format"] == "tflite"


@pytest.mark.parametrize("name", READABLE)
def test_data_fits_the_model_and_comes_from_disjoint_sources(zoo, name):
    folder, entries = zoo
    entry = entries[name]
    model = ov.Core().read_model(folder / entry["model"])
    calib, heldout = _arrays(folder, entry, "calib"), _arrays(folder, entry, "heldout")
    assert not set(calib["sources"].tolist()) & set(heldout["sources"].tolist())
    for split, arrays in (("calib", calib), ("heldout", heldout)):
        assert len(arrays["sources"]) == entry[split]["n"]
        for port in model.inputs:
            key = port.get_any_name() if len(model.inputs) > 1 else next(k for k in arrays if k != "sources")
            array = arrays[key]
            assert array.dtype == np.float32 and np.isfinite(array).all() and len(array) == entry[split]["n"]
            shape = port.get_partial_shape()
            sample = array.shape[1:]  # one sample: the input without its batch, or a whole multi-input tensor
            wanted = list(shape)[1:] if len(model.inputs) == 1 else list(shape)
            assert len(sample) == len(wanted)
            assert all(d.is_dynamic or d.get_length() == n for d, n in zip(wanted, sample)), (key, array.shape)
        if name in VALUE_RANGE:
            low, high = VALUE_RANGE[name]
            x = arrays[next(k for k in arrays if k != "sources")]
            assert x.min() >= low - 1e-6 and x.max() <= high + 1e-6 and x.max() - x.min() > 0.5 * (high - low)


@pytest.mark.parametrize("name", READABLE)
def test_ir_computes_what_the_wheel_file_computes(zoo, name):
    folder, entries = zoo
    entry = entries[name]
    arrays = _arrays(folder, entry, "heldout")
    from_ir = _infer(ov.Core().read_model(folder / entry["model"]), arrays, 0)
    from_file = _infer(ov.convert_model(str(folder / entry["original"])), arrays, 0)
    assert [o.shape for o in from_ir] == [o.shape for o in from_file]
    for a, b in zip(from_ir, from_file):
        assert np.isfinite(a).all() and np.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_silero_sees_speech_and_pauses(zoo):
    """The espeak-ng sets feed Silero VAD as a stream does: it finds speech in some chunks and not in others."""
    folder, entries = zoo
    entry = entries["silero_vad"]
    compiled = ov.Core().compile_model(ov.Core().read_model(folder / entry["model"]), "CPU", F32)
    for split in ("calib", "heldout"):
        arrays = _arrays(folder, entry, split)
        assert arrays["input"].shape[1:] == (1, 576) and arrays["state"].shape[1:] == (2, 1, 128)
        probs = np.array([compiled({"input": x, "state": s})["output"].item()
                          for x, s in zip(arrays["input"][::4], arrays["state"][::4])])
        assert ((probs >= 0) & (probs <= 1)).all()
        assert (probs > 0.5).mean() > 0.3 and (probs < 0.5).mean() > 0.05, probs


# ---------------------------------------------------------------------------------------------------------------
# ovrange commands on the zoo


def test_unreadable_model_is_refused_in_one_line_naming_the_op(zoo, tmp_path):
    folder, entries = zoo
    entry = entries["face_landmark_with_attention"]
    with pytest.raises(CommandFailed, match="Landmarks2TransformMatrix"):
        ovrange("protect", folder / entry["original"], "--data", folder / entries["face_landmark"]["calib"]["file"],
                "-o", tmp_path, "-q")
    assert not any(tmp_path.iterdir())


PROTECT_CASES = [pytest.param(name, algorithm, id=f"{name}-{algorithm}")
                 for name in READABLE for algorithm in ("RangeSupervision", "GlobalClipper")]


@pytest.mark.parametrize(("name", "algorithm"), PROTECT_CASES)
def test_protect(zoo, protected, name, algorithm):
    folder, entries = zoo
    entry = entries[name]
    xml = protected(name, algorithm)
    assert xml.is_file() and json.loads((xml.parent / "bounds.json").read_text())
    model = ov.Core().read_model(xml)
    assert [p.get_any_name() for p in model.outputs] == [o["name"] for o in entry["outputs"]]
    outputs = _infer(model, _arrays(folder, entry, "heldout"), 1)
    assert all(np.isfinite(o).all() for o in outputs)
    if name in FP16_STORED:  # the fp16 weights stay fp16, all of them; the bounds add f32 constants
        assert _f16_bytes(model) == _f16_bytes(ov.Core().read_model(folder / entry["model"]))
        original_bin = (folder / entry["model"]).with_suffix(".bin").stat().st_size
        assert xml.with_suffix(".bin").stat().st_size < 1.25 * original_bin


def _f16_bytes(model: ov.Model) -> int:
    return sum(2 * int(np.prod(node.get_output_shape(0), dtype=np.int64)) for node in model.get_ops()
               if node.get_type_name() == "Constant" and node.get_element_type() == ov.Type.f16)


# Every model with the default batch size (static batch-1 models fall back to one sample at a time); an explicit
# --batch-size 1 on a static and a dynamic-batch model.
EVALUATE_CASES = [pytest.param(name, ["--batch-size", 1], id=f"{name}-batch1")
                  for name in ("palm_detection_full", "ppocr_rec")] + [
    pytest.param(name, [], id=f"{name}-default") for name in READABLE]


@pytest.mark.parametrize(("name", "options"), EVALUATE_CASES)
def test_evaluate_on_heldout_inputs(zoo, protected, name, options):
    folder, entries = zoo
    entry = entries[name]
    result = ovrange("evaluate", folder / entry["model"], protected(name, "GlobalClipper"), "--data",
                     folder / entry["heldout"]["file"], "--num-samples", 4, *options, "--sdc", entry["sdc"],
                     "--output-name", entry["sdc_output"], "-q")
    agreement = [line for line in result.stdout.splitlines() if "agrees with" in line]
    assert len(agreement) == 1 and "%" in agreement[0]
    share = float(agreement[0].split(" on ")[-1].split("%")[0])
    assert share in (0.0, 25.0, 50.0, 75.0, 100.0)  # 4 held-out samples


INJECT_CASES = [pytest.param(name, target, id=f"{name}-{target}")
                for name in READABLE for target in ("activations", "weights")]


def test_weight_campaign_on_protected_fp16_model_strikes_every_layer_in_fp16(zoo, protected, tmp_path):
    folder, entries = zoo
    entry = entries["face_landmark"]
    guarded = protected("face_landmark", "GlobalClipper")
    ovrange("inject", guarded, "--data", folder / entry["heldout"]["file"], "--target", "weights", "--number-format",
            "auto", "--trials", 50, "--num-samples", 1, "--seed", 0, "--sdc", entry["sdc"], "--json",
            tmp_path / "r.json", "-q")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["summary"]["trials"] == 50 and result["summary"]["complete"]
    model = ov.Core().read_model(folder / entry["model"])
    layers = [n for n in model.get_ordered_ops() if n.get_type_name() in ("Convolution", "GroupConvolution")]
    assert len(result["sites"]) == len(layers)  # depthwise weights (Convert -> Transpose -> Reshape) included
    assert {site["format"] for site in result["sites"]} == {"fp16"}


@pytest.mark.parametrize(("name", "target"), INJECT_CASES)
def test_inject_tiny_campaign(zoo, protected, tmp_path, name, target):
    folder, entries = zoo
    entry = entries[name]
    original, guarded = folder / entry["model"], protected(name, "GlobalClipper")
    ovrange("inject", original, "--compare", guarded, "--data", folder / entry["heldout"]["file"], "--target", target,
            "--trials", 4, "--num-samples", 2, "--seed", 0, "--sdc", entry["sdc"], "--json", tmp_path / "r.json", "-q")
    result = json.loads((tmp_path / "r.json").read_text())
    models = result["summary"]["models"]
    assert set(models) == {str(original), str(guarded)}
    for summary in models.values():
        counts = summary["sdc"]["k"] + summary["due"]["k"] + summary["masked"]["k"]
        assert summary["sdc"]["n"] == 4 and counts == 4
    assert result["sites"] and all(site["name"] for site in result["sites"])


def test_recommended_protection_is_one_scalar_clamp_per_convolution(zoo, tmp_path):
    """The zoo's recommended protection (docs/zoo.md#cost): a guard's cost is its post-op instructions per output
    element, so on face_landmark (1x1 convolutions over 16-128 channels, residual Add -> PReLU blocks) each
    convolution takes one scalar Clamp: the residual Add's guard is dropped (the PReLU's covers it), and no
    per-channel scale-shift chain is fused anywhere."""
    from collections import Counter

    from ovrange.bench.fusion import fusion_report

    folder, entries = zoo
    entry = entries["face_landmark"]
    ovrange("protect", folder / entry["model"], "--data", folder / entry["calib"]["file"], "--num-samples", 8,
            "-a", "GlobalClipper", "-p", "per_channel=false", "-o", tmp_path, "-q")
    xml = tmp_path / "face_landmark_GlobalClipper" / "face_landmark.xml"
    placement = json.loads((xml.parent / "bounds.json").read_text())["report"]["placement"]
    dropped = [r for r in placement.values() if r["action"] == "dropped" and r["through"] == ["PRelu"]]
    assert len(dropped) >= 15  # one per residual block
    model = ov.Core().read_model(xml)
    report = fusion_report(ov.Core().compile_model(model, "CPU", F32), model)
    assert report.counts["standalone"] == 0 and report.counts["fused"] == len(report.clamps) > 20
    hosts = Counter(c.runtime_node for c in report.clamps)
    assert max(hosts.values()) == 1  # one guard per fused kernel
    inserted = {n.get_type_name() for n in model.get_ops() if "/min_max_Clamp" in n.get_friendly_name()}
    assert inserted == {"Clamp"}
