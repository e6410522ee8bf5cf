"""Per-channel clamps as one scalar Clamp on a scaled stream (ovrange/passes/streams.py), on a real zoo model."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

import ovrange
from ovrange.graph import inserted_nodes
from ovrange.passes import streams
from ovrange.runtime import compile_model
from tests.test_zoo import zoo  # noqa: F401  (the session fixture building build/zoo)


def run(model, x: np.ndarray) -> np.ndarray:
    compiled = compile_model(model)
    return np.stack([compiled(sample[None])[compiled.outputs[0]] for sample in x])


@pytest.fixture(scope="module")
def face(zoo):
    folder = zoo[0] / "face_landmark"
    data = np.load(folder / "calib.npz")["input_1"][:8]
    held = np.load(folder / "heldout.npz")["input_1"][:3]
    return ov.Core().read_model(str(folder / "face_landmark.xml")), data, held


def test_scaled_streams_change_no_clean_output_and_fold_into_the_weights(face):
    model, data, held = face
    wide = ovrange.protect(model, data, algorithm="GlobalClipper", subset_size=8, holdout=0, beyond="clamp",
                           scaled=True, margin=50.0)  # bounds no clean value reaches: the scaling alone
    scales = [n for n, role in inserted_nodes(wide).items() if n.endswith(streams.SCALE_SUFFIX)]
    assert scales and all(inserted_nodes(wide)[n] == "decode" for n in scales)
    clamps = [n for n in wide.get_ordered_ops() if n.get_type_name() == "Clamp"
              and n.get_friendly_name().endswith("min_max_Clamp")]
    assert clamps  # the stream's guards are scalar Clamps
    reference, protected = run(model, held), run(wide, held)
    np.testing.assert_allclose(protected, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_a_far_value_in_the_stream_is_cut_to_its_channel_bound(face):
    model, data, held = face
    guarded = ovrange.protect(model, data, algorithm="GlobalClipper", subset_size=8, holdout=0, beyond="clamp",
                              scaled=True)
    far = held[:1].copy()
    far[0, 10:20, 10:20, :] = 1e6  # a patch far beyond anything the bounds saw
    out, clean = run(guarded, far), run(model, held[:1])
    assert np.isfinite(out).all() and np.abs(out).max() < 100 * np.abs(clean).max()


def test_the_shared_scale_contains_every_channel_bound():
    stream = streams.Stream(members=["a", "b"], channels=4)
    bounds = [(np.array([-1.0, -2.0, 0.0, -8.0]), np.array([1.0, 3.0, 0.5, 8.0])),
              (np.array([-2.0, -1.0, -0.1]), np.array([2.0, 6.0, 0.2]))]
    scale = streams.stream_scale(stream, bounds)
    assert scale.shape == (4,) and np.all(scale > 0)
    for low, high in bounds:
        lo, hi = streams.scaled_bound(low, high, scale)
        assert np.all(lo * scale[:len(low)] <= low + 1e-12) and np.all(high <= hi * scale[:len(high)] + 1e-12)
