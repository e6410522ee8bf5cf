"""What a new user meets first: usage errors, ``--version``, evaluate/check without labels and with ``--sdc``,
image preprocessing and ``--shape``, replayed campaigns reporting what ran, reports that never look complete when
they are not, and plots without matplotlib. Real OpenVINO inference on tiny IRs built in code."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
from PIL import Image

import ovrange
from ovrange import data as data_mod
from ovrange.errors import ConfigError, DataError
from ovrange.images import ImageOptions
from ovrange.faults.faultlist import FaultList
from ovrange.faults.report import RESULT_FILE, SUMMARY_FILE, markdown, write_report
from tests.models import seven_activation_model

# A fresh install has no `click` (typer vendors it): block it, as the console script would find it missing.
NO_CLICK = "import sys; sys.modules['click'] = None; sys.argv = ['ovrange', *sys.argv[1:]]; " \
           "from ovrange.cli import main; main()"


def run(*args, code: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["-c", code] if code else ["-m", "ovrange"]
    return subprocess.run([sys.executable, *prefix, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("features")
    x = np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype(np.float32)
    model = seven_activation_model(size=8)
    ov.save_model(model, str(root / "m.xml"), compress_to_fp16=False)
    ov.save_model(ovrange.protect(model, x, subset_size=24), str(root / "p.xml"), compress_to_fp16=False)
    np.save(root / "x.npy", x)
    return root


@pytest.mark.parametrize("args, expected", [
    (("--version",), None),
    (("protect", "--no-such-option"), "error: No such option: --no-such-option (see 'ovrange protect --help')"),
    (("protect", "model.xml", "--num-samples", "abc"), "error: Invalid value for '--num-samples'"),
    (("no-such-command",), "error: No such command 'no-such-command'"),
    (("evaluate",), "error: Missing argument 'models'"),
])
def test_usage_errors_are_one_line_without_click_installed(args, expected):
    done = run(*args, code=NO_CLICK)
    assert "Traceback" not in done.stderr + done.stdout
    if expected is None:
        assert done.returncode == 0 and done.stdout.strip() == f"ovrange {ovrange.__version__}"
    else:
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()]
        assert done.stderr.startswith(expected)


def test_bare_ovrange_prints_help_and_exits_2():
    done = run(code=NO_CLICK)
    assert done.returncode == 2 and "protect" in done.stdout and "Traceback" not in done.stderr


def test_evaluate_without_labels_reports_agreement(tiny):
    done = run("evaluate", tiny / "m.xml", tiny / "p.xml", "--data", tiny / "x.npy", "-q")
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert "the reference (24 samples; x.npy has no labels)" in first
    assert second.endswith("agrees with m.xml on 100.00% (top-1)")
    loose = run("evaluate", tiny / "m.xml", tiny / "p.xml", "--data", tiny / "x.npy", "--sdc", "linf:0.5", "-q")
    assert loose.returncode == 0 and loose.stdout.strip().endswith("(linf:0.5)"), loose.stderr


def test_check_has_sdc(tiny):
    done = run("check", tiny / "m.xml", tiny / "p.xml", "--data", tiny / "x.npy", "--sdc", "linf:0.01",
               "--max-accuracy-drop", "0", "--min-sdc-reduction", "1.01", "--trials", "300", "-q", "--json",
               tiny / "check.json")
    report = json.loads((tiny / "check.json").read_text())
    assert report["accuracy"]["reference"] == "original outputs (linf:0.01)"
    assert report["fault_injection"]["summary"]["models"]["original"]["sdc"]["n"] == 300
    assert done.returncode in (0, 10) and "PASS  top-1 accuracy drop 0 pp" in done.stdout, done.stderr


def test_image_preprocessing_and_shape_for_dynamic_spatial_dims(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rgb = np.random.default_rng(1).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "a.png")
    x = ops.parameter([-1, 3, -1, -1], np.float32, name="image")
    model = ov.Model([ops.result(ops.relu(x))], [x], "dynamic")
    with pytest.raises(DataError, match="give --shape"):
        data_mod.load(folder, model)
    options = ImageOptions(color_order="RGB", mean=(10.0, 20.0, 30.0), scale=(2.0, 4.0, 8.0),
                                    shape=(1, 3, 6, 10))
    sample = next(data_mod.load(folder, model, images=options).dataset.get_inference_data())
    expected = ((rgb.astype(np.float32) - [10, 20, 30]) / [2, 4, 8]).transpose(2, 0, 1)
    np.testing.assert_allclose(sample, expected, rtol=1e-6)
    default = next(data_mod.load(folder, model, images=ImageOptions(shape=(1, 3, 6, 10)))
                   .dataset.get_inference_data())
    np.testing.assert_array_equal(default, rgb[..., ::-1].transpose(2, 0, 1))  # POT: raw BGR pixels
    ov.save_model(model, str(tmp_path / "d.xml"))
    done = run("protect", tmp_path / "d.xml", "--data", folder, "--shape", "[1,3,6,10]", "--color-order", "RGB",
               "--mean", "10,20,30", "--scale", "[2,4,8]", "-o", tmp_path / "out", "-q")
    assert done.returncode == 0, done.stderr
    bounds = json.loads((tmp_path / "out/d_RangeSupervision/bounds.json").read_text())
    assert [node["high"] for node in bounds["nodes"].values()] == [pytest.approx(float(expected.max()))]


def test_shape_errors_name_the_users_array(tmp_path):
    x = ops.parameter([-1, 3, 48, 192], np.float32, name="x")
    np.save(tmp_path / "d.npy", np.zeros((3, 48, 192), np.float32))
    with pytest.raises(DataError, match=r"d.npy has shape \(3, 48, 192\): axis 0 counts samples, so one sample "
                                        r"is \(48, 192\).*one sample: \[3,48,192\]"):
        data_mod.load(tmp_path / "d.npy", ov.Model([ops.result(ops.relu(x))], [x], "m"))


def test_integer_inputs_take_exact_values_only(tmp_path):
    ids = ops.parameter([-1, 2], ov.Type.i64, name="ids")
    model = ov.Model([ops.result(ops.convert(ids, ov.Type.f32))], [ids], "ids")
    arrays = data_mod.sample_arrays(np.array([3.0, 4.0]), model)  # integral floats feed exactly
    assert arrays[0].dtype == np.int64 and arrays[0].tolist() == [[3, 4]]
    with pytest.raises(DataError, match="fractional"):
        data_mod.sample_arrays(np.array([0.5, 1.0]), model)


def test_replay_reports_the_bits_that_ran_and_bad_fault_lists_fail_early(tiny, tmp_path):
    x = np.load(tiny / "x.npy")
    ovrange.inject(str(tiny / "m.xml"), x, trials=30, inputs=4, bits="30", checkpoint_dir=tmp_path / "first")
    replayed = ovrange.inject(str(tiny / "m.xml"), x, replay=tmp_path / "first" / "faults.jsonl")  # bits: all
    assert replayed.spec.bits == (30,) and "bits: 30\n" in markdown(replayed)
    plan = FaultList.load(tmp_path / "first" / "faults.jsonl")
    for change, problem in (({"element": 10 ** 9}, "element 1000000000 is outside"), ({"mask": 1 << 40}, "mask 0x10000000000 is not"),
                            ({"site": "nowhere"}, "not in the fault list's header")):
        bad = replace(plan, faults=(replace(plan.faults[0], **change), *plan.faults[1:]))
        with pytest.raises(ConfigError, match=problem):
            bad.validate()


def test_a_new_campaign_in_a_report_folder_removes_the_old_result_first(tiny, tmp_path):
    x = np.load(tiny / "x.npy")
    report = tmp_path / "report"
    write_report(ovrange.inject(str(tiny / "m.xml"), x, trials=20, inputs=4, checkpoint_dir=report), report,
                 plots=False)
    assert "Complete: yes" in (report / SUMMARY_FILE).read_text()

    def stop(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ovrange.inject(str(tiny / "m.xml"), x, trials=2000, inputs=4, seed=1, checkpoint_dir=report, progress=stop)
    assert not (report / RESULT_FILE).exists() and not (report / SUMMARY_FILE).exists()
    assert (report / "checkpoint.jsonl").exists()


def test_plots_without_matplotlib_are_off_with_a_note_or_an_error_before_the_campaign(tiny, tmp_path):
    no_mpl = NO_CLICK.replace("sys.modules['click'] = None", "sys.modules['matplotlib'] = None")
    base = ("inject", tiny / "m.xml", "--data", tiny / "x.npy", "--trials", "20", "--num-samples", "4", "-q")
    done = run(*base, "--report", tmp_path / "r1", code=no_mpl)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("note: matplotlib is not installed") and not list((tmp_path / "r1").glob("*.png"))
    asked = run(*base, "--report", tmp_path / "r2", "--plots", code=no_mpl)
    assert asked.returncode == 5 and asked.stderr.startswith("error: --plots needs matplotlib")
    assert not (tmp_path / "r2").exists()


def test_resuming_a_complete_report_keeps_it_until_the_new_one_replaces_it(tiny, tmp_path, capsys, monkeypatch):
    """``--resume`` of a finished campaign: the same outcomes, and the complete report is never removed first
    (a failure while resuming leaves it as it was)."""
    from ovrange.faults import report as report_mod
    from tests.test_faults_cli import cli

    report = tmp_path / "report"
    args = ("inject", tiny / "m.xml", "--data", tiny / "x.npy", "--trials", "30", "--num-samples", "4", "-q",
            "--no-plots", "--report", report)
    assert cli(capsys, *args)[0] == 0
    before = {name: (report / name).read_bytes() for name in (RESULT_FILE, SUMMARY_FILE)}

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_mod, "write_report", full_disk)
    code, _, err = cli(capsys, *args, "--resume")
    assert code == 5 and err.startswith("error: ") and err.count("\n") == 1, err
    assert {name: (report / name).read_bytes() for name in before} == before
    monkeypatch.undo()
    assert cli(capsys, *args, "--resume")[0] == 0
    outcomes = [[m["outcomes"] for m in json.loads(text)["models"]]
                for text in ((report / RESULT_FILE).read_text(), before[RESULT_FILE])]
    assert outcomes[0] == outcomes[1]


def test_json_inside_the_report_folder_is_refused(tiny, tmp_path, capsys):
    from tests.test_faults_cli import cli

    report = tmp_path / "report"
    code, _, err = cli(capsys, "inject", tiny / "m.xml", "--data", tiny / "x.npy", "--trials", "10", "-q",
                       "--report", report, "--json", report / "r.json")
    assert code == 5 and "inside the --report folder" in err and err.count("\n") == 1, err
    assert not report.exists()


def test_running_out_of_memory_is_one_line_with_the_documented_code(tiny, capsys, monkeypatch):
    """A dataset larger than the memory: MemoryError where the data is read (forced here; the real one needs a
    machine-sized input) is one line, exit 6, not an internal error."""
    from tests.test_faults_cli import cli

    def too_big(*_args, **_kwargs):
        raise MemoryError()

    monkeypatch.setattr(data_mod, "load", too_big)
    code, _, err = cli(capsys, "evaluate", tiny / "m.xml", "--data", tiny / "x.npy", "-q")
    assert code == 6 and err.startswith("error: out of memory") and err.count("\n") == 1, err
