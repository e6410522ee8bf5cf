"""protect and evaluate on the bundled language model's stateful exports (fp32 and INT8), with real inference: prompts
in, a prefill and greedy decode steps per sample, a protected LLM folder that openvino-genai's LLMPipeline loads and
that generates the original's greedy text."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from ovrange import generate, text
from ovrange.errors import DataError
from ovrange.runtime import Runner, is_stateful
from tests.test_llm_fixture import llm  # noqa: F401 - the session fixture that builds build/llm

HELD_OUT = 20
NEW_TOKENS = 32
CALIBRATION = 30  # prompts of calib_prompts.txt


def ovrange(*args: object, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def protected(request, llm, tmp_path_factory):  # noqa: F811
    """``ovrange protect`` of an export with its defaults, from the first calibration prompts: (original, result)."""
    original = llm[request.param]
    out = tmp_path_factory.mktemp(request.param)
    result = ovrange("protect", original / "openvino_model.xml", "--data", llm["calib_prompts"], "--num-samples",
                     CALIBRATION, "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("RangeSupervision: ")
    return original, out / "openvino_model_RangeSupervision"


def test_the_protected_export_is_stateful_with_the_same_interface(protected):
    original, folder = protected
    before = ov.Core().read_model(original / "openvino_model.xml")
    after = ov.Core().read_model(folder / "openvino_model.xml")
    assert is_stateful(after) and len(after.get_sinks()) == len(before.get_sinks())
    for mine, theirs in ((after.inputs, before.inputs), (after.outputs, before.outputs)):
        assert [(p.get_names(), p.get_element_type(), p.get_partial_shape()) for p in mine] == \
               [(p.get_names(), p.get_element_type(), p.get_partial_shape()) for p in theirs]
    options = before.get_rt_info()["runtime_options"]
    kept = after.get_rt_info()["runtime_options"]
    assert {k: str(options[k]) for k in options.keys()} == {k: str(kept[k]) for k in kept.keys()}
    size = (original / "openvino_model.bin").stat().st_size  # INT8 weights stay INT8, f32 stay f32
    assert size <= (folder / "openvino_model.bin").stat().st_size < 1.01 * size
    bounds = json.loads((folder / "bounds.json").read_text())
    assert bounds["samples"] == CALIBRATION and len(bounds["nodes"]) == 4  # one Swish per layer
    for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json", "generation_config.json",
                 "tokenizer.json"):
        assert (folder / name).read_bytes() == (original / name).read_bytes()


def test_llm_pipeline_generates_the_originals_greedy_text(protected, llm):  # noqa: F811
    import openvino_genai

    original, folder = protected
    prompts = llm["prompts"].read_text().splitlines()[:HELD_OUT]
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.do_sample = NEW_TOKENS, False
    texts = []
    for path in (original, folder):
        pipe = openvino_genai.LLMPipeline(str(path), "CPU", INFERENCE_PRECISION_HINT="f32")
        texts.append([str(pipe.generate(prompt, config)) for prompt in prompts])
    assert texts[0] == texts[1]
    assert len({t for t in texts[0]}) > 1  # the prompts lead to different texts


def test_evaluate_compares_greedy_generations(protected, llm, tmp_path):  # noqa: F811
    original, folder = protected
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in llm["prompts"].read_text().splitlines()[:5]))
    result = ovrange("evaluate", original / "openvino_model.xml", original / "openvino_model.xml",
                     folder / "openvino_model.xml", "--data", prompts, "--sdc", "generation:8")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].endswith("the reference (5 prompts, 8 greedy tokens each, f32)")
    assert lines[1].endswith("agrees with openvino_model.xml on 100.00% (5/5 prompts, generation:8)")
    assert "(5/5 prompts, generation:8)" in lines[2]


def test_a_generation_is_the_same_as_one_prefill_of_its_tokens(llm):  # noqa: F811
    # The KV cache is used and reset correctly: the greedy tokens of prefill + decode steps are the arg-max of one
    # prefill of prompt + those tokens, and a second generation on the same runner gives the same tokens.
    xml = llm["fp32"] / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    prompt = text.load(llm["prompts"], model, xml)[0]
    runner = Runner(model, stateful=True)
    tokens = generate.generate(runner, model, prompt, 8)
    assert np.array_equal(generate.generate(runner, model, prompt, 8), tokens)
    arrays, outputs = next(generate.steps(runner, model, np.concatenate([prompt, tokens[:-1]]), 0))
    assert np.array_equal(np.asarray(outputs[0])[0, len(prompt) - 1:].argmax(-1), tokens)


def test_prompts_without_a_tokenizer_are_one_data_error(llm, tmp_path):  # noqa: F811
    for name in ("openvino_model.xml", "openvino_model.bin"):
        shutil.copy(llm["fp32"] / name, tmp_path / name)
    result = ovrange("protect", tmp_path / "openvino_model.xml", "--data", llm["prompts"], "-o", tmp_path / "out")
    assert result.returncode == DataError.exit_code
    assert result.stderr.strip().splitlines() == [
        f"error: prompts need the model's tokenizer: no openvino_tokenizer.xml or tokenizer.json in {tmp_path}"]
    assert not (tmp_path / "out").exists()


def test_jsonl_prompts_need_a_prompt_or_text_field(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "import os"}\n\n{"text": "def f():"}\n')
    assert text.read_prompts(good) == ["import os", "def f():"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1 has no \"prompt\" or \"text\" string field"):
        text.read_prompts(bad)


def test_without_the_openvino_tokenizer_tokenizer_json_gives_the_same_tokens(llm, tmp_path):  # noqa: F811
    xml = llm["fp32"] / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    for name in ("openvino_model.xml", "tokenizer.json"):
        shutil.copy(llm["fp32"] / name, tmp_path / name)
    with_ov = text.load(llm["prompts"], model, xml)
    with_json = text.load(llm["prompts"], model, tmp_path / "openvino_model.xml")
    assert len(with_ov) == len(with_json) >= 100
    assert all(np.array_equal(a, b) for a, b in zip(with_ov, with_json))


def test_statistics_fold_over_the_prefill_and_every_decode_step(llm):  # noqa: F811
    from ovrange.stats import StatRequest, collect
    from ovrange.targets import outputs_by_id

    xml = llm["fp32"] / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    prompts = text.load(llm["calib_prompts"], model, xml)[:3]
    targets = [key for key in outputs_by_id(model) if key.endswith(("/aten::silu/Swish", "/aten::add/Add_1"))]
    stats = collect(model, prompts, [StatRequest(t) for t in targets], subset_size=3)
    assert stats.samples == 3
    # The same values by hand: the model with the watched outputs added, run prompt by prompt, step by step.
    clone = model.clone()
    found = outputs_by_id(clone)
    watched = ov.Model([*clone.get_results(), *(ov.opset13.result(found[t]) for t in targets)], clone.get_sinks(),
                       clone.get_parameters())
    runner = Runner(watched, stateful=True)
    steps = [[np.asarray(o) for o in outputs[1:]] for prompt in prompts
             for _, outputs in generate.steps(runner, watched, prompt, generate.CALIBRATION_STEPS)]
    assert len(steps) == 3 * (generate.CALIBRATION_STEPS + 1)
    prefills = steps[:: generate.CALIBRATION_STEPS + 1]
    wider = 0
    for index, target in enumerate(targets):
        bound = stats[StatRequest(target)]
        every = (min(float(s[index].min()) for s in steps), max(float(s[index].max()) for s in steps))
        assert (float(bound.low), float(bound.high)) == every
        wider += every != (min(float(s[index].min()) for s in prefills), max(float(s[index].max()) for s in prefills))
    assert wider  # the decode steps widened some ranges: they are in the statistics


def test_token_ids_outside_the_vocabulary_are_one_data_error(llm, tmp_path):  # noqa: F811
    np.save(tmp_path / "ids.npy", np.full((2, 5), 5000, np.int64))
    result = ovrange("protect", llm["fp32"] / "openvino_model.xml", "--data", tmp_path / "ids.npy", "-o",
                     tmp_path / "out")
    assert result.returncode == DataError.exit_code
    assert result.stderr.strip().splitlines() == [
        "error: token ids 5000..5000 are outside the model's vocabulary of 4096 tokens (a tokenizer of another model?)"]
    assert not (tmp_path / "out").exists()


def test_held_out_prompts_check_the_greedy_text_and_give_the_bounds_their_margin(llm):  # noqa: F811
    """Held-out validation on a stateful model: 2 of 8 calibration prompts held out, each run as a prefill and 8
    greedy steps; the report judges the 9 generated tokens; the zero form's bounds get their three-range margin
    (the calibration extremes alone changed the greedy text of other prompts)."""
    import ovrange as api

    xml = llm["fp32"] / "openvino_model.xml"
    model = ov.Core().read_model(xml)
    calibration = text.load(llm["calib_prompts"], model, xml)[:8]
    protected = api.protect(model, calibration, algorithm="GlobalClipper")
    info = api.protection_info(protected)
    heldout = info.report["heldout"]
    assert heldout["samples"] == 2 and heldout["margin"] == 3 and not heldout["changes_outputs"]
    assert {a["criterion"] for a in heldout["agreement"]} == {"linf:0.01", "generation:9"}
    assert info.samples == 8 and all(e["method"].startswith("max+margin:3") for e in info.nodes.values()
                                     if e["role"] not in ("weights",))
    prompts = text.load(llm["prompts"], model, xml)[:HELD_OUT]
    clean = generate.generations(model, prompts, 8).argmax(-1)
    assert np.array_equal(generate.generations(protected, prompts, 8).argmax(-1), clean)
    bare = api.protection_info(api.protect(model, calibration, algorithm="GlobalClipper", holdout=0))
    assert "heldout" not in bare.report and {e["method"] for e in bare.nodes.values() if e["role"] != "weights"} == \
        {"max"}
