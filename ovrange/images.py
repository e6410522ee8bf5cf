"""Image folders as model inputs: POT's "simplified" engine (decode, resize to the model input, NCHW/NHWC, BGR order
as cv2 gave POT), with Model Optimizer's mean/scale values. Pillow is imported only when an image is decoded."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from ovrange.errors import DataError

MAX_IMAGE_PIXELS = 64 << 20  # pixels of one image file (8192 x 8192): larger ones are refused before decoding
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class ImageOptions:
    """How image files become model inputs: POT's simplified engine by default (raw 0..255 values, BGR order as
    cv2 gave it); ``mean``/``scale`` per channel as Model Optimizer's ``--mean_values``/``--scale_values``
    (``(pixel - mean) / scale``, in the channel order given); ``shape`` for models with dynamic spatial dims."""

    layout: str | None = None  # NCHW or NHWC; guessed from the model input when None
    color_order: str = "BGR"
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    shape: tuple[int, ...] | None = None  # the full static input shape, e.g. (1, 3, 48, 320)

    def __post_init__(self) -> None:
        if self.color_order.upper() not in ("BGR", "RGB"):
            raise DataError(f"unknown colour order {self.color_order!r}: use RGB or BGR")
        for name in ("mean", "scale"):
            values = getattr(self, name)
            if not all(np.isfinite(v) for v in values) or (name == "scale" and any(v == 0 for v in values)):
                raise DataError(f"image {name} values must be finite{' and non-zero' if name == 'scale' else ''}: "
                                f"{list(values)}")


def image_reader(path: str | os.PathLike, model: ov.Model, options: ImageOptions | str | None = None
                 ) -> tuple[list[Path], Callable[[Path], np.ndarray]]:
    """The image files in ``path`` (sorted) and the function that decodes one into the model input (float32)."""
    options = options if isinstance(options, ImageOptions) else ImageOptions(layout=options)
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in data directory {path}")
    if len(model.inputs) != 1:
        raise DataError(f"an image folder can feed a single-input model; this model has {len(model.inputs)} inputs")
    height, width, channels, layout = image_geometry(model.inputs[0], options.layout, options.shape)
    for name in ("mean", "scale"):
        if len(getattr(options, name)) not in (0, 1, channels):
            raise DataError(f"image {name} has {len(getattr(options, name))} values; the model input has "
                            f"{channels} channel(s)")
    return files, lambda file: decode_image(file, height, width, channels, layout, options)


def image_geometry(port: ov.Output, layout: str | None,
                   shape: tuple[int, ...] | None = None) -> tuple[int, int, int, str]:
    """(height, width, channels, layout) of a 4-D image input (or of ``shape``, which must fit it); the layout is
    guessed from the channel axis if not given."""
    name = port.get_any_name()
    model_shape = port.get_partial_shape()
    if shape is not None:
        if not model_shape.compatible(ov.PartialShape(list(shape))):
            raise DataError(f"shape {list(shape)} does not fit model input {name!r} of shape {model_shape}")
        model_shape = ov.PartialShape(list(shape))
    if model_shape.rank.is_dynamic or model_shape.rank.get_length() != 4:
        raise DataError(f"image data needs a 4-D model input; {name!r} has shape {model_shape}")
    dims = [d.get_length() if d.is_static else None for d in model_shape]
    if layout is None:
        layout = "NHWC" if dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4) else "NCHW"
    layout = layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise DataError(f"unsupported layout {layout!r}: use NCHW or NHWC")
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if None in (c, h, w):
        raise DataError(f"model input {name!r} has dynamic spatial or channel dimensions ({model_shape}); "
                        "image folders need static ones: give --shape (e.g. --shape [1,3,48,320]) or use .npy/.npz")
    if c not in (1, 3, 4):
        raise DataError(f"model input {name!r} has {c} channels; images give 1 or 3")
    return h, w, c, layout


def decode_image(file: Path, height: int, width: int, channels: int, layout: str,
                 options: ImageOptions = ImageOptions()) -> np.ndarray:
    """Decode one image: bilinear resize, channel order (BGR as POT's cv2 by default), ``(x - mean) / scale``."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow then refuses twice as many in open(); we refuse above it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
        with image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{image.width * image.height}")
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32)
    except Image.DecompressionBombError:
        raise DataError(f"image {file} has more than {MAX_IMAGE_PIXELS} pixels, the limit for one image") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot decode image {file}: {exc}") from exc
    if channels == 1:
        array = array[..., np.newaxis]
    elif options.color_order.upper() == "BGR":
        array = array[..., ::-1]
    if options.mean:
        array = array - np.asarray(options.mean, np.float32)
    if options.scale:
        array = array / np.asarray(options.scale, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1) if layout == "NCHW" else array, dtype=np.float32)
