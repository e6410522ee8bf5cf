"""Reading inputs with clear errors and bounds: models, configs and plans, names.

The input model is never modified: callers work on what :func:`read_model` returns (a fresh ov.Model). Inputs
are checked to be regular files before they are opened (a FIFO would block forever). Writing results follows one
rule, in :mod:`ovrange.outputs`.
"""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import openvino as ov

from ovrange.errors import ConfigError, ModelError, OvrangeError
from ovrange.runtime import last_line, shared_core


def read_model(path: str | os.PathLike, weights: str | os.PathLike | None = None) -> ov.Model:
    """Read an OpenVINO IR (``.xml`` + ``.bin``), checking the files first, or convert an ONNX (or other
    frontend) file as ``ovc`` would."""
    path = check_regular_file(path, "model file", ModelError)
    if path.suffix.lower() == ".xml":
        _check_ir_xml(path)
        _check_weights(path, Path(weights) if weights else path.with_suffix(".bin"))
    else:
        _check_frontend(path)
    try:
        if path.suffix.lower() != ".xml":
            # ONNX & co. go through the same conversion as `ovc` (fusing e.g. HSwish/Swish patterns into ops), so
            # the graph ovrange protects is the IR users would deploy.
            return ov.convert_model(str(path))
        if weights:
            return shared_core().read_model(str(path), str(weights))
        return shared_core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - read_model raises RuntimeError, convert_model its own types
        message = last_line(exc)
        if "Incorrect weights" in message or "Empty weights" in message:
            message = f"weights file {path.with_suffix('.bin').name} is truncated or does not match the .xml"
        raise ModelError(f"cannot read model {path}: {message}") from exc


def _check_ir_xml(path: Path) -> None:
    if path.stat().st_size > MAX_XML_BYTES:
        raise ModelError(f"model XML {path} has {path.stat().st_size} bytes, more than the limit of "
                         f"{MAX_XML_BYTES} for an IR's graph")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ModelError(f"malformed model XML {path}: {exc}") from exc
    if root.tag != "net":
        raise ModelError(f"{path} is not an OpenVINO IR (root element <{root.tag}>, expected <net>)")


def _check_weights(xml: Path, bin_path: Path) -> None:
    """The .bin must exist when the IR has constants, and be exactly as long as the .xml's constants reach: a
    longer file belongs to another model (OpenVINO would read it without complaint)."""
    extent = 0
    for data in ET.parse(xml).getroot().iter("data"):
        if data.get("offset") is None or data.get("size") in (None, "0"):
            continue
        try:
            offset, size = int(data.get("offset")), int(data.get("size", 0))
        except ValueError:
            raise ModelError(f"malformed model XML {xml}: a constant has offset={data.get('offset')!r} "
                             f"size={data.get('size')!r}, not byte counts") from None
        if offset < 0 or size < 0:
            raise ModelError(f"malformed model XML {xml}: a constant has a negative offset or size")
        extent = max(extent, offset + size)
    if not extent:
        return
    check_regular_file(bin_path, "weights file", ModelError)
    size = bin_path.stat().st_size
    if size > extent:
        raise ModelError(f"weights file {bin_path.name} has {size} bytes but {xml.name} uses {extent}: it does not "
                         "belong to this model")


# Frontends by file suffix: asking only the matching one avoids every other frontend's parse attempt (the
# TensorFlow one logs absl lines to stderr for any file it cannot read).
FRONTENDS = {".onnx": "onnx", ".pb": "tf", ".tflite": "tflite", ".pdmodel": "paddle"}


def _check_frontend(path: Path) -> None:
    framework = FRONTENDS.get(path.suffix.lower())
    if framework is None:
        raise ModelError(f"unsupported model file {path.name}: use an OpenVINO IR (.xml + .bin) or "
                         f"{', '.join(FRONTENDS)}")
    from openvino.frontend import FrontEndManager

    if not FrontEndManager().load_by_framework(framework).supported(str(path)):
        raise ModelError(f"{path} is not a readable {framework} model")


FORMAT_NAMES = {".xml": "OpenVINO IR", ".onnx": "ONNX", ".tflite": "TFLite", ".pb": "TensorFlow",
                ".pdmodel": "PaddlePaddle"}


def model_format(path: str | os.PathLike) -> str:
    """The format of a model file, by its suffix: ``OpenVINO IR``, ``ONNX``, ``TFLite``..."""
    suffix = Path(path).suffix.lower()
    return FORMAT_NAMES.get(suffix, suffix.lstrip(".") or "unknown")


def mixed_formats(original: str | os.PathLike, protected: str | os.PathLike) -> str | None:
    """The warning for timing two models of different formats, else None: OpenVINO converts each format through
    its own frontend and transformations, so the graphs differ beyond the protection (a converted ``.onnx`` and
    the IR ``ovrange protect`` wrote from it time apart by tens of percent)."""
    first, second = model_format(original), model_format(protected)
    if first == second:
        return None
    return (f"{Path(original).name} is {_article(first)} {first} model and {Path(protected).name} {_article(second)} "
            f"{second}: OpenVINO builds different graphs from different formats, so the difference is not only "
            f"the protection's cost; convert first (ovc {Path(original).name}) and compare IR with IR")


def _article(name: str) -> str:
    return "an" if name[:1] in "AEIOUaeio" else "a"


def save_model(model: ov.Model, xml_path: Path) -> None:
    """Save an IR keeping f32 weights (``ov.save_model`` compresses to FP16 by default)."""
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


# ---------------------------------------------------------------------------------------------------------------
# Bounded reads

MAX_XML_BYTES = 1 << 30  # an IR's .xml (the graph; the weights are in the .bin)
MAX_TEXT_BYTES = 64 << 20  # a config, campaign settings or a protection plan
MAX_NAME_BYTES = 200  # a name from a config or a plan, used as a file or folder name


def check_regular_file(path: str | os.PathLike, what: str, error: type[OvrangeError]) -> Path:
    """``path`` if it is a regular file; else ``error`` naming ``what``. Only ``stat`` is used, never ``open``:
    opening a FIFO blocks until a writer comes, a device may never end."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is not a regular file (a FIFO, socket or device)")
    return path


def read_text(path: str | os.PathLike, what: str, error: type[OvrangeError] = ConfigError,
              limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes; anything else is one ``error``."""
    path = check_regular_file(path, what, error)
    try:
        size = path.stat().st_size
        if size > limit:
            raise error(f"{what} {path} has {size} bytes, more than the limit of {limit}")
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def check_name(name: object, what: str) -> str:
    """``name`` if it can name a file or folder: one path component (no separator, not ``.`` or ``..``), no NUL,
    at most :data:`MAX_NAME_BYTES` bytes. Names from configs and plans are names, never paths."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} must be a non-empty name, got {name!r}")
    if "\0" in name:
        raise ConfigError(f"{what} {name!r} contains a NUL character")
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/")):
        raise ConfigError(f"{what} {name!r} must be a plain name, not a path (no '/', '\\', '.' or '..')")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ConfigError(f"{what} has {size} bytes, more than the limit of {MAX_NAME_BYTES} for a name")
    return name


def model_files(path: str | os.PathLike | None) -> list[Path]:
    """The files of a model argument: an IR's .xml and its .bin, or the one file of another format."""
    if path is None:
        return []
    path = Path(path)
    return [path, path.with_suffix(".bin")] if path.suffix.lower() == ".xml" else [path]
