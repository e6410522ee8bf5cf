"""Fault campaigns on the bundled language model's stateful exports, with real inference: a trial is a prompt's
generation (prefill + greedy decode steps), judged by generation:N. The faults strike a step's activations, stored
weights (INT8 as stored) or the KV cache after a step; each campaign is checked against an independent replay that
never reuses a KV cache (every step a fresh prefill of the prompt and the tokens so far)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ovrange import text
from ovrange.compare import SDC, Judge, SdcCriterion
from ovrange.errors import ModelError
from ovrange.faults.campaign import inject
from ovrange.faults.faultlist import FaultList
from ovrange.faults.formats import apply_mask, parse_format
from ovrange.faults.metrics import wilson
from ovrange.faults.report import FAULTS_FILE
from ovrange.faults.generator import KV, Generator
from ovrange.modelio import read_model
from tests.test_llm_fixture import llm  # noqa: F401 - the session fixture that builds build/llm

TOKENS = 4
PROMPTS = 2


def ovrange(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def prompts(llm, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(llm["prompts"].read_text().splitlines()[:PROMPTS]) + "\n")
    return path


def campaign(xml, prompts, target, trials, tmp_path=None, **settings):
    return inject(xml, prompts, target=target, trials=trials, seed=3, sdc=f"generation:{TOKENS}", lanes=1,
                  shard_size=4, checkpoint_dir=tmp_path, **settings)


def unrolled_outcomes(xml, prompts, plan: FaultList, tokens: int = TOKENS) -> np.ndarray:
    """Each trial of ``plan`` replayed without a KV cache: every step is a fresh prefill of the prompt and the tokens
    generated so far, with the fault where the stateful run had it (an activation fault of decode step k strikes
    position P + k - 1 of every later prefill: causal attention makes the earlier positions equal)."""
    model = read_model(xml)
    samples = text.load(prompts, model, xml)
    index = {site.name: i for i, site in enumerate(plan.sites)}
    fmt = parse_format(plan.number_format)
    generator = Generator(model, plan.target, plan.sites)
    judge = Judge(SdcCriterion.parse(f"generation:{tokens}"))
    codes = []
    for f in plan.faults:
        prompt = samples[f.input]
        golden = generator.run(prompt, tokens)[0]
        value = None
        if plan.target == "activations":
            _, read = generator.run(prompt, tokens, reads=(np.array([f.step]), np.array([index[f.site]]),
                                                           np.array([f.element])))
            value = float(apply_mask(read, np.array([f.mask]), fmt, f.op)[0])
        generated, rows = list(golden[:f.step].argmax(axis=1)) if f.step > 0 else [], list(golden[:max(f.step, 0)])
        for step in range(max(f.step, 0), tokens):
            ids = np.concatenate([prompt, np.array(generated, np.int64)])
            if plan.target == "activations":
                inner = int(np.prod(plan.sites[index[f.site]].shape[1:]))
                at = f.element if f.step == 0 else (prompt.size + f.step - 1) * inner + f.element
                fault = (0, index[f.site], at, value)
            else:
                fault = (-1, index[f.site], f.element, f.mask, f.op, fmt)
            logits = generator.run(ids, 1, fault)[0][0]
            rows.append(logits)
            generated.append(int(logits.argmax()))
        codes.append(judge.classify(golden[None], np.stack(rows)[None])[0][0])
    return np.array(codes)


def test_kv_cache_faults_are_deterministic_and_resume(llm, prompts, tmp_path):  # noqa: F811
    xml = llm["fp32"] / "openvino_model.xml"
    first = campaign(xml, prompts, KV, 8, tmp_path / "a")
    plan = FaultList.load(tmp_path / "a" / FAULTS_FILE)
    assert plan.number_format == "fp16"  # the export's KV_CACHE_PRECISION: the cache the plugin really keeps
    assert {f.step for f in plan.faults} <= set(range(TOKENS - 1)) and len({f.step for f in plan.faults}) > 1
    assert {f.site for f in plan.faults} <= {f"past_key_values.{i}.{kv}present.{i}.{kv}" for i in range(4)
                                            for kv in ("key", "value")}
    assert max(f.bit for f in plan.faults) <= 15
    again = campaign(xml, prompts, KV, 8)
    assert np.array_equal(first.models[0].outcome, again.models[0].outcome)
    # An interrupted campaign: keep the header and the first shard of the checkpoint, resume, same outcomes.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    lines = (tmp_path / "b" / "checkpoint.jsonl").read_text().splitlines()
    assert len(lines) > 2
    (tmp_path / "b" / "checkpoint.jsonl").write_text("\n".join(lines[:2]) + "\n")
    resumed = campaign(xml, prompts, KV, 8, tmp_path / "b", resume=True)
    assert np.array_equal(resumed.models[0].outcome, first.models[0].outcome)
    with pytest.raises(ModelError, match="KV cache as u8"):  # an INT8 cache with per-token scales
        campaign(llm["int8"] / "openvino_model.xml", prompts, KV, 4)


@pytest.mark.parametrize("export,target,trials", [("fp32", "activations", 8), ("int8", "weights", 8)])
def test_a_campaign_equals_its_replay_without_kv_cache(llm, prompts, tmp_path, export, target, trials):  # noqa: F811
    xml = llm[export] / "openvino_model.xml"
    sites = ["*mlp*"] if target == "activations" else None  # [1, T, features] tensors: positions on axis 1
    result = campaign(xml, prompts, target, trials, tmp_path, sites=sites)
    plan = FaultList.load(tmp_path / FAULTS_FILE)
    if target == "weights":
        assert plan.number_format == "uint8" and all(f.mask < 256 and f.step == -1 for f in plan.faults)
    else:
        assert {f.step for f in plan.faults} - {0} and 0 in {f.step for f in plan.faults}
    stateful = result.models[0].outcome
    replayed = unrolled_outcomes(xml, prompts, plan)
    assert (stateful != replayed).sum() <= 1, (stateful, replayed)  # prefill and decode kernels round differently
    k1, k2 = int((stateful == SDC).sum()), int((replayed == SDC).sum())
    low, high = wilson(k1, trials)
    assert low <= k2 / trials <= high


def test_cli_inject_runs_the_export_and_refuses_other_criteria(llm, prompts, tmp_path):  # noqa: F811
    fp32 = llm["fp32"] / "openvino_model.xml"
    done = ovrange("inject", fp32, "--compare", fp32, "--data", prompts, "--target", "weights", "--trials", 4,
                   "--sdc", "generation:3", "--json", tmp_path / "r.json", "-q")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["spec"]["sdc"] == "generation:3" and result["summary"]["trials"] == 4
    rates = [{k: model[k] for k in ("masked", "sdc", "due")} for model in result["summary"]["models"].values()]
    assert rates[0] == rates[1]  # the same model under the same faults
    done = ovrange("inject", fp32, "--data", prompts, "--trials", 4, "--sdc", "top1", "--report", tmp_path / "no")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: a stateful language model's campaign judges its greedy generations: use --sdc generation:N, not top1"]
    assert not (tmp_path / "no").exists()


def test_cli_check_gates_a_stateful_export_on_its_generations(llm, prompts, tmp_path):  # noqa: F811
    fp32 = llm["fp32"] / "openvino_model.xml"
    done = ovrange("check", fp32, fp32, "--data", prompts, "--sdc", "generation:3", "--max-accuracy-drop", 0,
                   "--json", tmp_path / "check.json", "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] and report["accuracy"]["protected"] == 1.0 and report["accuracy"]["samples"] == PROMPTS
    assert report["accuracy"]["reference"] == "original generations (generation:3)"
