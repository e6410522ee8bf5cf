"""What was run, recorded with a campaign: versions, the command line, and digests of the models and the data.

A reviewer reproduces a campaign from this record: the same command on files with the same digests, with the same
versions, gives the same faults (the fault list's fingerprint is in the result too) and the same counts.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(folder: Path) -> str:
    """One digest of a folder's files: their relative paths and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def _files(source: str) -> dict[str, str]:
    """sha256 of a model file (and its .bin beside an .xml) or of a data file/folder; empty when not a path."""
    path = Path(source)
    try:
        if path.is_dir():
            return {"sha256_tree": tree_sha256(path)}
        if not path.is_file():
            return {}
        found = {"sha256": file_sha256(path)}
        if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
            found["bin_sha256"] = file_sha256(path.with_suffix(".bin"))
        return found
    except OSError:
        return {}


def command_line(argv: list[str] | None = None) -> str:
    """The process's command line, as ``ovrange ...`` when it is the ovrange command."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name in ("ovrange", "__main__.py") or argv[0] == "-m"):
        argv = ["ovrange", *argv[1:]]
    return shlex.join(argv)


def versions() -> dict[str, str]:
    from importlib import metadata

    from ovrange.version import __version__

    found = {"ovrange": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("openvino", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def provenance(models: list[str], digests: list[str], data: str) -> dict[str, Any]:
    """The record: ``models`` (names or paths), their graph digests, the data source (path or a type name)."""
    return {"command": command_line(), "cwd": os.getcwd(), "versions": versions(),
            "models": [{"name": name, "graph_digest": digest, **_files(name)} for name, digest in zip(models, digests)],
            "data": {"source": data, **_files(data)}}
