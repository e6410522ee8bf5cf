"""Array files (``.npy``, ``.npz``) read within bounds: the size an array declares is checked against a limit before
anything is loaded, and in an ``.npz`` the zip directory too (a deflate bomb of a few MB can declare gigabytes);
a truncated or malformed file is a one-line DataError."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ovrange.errors import DataError


# The largest array a data file may declare: a quarter of the machine's memory, at most 4 GiB. The size is read
# from the .npy header (and, in an .npz, from the zip directory) before anything is loaded.
def array_limit() -> int:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        memory = 16 << 30
    return min(4 << 30, memory // 4)


def _npy_bytes(handle: Any, what: str) -> int:
    """Bytes the .npy array at ``handle`` declares (shape x itemsize), read from its header only."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = reader(handle)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {what}: {exc}") from exc
    if dtype.hasobject:
        raise DataError(f"{what} holds Python objects: data must be numbers")
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * dtype.itemsize


def _check_declared(size: int, what: str) -> None:
    limit = array_limit()
    if size > limit:
        raise DataError(f"{what} declares an array of {size} bytes, more than the limit of {limit} bytes (a "
                        "quarter of the memory, at most 4 GiB)")


def read_npy(path: Path) -> np.ndarray:
    """The array of an ``.npy`` file, its declared size checked against :func:`array_limit` before loading."""
    try:
        with open(path, "rb") as handle:
            declared = _npy_bytes(handle, str(path))
            header = handle.tell()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc
    _check_declared(declared, str(path))
    if path.stat().st_size - header < declared:
        raise DataError(f"cannot read {path}: it declares {declared} bytes of data but holds "
                        f"{path.stat().st_size - header} (truncated?)")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if array.ndim == 0 or len(array) == 0:
        raise DataError(f"no samples in {path}")
    return array


def _check_npz(path: Path) -> None:
    """Every member of the .npz, as the zip directory and each member's header state it, fits the limit (a
    deflate bomb of a few MB can declare gigabytes): checked before any member is decompressed."""
    import zipfile

    limit, total = array_limit(), 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                total += info.file_size
                if total > limit:
                    raise DataError(f"{path} holds {total}+ bytes once decompressed, more than the limit of {limit} "
                                    "bytes (a quarter of the memory, at most 4 GiB)")
                if info.filename.endswith(".npy"):
                    with archive.open(info) as member:
                        declared = _npy_bytes(member, f"{info.filename} in {path}")
                    _check_declared(declared, f"{info.filename} in {path}")
                    if declared > info.file_size:
                        raise DataError(f"cannot read {path}: {info.filename} declares {declared} bytes of data "
                                        f"but holds {info.file_size}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file by name, after :func:`_check_npz`."""
    import zipfile
    import zlib

    _check_npz(path)
    try:
        return dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
