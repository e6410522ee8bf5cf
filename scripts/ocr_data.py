"""PP-OCRv4 text recognition as a real third-party test model.

The model is the ONNX file shipped in the ``rapidocr-onnxruntime`` wheel (``test`` extra): a PPLCNetV3 backbone
(HardSwish written as ``x * clip(x + 3, 0, 6) / 6``, SE blocks with ReLU/HardSigmoid), an SVTR neck (Swish,
LayerNorm, self-attention) and a CTC head whose softmax covers 6625 classes (blank + ppocr_keys_v1 + space).
Input ``x`` is ``[N, 3, 48, W]``, output ``[N, W / 8, 6625]``; here ``W`` is fixed at 320 (40 time steps).

The package is located with :func:`importlib.util.find_spec` and never imported (importing it pulls in
onnxruntime and cv2). Everything else mirrors rapidocr 1.4.4 (``ch_ppocr_rec``):

* charset: the ONNX model's ``metadata_props["character"]`` (one character a line), which rapidocr reads through
  onnxruntime's ``custom_metadata_map``; OpenVINO's ONNX reader exposes it as ``rt_info["framework"]["character"]``.
  rapidocr's ``CTCLabelDecode`` then inserts ``"blank"`` at index 0 and appends ``" "``.
* preprocessing: ``TextRecognizer.resize_norm_img`` on a BGR uint8 image (cv2 order) -- resize to height 48
  keeping the aspect ratio (bilinear with cv2 ``INTER_LINEAR`` geometry, within one grey level of cv2's
  fixed-point result; lines rendered 48 px high are not resized at all), ``(x / 255 - 0.5) / 0.5``, zero right-pad.
  rapidocr widens the batch for wider lines; a fixed-shape batch caps the width at 320 (squeezing), as PaddleOCR does.
* decoding: greedy CTC (argmax, collapse repeats, drop blank 0).

Text lines are rendered with Pillow's bundled font (Aileron Regular, ``ImageFont.load_default(size=...)``), so
no system font is needed. Command line: ``python -m scripts.ocr_data out.npz --n 64 --seed 0`` writes
``x`` (float32 ``[n, 3, 48, 320]``) and ``texts`` (the rendered strings).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import openvino as ov
from PIL import Image, ImageDraw, ImageFont

PACKAGE = "rapidocr_onnxruntime"
REC_MODEL = "models/ch_PP-OCRv4_rec_infer.onnx"
INPUT_SHAPE = (3, 48, 320)  # C, H, W as in rapidocr's config.yaml (rec_img_shape)
NUM_CLASSES = 6625
FONT_SIZE = 32
PAD = 4  # horizontal padding of a rendered line, pixels
MAX_CHARS = 18  # sample lines stay below ~320 px at FONT_SIZE, so preprocessing never squeezes them
CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}

WORDS = (
    "the", "open", "model", "range", "fault", "clamp", "value", "error", "layer", "input", "output", "text",
    "line", "word", "paper", "water", "light", "house", "green", "black", "white", "river", "stone", "north",
    "south", "east", "west", "city", "road", "train", "plane", "music", "money", "price", "total", "order",
    "offer", "sale", "store", "bank", "card", "phone", "mail", "data", "file", "page", "book", "table",
    "chair", "door", "window", "market", "street", "summer", "winter", "spring", "autumn", "coffee", "bread",
    "apple", "orange", "lemon", "sugar", "salt", "milk", "cheese", "Monday", "Friday", "June", "March",
    "Hello", "World", "Total", "Exit", "Open", "Stop", "Main", "Room", "Park", "Hotel", "Paris", "London",
)


def rec_model_path() -> Path:
    """Path of ``ch_PP-OCRv4_rec_infer.onnx`` inside the installed rapidocr-onnxruntime (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGE} is not installed; install the test extra: pip install -e '.[test]'")
    for location in spec.submodule_search_locations:
        path = Path(location) / REC_MODEL
        if path.is_file():
            return path
    raise FileNotFoundError(f"{REC_MODEL} not found in {PACKAGE} at {list(spec.submodule_search_locations)}")


def read_rec_model() -> ov.Model:
    """A fresh ``ov.Model`` of the recognition model, read straight from the ONNX file."""
    return ov.Core().read_model(str(rec_model_path()))


@lru_cache(maxsize=1)
def _charset() -> tuple[str, ...]:
    characters = read_rec_model().get_rt_info(["framework", "character"]).astype(str)
    # rapidocr: custom_metadata_map["character"].splitlines(), then CTCLabelDecode adds blank and space.
    return ("blank", *characters.splitlines(), " ")


def load_charset() -> list[str]:
    """Class index -> character: ``"blank"`` (CTC blank, index 0), the 6623 ppocr_keys_v1 characters, ``" "``."""
    return list(_charset())


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("Pillow was built without FreeType; the bundled TrueType font is not available")
    return font


