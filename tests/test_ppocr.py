"""A real third-party model: PP-OCRv4 text recognition, shipped as ONNX in the rapidocr-onnxruntime wheel.

The ONNX file is read from the installed package (never imported) and converted as ``ovc`` would; it is
protected with rendered-text calibration images and must decode rendered lines exactly as the original does.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import ovrange
from ovrange.modelio import read_model
from scripts import ocr_data


@pytest.fixture(scope="module")
def rec_model():
    return read_model(ocr_data.rec_model_path())


@pytest.fixture(scope="module")
def eval_lines() -> tuple[list[str], np.ndarray]:
    texts = ocr_data.sample_texts(24, seed=123)  # different lines from the calibration ones (seed 0)
    return texts, np.concatenate([ocr_data.preprocess(ocr_data.render_line(t)) for t in texts])


@pytest.mark.parametrize("algorithm", ["RangeSupervision", "Ranger"])
def test_protected_ppocr_reads_the_same_text(rec_model, eval_lines, algorithm):
    calib = ocr_data.calibration_inputs(32, seed=0)
    protected = ovrange.protect(rec_model, calib, algorithm=algorithm, subset_size=32)
    info = ovrange.protection_info(protected)
    kinds = Counter(node["type"] for node in info.nodes.values())
    # converted as ovc does, the model has Swish x7, HSwish x28 and Relu x2: all are protected
    assert kinds["Swish"] == 7 and kinds["HSwish"] == 28 and kinds["Relu"] == 2
    texts, images = eval_lines
    original = ocr_data.recognize(rec_model, images)
    guarded = ocr_data.recognize(protected, images)
    assert guarded == original
    assert sum(a == b for a, b in zip(original, texts)) >= 0.9 * len(texts)  # and the model really reads them
    # on the calibration inputs themselves: no guard cuts a value; outputs equal to f32 rounding (on this CPU the
    # Clamps change how the plugin fuses a few kernels, which moves the last bits) and the same top-1 everywhere
    a = ocr_data.compile_rec(rec_model)(calib[:4])[0]
    b = ocr_data.compile_rec(protected)(calib[:4])[0]
    assert np.allclose(a, b, rtol=1e-5, atol=1e-6) and np.array_equal(a.argmax(-1), b.argmax(-1))


def test_cli_protects_the_onnx_file(tmp_path: Path):
    calib = ocr_data.write_npz(tmp_path / "calib.npz", 8, seed=0)
    result = subprocess.run([sys.executable, "-m", "ovrange", "protect", str(ocr_data.rec_model_path()), "--data",
                             str(calib), "-o", str(tmp_path / "out"), "-q"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out" / "ch_PP-OCRv4_rec_infer_RangeSupervision"
    assert (out / "ch_PP-OCRv4_rec_infer.xml").is_file() and (out / "bounds.json").is_file()
    assert "39 node(s) protected" in result.stdout  # HSwish x28, Swish x7, Relu x2, HardSigmoid x2
