"""Fingerprints of every protected IR: the bundled models and PP-OCRv4 det/rec/cls, under every algorithm.

Protects each model through the Python API (fixed seeds, small calibration subsets), serializes the IR as
``save_protected`` does (f32 weights) and prints ``model algorithm sha256(xml) sha256(bin)``, one line each. A
refactor that must not change any protected model keeps the output identical::

    PYTHONPATH=. python benchmarks/ir_fingerprints.py > before.txt   # ... change the code ...
    PYTHONPATH=. python benchmarks/ir_fingerprints.py | diff before.txt -

OpenVINO names an unnamed node after a process-wide counter (``Constant_1234``), and those names are in the xml: the
lines of a subset (``--models``, ``--algorithms``) differ from the same lines of a full run, so compare full runs.
Python's string hashing is pinned (``PYTHONHASHSEED=0``, the script re-runs itself with it) so that nothing else
varies between runs. ``--normalize`` hashes the xml with OpenVINO's auto-generated node names (``Constant_1234``: a process-wide counter)
replaced by one placeholder: two IRs with the same normalized hash differ at most in which unnamed node got which
number. ``--from-kept DIR`` computes the lines from IRs saved earlier with ``--keep DIR`` instead of protecting.
A variant the model cannot take prints ``error <sha256 of the message>`` instead, so a changed message shows too.
``--models`` and ``--algorithms`` pick subsets (comma-separated names, as printed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov

import ovrange
from ovrange.errors import OvrangeError
from ovrange.modelio import read_model, save_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, algorithm, parameters): every algorithm, with the variants that take other graph paths.
VARIANTS: list[tuple[str, str, dict]] = [
    ("RangeSupervision", "RangeSupervision", {}),
    ("Ranger", "Ranger", {}),
    ("Ranger-percentile", "Ranger", {"bound": "percentile", "percentile": 99.9, "histogram_bins": 256}),
    ("Ranger-per_channel", "Ranger", {"per_channel": True}),
    ("Ranger-zero", "Ranger", {"correction": "zero", "tighten_clamps": True, "skip_last": 1}),
    ("GradientSuppression", "GradientSuppression", {}),
    ("GradientSuppression-channel-gated", "GradientSuppression",
     {"granularity": "channel", "threshold": "sigma", "gate": "select"}),
    ("BoundedWeights", "BoundedWeights", {}),
    ("BoundedWeights-layer", "BoundedWeights", {"granularity": "layer"}),
    ("GlobalClipper", "GlobalClipper", {}),
    ("GlobalClipper-per_channel-zero", "GlobalClipper",
     {"per_channel": True, "nonfinite": "zero", "hoist": False, "margin": 0.1,
      "targets": ["activation", "linear", "norm", "residual", "attention", "pooling", "probabilities"]}),
    ("GlobalClipper-scalar-keep", "GlobalClipper", {"per_channel": False, "nonfinite": "keep"}),
    ("Checksum", "Checksum", {}),
    ("Checksum-zero-relative", "Checksum", {"correction": "zero", "tolerance": "relative"}),
    ("Checksum-if", "Checksum", {"branch": "if"}),
    ("Checksum-select", "Checksum", {"branch": "select"}),
]


def models() -> dict[str, Callable[[], tuple[ov.Model, np.ndarray]]]:
    """Name -> loader of (model, calibration inputs); loaded lazily, so a subset runs only what it names."""

    def bundled(folder: str, xml: str) -> Callable[[], tuple[ov.Model, np.ndarray]]:
        def load() -> tuple[ov.Model, np.ndarray]:
            calib = np.load(ROOT / "build" / folder / "calib.npz")["x"][:16].astype(np.float32)
            return read_model(ROOT / "build" / folder / xml), calib
        return load

    def rec() -> tuple[ov.Model, np.ndarray]:
        from scripts import ocr_data
        return read_model(ocr_data.rec_model_path()), ocr_data.calibration_inputs(4, seed=0)

    def det() -> tuple[ov.Model, np.ndarray]:
        from scripts import ocr_det
        return read_model(ocr_det.det_model_path()), ocr_det.pages(2, seed=0)

    def cls() -> tuple[ov.Model, np.ndarray]:
        from scripts import ocr_data
        lines = ocr_data.calibration_inputs(4, seed=0)[:, :, :, :192]  # the classifier reads 48 x 192 crops
        return read_model(ocr_data.rec_model_path().parent / "ch_ppocr_mobile_v2.0_cls_infer.onnx"), lines

    return {"LeNet": bundled("default", "fashion_lenet.xml"),
            "FashionSevenAct": bundled("seven_act", "fashion_seven_act.xml"),
            "PP-OCRv4-det": det, "PP-OCRv4-rec": rec, "PP-OCRv4-cls": cls}


AUTO_NAME = re.compile(rb"\b[A-Z][A-Za-z0-9]*_\d+\b")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hashes(xml: Path, normalize: bool = False) -> str:
    text = xml.read_bytes()
    return f"{sha(AUTO_NAME.sub(b'AUTO', text) if normalize else text)} {sha(xml.with_suffix('.bin').read_bytes())}"


def fingerprint(model: ov.Model, calib: np.ndarray, algorithm: str, params: dict, folder: Path,
                keep: Path | None = None, normalize: bool = False) -> str:
    """``sha256(xml) sha256(bin)`` of the protected IR, or ``error <sha256(message)>``."""
    try:
        protected = ovrange.protect(model, calib, algorithm=algorithm, subset_size=len(calib), seed=0, **params)
    except OvrangeError as error:
        return f"error {sha(f'{type(error).__name__}: {error}'.encode())}"
    xml = (keep or folder) / "model.xml"
    save_model(protected, xml)
    return hashes(xml, normalize)


def main() -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(models()))
    parser.add_argument("--algorithms", default=",".join(label for label, _, _ in VARIANTS))
    parser.add_argument("--keep", type=Path, help="also write each IR to KEEP/<model>/<variant>/model.xml")
    parser.add_argument("--normalize", action="store_true", help="hash the xml without auto-generated node names")
    parser.add_argument("--from-kept", type=Path, help="hash the IRs an earlier --keep run saved in this folder")
    args = parser.parse_args()
    if args.from_kept:
        for name in args.models.split(","):
            for label, _, _ in VARIANTS:
                xml = args.from_kept / name / label / "model.xml"
                if label in args.algorithms.split(",") and xml.is_file():
                    print(name, label, hashes(xml, args.normalize))
        return 0
    loaders = models()
    wanted = set(args.algorithms.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, calib = loaders[name]()
            for label, algorithm, params in VARIANTS:
                if label in wanted:
                    keep = args.keep / name / label if args.keep else None
                    if keep:
                        keep.mkdir(parents=True, exist_ok=True)
                    print(name, label, fingerprint(model, calib, algorithm, params, Path(tmp), keep, args.normalize),
                          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
