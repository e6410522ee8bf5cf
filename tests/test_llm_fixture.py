"""The bundled language model (``scripts/build_llm.py``): an optimum-intel export as users have them -- stateful
(KV cache in ReadValue/Assign, ``beam_idx``), with its OpenVINO tokenizer -- that openvino-genai's LLMPipeline runs,
and that the one ovrange use without stateful support (check's latency gate) refuses in one line rather than measuring it
wrongly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from ovrange.runtime import is_stateful

BUILD = Path(__file__).resolve().parent.parent / "build" / "llm"


@pytest.fixture(scope="session")
def llm() -> dict[str, Path]:
    from scripts.build_llm import build_llm

    return build_llm(BUILD, log=lambda line: None)


def test_the_export_is_a_stateful_language_model(llm):
    model = ov.Core().read_model(llm["fp32"] / "openvino_model.xml")
    names = {name for port in model.inputs for name in port.get_names()}
    assert {"input_ids", "attention_mask", "position_ids", "beam_idx"} <= names
    assert is_stateful(model)
    assert len(model.get_sinks()) == 2 * 4  # a key and a value variable per layer
    assert [p.get_partial_shape()[-1].get_length() for p in model.outputs] == [4096]  # logits over the vocabulary
    assert (llm["fp32"] / "openvino_tokenizer.xml").is_file() and (llm["fp32"] / "openvino_detokenizer.xml").is_file()


def test_the_int8_export_stores_its_weights_in_int8(llm):
    def weight_types(folder: Path) -> set[str]:
        model = ov.Core().read_model(folder / "openvino_model.xml")
        return {op.get_output_element_type(0).get_type_name() for op in model.get_ops()
                if op.get_type_name() == "Constant" and op.get_output_size() and int(np.prod(op.get_shape())) > 4096}

    assert "f32" in weight_types(llm["fp32"]) and "u8" not in weight_types(llm["fp32"])
    assert weight_types(llm["int8"]) & {"u8", "i8"}
    assert (llm["int8"] / "openvino_model.bin").stat().st_size < 0.4 * (llm["fp32"] / "openvino_model.bin").stat().st_size


def test_llm_pipeline_generates_the_recorded_greedy_text(llm):
    import openvino_genai

    manifest = json.loads(llm["manifest"].read_text())
    pipe = openvino_genai.LLMPipeline(str(llm["fp32"]), "CPU", INFERENCE_PRECISION_HINT="f32")
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.do_sample = 16, False
    first = str(pipe.generate(manifest["sample"]["prompt"], config))
    assert first == manifest["sample"]["generated"]
    assert str(pipe.generate(manifest["sample"]["prompt"], config)) == first  # no state leaks between calls


def test_held_out_prompts_are_not_calibration_prompts(llm):
    held = llm["prompts"].read_text().splitlines()
    calib = llm["calib_prompts"].read_text().splitlines()
    assert len(held) >= 100 and len(calib) >= 100
    assert not set(held) & set(calib)


def test_the_latency_gate_of_check_times_llm_pipeline_generations(llm, tmp_path):
    xml = llm["fp32"] / "openvino_model.xml"
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(llm["prompts"].read_text().splitlines()[:2]) + "\n")
    args = [xml, xml, "--data", prompts, "--max-overhead", "1000", "--time", "1", "--sdc", "generation:4",
            "--json", tmp_path / "out.json"]
    result = subprocess.run([sys.executable, "-m", "ovrange", "check", *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" overhead ")[0] for line in lines if " overhead " in line] == [
        "PASS  time to first token", "PASS  time per output token"]
    report = json.loads((tmp_path / "out.json").read_text())
    assert [g["name"] for g in report["gates"]] == ["ttft_overhead", "tpot_overhead"]
    assert report["benchmark"]["kind"] == "language model (LLMPipeline)" and report["benchmark"]["rounds"] >= 3
    # token ids are no prompts for LLMPipeline: one line, no report
    np.save(tmp_path / "ids.npy", np.ones((1, 4), np.int64))
    args[3], args[-1] = tmp_path / "ids.npy", tmp_path / "none.json"
    result = subprocess.run([sys.executable, "-m", "ovrange", "check", *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: the latency gate of a language model times LLMPipeline generations: it needs both LLM folders and "
        "prompt texts (--data prompts.txt or .jsonl)"]
    assert not (tmp_path / "none.json").exists()
