"""The PP-OCRv4 recognition fixture (scripts/ocr_data.py) on the real model shipped in rapidocr-onnxruntime.

Real OpenVINO f32 inference: rendered text lines must be read back. Measured on 600 lines (seeds 1 and 2):
599 exact matches; the one miss reads "Open" as "0pen" (Aileron's O and 0 look alike).
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import ocr_data  # noqa: E402

if importlib.util.find_spec(ocr_data.PACKAGE) is None:
    pytest.skip("rapidocr-onnxruntime is not installed (pip install -e '.[test]')", allow_module_level=True)

FIXED_LINES = ["Hello World", "total 1250", "OpenVINO range", "clamp the fault", "June 2024", "coffee and bread"]


@pytest.fixture(scope="module")
def compiled():
    return ocr_data.compile_rec()


def test_model_file_and_ports():
    path = ocr_data.rec_model_path()
    assert path.name == "ch_PP-OCRv4_rec_infer.onnx" and path.is_file()
    model = ocr_data.read_rec_model()
    assert [port.get_any_name() for port in model.inputs] == ["x"]
    shape = model.input(0).get_partial_shape()
    assert shape.rank.get_length() == 4 and shape[1].get_length() == 3
    out = model.output(0).get_partial_shape()
    assert out.rank.get_length() == 3 and out[2].get_length() == ocr_data.NUM_CLASSES


def test_charset():
    charset = ocr_data.load_charset()
    assert len(charset) == ocr_data.NUM_CLASSES == 6625
    assert charset[0] == "blank" and charset[-1] == " "
    assert all(len(c) == 1 for c in charset[1:])
    assert set("abcxyzABCXYZ0123456789") <= set(charset)


def test_charset_matches_onnxruntime_metadata():
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(ocr_data.rec_model_path()), providers=["CPUExecutionProvider"])
    characters = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    assert ocr_data.load_charset() == ["blank", *characters, " "]


def test_rapidocr_is_never_imported():
    code = ("import sys; from scripts import ocr_data; ocr_data.load_charset(); ocr_data.rec_model_path(); "
            "assert not any(m.startswith('rapidocr') for m in sys.modules), 'imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_render_line():
    image = ocr_data.render_line("Hello 42")
    assert image.mode == "RGB" and image.height == 48 and image.width > 2 * ocr_data.PAD
    pixels = np.asarray(image)
    assert pixels.min() < 64 and pixels.max() == 255
    assert (pixels[:, : ocr_data.PAD] == 255).all() and (pixels[:, -ocr_data.PAD:] == 255).all()
    assert np.array_equal(np.asarray(ocr_data.render_line("Hello 42")), pixels)


def test_preprocess_pads_without_resizing_a_48px_line():
    image = ocr_data.render_line("abc")
    x = ocr_data.preprocess(image)
    assert x.shape == (1, 3, 48, 320) and x.dtype == np.float32
    pixels = np.asarray(image)[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(x[0, :, :, : image.width], (pixels / 255 - 0.5) / 0.5)
    assert (x[0, :, :, image.width:] == 0).all()


@pytest.mark.parametrize("height,width", [(64, 200), (30, 100), (48, 500), (100, 900), (37, 333)])
def test_preprocess_matches_rapidocr_resize_norm_img(height, width):
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(height * width).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    # rapidocr TextRecognizer.resize_norm_img for one image, with the width capped at 320 (fixed input shape).
    resized_w = min(320, int(math.ceil(48 * width / float(height))))
    resized = cv2.resize(image, (resized_w, 48)).astype("float32").transpose((2, 0, 1)) / 255
    expected = np.zeros((1, 3, 48, 320), dtype=np.float32)
    expected[0, :, :, :resized_w] = (resized - 0.5) / 0.5
    # cv2 rounds its fixed-point interpolation weights: at most one grey level of difference.
    np.testing.assert_allclose(ocr_data.preprocess(image), expected, rtol=0, atol=1.01 / 127.5)


def test_preprocess_channel_order():
    image = np.zeros((48, 10, 3), dtype=np.uint8)
    image[:, :, 0] = 255  # BGR array: blue
    from PIL import Image

    rgb = Image.fromarray(image[:, :, ::-1].copy())  # the same picture as an RGB PIL image
    np.testing.assert_array_equal(ocr_data.preprocess(image), ocr_data.preprocess(rgb))
    assert (ocr_data.preprocess(image)[0, 0, :, :10] == 1).all()


def test_ctc_decode():
    charset = ["blank", "a", "b", " "]
    steps = [0, 1, 1, 0, 1, 2, 2, 3, 0, 2]
    logits = np.eye(4, dtype=np.float32)[steps][None]
    assert ocr_data.ctc_decode(logits, charset) == ["aab b"]
    assert ocr_data.ctc_decode(np.zeros((2, 5, 4), dtype=np.float32), charset) == ["", ""]


def test_sample_texts_are_deterministic():
    texts = ocr_data.sample_texts(50, seed=3)
    assert texts == ocr_data.sample_texts(50, seed=3) != ocr_data.sample_texts(50, seed=4)
    assert all(1 <= len(t.split(" ")) <= 4 and len(t) <= ocr_data.MAX_CHARS for t in texts)
    assert all(ocr_data.render_line(t).width <= 320 for t in texts)


def test_calibration_inputs_and_npz(tmp_path):
    x = ocr_data.calibration_inputs(4, seed=1)
    assert x.shape == (4, 3, 48, 320) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    path = ocr_data.write_npz(tmp_path / "ocr.npz", 4, seed=1)
    with np.load(path, allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["x"], x)
        assert archive["texts"].dtype.kind == "U"
        assert list(archive["texts"]) == ocr_data.sample_texts(4, seed=1)


def test_recognizes_rendered_lines(compiled):
    texts = FIXED_LINES + ocr_data.sample_texts(14, seed=123)
    images = np.concatenate([ocr_data.preprocess(ocr_data.render_line(t)) for t in texts])
    recognized = ocr_data.recognize(compiled, images)
    exact = sum(r == t for r, t in zip(recognized, texts))
    misses = [(t, r) for r, t in zip(recognized, texts) if r != t]
    assert exact >= 0.9 * len(texts), misses


def test_recognize_accepts_an_uncompiled_model_and_matches_onnxruntime(compiled):
    ort = pytest.importorskip("onnxruntime")
    x = ocr_data.calibration_inputs(3, seed=7)
    model = ocr_data.read_rec_model()
    assert ocr_data.recognize(model, x) == ocr_data.recognize(compiled, x)
    logits = ocr_data.compile_rec(model)(x)[0]
    session = ort.InferenceSession(str(ocr_data.rec_model_path()), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, session.run(None, {"x": x})[0], atol=1e-3)
