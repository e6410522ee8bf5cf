"""PP-OCRv4 text detection (DBNet) as a real third-party detection model: the ONNX file of rapidocr-onnxruntime.

Input ``x`` ``[N, 3, H, W]`` (H, W multiples of 32), output the text probability map ``[N, 1, H, W]`` (a Sigmoid).
rapidocr binarizes it at 0.3 and turns the connected regions into boxes; a change of that binary map is what a
fault must not cause (``--sdc boxes``, :mod:`ovrange.compare`). Preprocessing as rapidocr's
``DetPreProcess`` (mean = std = 0.5 on 0..1 pixels, BGR), on pages of :data:`PAGE` pixels rendered here: 3-6 lines of
:func:`scripts.ocr_data.sample_texts` at seeded positions, black on white (rapidocr would upscale the short side
to 736; a fixed page size keeps campaigns batchable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
from PIL import Image

from scripts import ocr_data

DET_MODEL = "models/ch_PP-OCRv4_det_infer.onnx"
PAGE = (320, 320)  # H, W
THRESHOLD = 0.3  # rapidocr det thresh


def det_model_path() -> Path:
    """Path of ``ch_PP-OCRv4_det_infer.onnx`` next to the recognition model (package not imported)."""
    path = ocr_data.rec_model_path().parent.parent / DET_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{DET_MODEL} not found next to {ocr_data.rec_model_path()}")
    return path


def render_page(texts: list[str], seed: int) -> Image.Image:
    """``texts`` at seeded, non-overlapping rows of a white :data:`PAGE` page (a line that does not fit is cut)."""
    rng = np.random.default_rng(seed)
    height, width = PAGE
    page = Image.new("RGB", (width, height), "white")
    rows = height // 48
    for row, text in zip(sorted(rng.choice(rows, size=min(rows, len(texts)), replace=False)), texts):
        line = ocr_data.render_line(text, font_size=int(rng.integers(20, 30)))
        page.paste(line, (int(rng.integers(0, max(1, width // 4))), int(row) * 48))
    return page


def preprocess(page: Image.Image) -> np.ndarray:
    """``[1, 3, H, W]`` float32: BGR, ``(x / 255 - 0.5) / 0.5`` (rapidocr DetPreProcess with its defaults)."""
    bgr = np.asarray(page.convert("RGB"))[:, :, ::-1].astype(np.float32)
    return ((bgr / 255 - 0.5) / 0.5).transpose(2, 0, 1)[np.newaxis].copy()


def pages(n: int, seed: int = 0) -> np.ndarray:
    """``n`` preprocessed pages, float32 ``[n, 3, H, W]``; pages of different seeds have different lines."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(n):
        texts = ocr_data.sample_texts(int(rng.integers(3, 7)), seed=seed * 100_003 + index)
        out.append(preprocess(render_page(texts, seed * 100_003 + index)))
    return np.concatenate(out)


def binary_maps(model: ov.Model | ov.CompiledModel, images: np.ndarray) -> np.ndarray:
    """The probability maps of ``images`` binarized at :data:`THRESHOLD` (bool ``[N, H, W]``), f32 inference."""
    compiled = model if isinstance(model, ov.CompiledModel) else ov.Core().compile_model(model, "CPU",
                                                                                         ocr_data.CONFIG)
    return compiled(np.ascontiguousarray(images, np.float32))[0][:, 0] > THRESHOLD
