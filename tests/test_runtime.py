"""``ovrange.runtime.Runner`` on real OpenVINO: timed inference, and stateful models (ReadValue/Assign) refused by
every command in one line, or run with their state reset before each inference when the caller asks for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset6 as op6
import openvino.opset13 as ops
import pytest

from ovrange import bench
from ovrange.errors import ModelError
from ovrange.runtime import Runner, is_stateful, refuse_stateful, shared_core
from ovrange.stats import StatRequest, collect, statistics_model

REFUSAL = "is a stateful model (KV cache); {} does not support it yet"


def accumulator() -> ov.Model:
    """A stateful model: it adds its input to a state (ReadValue/Assign) and returns ReLU(state @ W), so each
    inference without a reset sees the sum of every input so far."""
    x = ops.parameter([-1, 4], np.float32, name="x")
    state = op6.read_value(ops.constant(np.zeros((1, 4), np.float32)), "memory")
    total = ops.add(x, state, name="total")
    weights = ops.constant(np.eye(4, 3, dtype=np.float32))
    logits = ops.relu(ops.matmul(total, weights, False, False, name="fc"), name="act")
    return ov.Model([ops.result(logits)], [op6.assign(total, "memory")], [x], "accumulator")


def stateless() -> ov.Model:
    x = ops.parameter([1, 4], np.float32, name="x")
    return ov.Model([ops.result(ops.relu(x, name="act"))], [x], "stateless")


def test_the_accumulator_really_keeps_state():
    request = shared_core().compile_model(accumulator(), "CPU").create_infer_request()
    ones = np.ones((1, 4), np.float32)
    first, second = (request.infer([ones])[0].copy() for _ in range(2))
    np.testing.assert_array_equal(second, 2 * first)


def test_stateful_models_are_detected():
    assert is_stateful(accumulator())
    assert is_stateful(accumulator().clone())  # a clone keeps the sinks
    assert not is_stateful(stateless())


def test_the_statistics_model_keeps_the_state():
    derived, _ = statistics_model(accumulator(), [StatRequest("act")])
    assert is_stateful(derived)


def test_a_stateful_model_is_refused_in_one_line():
    with pytest.raises(ModelError) as caught:
        Runner(accumulator(), command="evaluate")
    message = str(caught.value)
    assert message == f"model 'accumulator' {REFUSAL.format('evaluate')}"
    assert caught.value.exit_code == 3
    refuse_stateful(stateless(), "evaluate")  # a stateless model passes


def test_with_stateful_the_state_is_reset_before_each_inference():
    runner = Runner(accumulator(), stateful=True)
    ones = np.ones((1, 4), np.float32)
    first, second = (runner.infer([ones])[0].copy() for _ in range(2))
    np.testing.assert_array_equal(first, np.eye(4, 3, dtype=np.float32).sum(axis=0, keepdims=True))
    np.testing.assert_array_equal(second, first)
    batches = [([ones], 1) for _ in range(3)]  # run() pipelines over two requests: each is reset too
    outputs = [out[0].copy() for out, _ in runner.run(batches)]
    for output in outputs:
        np.testing.assert_array_equal(output, first)
    runner.bind_inputs([ones])
    assert len(runner.timed(3)) == 3


def test_statistics_and_benchmark_refuse_a_stateful_model():
    data = np.ones((4, 4), np.float32)
    with pytest.raises(ModelError, match=REFUSAL.format("protect").replace("(", r"\(").replace(")", r"\)")):
        collect(accumulator(), data, [StatRequest("act")], subset_size=4)
    with pytest.raises(ModelError, match="benchmark does not support it yet"):
        bench.benchmark(accumulator(), accumulator(), seconds=0.1, sessions=1)


@pytest.mark.parametrize("requests", [1, 2])
def test_timed_inference_returns_one_latency_per_inference(requests):
    runner = Runner(stateless())
    runner.bind_inputs([np.full((1, 4), 3.0, np.float32)], requests)
    latencies = runner.timed(5)
    assert len(latencies) == 5
    assert all(latency > 0 for latency in latencies)
    if requests == 1:  # the timed inferences ran on the bound inputs
        np.testing.assert_array_equal(runner.requests[0].get_output_tensor(0).data, np.full((1, 4), 3.0))


def _cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_every_command_refuses_a_stateful_model(tmp_path):
    ov.save_model(accumulator(), str(tmp_path / "st.xml"), compress_to_fp16=False)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    commands = {
        "protect": ["protect", "st.xml", "--data", "x.npy", "-o", "out", "-q"],
        "protect -a BoundedWeights": ["protect", "st.xml", "--data", "x.npy", "-o", "out", "-q", "-a",
                                      "BoundedWeights"],
        "evaluate": ["evaluate", "st.xml", "--data", "x.npy", "-q"],
        "benchmark": ["benchmark", "st.xml", "st.xml", "--time", "0.2", "--sessions", "1"],
        "check": ["check", "st.xml", "st.xml", "--data", "x.npy", "-q"],
        "inject": ["inject", "st.xml", "--data", "x.npy", "--trials", "8", "-q"],
        "inject weights": ["inject", "st.xml", "--data", "x.npy", "--trials", "8", "-q", "--target", "weights"],
    }
    for name, args in commands.items():
        done = _cli(*args, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 3, (name, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: model 'accumulator' is a stateful model (KV cache)"), \
            (name, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.bin", "st.xml", "x.npy"]  # nothing written
