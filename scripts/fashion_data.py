"""Debian's Fashion-MNIST (``apt-get install dataset-fashion-mnist``) read into memory: the source of the bundled
models' training, calibration and test data."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


class BuildError(Exception):
    """A problem the user can fix (missing dataset, missing torch); reported as one line, exit code 1."""


@dataclass(frozen=True)
class FashionMNIST:
    """The whole dataset as uint8 images ``[N, 1, 28, 28]`` and int64 labels ``[N]``."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray



def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (big-endian header: 0, 0, dtype code, rank, then ``rank`` uint32 dimensions)."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:  # not gzip, or cut short
        raise BuildError(f"cannot read {path}: {exc}") from exc
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise BuildError(f"{path} is not an unsigned-byte IDX file")
    rank = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(shape)):
        raise BuildError(f"{path} is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape).copy()  # writable, as torch.from_numpy wants


def dataset_files(data_dir: Path = DATA_DIR) -> dict[str, Path]:
    """The four Fashion-MNIST files; BuildError with the install hint when any is missing."""
    paths = {key: Path(data_dir) / name for key, name in DATA_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        what = "" if len(missing) == len(paths) else f" (missing {', '.join(missing)})"
        raise BuildError(f"Fashion-MNIST not found in {data_dir}{what}; "
                         "install it with: apt-get install dataset-fashion-mnist")
    return paths


def load_fashion_mnist(data_dir: Path = DATA_DIR) -> FashionMNIST:
    """Read the whole dataset into memory (about 55 MB)."""
    arrays = {key: read_idx(path) for key, path in dataset_files(data_dir).items()}
    return FashionMNIST(
        train_x=arrays["train_x"][:, np.newaxis], train_y=arrays["train_y"].astype(np.int64),
        test_x=arrays["test_x"][:, np.newaxis], test_y=arrays["test_y"].astype(np.int64),
    )
