"""Calibration and held-out inputs of the real-model zoo (:mod:`scripts.build_zoo`), from disjoint sources.

Every sample records the SHA-256 (first 16 hex digits) of the source it was cut from: a source image, a speech
utterance or a rendered text line. No source feeds both sets of a model.

* Images: the photos bundled in the scikit-image wheel (read from the package's ``data`` folder, never fetched)
  and its LFW subset (``skimage.data.lfw_subset()``: 100 faces, then 100 non-faces, 25x25 grey). The photos are
  split by name (:data:`CALIB_PHOTOS`, :data:`HELDOUT_PHOTOS`), LFW by index (first halves calibrate).
* Preprocessing as MediaPipe's graphs feed each model: RGB, resized keeping the aspect ratio with black
  letterbox borders, values in ``[0, 1]`` (palm detection, face and iris landmarks) or ``[-1, 1]`` (pose
  detection), NHWC as the TFLite models take them.
* Speech: espeak-ng sentences (different sentences and voices for the two sets), resampled to 16 kHz and fed
  through Silero VAD chunk by chunk, so every sample carries the recurrent state a stream would have.
* Text: PP-OCRv4 lines and pages rendered by :mod:`scripts.ocr_data` / :mod:`scripts.ocr_det`, held-out lines
  that also occur in the calibration set are dropped.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import openvino as ov

# scikit-image's bundled photos (files of skimage/data in the wheel). motorcycle_right is left out: it is the
# stereo twin of motorcycle_left, so it would put the same scene in both sets.
CALIB_PHOTOS = ("astronaut.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png", "coins.png",
                "page.png", "brick.png", "gravel.png", "clock_motion.png", "color.png")
HELDOUT_PHOTOS = ("camera.png", "coffee.png", "motorcycle_left.png", "retina.jpg", "moon.png", "text.png",
                  "grass.png", "cell.png", "microaneurysms.png", "logo.png")
LFW_FACES = 100  # lfw_subset(): images 0..99 are faces, 100..199 are not

CALIB_SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please set the volume to forty percent and open the kitchen window.",
    "Radiation can flip a single bit in memory, and the answer changes silently.",
    "We will meet on Monday at nine thirty in the small conference room.",
)
HELDOUT_SENTENCES = (
    "A voice activity detector decides which parts of a recording contain speech.",
    "Seven large boxes arrived this morning, but only three of them were labelled.",
    "Turn left at the second traffic light and park behind the old library.",
)
CALIB_VOICES = ("en-us", "en")
HELDOUT_VOICES = ("en-gb-x-rp", "en-us+f3")
VAD_RATE = 16_000
VAD_CHUNK = 512  # samples per call at 16 kHz
VAD_CONTEXT = 64  # the previous chunk's last samples, prepended (input [1, 576])


def source_id(data: bytes | np.ndarray | str) -> str:
    """First 16 hex digits of the SHA-256 of a source (array bytes, file bytes or text)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    elif isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Source:
    """One source image: RGB uint8 ``HxWx3`` and the id of the file or array it came from."""

    name: str
    rgb: np.ndarray
    sid: str


# ---------------------------------------------------------------------------------------------------------------
# Image sources


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def photos(names: Sequence[str]) -> list[Source]:
    """The named scikit-image photos as RGB (grey ones repeated, alpha dropped)."""
    folder = skimage_data_dir()
    out = []
    for name in names:
        path = folder / name
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        out.append(Source(name, rgb, source_id(path.read_bytes())))
    return out


def lfw(indices: Sequence[int]) -> list[Source]:
    """LFW subset images as RGB uint8 (25x25 grey, repeated over three channels)."""
    from skimage import data

    faces = data.lfw_subset()
    out = []
    for i in indices:
        grey = np.clip(np.rint(faces[i] * 255), 0, 255).astype(np.uint8)
        out.append(Source(f"lfw[{i}]", np.repeat(grey[:, :, None], 3, axis=2), source_id(faces[i])))
    return out


