"""Reading IR/ONNX models with clear errors, and writing results atomically.

The input model is never modified: callers work on what :func:`read_model` returns (a fresh ov.Model).
Results are written into a temporary sibling folder and renamed into place, so a crash or an error never
leaves a half-written result, and an existing result is only replaced when ``force`` is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import openvino as ov

from ovrange.errors import ModelError, OutputError
from ovrange.runtime import last_line


def read_model(path: str | os.PathLike, weights: str | os.PathLike | None = None) -> ov.Model:
    """Read an OpenVINO IR (``.xml`` + ``.bin``), checking the files first, or convert an ONNX (or other
    frontend) file as ``ovc`` would."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if path.suffix.lower() == ".xml":
        _check_ir_xml(path)
        bin_path = Path(weights) if weights else path.with_suffix(".bin")
        if _ir_has_weights(path) and not bin_path.is_file():
            raise ModelError(f"weights file not found: {bin_path}")
    try:
        if path.suffix.lower() != ".xml":
            # ONNX & co. go through the same conversion as `ovc` (fusing e.g. HSwish/Swish patterns into ops), so
            # the graph ovrange protects is the IR users would deploy.
            return ov.convert_model(str(path))
        if weights:
            return ov.Core().read_model(str(path), str(weights))
        return ov.Core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - read_model raises RuntimeError, convert_model its own types
        message = last_line(exc)
        if "Incorrect weights" in message or "Empty weights" in message:
            message = f"weights file {path.with_suffix('.bin').name} is truncated or does not match the .xml"
        raise ModelError(f"cannot read model {path}: {message}") from exc


def _check_ir_xml(path: Path) -> None:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ModelError(f"malformed model XML {path}: {exc}") from exc
    if root.tag != "net":
        raise ModelError(f"{path} is not an OpenVINO IR (root element <{root.tag}>, expected <net>)")


def _ir_has_weights(path: Path) -> bool:
    return any(data.get("size") not in (None, "0") for data in ET.parse(path).getroot().iter("data")
               if data.get("offset") is not None)


def save_model(model: ov.Model, xml_path: Path) -> None:
    """Save an IR keeping f32 weights (``ov.save_model`` compresses to FP16 by default)."""
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def prepare_output_dir(out_dir: str | os.PathLike, force: bool) -> Path:
    """Check that ``out_dir`` may be written: it must not exist unless ``force``, and its parent must be writable."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise OutputError(f"output already exists: {out_dir} (use --force to overwrite)")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output path exists and is not a directory: {out_dir}")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory is not writable: {parent}")
    return out_dir


def write_dir_atomically(out_dir: str | os.PathLike, write: Callable[[Path], None], force: bool = False) -> Path:
    """Call ``write(tmp_dir)`` to fill a temporary folder, then move it to ``out_dir`` in one rename.

    On any exception the temporary folder is removed and an existing ``out_dir`` is left untouched.
    """
    out_dir = prepare_output_dir(out_dir, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results are ordinary folders
        write(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file_atomically(path: str | os.PathLike, data: str | bytes, force: bool = True) -> Path:
    """Write one file via a temporary sibling and ``os.replace``."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"output already exists: {path} (use --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
