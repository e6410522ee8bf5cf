"""How data feeds a model: the batch axis of each input and output, image preprocessing in every command that reads
an image folder, and the lines a user gets for models the commands should not compare or cannot read.

Real OpenVINO inference on zoo models (scripts/build_zoo.py): Silero VAD's state ``[2, 1, 128]`` has its batch on
axis 1; MediaPipe's palm detector folds its batch into the anchors (``Reshape([1, -1, 18])``).
"""

from __future__ import annotations

import sys

import numpy as np
import openvino as ov
import pytest
from openvino import opset13 as ops

from ovrange import data as data_mod
from ovrange.batching import batch_first, input_batch_axes, output_batch_axes, set_batch_axes
from ovrange.cli import main
from ovrange.errors import ConfigError
from ovrange.images import ImageOptions
from ovrange.modelio import read_model
from ovrange.runtime import Runner
from tests.test_zoo import zoo  # noqa: F401  (the session fixture building build/zoo)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``ovrange ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ovrange", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def model_and_data(zoo, name: str, split: str = "heldout"):  # noqa: F811
    folder, entries = zoo
    entry = entries[name]
    model = read_model(folder / entry["model"])
    return model, data_mod.load(folder / entry[split]["file"], model).dataset, folder / entry["model"]


def relu_model(*shapes: list[int]) -> ov.Model:
    params = [ops.parameter(ov.PartialShape(shape), ov.Type.f32) for shape in shapes]
    return ov.Model([ops.relu(p) for p in params], params)


def test_batch_axis_comes_from_the_layout_else_the_one_axis_that_can_be_the_batch(zoo):  # noqa: F811
    silero, _, _ = model_and_data(zoo, "silero_vad")
    palm, _, _ = model_and_data(zoo, "palm_detection_full")
    assert input_batch_axes(silero) == [0, 1]  # input [1, 576]; state [2, 1, 128]
    assert input_batch_axes(palm) == [0]
    assert output_batch_axes(silero) == [0, 1]  # output [1, 1]; stateN [2, 1, 128]
    assert output_batch_axes(palm) == [None, None]  # [1, 2016, 18]: the batch is folded into the anchors
    assert input_batch_axes(relu_model([4, 1, 28, 28])) == [0]  # one input: a static batch of 4, not axis 1
    assert input_batch_axes(relu_model([-1, 576], [2, -1, 128])) == [0, 1]  # the other inputs' dynamic batch
    set_batch_axes(silero, {"input": 0, "state": 1})  # the layout agrees with the guess
    assert input_batch_axes(silero) == [0, 1] and "N" in str(silero.get_parameters()[1].get_layout())
    with pytest.raises(ConfigError, match="no input 'h'.*input, state"):
        set_batch_axes(silero, {"h": 1})
    with pytest.raises(ConfigError, match="has no axis 3"):
        set_batch_axes(silero, {"state": 3})


def test_silero_runs_batches_stacked_on_the_state_axis_as_one_sample_at_a_time(zoo):  # noqa: F811
    model, dataset, _ = model_and_data(zoo, "silero_vad")
    batched, single = Runner(model, batch_size=4), Runner(model, batch_size=1)
    assert batched.batch_size == 4
    for output in (0, 1):
        many = batched.predict(data_mod.batches(data_mod.subset(dataset, 6)[0], model, 4), output=output)
        one = single.predict(data_mod.batches(data_mod.subset(dataset, 6)[0], model, 1), output=output)
        assert many.shape == one.shape == ((6, 1) if output == 0 else (6, 2, 128))  # samples first
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6)
        assert np.ptp(one.reshape(6, -1), axis=0).max() > 0  # six different samples


def test_outputs_without_a_batch_axis_run_one_sample_at_a_time(zoo):  # noqa: F811
    model, dataset, _ = model_and_data(zoo, "palm_detection_full")
    with pytest.raises(ConfigError, match="Identity, Identity_1 do not keep the batch axis"):
        Runner(model, batch_size=4)  # calibration asked for a batch of 4: refused, not mixed up
    runner = Runner(model, batch_size=4, fallback=True)
    assert runner.batch_size == 1
    scores = runner.predict(data_mod.batches(data_mod.subset(dataset, 3)[0], model, 4), output=1)
    assert scores.shape == (3, 2016, 1) and np.ptp(scores, axis=0).max() > 0


