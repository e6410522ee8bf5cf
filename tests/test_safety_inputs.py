"""Bad inputs across every command: each gives one ``error:`` line, a non-zero exit, no traceback, and leaves the
workspace exactly as it was (no file or folder created, nothing modified, the input model included).

The commands run in-process through the console entry point (``ovrange.cli.main``) on a tiny IR; signals and
races, which need real processes, are in ``test_safety_interrupts.py`` and ``test_safety_signals.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
from PIL import Image

import ovrange
from tests.models import seven_activation_model
from tests.test_faults_cli import cli  # the console entry point in-process


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """m.xml and its protected twin p.xml, calibration and labelled data, images, an int64-input model, a campaign."""
    root = tmp_path_factory.mktemp("matrix")
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((12, 3, 8, 8)).astype(np.float32)
    model = seven_activation_model(size=8)
    ov.save_model(model, str(root / "m.xml"), compress_to_fp16=False)
    ov.save_model(ovrange.protect(model, calib, subset_size=12), str(root / "p.xml"), compress_to_fp16=False)
    np.save(root / "calib.npy", calib)
    np.savez(root / "test.npz", x=calib, y=rng.integers(0, 5, 12))
    (root / "images").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    ids = ops.parameter([-1, 4], ov.Type.i64, name="ids")
    hidden = ops.relu(ops.matmul(ops.convert(ids, ov.Type.f32), ops.constant(np.ones((4, 3), np.float32)),
                                 False, False))
    ov.save_model(ov.Model([ops.result(hidden)], [ids], "ids"), str(root / "i.xml"), compress_to_fp16=False)
    ovrange.inject(str(root / "m.xml"), calib, trials=20, inputs=4, seed=0, checkpoint_dir=root / "campaign")
    return root


def _edit_json_lines(path: Path, edit: Callable[[list], None]) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    edit(row)
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


def _set(index: int, value) -> Callable[[list], None]:
    return lambda row: row.__setitem__(index, value)


SETUP: dict[str, Callable[[Path], None]] = {
    "png model": lambda w: Image.new("RGB", (4, 4)).save(w / "pic.png"),
    "garbage onnx": lambda w: (w / "bad.onnx").write_bytes(b"\x00garbage" * 64),
    "malformed xml": lambda w: (w / "m.xml").write_text("<net><layers><layer id='0'"),
    "not an IR": lambda w: (w / "m.xml").write_text("<html></html>"),
    "missing bin": lambda w: (w / "m.bin").unlink(),
    "truncated bin": lambda w: (w / "m.bin").write_bytes((w / "m.bin").read_bytes()[:100]),
    "oversized bin": lambda w: (w / "m.bin").write_bytes((w / "m.bin").read_bytes() * 2),
    "existing result": lambda w: (w / "out" / "m_RangeSupervision").mkdir(parents=True),
    "empty folder": lambda w: (w / "empty").mkdir(),
    "strings": lambda w: np.save(w / "s.npy", np.array([["a"] * 4] * 3)),
    "wrong shape": lambda w: np.save(w / "s.npy", np.zeros((3, 48, 192), np.float32)),
    "inf pixel": lambda w: np.save(w / "s.npy", np.where(np.arange(4 * 192).reshape(4, 3, 8, 8) == 5, np.inf,
                                                         0.5).astype(np.float32)),
    "all nan": lambda w: np.save(w / "s.npy", np.full((4, 3, 8, 8), np.nan, np.float32)),
    "float ids": lambda w: np.save(w / "s.npy", np.full((4, 4), 0.5, np.float32)),
    "garbage npy": lambda w: (w / "s.npy").write_bytes(b"\x93NUMPY garbage"),
    "text data": lambda w: (w / "s.txt").write_text("1 2 3"),
    "one-hot labels": lambda w: np.savez(w / "l.npz", x=np.zeros((4, 3, 8, 8), np.float32), y=np.eye(5)[:4]),
    "fractional labels": lambda w: np.savez(w / "l.npz", x=np.zeros((4, 3, 8, 8), np.float32),
                                            y=np.array([0.5, 1, 2, 3])),
    "labels out of range": lambda w: np.savez(w / "l.npz", x=np.zeros((4, 3, 8, 8), np.float32), y=np.arange(4) * 3),
    "label count": lambda w: np.savez(w / "l.npz", x=np.zeros((4, 3, 8, 8), np.float32), y=np.arange(3)),
    "unknown key": lambda w: (w / "c.json").write_text('{"engine": {"data_source": "calib.npy", "colour": "red"}}'),
    "malformed config": lambda w: (w / "c.json").write_text('{"engine": {'),
    "a file": lambda w: (w / "a_file").write_text("not a folder"),
    "binary replay": lambda w: (w / "campaign" / "faults.jsonl").write_bytes(bytes(range(256))),
    "bit 40": lambda w: _edit_json_lines(w / "campaign" / "faults.jsonl", _set(4, 1 << 40)),  # the mask
    "element 1e9": lambda w: _edit_json_lines(w / "campaign" / "faults.jsonl", _set(3, 10 ** 9)),
    "garbage checkpoint": lambda w: (w / "campaign" / "checkpoint.jsonl").write_bytes(b"\x00\x01garbage\n"),
    "json is a folder": lambda w: (w / "result_dir").mkdir(),
}

LONG = "x" * 300  # one path component longer than NAME_MAX
INJECT = ("inject", "{w}/m.xml", "--data", "{w}/test.npz", "--trials", "20", "--num-samples", "4")
PROTECT = ("protect", "{w}/m.xml", "--data", "{w}/calib.npy", "-o", "{w}/out")
EVALUATE = ("evaluate", "{w}/m.xml", "{w}/p.xml", "--data")
BENCH = ("benchmark", "{w}/m.xml", "{w}/p.xml", "--time", "0.2", "--sessions", "1")
CHECK = ("check", "{w}/m.xml", "{w}/p.xml", "--data", "{w}/test.npz")

# case -> (setup or None, command line, expected part of the error line)
CASES: dict[str, tuple[str | None, tuple[str, ...], str]] = {
    "protect: missing model": (None, ("protect", "{w}/nope.xml", "--data", "{w}/calib.npy", "-o", "{w}/out"),
                               "model file not found"),
    "protect: model is a PNG": ("png model", ("protect", "{w}/pic.png", "--data", "{w}/calib.npy"),
                                "unsupported model file"),
    "protect: garbage ONNX": ("garbage onnx", ("protect", "{w}/bad.onnx", "--data", "{w}/calib.npy"),
                              "not a readable onnx model"),
    "protect: malformed xml": ("malformed xml", PROTECT, "malformed model XML"),
    "protect: xml is not an IR": ("not an IR", PROTECT, "is not an OpenVINO IR"),
    "protect: missing bin": ("missing bin", PROTECT, "weights file not found"),
    "protect: truncated bin": ("truncated bin", PROTECT, "truncated"),
    "protect: oversized bin": ("oversized bin", PROTECT, "does not belong to this model"),
    "protect: missing data": (None, ("protect", "{w}/m.xml", "--data", "{w}/nope", "-o", "{w}/out"), "data not found"),
    "protect: missing data beside a result": ("existing result", ("protect", "{w}/m.xml", "--data", "{w}/nope",
                                                                  "-o", "{w}/out"), "data not found"),
    "protect: existing result": ("existing result", PROTECT, "already exists"),
    "protect: empty image folder": ("empty folder", ("protect", "{w}/m.xml", "--data", "{w}/empty"), "no images"),
    "protect: npy of strings": ("strings", ("protect", "{w}/m.xml", "--data", "{w}/s.npy"), "must be numbers"),
    "protect: wrong sample shape": ("wrong shape", ("protect", "{w}/m.xml", "--data", "{w}/s.npy"),
                                    "has shape (3, 48, 192): axis 0 counts samples"),
    "protect: one +Inf pixel": ("inf pixel", ("protect", "{w}/m.xml", "--data", "{w}/s.npy", "-o", "{w}/out"),
                                "sample 0 (counting from 0, in the order read): 1 non-finite value"),
    "protect: all-NaN data": ("all nan", ("protect", "{w}/m.xml", "--data", "{w}/s.npy", "-o", "{w}/out"),
                              "192 non-finite value"),
    "protect: float data for an int64 input": ("float ids", ("protect", "{w}/i.xml", "--data", "{w}/s.npy", "-o",
                                                             "{w}/out"), "fractional values"),
    "protect: garbage .npy": ("garbage npy", ("protect", "{w}/m.xml", "--data", "{w}/s.npy"), "cannot read"),
    "protect: unsupported data file": ("text data", ("protect", "{w}/m.xml", "--data", "{w}/s.txt"),
                                       "unsupported data file"),
    "protect: unknown config key": ("unknown key", ("protect", "{w}/m.xml", "--config", "{w}/c.json"),
                                    "unknown key engine.'colour'"),
    "protect: malformed config": ("malformed config", ("protect", "{w}/m.xml", "--config", "{w}/c.json"),
                                  "c.json"),
    "protect: subset size not a number": (None, PROTECT + ("--num-samples", "abc"),
                                          "Invalid value for '--num-samples'"),
    "protect: subset size 0": (None, PROTECT + ("--num-samples", "0"), "must be > 0"),
    "protect: unknown option": (None, PROTECT + ("--no-such-option",), "No such option: --no-such-option"),
    "protect: unknown algorithm": (None, PROTECT + ("--algorithm", "RangeSuper"), "unknown algorithm 'RangeSuper'"),
    "protect: output below a file": ("a file", ("protect", "{w}/m.xml", "--data", "{w}/calib.npy", "-o",
                                                "{w}/a_file/out"), "is not a directory"),
    "protect: output name too long": (None, ("protect", "{w}/m.xml", "--data", "{w}/calib.npy", "-o",
                                             "{w}/" + LONG), "too long"),
    "protect: negative --shape": (None, ("protect", "{w}/m.xml", "--data", "{w}/images", "--shape", "[-1,3,8,8]"),
                                  "positive static dimensions"),
    "protect: --mean of the wrong length": (None, ("protect", "{w}/m.xml", "--data", "{w}/images", "--mean", "1,2"),
                                            "image mean has 2 values"),
    "protect: --scale 0": (None, ("protect", "{w}/m.xml", "--data", "{w}/images", "--scale", "0"), "non-zero"),
    "protect: unknown colour order": (None, ("protect", "{w}/m.xml", "--data", "{w}/images", "--color-order", "XYZ"),
                                      "unknown colour order"),
    "protect: image options with array data": (None, PROTECT + ("--mean", "1"), "describe image folders"),
    "protect: a parameter given twice": (None, PROTECT + ("--batch-size", "4", "-p", "stat_batch_size=8"),
                                         "stat_batch_size is given twice"),
    "evaluate: one-hot labels": ("one-hot labels", EVALUATE + ("{w}/l.npz",), "one-hot"),
    "evaluate: fractional labels": ("fractional labels", EVALUATE + ("{w}/l.npz",), "fractional values"),
    "evaluate: labels outside the classes": ("labels out of range", EVALUATE + ("{w}/l.npz",),
                                             "outside the model's 5 classes"),
    "evaluate: label count": ("label count", EVALUATE + ("{w}/l.npz",), "3 labels for 4 samples"),
    "evaluate: --num-samples 0": (None, EVALUATE + ("{w}/test.npz", "--num-samples", "0"),
                                  "Invalid value for '--num-samples'"),
    "evaluate: no model": (None, ("evaluate", "--data", "{w}/test.npz"), "Missing argument"),
    "benchmark: --time nan": (None, BENCH + ("--time", "nan"), "must be a finite number > 0"),
    "benchmark: negative --shape": (None, BENCH + ("--shape", "[-1,3,8,8]"), "positive static dimensions"),
    "benchmark: --json is a folder": ("json is a folder", BENCH + ("--json", "{w}/result_dir"), "is a directory"),
    "check: unknown --sdc": (None, CHECK + ("--sdc", "bogus"), "unknown SDC criterion"),
    "check: --max-overhead nan": (None, CHECK + ("--max-overhead", "nan"), "must be a finite number"),
    "check: --json is a folder": ("json is a folder", CHECK + ("--json", "{w}/result_dir"), "is a directory"),
    "inject: zero trials": (None, INJECT[:5] + ("0",), "trials must be a positive integer"),
    "inject: zero lanes": (None, INJECT + ("--lanes", "0", "--report", "{w}/lanes0"), "lanes must be at least 1"),
    "inject: unknown regions value": (None, INJECT + ("--sdc", "regions:x"), "regions[:pixels]"),
    "inject: binary replay file": ("binary replay", INJECT + ("--replay", "{w}/campaign/faults.jsonl"),
                                   "binary data"),
    "inject: replayed bit 40": ("bit 40", INJECT + ("--replay", "{w}/campaign/faults.jsonl"),
                                "mask 0x10000000000 is not a non-empty mask of bits 0..31"),
    "inject: replayed element 1e9": ("element 1e9", INJECT + ("--replay", "{w}/campaign/faults.jsonl"),
                                     "element 1000000000 is outside"),
    "inject: garbage checkpoint": ("garbage checkpoint", INJECT + ("--report", "{w}/campaign", "--resume"),
                                   "damaged"),
    "inject: --json is a folder": ("json is a folder", INJECT + ("--json", "{w}/result_dir"), "is a directory"),
    "inject: report below a file": ("a file", INJECT + ("--report", "{w}/a_file/report"), "is not a directory"),
    "inject: missing model with a report": (None, ("inject", "{w}/nope.xml", "--data", "{w}/test.npz", "--report",
                                                   "{w}/new_report"), "model file not found"),
    "unknown command": (None, ("no-such-command",), "No such command 'no-such-command'"),
}


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every file and folder under ``root``: (is a folder, size, mtime)."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_leaves_everything_as_it_was(pristine, tmp_path, capsys, case):
    setup, args, expected = CASES[case]
    work = tmp_path / "w"
    shutil.copytree(pristine, work)
    if setup:
        SETUP[setup](work)
    before = snapshot(work)
    code, out, err = cli(capsys, *[a.format(w=work) for a in args])
    assert code != 0, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "internal error" not in lines[0] and "Traceback" not in err + out
    assert snapshot(work) == before


def test_the_matrix_covers_every_command():
    commands = {args[0] for _, args, _ in CASES.values()}
    assert {"protect", "evaluate", "benchmark", "check", "inject"} <= commands and len(CASES) >= 40
