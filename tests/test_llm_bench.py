"""``ovrange benchmark`` on the bundled language model: the original export and its protected folder timed through
openvino-genai's LLMPipeline (time to first token, time per output token, paired rounds), with real generation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ovrange.bench.llm import KERNELS, benchmark_llm
from ovrange.errors import ConfigError, ModelError
from tests.console import run as ovrange
from tests.test_llm_fixture import llm  # noqa: F401 - the session fixture that builds build/llm

PROMPTS = ["def read_config(path):", "class Parser:", "import os"]



@pytest.fixture(scope="module")
def protected(llm, tmp_path_factory):  # noqa: F811
    """The fp32 export protected with the defaults from a few calibration prompts: (original folder, result folder)."""
    out = tmp_path_factory.mktemp("bench")
    code, _, err = ovrange("protect", llm["fp32"] / "openvino_model.xml", "--data", llm["calib_prompts"],
                           "--num-samples", 4, "-o", out, "--quiet")
    assert code == 0, err
    return llm["fp32"], out / "openvino_model_RangeSupervision"


def test_benchmark_prints_ttft_and_tpot_overheads_of_the_protected_folder(protected, tmp_path):
    original, folder = protected
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    code, out, err = ovrange("benchmark", original, folder / "openvino_model.xml", "--data", tmp_path / "p.txt",
                             "--time", 1, "--new-tokens", 4, "--json", tmp_path / "b.json")
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("time to first token overhead: ") and "95% CI" in line for line in lines)
    assert any(line.startswith("time per output token overhead: ") and "95% CI" in line for line in lines)
    # the 4 Swish guards keep the plugin's fused attention, RMSNorm and rotary kernels
    assert lines[-3].startswith("fused kernels in the CPU runtime model: original 4 ScaledDotProductAttention, "
                                "9 RMS, 8 RoPE") and lines[-3].endswith("protected the same")
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["models"] == {"original": str(original), "protected": str(folder / "openvino_model.xml")}
    assert report["new_tokens"] == 4 and report["rounds"] >= 3 and report["prompts"] == min(3, report["rounds"])
    for key in ("ttft_ratio", "tpot_ratio"):
        ratio = report[key]
        assert 0 < ratio["low"] <= ratio["median"] <= ratio["high"] and ratio["n"] == report["rounds"]
    assert report["original"]["ttft_ms"] > 0 and report["protected"]["tpot_ms"] > 0
    assert report["control_ttft_ratio"] is None


def test_the_api_times_a_control_pipeline_of_the_original(protected):
    original, folder = protected
    result = benchmark_llm(original, folder, PROMPTS, new_tokens=3, seconds=0.2, control=True, warmup=1)
    assert result.rounds >= 3 and result.original.generations == result.protected.generations == result.rounds
    for ratio in (result.ttft_ratio, result.tpot_ratio, result.control_ttft_ratio, result.control_tpot_ratio):
        assert ratio is not None and ratio.rounds == result.rounds and ratio.low <= ratio.median <= ratio.high
    assert set(result.kernels["original"]) == set(KERNELS)
    assert result.kernels["original"] == result.kernels["protected"]
    with pytest.raises(ConfigError, match="at least 2 new tokens"):
        benchmark_llm(original, folder, PROMPTS, new_tokens=1)


def test_language_model_benchmark_errors_are_one_line(protected, tmp_path):
    original, folder = protected
    shutil.copy(original / "openvino_model.xml", tmp_path / "model.xml")
    shutil.copy(original / "openvino_model.bin", tmp_path / "model.bin")
    (tmp_path / "p.txt").write_text("import os\n")
    cases = {  # arguments -> (exit code, error line)
        (original, folder): (2, "error: a language model is timed on prompts: give --data prompts.txt"),
        (original, folder, "--data", "p.txt", "--shape", "[1,4]"): (2, "error: --shape does not apply to a "
                                                                      "language model"),
        ("model.xml", folder, "--data", "p.txt"): (3, "error: model.xml: LLMPipeline loads a language model from a "
                                                     "folder as openvino_model.xml"),
        (tmp_path, folder, "--data", "p.txt"): (3, f"error: {tmp_path} holds no openvino_model.xml"),
    }
    for args, (code, start) in cases.items():
        returned, _, err = ovrange("benchmark", *args, "--time", 1, cwd=tmp_path)
        assert returned == code, (args, err)
        assert err.strip().startswith(start) and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ModelError, match="holds no openvino_model.xml"):
        benchmark_llm(tmp_path, folder, PROMPTS)
