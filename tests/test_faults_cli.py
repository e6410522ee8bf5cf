"""``ovrange inject``: reports, replay, config files and one-line errors (real OpenVINO, real files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.runtime import compile_model
from tests.console import run
from tests.test_faults_sites import images, tiny_lenet


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """tiny.xml, its protected twin, a model with a different structure, one without sites, and labelled data."""
    root = tmp_path_factory.mktemp("inject")
    x = images(80, seed=3)
    y = compile_model(tiny_lenet(), "CPU").create_infer_request().infer([x.astype(np.float32)])[0].argmax(1)
    np.savez(root / "data.npz", x=x, y=y)
    np.savez(root / "wrong.npz", x=np.zeros((4, 3, 12, 12), np.uint8), y=np.zeros(4, np.int64))
    np.savez(root / "vectors.npz", x=np.ones((4, 4), np.float32))
    for name, model in (("tiny", tiny_lenet()), ("other", tiny_lenet(regression=True)),
                        ("protected", ovrange.protect(tiny_lenet(), x[:40], subset_size=40))):
        ov.save_model(model, str(root / f"{name}.xml"), compress_to_fp16=False)
    v = ops.parameter([-1, 4], ov.Type.f32, name="x")
    flat = ops.reshape(v, ops.constant(np.array([-1, 2, 2], np.int64)), False)
    ov.save_model(ov.Model([ops.result(flat)], [v], "movement"), str(root / "movement.xml"))
    (root / "a_file").write_text("not a folder")
    return root


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process (tests.console.run, which captures the output itself); (exit code,
    stdout, stderr). ``capsys`` is the caller's fixture, emptied so that later reads see only what follows."""
    capsys.readouterr()
    return run(*args)


def test_compare_campaign_writes_json_markdown_plots_and_fault_list(workspace, capsys):
    report = workspace / "report"
    code, out, err = cli(capsys, "inject", workspace / "tiny.xml", "--compare", workspace / "protected.xml",
                         "--data", workspace / "data.npz", "--target", "activations", "--trials", 300, "--seed", 1,
                         "--bits", "30,31", "--num-samples", 12, "--json", workspace / "out.json", "--report", report,
                         "-q")
    assert code == 0, err
    assert sorted(p.name for p in report.iterdir()) == ["checkpoint.jsonl", "faults.jsonl", "result.json",
                                                        "sdc_by_bit.png", "sdc_by_layer.png", "summary.md",
                                                        "vulnerability.json", "vulnerability.svg"]
    summary = json.loads((workspace / "out.json").read_text())["summary"]
    models = list(summary["models"])
    assert models == [str(workspace / "tiny.xml"), str(workspace / "protected.xml")]
    assert summary["models"][models[0]]["sdc"]["n"] == 300 and set(summary["models"][models[0]]["per_bit"]) == {"30", "31"}
    assert summary["comparison"]["paired"]["sdc"]["masked"] > 0
    assert "SDC reduction" in out and "SDC reduction" in (report / "summary.md").read_text()
    assert (report / "sdc_by_bit.png").read_bytes()[:4] == b"\x89PNG"

    code, out, err = cli(capsys, "inject", workspace / "tiny.xml", "--compare", workspace / "protected.xml", "--data",
                         workspace / "data.npz", "--replay", report / "faults.jsonl", "--json",
                         workspace / "replayed.json", "-q")
    assert code == 0, err
    replayed = json.loads((workspace / "replayed.json").read_text())
    original = json.loads((workspace / "out.json").read_text())
    assert [m["outcomes"] for m in replayed["models"]] == [m["outcomes"] for m in original["models"]]


def test_yaml_config_with_command_line_overrides(workspace, capsys):
    (workspace / "campaign.yaml").write_text(
        "model: tiny.xml\ncompare: [protected.xml, tiny.xml]\ndata: data.npz\ntarget: weights\ntrials: 50\n"
        "seed: 4\nbits: exponent\ninputs: 6\njson: from_config.json\n")
    code, _, err = cli(capsys, "inject", "--config", workspace / "campaign.yaml", "--trials", 30, "-q")
    assert code == 0, err
    result = json.loads((workspace / "from_config.json").read_text())
    assert result["spec"]["target"] == "weights" and result["spec"]["trials"] == 30
    assert result["spec"]["bits"] == list(range(23, 31))
    assert len(result["models"]) == 3 and len(result["summary"]["comparisons"]) == 2
    same = result["summary"]["comparisons"][1]["paired"]  # tiny.xml against itself: the diagonal only
    assert all(count == 0 for a, row in same.items() for b, count in row.items() if a != b)


BAD = {  # case -> options replacing or adding to: tiny.xml --data data.npz --trials 20
    "structures differ": {"--compare": "{w}/other.xml", "--sdc": "linf:0.1"},
    "no injectable site": {"model": "{w}/movement.xml", "--data": "{w}/vectors.npz", "--sdc": "linf:0.1"},
    "zero trials": {"--trials": "0"},
    "unknown bit": {"--bits": "40"},
    "data does not fit": {"--data": "{w}/wrong.npz"},
    "unwritable report": {"--report": "{w}/a_file/report"},
    "unknown target": {"--target": "memory"},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_line_error_and_nonzero_exit(workspace, capsys, case):
    args = {"model": "{w}/tiny.xml", "--data": "{w}/data.npz", "--trials": "20", **BAD[case]}
    argv = [args.pop("model").format(w=workspace)]
    argv += [part.format(w=workspace) for option in args.items() for part in option]
    code, _, err = cli(capsys, "inject", *argv, "-q")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def test_console_script_runs_a_weight_campaign(workspace):
    done = subprocess.run([sys.executable, "-m", "ovrange", "inject", str(workspace / "tiny.xml"), "--data",
                           str(workspace / "data.npz"), "--target", "weights", "--trials", "40", "--ber", "1e-3",
                           "--num-samples", "4", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "SDC" in done.stdout and "DUE" in done.stdout
