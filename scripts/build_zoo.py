"""Build the real-model zoo: trained models from public PyPI wheels, with calibration and held-out sets.

Usage::

    python -m scripts.build_zoo [--out build/zoo] [--cache build/wheels] [--force]

Models come from wheels fetched with ``pip download --no-deps --only-binary=:all:`` into ``--cache`` (only
unzipped, never installed or imported; nothing comes from a model hub) and from the installed
rapidocr-onnxruntime (``test`` extra):

* mediapipe 0.10.21: ``palm_detection_full``, ``face_landmark``, ``face_landmark_with_attention``,
  ``iris_landmark``, ``pose_detection`` (TFLite, fp16 weights);
* silero-vad 6.2.3: ``silero_vad_openvino_16k.onnx``;
* rapidocr-onnxruntime 1.4.4: PP-OCRv4 det and rec, PP-OCR mobile v2 direction classifier (ONNX).

Each readable model gets a folder ``<out>/<name>/`` with the original file, an OpenVINO IR converted from it as
``ovc`` would (``<name>.xml/.bin``, stored weight types kept: fp16 stays fp16), ``calib.npz`` and
``heldout.npz`` (one array per model input name, plus ``sources``: the id of the source each sample was cut from,
see :mod:`scripts.zoo_data`). ``<out>/manifest.json`` lists every model: paths, format, inputs and outputs,
preprocessing, data files, the SDC criterion chosen for it before any campaign ran, and the models OpenVINO
cannot read with the one-line reason. A zoo whose manifest records the current recipe and whose files are all
there is up to date and skipped unless ``--force``; otherwise it is built in a temporary sibling folder and
renamed into place. Needs the ``zoo`` extra (scikit-image) and ``espeak-ng``.

Library use: :func:`build_zoo` builds what is missing and returns the manifest (tests call it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from scripts import zoo_data

ROOT = Path(__file__).resolve().parent.parent
RECIPE_VERSION = 1
SOURCES = (Path(__file__), Path(zoo_data.__file__))
CALIB_N, HELDOUT_N = 64, 100
MP = ("mediapipe", "0.10.21")
SILERO = ("silero-vad", "6.2.3")
# A wheel for another Python is fine: it is only unzipped.
FALLBACK_PLATFORM = ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64")
Sets = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # calibration, held-out: input name -> array


@dataclass(frozen=True)
class Spec:
    """One zoo model: where its file is, how its data is made, and its SDC criterion (chosen up front)."""

    name: str
    package: tuple[str, str]  # (PyPI name, version)
    member: str  # path of the model file inside the wheel / package
    kind: str  # detector, landmarks, vad, ocr
    sdc: str = ""
    output: str = ""  # the output the criterion judges (ovrange's default: the first)
    preprocessing: str = ""
    data: Callable[[ov.Model], Sets] | None = field(default=None, compare=False)
    note: str = ""


def _images(kind: str, size: int, value_range: tuple[float, float],
            cut: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> Callable[[ov.Model], Sets]:
    def make(_: ov.Model) -> Sets:
        sets = []
        for split, n, seed in (("calib", CALIB_N, 0), ("heldout", HELDOUT_N, 1)):
            x, ids = zoo_data.image_set(zoo_data.image_sources(split, kind), n, size, value_range, seed, cut)
            sets.append({"input_1": x, "sources": ids})
        return sets[0], sets[1]

    return make


def _vad(model: ov.Model) -> Sets:
    calib = zoo_data.vad_stream(model, zoo_data.speech(zoo_data.CALIB_SENTENCES, zoo_data.CALIB_VOICES), 256)
    heldout = zoo_data.vad_stream(model, zoo_data.speech(zoo_data.HELDOUT_SENTENCES, zoo_data.HELDOUT_VOICES), 256)
    return calib, heldout


def _rec(_: ov.Model) -> Sets:
    calib = zoo_data.ocr_lines(CALIB_N, seed=0)
    return zoo_data.rec_set(calib), zoo_data.rec_set(zoo_data.ocr_lines(HELDOUT_N, seed=123, exclude=calib))


def _cls(_: ov.Model) -> Sets:
    calib = zoo_data.ocr_lines(CALIB_N, seed=1)
    return zoo_data.cls_set(calib), zoo_data.cls_set(zoo_data.ocr_lines(HELDOUT_N, seed=124, exclude=calib))


def _det(_: ov.Model) -> Sets:
    return zoo_data.det_set(32, seed=0), zoo_data.det_set(40, seed=123)


MP_DIR = "mediapipe/modules"
RGB01 = "RGB, letterboxed (aspect kept, black borders), [0, 1], NHWC"
SPECS: tuple[Spec, ...] = (
    Spec("palm_detection_full", MP, f"{MP_DIR}/palm_detection/palm_detection_full.tflite", "detector",
         "detections", "Identity", f"{RGB01} 192x192 (palm_detection_cpu.pbtxt); scikit-image photos, LFW",
         _images("scenes", 192, (0.0, 1.0))),
    Spec("face_landmark", MP, f"{MP_DIR}/face_landmark/face_landmark.tflite", "landmarks", "linf:0.05",
         "conv2d_21", f"{RGB01} 192x192 (face_landmark_cpu.pbtxt); LFW faces, jittered 85-100% crops",
         _images("faces", 192, (0.0, 1.0), zoo_data.face_jitter)),
    Spec("face_landmark_with_attention", MP, f"{MP_DIR}/face_landmark/face_landmark_with_attention.tflite",
         "landmarks"),
    Spec("iris_landmark", MP, f"{MP_DIR}/iris_landmark/iris_landmark.tflite", "landmarks", "linf:0.05",
         "output_eyes_contours_and_brows",
         f"{RGB01} 64x64 (iris_landmark_cpu.pbtxt, zero_center: false); eye crops of LFW faces, right eyes "
         "mirrored", _images("faces", 64, (0.0, 1.0), zoo_data.eye_crop)),
    Spec("pose_detection", MP, f"{MP_DIR}/pose_detection/pose_detection.tflite", "detector", "detections",
         "Identity", "RGB, letterboxed (aspect kept, black borders), [-1, 1], NHWC 224x224 "
         "(pose_detection_cpu.pbtxt); scikit-image photos, LFW", _images("scenes", 224, (-1.0, 1.0))),
    Spec("silero_vad", SILERO, "silero_vad/data/silero_vad_openvino_16k.onnx", "vad", "linf:0.05", "output",
         "16 kHz espeak-ng speech, 512-sample chunks with the previous chunk's last 64 samples prepended "
         "(input [1, 576]); state: the recurrent state a stream has at that chunk", _vad,
         note="state [2, 1, 128] has its batch on axis 1; samples are stored as [N, 2, 1, 128]. This export has "
              "no sr input (16 kHz only)."),
    Spec("ppocr_det", ("rapidocr-onnxruntime", "1.4.4"), "models/ch_PP-OCRv4_det_infer.onnx", "ocr", "boxes",
         "", "rendered pages 320x320, BGR, (x / 255 - 0.5) / 0.5 (scripts/ocr_det.py)", _det),
    Spec("ppocr_rec", ("rapidocr-onnxruntime", "1.4.4"), "models/ch_PP-OCRv4_rec_infer.onnx", "ocr", "tokens",
         "", "rendered lines 48x320, BGR, (x / 255 - 0.5) / 0.5 (scripts/ocr_data.py)", _rec),
    Spec("ppocr_cls", ("rapidocr-onnxruntime", "1.4.4"), "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ocr",
         "top1", "", "rendered lines 48x192, every other one turned 180 degrees, BGR, (x / 255 - 0.5) / 0.5", _cls),
)


# ---------------------------------------------------------------------------------------------------------------
# Model files


def fetch_wheel(package: str, version: str, cache: Path) -> Path:
    """The cached wheel of ``package==version``, downloaded with pip (no dependencies, binary only) if missing."""
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(cache),
                f"{package}=={version}", "--quiet"]
        if subprocess.run(base, capture_output=True, text=True).returncode != 0:
            subprocess.run(base + list(FALLBACK_PLATFORM), check=True, capture_output=True, text=True)
        found = sorted(cache.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download of {package}=={version} left no {pattern} in {cache}")
    return found[0]


def model_file(spec: Spec, cache: Path, dest: Path) -> Path:
    """Copy the model file of ``spec`` to ``dest`` (from its wheel, or from the installed rapidocr)."""
    name, version = spec.package
    if name == "rapidocr-onnxruntime":
        from scripts import ocr_data

        source = ocr_data.rec_model_path().parent.parent / spec.member
        shutil.copyfile(source, dest)
        return dest
    with zipfile.ZipFile(fetch_wheel(name, version, cache)) as wheel, wheel.open(spec.member) as src, \
            open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def unreadable_reason(exc: BaseException) -> str:
    """One line saying why OpenVINO cannot read a model, naming the op its frontend has no translator for."""
    text = str(exc)
    match = re.search(r"No translator found for (\S+) node", text)
    if match:
        return f"OpenVINO's frontend has no translator for op {match.group(1)} (a custom op)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def stored_weights(model: ov.Model) -> dict[str, int]:
    """Element types of the floating-point Constants (how the weights are stored: f16 -> Convert, or f32)."""
    types = Counter(op.get_output_element_type(0).get_type_name() for op in model.get_ops()
                    if op.get_type_name() == "Constant" and op.get_output_element_type(0).is_real())
    return dict(sorted(types.items()))


def ports(items: Sequence[ov.Output]) -> list[dict[str, str]]:
    return [{"name": p.get_any_name(), "shape": str(p.get_partial_shape()), "type": p.get_element_type().get_type_name()}
            for p in items]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Build


def recipe() -> dict[str, Any]:
    return {"version": RECIPE_VERSION, "openvino": ov.get_version().split("-")[0],
            "sources_sha256": hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16],
            "calib_n": CALIB_N, "heldout_n": HELDOUT_N}


def _data_entry(folder: Path, name: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    inputs = {k: list(v.shape) for k, v in arrays.items() if k != "sources"}
    return {"file": f"{folder.name}/{path.name}", "n": len(arrays["sources"]), "bytes": path.stat().st_size,
            "arrays": inputs, "sources": len(set(arrays["sources"].tolist()))}


def build_model(spec: Spec, out: Path, cache: Path) -> dict[str, Any]:
    """Build one model's folder in ``out`` and return its manifest entry."""
    folder = out / spec.name
    folder.mkdir(parents=True)
    original = model_file(spec, cache, folder / Path(spec.member).name)
    entry: dict[str, Any] = {"name": spec.name, "package": f"{spec.package[0]}=={spec.package[1]}",
                             "member": spec.member, "original": f"{spec.name}/{original.name}",
                             "format": original.suffix.lstrip("."), "original_sha256": sha256(original),
                             "kind": spec.kind}
    try:
        model = ov.convert_model(str(original))
    except Exception as exc:  # noqa: BLE001 - the frontends raise their own types; the reason is recorded
        return {**entry, "readable": False, "reason": unreadable_reason(exc)}
    xml = folder / f"{spec.name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)  # keeps fp16-stored weights fp16, f32 ones f32
    calib, heldout = spec.data(model)
    ops = Counter(op.get_type_name() for op in model.get_ops())
    entry.update({
        "readable": True, "model": f"{spec.name}/{xml.name}", "inputs": ports(model.inputs),
        "outputs": ports(model.outputs), "stored_weights": stored_weights(model),
        "ops": {k: ops[k] for k in sorted(ops) if k not in ("Constant", "Parameter", "Result")},
        "preprocessing": spec.preprocessing, "sdc": spec.sdc,
        "sdc_output": spec.output or model.outputs[0].get_any_name(),
        "calib": _data_entry(folder, "calib", calib), "heldout": _data_entry(folder, "heldout", heldout)})
    if spec.note:
        entry["note"] = spec.note
    return entry


