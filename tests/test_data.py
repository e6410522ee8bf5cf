"""Datasets: POT's image-folder decoding, arrays, subsets, and data that does not fit the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
from PIL import Image

from ovrange import data
from ovrange.errors import DataError


def image_model(shape: list[int]) -> ov.Model:
    x = ops.parameter(shape, np.float32, name="image")
    return ov.Model([ops.result(ops.relu(x))], [x], "img")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0] = 200  # red channel
    pixels[..., 2] = 10   # blue channel
    Image.fromarray(pixels).save(tmp_path / "b.png")
    Image.fromarray(pixels).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_nchw_bgr_resized(folder: Path):
    dataset = data.load(folder, image_model([1, 3, 8, 12])).dataset
    samples = list(dataset.get_inference_data())
    assert len(samples) == 2
    assert samples[0].shape == (3, 8, 12) and samples[0].dtype == np.float32
    assert samples[0][0].max() == 10 and samples[0][2].max() == 200  # BGR, as POT's cv2 decoding gave


def test_image_folder_nhwc_grayscale(folder: Path):
    sample = next(data.load(folder, image_model([1, 5, 5, 1])).dataset.get_inference_data())
    assert sample.shape == (5, 5, 1)


def test_npz_with_labels(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3, 2, 2), np.uint8), y=np.arange(5))
    labelled = data.load(tmp_path / "d.npz", image_model([1, 3, 2, 2]))
    assert len(labelled.dataset) == 5 and list(labelled.labels) == [0, 1, 2, 3, 4]
    arrays = data.sample_arrays(labelled.dataset.source[0], image_model([1, 3, 2, 2]))
    assert arrays[0].shape == (1, 3, 2, 2) and arrays[0].dtype == np.float32


def test_batches_concatenate_and_keep_remainder():
    model = image_model([-1, 3, 2, 2])
    got = [(arrays[0].shape[0], n) for arrays, n in data.batches(np.zeros((7, 3, 2, 2), np.float32), model, 3)]
    assert got == [(3, 3), (3, 3), (1, 1)]


def test_subset_rule_matches_pot():
    assert list(data.select_indices(10, 3)) == [0, 1, 2]
    shuffled = data.select_indices(100, 5, shuffle=True, seed=7)
    assert len(set(shuffled)) == 5 and list(shuffled) == list(data.select_indices(100, 5, shuffle=True, seed=7))
    assert list(data.select_indices(4, 300)) == [0, 1, 2, 3]


@pytest.mark.parametrize("shape", [(3, 3, 3), (2, 3, 2, 2, 1), (4,)])
def test_data_that_does_not_fit(shape):
    with pytest.raises(DataError, match="does not fit"):
        data.sample_arrays(np.zeros(shape, np.float32), image_model([1, 3, 2, 2]))


def test_unreadable_image(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    dataset = data.load(tmp_path, image_model([1, 3, 4, 4])).dataset
    with pytest.raises(DataError, match="cannot decode image"):
        list(dataset.get_inference_data())
