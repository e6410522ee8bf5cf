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



# The slowest modules first: `make test` runs the suite on two pytest-xdist workers, one module per worker at a time
# (--dist loadscope), so a long module started last would run alone at the end while the other worker idles.
# The modules that read the bundled ViT come last: `make test` starts the suite while the ViT still trains, and its
# builder makes a test that needs it wait for that build (scripts/build_vit.py).
SLOWEST_FIRST = ("test_zoo.py", "test_safety_matrix.py", "test_faults_ray.py", "test_ray_network.py",
                 "test_quantize_ppocr.py", "test_llm_protect.py", "test_quantize.py", "test_safety_signals.py",
                 "test_ppocr.py", "test_check.py")
NEED_THE_VIT = ("test_global_clipper.py", "test_faults_writes.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    rank.update({name: len(rank) + 1 + i for i, name in enumerate(NEED_THE_VIT)})
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FIRST)))  # stable: the others keep their order


def pytest_xdist_make_scheduler(config, log):  # noqa: ANN001, ANN201 - pytest-xdist's hook signature
    """``--dist loadscope``, with the zoo's tests grouped per model rather than per module: the zoo is the largest
    module, and as one unit it kept one worker busy long after the other had finished."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module, _, test = nodeid.partition("::")
            if module.endswith("test_zoo.py") and "[" in test:
                return f"{module}::{test.split('[', 1)[1].split('-')[0].rstrip(']')}"
            return super()._split_scope(nodeid)

    return Scheduler(config, log) if config.getvalue("dist") == "loadscope" else None
