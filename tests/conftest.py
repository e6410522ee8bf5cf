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


# Under ``pytest -n 2 --dist loadgroup`` (``make test``): the tests of one module share a worker (their module
# fixtures are built once), the zoo's by model (the protected IRs it makes once per model), and every test that
# starts Ray runs in one worker (two Ray instances at once would only slow each other).
RAY_MODULES = ("test_ray_network", "test_faults_ray")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else item.nodeid
        name = getattr(getattr(item, "callspec", None), "params", {}).get("name")
        group = ("ray" if module in RAY_MODULES else
                 f"{module}[{name}]" if module == "test_zoo" and isinstance(name, str) else module)
        item.add_marker(pytest.mark.xdist_group(group))