def test_the_batch_first_view_computes_what_the_model_computes(zoo):  # noqa: F811
    model, dataset, _ = model_and_data(zoo, "silero_vad")
    view, moved = batch_first(model), data_mod.batch_first(dataset, model)
    assert [p.get_partial_shape().to_shape() for p in view.inputs] == [[1, 576], [1, 2, 128]]
    assert [p.get_any_name() for p in view.outputs] == [p.get_any_name() for p in model.outputs]
    sample = next(iter(moved.get_inference_data([3])))
    assert [a.shape for a in sample] == [(1, 576), (1, 2, 128)]
    direct = Runner(model).infer(data_mod.sample_arrays(next(iter(dataset.get_inference_data([3]))), model))
    through_view = Runner(view).infer(list(sample))
    for a, b in zip(direct, through_view):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_benchmark_warns_when_the_formats_differ_and_takes_shapes_from_data(zoo, monkeypatch, capsys):  # noqa: F811
    folder, entries = zoo
    entry = entries["ppocr_cls"]  # [?, 3, ?, ?]: no shape of its own
    code, out, err = run_cli(monkeypatch, capsys, "benchmark", folder / entry["original"], folder / entry["model"],
                             "--time", 0.4, "--sessions", 1, "--data", folder / entry["heldout"]["file"])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "an ONNX model" in warnings[0] and "an OpenVINO IR" in warnings[0]
    assert f"ovc {entry['original'].split('/')[-1]}" in warnings[0]
    assert "x[1,3,48,192]" in out and "latency overhead" in out  # the held-out crops' shape
    code, _, err = run_cli(monkeypatch, capsys, "benchmark", folder / entry["model"], folder / entry["model"])
    assert code == 4 and err.strip().endswith("or --data (the shape of its first sample)"), err


def test_a_model_openvino_cannot_read_is_one_line_naming_the_op_in_every_command(zoo, monkeypatch, capsys,  # noqa: F811
                                                                                  tmp_path):
    folder, entries = zoo
    unreadable = folder / entries["face_landmark_with_attention"]["original"]
    readable, data = folder / entries["face_landmark"]["model"], folder / entries["face_landmark"]["heldout"]["file"]
    for args in (("evaluate", readable, unreadable, "--data", data), ("inject", unreadable, "--data", data),
                 ("benchmark", readable, unreadable), ("check", unreadable, readable, "--data", data)):
        code, _, err = run_cli(monkeypatch, capsys, *args, "--json", tmp_path / "r.json")
        assert code == 3 and err.count("\n") == 1 and err.startswith("error: cannot read model"), (args, err)
        assert "Landmarks2TransformMatrix" in err
    assert not any(tmp_path.iterdir())


@pytest.fixture
def photos(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


def test_image_options_mean_the_same_in_every_command_that_reads_images(zoo, photos, monkeypatch, capsys):  # noqa: F811
    folder, entries = zoo
    model, heldout = folder / entries["iris_landmark"]["model"], folder / entries["iris_landmark"]["heldout"]["file"]
    for command in (("evaluate", model, model), ("inject", model, "--trials", 2), ("check", model, model)):
        code, _, err = run_cli(monkeypatch, capsys, *command, "--data", photos, "--mean", "1,2")
        assert code != 0 and err.strip() == "error: image mean has 2 values; the model input has 3 channel(s)", err
        code, _, err = run_cli(monkeypatch, capsys, *command, "--data", heldout, "--color-order", "RGB")
        assert code != 0 and "describe image folders" in err and err.count("\n") == 1, err
    rgb = ("--mean", "127.5", "--scale", "127.5", "--color-order", "RGB")
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", model, model, "--data", photos, *rgb, "-q")
    assert code == 0 and "agrees with iris_landmark.xml on 100.00%" in out, err
    raw, scaled = (data_mod.load(photos, read_model(model), images=images).dataset
                   for images in (None, ImageOptions(mean=(127.5,), scale=(127.5,), color_order="RGB")))
    first_raw, first_scaled = (next(iter(d.get_inference_data([0]))) for d in (raw, scaled))
    np.testing.assert_allclose(first_scaled, (first_raw[..., ::-1] - 127.5) / 127.5, rtol=1e-6)  # raw is BGR
