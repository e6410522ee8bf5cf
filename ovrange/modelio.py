"""Reading IR/ONNX models with clear errors, and writing results atomically.

The input model is never modified: callers work on what :func:`read_model` returns (a fresh ov.Model).
Results are written into a temporary sibling folder and renamed into place, so a crash or an error never
leaves a half-written result, and an existing result is only replaced when ``force`` is set.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import openvino as ov

from ovrange.errors import ModelError, OutputError
from ovrange.runtime import last_line, shared_core


def read_model(path: str | os.PathLike, weights: str | os.PathLike | None = None) -> ov.Model:
    """Read an OpenVINO IR (``.xml`` + ``.bin``), checking the files first, or convert an ONNX (or other
    frontend) file as ``ovc`` would."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
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
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ModelError(f"malformed model XML {path}: {exc}") from exc
    if root.tag != "net":
        raise ModelError(f"{path} is not an OpenVINO IR (root element <{root.tag}>, expected <net>)")


def _check_weights(xml: Path, bin_path: Path) -> None:
    """The .bin must exist when the IR has constants, and be exactly as long as the .xml's constants reach: a
    longer file belongs to another model (OpenVINO would read it without complaint)."""
    extent = max((int(d.get("offset")) + int(d.get("size", 0)) for d in ET.parse(xml).getroot().iter("data")
                  if d.get("offset") is not None and d.get("size") not in (None, "0")), default=0)
    if not extent:
        return
    if not bin_path.is_file():
        raise ModelError(f"weights file not found: {bin_path}")
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


def save_model(model: ov.Model, xml_path: Path) -> None:
    """Save an IR keeping f32 weights (``ov.save_model`` compresses to FP16 by default)."""
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def prepare_output_dir(out_dir: str | os.PathLike, force: bool) -> Path:
    """Check, before any long work, that ``out_dir`` may be written: it must not exist unless ``force``, and the
    nearest existing folder above it must be writable. Creates nothing (a failed run leaves no empty folder)."""
    out_dir = Path(out_dir)
    if _exists(out_dir) and not force:
        raise OutputError(f"output already exists: {out_dir} (use --force to overwrite)")
    if _exists(out_dir) and not out_dir.is_dir():
        raise OutputError(f"output path exists and is not a directory: {out_dir}")
    _check_creatable(out_dir.parent)
    return out_dir


def check_output_file(path: str | os.PathLike) -> Path:
    """Check, before any long work, that the file ``path`` can be written (not a folder, its folder creatable)."""
    path = Path(path)
    if _exists(path) and path.is_dir():
        raise OutputError(f"output file is a directory: {path}")
    _check_creatable(path.parent)
    return path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # ENAMETOOLONG, EACCES on a parent: Path.exists() only hides ENOENT & co.
        raise OutputError(f"cannot use output path {path}: {exc.strerror}") from exc


def _check_creatable(folder: Path) -> None:
    """The nearest existing ancestor of ``folder`` must be a writable directory."""
    existing = folder
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {folder}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output directory is not writable: {existing}")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created (deepest last), to undo on failure."""
    missing = [p for p in (folder, *folder.parents) if not _exists(p)][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {folder}: {exc.strerror}") from exc
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (someone else wrote there) or gone


def write_dir_atomically(out_dir: str | os.PathLike, write: Callable[[Path], None], force: bool = False) -> Path:
    """Call ``write(tmp_dir)`` to fill a temporary folder, then move it to ``out_dir`` in one rename.

    On any exception (or signal) the temporary folder, and any parent folder created for it, is removed and an
    existing ``out_dir`` is left untouched. Without ``force`` the existence check and the move are one step: a
    rename fails on an existing non-empty folder, so of two concurrent runs only one succeeds. Temporaries left by
    killed runs (their process is gone) are cleaned up first.
    """
    out_dir = Path(out_dir)
    if out_dir.parent.is_dir():
        clean_stale(out_dir)
    out_dir = prepare_output_dir(out_dir, force)
    created = _make_parents(out_dir.parent)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp", dir=out_dir.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results are ordinary folders
        try:
            write(tmp)
        except (OSError, RuntimeError) as exc:  # disk full, quota, ...: ov.save_model raises RuntimeError
            raise OutputError(f"cannot write {out_dir}: {last_line(exc)}") from exc
        _move_into_place(tmp, out_dir, force)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path, force: bool) -> None:
    try:
        os.rename(tmp, out_dir)  # POSIX: fails with ENOTEMPTY/EEXIST when out_dir is a non-empty folder
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise OutputError(f"cannot write {out_dir}: {exc.strerror}") from exc
        if not force:
            raise OutputError(f"output already exists: {out_dir} (written by another run meanwhile; use --force "
                              "to overwrite)") from exc
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove the temporaries of ``out_dir`` left by killed runs (``.<name>.<pid>.*.tmp``, ``.<name>.old-<pid>``).

    A killed run's previous result (``.old-<pid>``) is moved back when ``out_dir`` is missing, never deleted.
    Returns the paths removed or restored.
    """
    done = []
    for path in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*"):
        match = re.fullmatch(rf"\.{re.escape(out_dir.name)}\.(?:(\d+)\..*\.tmp|old-(\d+))", path.name)
        if not match or _alive(int(match[1] or match[2])):
            continue
        if match[2] and not out_dir.exists():
            os.rename(path, out_dir)
        else:
            shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file_atomically(path: str | os.PathLike, data: str | bytes, force: bool = True) -> Path:
    """Write one file via a temporary sibling and ``os.replace``; a failure leaves neither the file nor its
    temporary (nor a folder created for it)."""
    path = Path(path)
    if _exists(path) and not force:
        raise OutputError(f"output already exists: {path} (use --force to overwrite)")
    check_output_file(path)
    created = _make_parents(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp, created)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        _discard(tmp, created)
        raise
    return path


def _discard(tmp: str | None, created: list[Path]) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)
    _remove_empty(created)