def image_sources(split: str, kind: str) -> list[Source]:
    """Sources of one split: ``scenes`` (photos and LFW images of both kinds) or ``faces`` (LFW faces only)."""
    half = LFW_FACES // 2
    calib = split == "calib"
    faces = lfw(range(0, half) if calib else range(half, LFW_FACES))
    if kind == "faces":
        return faces
    others = lfw(range(LFW_FACES, LFW_FACES + half) if calib else range(LFW_FACES + half, 2 * LFW_FACES))
    return photos(CALIB_PHOTOS if calib else HELDOUT_PHOTOS) + faces[:10] + others[:10]


# ---------------------------------------------------------------------------------------------------------------
# Image preprocessing


def letterbox(rgb: np.ndarray, size: int) -> np.ndarray:
    """``rgb`` resized (bilinear) to fit ``size`` x ``size`` keeping its aspect ratio, centred on black."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def random_crop(rgb: np.ndarray, rng: np.random.Generator, min_frac: float) -> np.ndarray:
    """A square crop of side ``min_frac``..1 of the short side at a random place, mirrored half of the time."""
    h, w = rgb.shape[:2]
    side = max(1, int(round(min(h, w) * rng.uniform(min_frac, 1.0))))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = rgb[top:top + side, left:left + side]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def to_range(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 pixels mapped linearly to ``[low, high]``, float32."""
    return (pixels.astype(np.float32) / 255.0 * (high - low) + low).astype(np.float32)


