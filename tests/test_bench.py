"""``ovrange.bench`` and ``ovrange benchmark`` / ``devices`` on real OpenVINO. Timings are never asserted: only
that the measurement is complete and consistent (the machines running these tests are shared and noisy)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from ovrange import bench
from ovrange.errors import ConfigError, DataError, DeviceError
from ovrange.graph import record_inserted
from ovrange.passes.guards import CLAMP_SUFFIX
from ovrange.runtime import available_devices, compile_model


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def small_cnn(guards: bool, per_channel: bool = False, high: float = 4.0) -> ov.Model:
    """Conv -> ReLU [guard: fused] -> MaxPool [guard: standalone on CPU] -> Conv -> ReLU [guard] -> MatMul."""
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, 3, 12, 12], np.float32, name="image")

    def conv(h, cin, cout, name):
        w = ops.constant((rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32))
        return ops.convolution(h, w, [1, 1], [1, 1], [1, 1], [1, 1], name=name)

    def guard(h, name):
        if not guards:
            return h
        if per_channel:  # how Ranger writes a per-channel bound
            low = ops.constant(np.zeros((1, 4, 1, 1), np.float32))
            top = ops.constant(np.full((1, 4, 1, 1), high, np.float32))
            return ops.minimum(ops.maximum(h, low), top, name=name + CLAMP_SUFFIX)
        return ops.clamp(h, 0.0, high, name=name + CLAMP_SUFFIX)

    h = guard(ops.relu(conv(x, 3, 4, "conv1"), name="relu1"), "relu1")
    h = guard(ops.max_pool(h, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], name="pool").output(0), "pool")
    h = guard(ops.relu(conv(h, 4, 4, "conv2"), name="relu2"), "relu2")
    flat = ops.reshape(h, ops.constant(np.array([0, -1], np.int64)), True, name="flat")
    logits = ops.matmul(flat, ops.constant(rng.standard_normal((4 * 6 * 6, 3)).astype(np.float32)), False, False,
                        name="logits")
    logits.output(0).get_tensor().set_names({"logits"})
    model = ov.Model([ops.result(logits)], [x], "small_cnn")
    if guards:  # what a protection pass records about the nodes it inserted
        record_inserted(model, {op.get_friendly_name(): "guard" if op.get_friendly_name().endswith(CLAMP_SUFFIX)
                                else "check" for op in model.get_ops()
                                if op.get_type_name() in ("Clamp", "Minimum", "Maximum")})
    return model


@pytest.fixture(scope="module")
def ir_pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    paths = folder / "original.xml", folder / "protected.xml"
    for path, guarded in zip(paths, (False, True)):
        ov.save_model(small_cnn(guarded), str(path), compress_to_fp16=False)
    return paths


# --- devices ---------------------------------------------------------------------------------------------------


def test_devices_lists_what_openvino_sees():
    found = bench.devices()
    assert [d.name for d in found] == available_devices()
    cpu = next(d for d in found if d.name == "CPU")
    assert cpu.full_name and "FP32" in cpu.capabilities


def test_devices_command():
    result = run_cli("devices")
    assert result.returncode == 0, result.stderr
    assert "CPU" in result.stdout and "sees" in result.stdout


def test_absent_device_is_a_one_line_error(ir_pair):
    absent = next((d for d in ("NPU", "GPU", "FPGA") if d not in {x.split(".")[0] for x in available_devices()}))
    with pytest.raises(DeviceError, match=f"'{absent}' is not available; OpenVINO sees: "):
        bench.benchmark(small_cnn(False), small_cnn(True), device=absent, seconds=0.1)
    result = run_cli("benchmark", *ir_pair, "--device", absent, "-t", "0.5")
    assert result.returncode == DeviceError.exit_code
    assert result.stderr.strip().splitlines() == [f"error: device '{absent}' is not available; OpenVINO sees: "
                                                  f"{', '.join(available_devices())}"]
    assert "Traceback" not in result.stderr + result.stdout


# --- fused / standalone guards -----------------------------------------------------------------------------------


def test_fusion_report_counts_fused_and_standalone_clamps_by_name():
    model = small_cnn(True)
    report = bench.fusion_report(compile_model(model, "CPU", precision="f32"), model, "CPU")
    status = {c.name: c for c in report.clamps}
    assert list(status) == [f"{n}{CLAMP_SUFFIX}" for n in ("relu1", "pool", "relu2")]  # graph order
    assert status["relu1" + CLAMP_SUFFIX].status == "fused"
    assert status["relu1" + CLAMP_SUFFIX].layer_type == "Convolution"
    assert {"conv1", "relu1"} <= set(status["relu1" + CLAMP_SUFFIX].fused_with)
    assert status["pool" + CLAMP_SUFFIX].status == "standalone"  # the CPU plugin fuses nothing into Pooling
    assert status["pool" + CLAMP_SUFFIX].fused_with == ()
    assert report.counts == {"fused": 2, "standalone": 1, "not found": 0, "unknown": 0}
    assert json.loads(json.dumps(report.to_json()))["counts"]["standalone"] == 1


def test_per_channel_guards_are_grouped_and_classified():
    model = small_cnn(True, per_channel=True)
    groups = bench.guards(model)
    assert set(groups) == {f"{n}{CLAMP_SUFFIX}" for n in ("relu1", "pool", "relu2")}
    assert all(len(members) == 2 for members in groups.values())  # Minimum + its Maximum, not the ReLU
    assert not any("relu1" == m for members in groups.values() for m in members)
    report = bench.fusion_report(compile_model(model, "CPU", precision="f32"), model)
    assert report.counts["fused"] + report.counts["standalone"] == 3
    assert "pool" + CLAMP_SUFFIX in report.names("standalone")


def test_unprotected_model_has_no_guards():
    model = small_cnn(False)
    assert bench.fusion_report(compile_model(model, "CPU"), model).clamps == ()


# --- shapes --------------------------------------------------------------------------------------------------------


def test_shapes():
    model = small_cnn(False)
    assert bench.static_shapes(model) == {"image": [1, 3, 12, 12]}  # dynamic batch -> 1
    assert bench.parse_shape("[2,3,12,12]", model) == {"image": [2, 3, 12, 12]}
    assert bench.parse_shape("image[4, 3, 12, 12]", model) == {"image": [4, 3, 12, 12]}
    with pytest.raises(DataError, match="no input 'x'"):
        bench.parse_shape("x[1,3,12,12]", model)
    with pytest.raises(DataError, match="cannot parse shape"):
        bench.parse_shape("1,3,12,12", model)
    dynamic = ov.Model([ops.result(ops.relu(p := ops.parameter([-1, 3, -1], np.float32, name="seq")))], [p])
    with pytest.raises(DataError, match=r"dynamic shape .*--shape seq\[\.\.\.\]"):
        bench.static_shapes(dynamic)


# --- timing --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_benchmark_result_is_complete_and_consistent(hint):
    result = bench.benchmark(small_cnn(False), small_cnn(True), hint=hint, seconds=0.6, sessions=2,
                             block_seconds=0.01)
    assert result.sessions == 2 and len(result.session_ratios) == 2
    assert result.rounds >= 6  # at least 3 per session
    for timing in (result.original, result.protected):
        lat = timing.latency
        assert lat.count == result.rounds * result.inferences_per_block
        assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
        assert timing.throughput_fps > 0 and timing.inference_precision == "f32"
    for ratio in (result.latency_ratio, result.throughput_ratio):
        assert 0 < ratio.low <= ratio.median <= ratio.high and ratio.rounds == result.rounds
    assert result.ratio_over == "rounds"  # two sessions: too few for an interval over sessions
    assert result.fusion.counts["standalone"] == 1
    assert math.isclose(result.latency_overhead_pct, (result.latency_ratio.median - 1) * 100)
    assert json.loads(json.dumps(result.to_json()))["hint"] == hint


def test_with_three_sessions_the_overhead_is_taken_over_sessions():
    result = bench.benchmark(small_cnn(False), small_cnn(True), seconds=0.3, sessions=3, block_seconds=0.005)
    assert result.ratio_over == "sessions" and result.latency_ratio.rounds == 3
    assert result.latency_ratio.median == pytest.approx(float(np.median(result.session_ratios)))
    assert min(result.session_ratios) <= result.latency_ratio.low <= result.latency_ratio.high <= max(
        result.session_ratios)


def test_benchmark_rejects_bad_settings():
    with pytest.raises(ConfigError, match="unknown hint"):
        bench.benchmark(small_cnn(False), small_cnn(True), hint="fast")
    with pytest.raises(DeviceError, match="unknown precision"):
        bench.benchmark(small_cnn(False), small_cnn(True), precision="f8", seconds=0.1)


# --- benchmark_app -----------------------------------------------------------------------------------------------

REPORT = {
    "cmd_options": {"-m": "m.xml", "-d": "CPU", "-hint": "latency"},
    "configuration_setup": {"target device": "CPU", "API": "sync"},
    "execution_results": {"total execution time (ms)": "1001.20", "total number of iterations": "9814",
                          "latency (ms)": "0.06", "avg latency": "0.19", "min latency": "0.04",
                          "max latency": "11.95", "throughput": "4900.80"},
}
CONSOLE = """[ INFO ] Latency:
[ INFO ]    Median:        59.71 us
[ INFO ]    Average:       190.25 us
[ INFO ]    Min:           36.27 us
[ INFO ]    Max:           11947.89 us
[ INFO ] Throughput:   4900.80 FPS
"""


def test_parse_benchmark_app_prefers_the_precise_console_latencies():
    stats = bench.parse_benchmark_app(REPORT, CONSOLE)
    assert (stats.median_ms, stats.mean_ms, stats.min_ms) == pytest.approx((0.05971, 0.19025, 0.03627))
    assert stats.iterations == 9814 and stats.throughput_fps == 4900.80 and stats.device == "CPU"
    json_only = bench.parse_benchmark_app(REPORT)
    assert json_only.median_ms == 0.06  # the report alone is rounded to 0.01 ms
    with pytest.raises(DeviceError, match="unexpected benchmark_app report"):
        bench.parse_benchmark_app({"execution_results": {}})


def test_benchmark_app_command_for_float_models():
    command = bench.benchmark_app_command("m.xml", "reports", hint="throughput", seconds=3,
                                          shapes={"image": [1, 3, 12, 12]})
    joined = " ".join(command)
    assert "-ip f32 -infer_precision f32" in joined and "-hint throughput" in joined and "-t 3" in joined
    assert "-shape image[1,3,12,12]" in joined and "-report_folder reports -json_stats" in joined
    assert "-infer_precision" not in bench.benchmark_app_command("m.xml", "r", precision="default")


def test_benchmark_command_with_benchmark_app_on_a_real_run(ir_pair, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("benchmark", *ir_pair, "-t", "1", "--sessions", "1", "--benchmark-app",
                     "--benchmark-app-rounds", "1", "--json", out)
    assert result.returncode == 0, result.stderr
    assert "latency overhead:" in result.stdout and "benchmark_app latency overhead:" in result.stdout
    assert "1 standalone" in result.stdout and "pool" + CLAMP_SUFFIX in result.stdout
    report = json.loads(out.read_text())
    assert report["fusion"]["counts"] == {"fused": 2, "standalone": 1, "not found": 0, "unknown": 0}
    app = report["benchmark_app"]
    for label in ("original", "protected"):
        (stats,) = app[label]
        assert stats["iterations"] > 0 and stats["throughput_fps"] > 0
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
        assert "-infer_precision" in stats["command"] and stats["model"].endswith(f"{label}.xml")
    assert app["latency_ratio"]["rounds"] == 1


def test_benchmark_app_failure_is_a_clear_error(tmp_path):
    with pytest.raises(DeviceError, match="benchmark_app failed on .*missing.xml"):
        bench.run_benchmark_app(str(tmp_path / "missing.xml"), str(tmp_path / "r"), seconds=1)