def render_line(text: str, height: int = 48, font_size: int = FONT_SIZE) -> Image.Image:
    """``text`` in black on white, RGB, ``height`` pixels high, :data:`PAD` pixels of margin left and right.

    The vertical position comes from the font's "Hg" box, so every line shares the same baseline.
    """
    font = _font(font_size)
    _, top, _, bottom = font.getbbox("Hg")
    width = max(1, math.ceil(font.getlength(text))) + 2 * PAD
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((PAD, (height - (bottom - top)) // 2 - top), text, fill="black", font=font)
    return image


def _resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an HWC array with cv2 ``INTER_LINEAR`` geometry (half-pixel centres, edge clamping)."""

    def taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, src - 1)
        return low, high, (pos - low).astype(np.float32)

    data = image.astype(np.float32)
    y0, y1, wy = taps(image.shape[0], height)
    data = data[y0] * (1 - wy)[:, None, None] + data[y1] * wy[:, None, None]
    x0, x1, wx = taps(image.shape[1], width)
    data = data[:, x0] * (1 - wx)[None, :, None] + data[:, x1] * wx[None, :, None]
    if image.dtype == np.uint8:
        return np.clip(np.rint(data), 0, 255).astype(np.uint8)
    return data


def _bgr(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))[:, :, ::-1]
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {array.shape}")
    return array


def preprocess(image: Image.Image | np.ndarray) -> np.ndarray:
    """PP-OCR rec preprocessing of one line image: float32 ``[1, 3, 48, 320]``.

    A PIL image is converted to BGR (cv2's order, which rapidocr feeds the model); a numpy array is taken as BGR
    ``HxWx3`` (or grayscale ``HxW``) already. Height becomes 48 with the aspect ratio kept, width
    ``min(320, ceil(48 * w / h))``, values ``(x / 255 - 0.5) / 0.5``, then zero padding on the right up to 320.
    """
    channels, target_h, target_w = INPUT_SHAPE
    bgr = _bgr(image)
    h, w = bgr.shape[:2]
    resized_w = min(target_w, int(math.ceil(target_h * w / float(h))))
    resized = bgr if (h, w) == (target_h, resized_w) else _resize_linear(bgr, resized_w, target_h)
    normalized = (resized.astype(np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    out = np.zeros((1, channels, target_h, target_w), dtype=np.float32)
    out[0, :, :, :resized_w] = normalized
    return out


def ctc_decode(logits: np.ndarray, charset: Sequence[str]) -> list[str]:
    """Greedy CTC decoding of ``[N, T, C]`` scores: argmax, collapse repeats, drop the blank (index 0)."""
    indices = np.asarray(logits).argmax(axis=2)
    texts = []
    for row in indices:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        texts.append("".join(charset[i] for i in row[keep]))
    return texts


def sample_texts(n: int, seed: int) -> list[str]:
    """``n`` deterministic lines of 1-4 words (:data:`WORDS` or 2-4 digit numbers), at most :data:`MAX_CHARS` long."""
    rng = np.random.default_rng(seed)
    lines = []
    while len(lines) < n:
        words: list[str] = []
        for _ in range(int(rng.integers(1, 5))):
            if rng.random() < 0.25 and not (words and words[-1].isdigit()):
                words.append(str(int(rng.integers(10, 10000))))  # 2-4 digits, never two numbers in a row
            else:
                words.append(WORDS[int(rng.integers(len(WORDS)))])
        line = " ".join(words)
        while len(line) > MAX_CHARS and " " in line:
            line = line.rsplit(" ", 1)[0]
        if len(line) <= MAX_CHARS:
            lines.append(line)
    return lines


def calibration_inputs(n: int, seed: int = 0) -> np.ndarray:
    """Preprocessed renderings of :func:`sample_texts` ``(n, seed)``: float32 ``[n, 3, 48, 320]``."""
    return _inputs(sample_texts(n, seed))


def _inputs(texts: Sequence[str]) -> np.ndarray:
    return np.concatenate([preprocess(render_line(text)) for text in texts]).astype(np.float32)


def write_npz(path: str | os.PathLike, n: int, seed: int = 0) -> Path:
    """Save ``x`` (:func:`calibration_inputs`) and ``texts`` (unicode array) to ``path``."""
    path = Path(path)
    texts = sample_texts(n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=_inputs(texts), texts=np.array(texts, dtype=np.str_))
    return path


def compile_rec(model: ov.Model | None = None) -> ov.CompiledModel:
    """Compile ``model`` (default: the recognition model) for CPU with f32 inference precision."""
    return ov.Core().compile_model(model if model is not None else read_rec_model(), "CPU", CONFIG)


def recognize(model: ov.Model | ov.CompiledModel, images: np.ndarray) -> list[str]:
    """Run ``images`` (``[N, 3, 48, W]``, preprocessed) through ``model`` in f32 and decode the first output."""
    compiled = model if isinstance(model, ov.CompiledModel) else compile_rec(model)
    logits = compiled(np.ascontiguousarray(images, dtype=np.float32))[compiled.output(0)]
    return ctc_decode(logits, _charset())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write PP-OCRv4 rec calibration inputs (rendered text lines).")
    parser.add_argument("output", help="destination .npz (arrays: x, texts)")
    parser.add_argument("--n", type=int, default=64, help="number of lines (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    print(write_npz(args.output, args.n, args.seed))


if __name__ == "__main__":
    main()