def image_set(sources: list[Source], n: int, size: int, value_range: tuple[float, float], seed: int,
              cut: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` NHWC float32 samples cycling through ``sources``: each source whole first, then random crops
    (``cut``, default :func:`random_crop` of 40-100%); returns the samples and their source ids."""
    rng = np.random.default_rng(seed)
    whole_first = cut is None
    cut = cut or (lambda rgb, r: random_crop(rgb, r, 0.4))
    samples, ids = [], []
    for index in range(n):
        source = sources[index % len(sources)]
        pixels = source.rgb if whole_first and index < len(sources) else cut(source.rgb, rng)
        samples.append(to_range(letterbox(np.ascontiguousarray(pixels), size), *value_range))
        ids.append(source.sid)
    return np.stack(samples), np.array(ids)


def face_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A face crop as a face detector's ROI would give it: 85-100% of the image, shifted, mirrored at random."""
    return random_crop(rgb, rng, 0.85)


def eye_crop(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One eye of a 25x25 LFW face (eyes near row 8, columns 6 and 15): ~10 px box with a 1 px jitter; the right
    eye is mirrored, as MediaPipe's iris graph does (the model is trained on left eyes)."""
    right = rng.random() < 0.5
    row = 8 + int(rng.integers(-1, 2))
    col = (15 if right else 6) + int(rng.integers(-1, 2))
    side = int(rng.integers(9, 12))
    top, left = max(0, row - side // 2), max(0, col - side // 2)
    crop = rgb[top:top + side, left:left + side]
    return crop[:, ::-1] if right else crop


# ---------------------------------------------------------------------------------------------------------------
# Speech for Silero VAD


def espeak(text: str, voice: str, workdir: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng as float32 mono at :data:`VAD_RATE` Hz."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed: apt-get install espeak-ng")
    path = workdir / f"{source_id(voice + text)}.wav"
    subprocess.run([exe, "-v", voice, "-s", "160", "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path)) as wav:
        rate, width = wav.getframerate(), wav.getsampwidth()
        frames = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"espeak-ng wrote {8 * width}-bit samples; expected 16-bit")
    audio = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    g = np.gcd(rate, VAD_RATE)
    return resample_poly(audio, VAD_RATE // g, rate // g).astype(np.float32)


def speech(sentences: Sequence[str], voices: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """Every sentence in every voice, each followed by 0.4 s of silence: ``(source id, audio)`` pairs."""
    pause = np.zeros(int(0.4 * VAD_RATE), np.float32)
    with tempfile.TemporaryDirectory(prefix="ovrange-zoo-speech.") as tmp:
        return [(source_id(voice + text), np.concatenate([espeak(text, voice, Path(tmp)), pause]))
                for voice in voices for text in sentences]


def vad_stream(model: ov.Model, utterances: list[tuple[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    """Run Silero VAD (``input [1, 576]``, ``state [2, 1, 128]``) over each utterance as a stream does and keep
    ``n`` evenly spaced calls: ``input`` ``[n, 1, 576]``, ``state`` ``[n, 2, 1, 128]`` (the state a stream has at
    that call; batch on axis 1), ``sources``."""
    import openvino

    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    calls: list[tuple[np.ndarray, np.ndarray, str]] = []
    for sid, audio in utterances:
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros(VAD_CONTEXT, np.float32)
        for start in range(0, len(audio) - VAD_CHUNK + 1, VAD_CHUNK):
            chunk = np.concatenate([context, audio[start:start + VAD_CHUNK]])[None]
            calls.append((chunk, state, sid))
            result = compiled({"input": chunk, "state": state})
            state = np.asarray(result[compiled.output("stateN")]).copy()
            context = chunk[0, -VAD_CONTEXT:]
    pick = np.linspace(0, len(calls) - 1, num=min(n, len(calls))).round().astype(int)
    return {"input": np.stack([calls[i][0] for i in pick]).astype(np.float32),
            "state": np.stack([calls[i][1] for i in pick]).astype(np.float32),
            "sources": np.array([calls[i][2] for i in pick])}


# ---------------------------------------------------------------------------------------------------------------
# PP-OCRv4 text


def ocr_lines(n: int, seed: int, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` lines of :func:`scripts.ocr_data.sample_texts` (seed ``seed``), none of them in ``exclude``."""
    from scripts import ocr_data

    banned, lines, batch = set(exclude), [], 0
    while len(lines) < n:
        lines += [t for t in ocr_data.sample_texts(4 * n, seed + 7919 * batch) if t not in banned][:n - len(lines)]
        batch += 1
    return lines


def rec_set(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """PP-OCRv4 rec inputs ``x`` ``[n, 3, 48, 320]`` of the rendered lines."""
    from scripts import ocr_data

    return {"x": np.concatenate([ocr_data.preprocess(ocr_data.render_line(t)) for t in texts]),
            "sources": np.array([source_id(t) for t in texts])}


def cls_set(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Direction classifier inputs ``x`` ``[n, 3, 48, 192]``: rendered lines, every other one turned 180 degrees,
    preprocessed as rapidocr's ``TextClassifier`` (height 48 keeping the aspect ratio, width at most 192,
    ``(x / 255 - 0.5) / 0.5`` in BGR, zero right-pad)."""
    from scripts import ocr_data

    out = np.zeros((len(texts), 3, 48, 192), np.float32)
    for i, text in enumerate(texts):
        image = ocr_data.render_line(text)
        if i % 2:
            image = image.rotate(180)
        width = min(192, int(np.ceil(48 * image.width / image.height)))
        bgr = np.asarray(image.convert("RGB").resize((width, 48), Image.BILINEAR))[:, :, ::-1]
        out[i, :, :, :width] = (bgr.astype(np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return {"x": out, "sources": np.array([source_id(t) for t in texts])}


def det_set(n: int, seed: int) -> dict[str, np.ndarray]:
    """PP-OCRv4 det pages ``x`` ``[n, 3, 320, 320]`` (:func:`scripts.ocr_det.pages`); a page is its own source."""
    from scripts import ocr_det

    pages = ocr_det.pages(n, seed=seed)
    return {"x": pages, "sources": np.array([source_id(page) for page in pages])}