def up_to_date(out: Path) -> dict[str, Any] | None:
    """The manifest of ``out`` if it records the current recipe and every file it lists exists."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("recipe") != recipe():
        return None
    for entry in manifest["models"]:
        files = [entry["original"]] + ([entry["model"], entry["calib"]["file"], entry["heldout"]["file"]]
                                       if entry["readable"] else [])
        if not all((out / f).is_file() for f in files):
            return None
    return manifest


def build_zoo(out: Path | str = ROOT / "build" / "zoo", cache: Path | str | None = None, force: bool = False,
              log: bool = True) -> dict[str, Any]:
    """Build the zoo into ``out`` unless it is up to date; returns the manifest (paths relative to ``out``)."""
    out = Path(out)
    cache = Path(cache) if cache else out.parent / "wheels"
    if not force and (manifest := up_to_date(out)) is not None:
        return manifest
    start = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        models = []
        for spec in SPECS:
            if log:
                print(f"zoo: {spec.name}", flush=True)
            models.append(build_model(spec, tmp, cache))
        manifest = {"recipe": recipe(), "models": models}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log:
        print(f"zoo: {len(models)} models in {out} ({time.monotonic() - start:.0f} s)")
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the real-model zoo (models from PyPI wheels, data sets).")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "zoo", help="zoo folder (default build/zoo)")
    parser.add_argument("--cache", type=Path, default=None, help="wheel cache (default: <out>/../wheels)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    try:
        build_zoo(args.out, args.cache, args.force)
    except (OSError, subprocess.CalledProcessError, ImportError) as exc:
        if isinstance(exc, subprocess.CalledProcessError):
            detail = (exc.stderr or "").strip().splitlines()[-1:] or [f"{exc.cmd[2:5]} failed"]
            detail = detail[0]
        elif isinstance(exc, ImportError):
            detail = f"{exc} (install the zoo extra: pip install -e '.[zoo]')"
        else:
            detail = str(exc)
        print(f"error: {detail}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
