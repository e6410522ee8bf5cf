"""The ``regions`` SDC criterion: DBNet's text regions of a binarized probability map, compared box by box."""

from __future__ import annotations

import numpy as np
import pytest

from ovrange.errors import ConfigError
from ovrange.compare import MASKED, SDC, Judge, SdcCriterion, regions_changed, text_regions


def page() -> np.ndarray:
    """A 40x60 probability map with two text lines (0.9) on a 0.1 background."""
    p = np.full((40, 60), 0.1, np.float32)
    p[5:12, 4:50] = 0.9
    p[20:28, 10:40] = 0.9
    return p


def test_boxes_of_two_lines_and_a_speck_dbnet_drops():
    p = page() > 0.3
    p[35, 55] = p[35, 56] = True  # 1x2: a side under 3 pixels
    assert text_regions(p).tolist() == [[5, 4, 11, 49], [20, 10, 27, 39]]


def test_diagonal_pixels_are_one_region():
    p = np.zeros((10, 10), bool)
    for i in range(6):
        p[i, i] = True
    assert text_regions(p).tolist() == [[0, 0, 5, 5]]


@pytest.mark.parametrize("edit, tolerance, sdc", [
    (lambda p: p.__setitem__((slice(5, 12), 50), 0.9), 1, False),  # a line grows by 1 pixel
    (lambda p: p.__setitem__((slice(5, 12), slice(50, 52)), 0.9), 1, True),  # by 2 pixels
    (lambda p: p.__setitem__((slice(5, 12), 50), 0.9), 0, True),  # any move with tolerance 0
    (lambda p: p.__setitem__((slice(11, 21), 20), 0.9), 1, True),  # a bridge merges the lines
    (lambda p: p.__setitem__((slice(30, 35), slice(5, 20)), 0.9), 1, True),  # a new region
    (lambda p: p.__setitem__((slice(32, 34), slice(50, 52)), 0.9), 0, False),  # a 2x2 speck
    (lambda p: p.__setitem__((slice(7, 9), slice(20, 24)), 0.1), 0, False),  # a hole inside a line
])
def test_regions_criterion(edit, tolerance, sdc):
    golden = page()
    faulty = golden.copy()
    edit(faulty)
    assert regions_changed(golden > 0.3, faulty > 0.3, tolerance) == sdc
    judge = Judge(SdcCriterion.parse(f"regions:{tolerance}"))
    codes, _, _ = judge.classify(golden[None, None], faulty[None, None])
    assert codes.tolist() == [SDC if sdc else MASKED]


def test_batch_of_maps_judged_row_by_row():
    golden = np.stack([page()] * 3)[:, None]
    faulty = golden.copy()
    faulty[1, 0, 30:35, 5:20] = 0.9
    codes, _, _ = Judge(SdcCriterion.parse("regions")).classify(golden, faulty)
    assert codes.tolist() == [MASKED, SDC, MASKED]


def test_criterion_parsing():
    assert str(SdcCriterion.parse("regions:2")) == "regions:2"
    assert SdcCriterion.parse("regions").threshold == 0
    with pytest.raises(ConfigError, match="pixel count"):
        SdcCriterion.parse("regions:1.5")
