"""Shared fixtures. The repo root is on sys.path (pytest ``pythonpath``) so tests import ``tests.models`` and the
``scripts.*`` builders.

The bundled models are built by ``scripts.build_default_model`` into ``build/`` (``make test`` builds them first;
a fresh checkout running pytest directly builds them here, once, in about a minute).
"""

from __future__ import annotations

from pathlib import Path

import pytest

BUILD_DIR = Path(__file__).resolve().parent.parent / "build"


@pytest.fixture(scope="session")
def bundled() -> dict[str, dict[str, Path]]:
    """Paths of the bundled models (``lenet``, ``seven``): xml, calib_dir, calib_npz, test_npz, pt, ..."""
    from scripts.build_default_model import build_default

    return build_default(BUILD_DIR, log=False)

