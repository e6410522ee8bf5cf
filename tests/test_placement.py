"""Guard placement (ovrange.passes.placement) and the non-finite policy of range guards, on compiled CPU models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange import validate
from ovrange.bench.fusion import fusion_report
from ovrange.errors import ConfigError
from ovrange.passes.global_clipper import protected_copy
from ovrange.passes.placement import describe, place

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def pool_model(activation: bool, seed: int = 0) -> ov.Model:
    """x -> conv_a [-> Relu] -> MaxPool -> conv_b -> output (NCHW, 3 -> 4 -> 4 channels)."""
    rng = np.random.default_rng(seed)
    x = ops.parameter([1, 3, 8, 8], np.float32, name="x")
    a = ops.convolution(x, ops.constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)), [1, 1], [1, 1],
                        [1, 1], [1, 1], name="conv_a")
    a = ops.add(a, ops.constant(rng.standard_normal((1, 4, 1, 1)).astype(np.float32)), name="bias_a")
    if activation:
        a = ops.relu(a, name="relu_a")
    pool = ops.max_pool(a, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], name="pool")
    b = ops.convolution(pool.output(0), ops.constant(rng.standard_normal((4, 4, 1, 1)).astype(np.float32)), [1, 1],
                        [0, 0], [0, 0], [1, 1], name="conv_b")
    return ov.Model([ops.result(b)], [x], "pool_model")


def calib(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 3, 8, 8)).astype(np.float32)


def run(model: ov.Model, inputs: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", F32)
    return np.concatenate([compiled(x)[0] for x in inputs])


def guard_status(model: ov.Model) -> dict[str, str]:
    compiled = ov.Core().compile_model(model, "CPU", F32)
    return {c.name: c.status for c in fusion_report(compiled, model).clamps}


def test_a_guard_after_maxpool_moves_before_it_fuses_and_computes_the_same():
    model = pool_model(activation=False)
    # nonfinite: bound -- the guard alone, the form that fuses (keep adds a kernel wherever the guard is)
    moved = ovrange.protect(model, calib(), algorithm="GlobalClipper", subset_size=16, targets=["pooling"],
                            nonfinite="bound")
    record = ovrange.protection_info(moved).report["placement"]
    assert record == {"pool": {"action": "moved", "node": "pool", "to": "bias_a", "why": record["pool"]["why"]}}
    entry = ovrange.protection_info(moved).nodes["bias_a"]
    # the same bound, where it was planned: after the MaxPool, a kernel of its own
    unmoved = protected_copy(model, {"pool": {**entry, "node": "pool", "type": "MaxPool", "form": "standalone"}},
                             "bound")
    assert set(guard_status(moved).values()) == {"fused"}
    assert set(guard_status(unmoved).values()) == {"standalone"}
    inputs = calib(8, seed=1) * 4  # wider than the calibration data: the guards cut values
    reference = run(unmoved, inputs)
    assert not np.allclose(reference, run(model, inputs))  # the guard does act on these inputs
    np.testing.assert_allclose(run(moved, inputs), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["GlobalClipper", "Ranger"])
def test_a_pooling_guard_covered_upstream_is_dropped_unless_ranger_carried_it(algorithm):
    protected = ovrange.protect(pool_model(activation=True), calib(), algorithm=algorithm, subset_size=16)
    info = ovrange.protection_info(protected)
    if algorithm == "GlobalClipper":  # the MaxPool's input passed the Relu's guard
        assert info.report["placement"]["pool"]["action"] == "dropped"
        assert info.report["placement"]["pool"]["covered_by"] == "relu_a" and "pool" not in info.nodes
    else:  # Ranger's propagated bound is there to catch a fault inside the MaxPool: it stays
        assert info.nodes["pool"]["method"] == "propagated:relu_a" and "placement" not in info.report


def test_place_is_pure_and_walks_through_data_movement():
    graph = {"conv": {"op": "Convolution", "source": "x", "readers": 1},
             "relu": {"op": "Relu", "source": "conv", "readers": 1},
             "pool": {"op": "MaxPool", "source": "relu", "readers": 1},
             "flat": {"op": "Reshape", "source": "pool", "readers": 1},
             "x": {"op": "Parameter", "source": None, "readers": 1}}
    guards = {"relu": {"node": "relu", "type": "Relu", "low": 0.0, "high": 3.0, "axis": None},
              "flat": {"node": "flat", "type": "Reshape", "low": 0.0, "high": 2.5, "axis": None}}
    placed, record = place(guards, graph)
    assert list(placed) == ["relu"] and record["flat"]["through"] == ["Reshape", "MaxPool"]
    assert guards["flat"]["node"] == "flat"  # the input plan is not modified
    assert describe(pool_model(activation=True))["pool"] == {"op": "MaxPool", "source": "relu_a", "readers": 1}
    two = dict(graph, relu={**graph["relu"], "op": "PRelu"}, other={"op": "Add", "source": "conv", "readers": 1})
    conv = {"node": "conv", "type": "Convolution", "low": -1.0, "high": 3.0, "axis": None}
    assert "conv" in place({**guards, "conv": conv}, dict(graph, relu={**graph["relu"], "op": "PRelu"}))[1]
    assert "conv" in place({**guards, "conv": conv}, two)[0]  # read by two ops: no single guard sees every fault


def residual_model(activation: str, seed: int = 0) -> ov.Model:
    """x -> conv -> bias -> Add(x) -> activation -> conv_b -> output: a residual block (4 channels)."""
    rng = np.random.default_rng(seed)
    x = ops.parameter([1, 4, 8, 8], np.float32, name="x")
    a = ops.convolution(x, ops.constant(rng.standard_normal((4, 4, 1, 1)).astype(np.float32)), [1, 1], [0, 0],
                        [0, 0], [1, 1], name="conv")
    a = ops.add(a, ops.constant(rng.standard_normal((1, 4, 1, 1)).astype(np.float32)), name="bias")
    a = ops.add(a, x, name="residual")
    a = (ops.prelu(a, ops.constant(np.full(4, 0.25, np.float32)), name="act") if activation == "PRelu" else
         ops.clamp(a, 0.0, 6.0, name="act"))
    b = ops.convolution(a, ops.constant(rng.standard_normal((4, 4, 1, 1)).astype(np.float32)), [1, 1], [0, 0],
                        [0, 0], [1, 1], name="conv_b")
    return ov.Model([ops.result(b)], [x], "residual_model")


@pytest.mark.parametrize("activation", ["PRelu", "Clamp"])
def test_a_residual_guard_read_only_by_a_guarded_prelu_is_dropped_not_before_a_clamp(activation):
    model = residual_model(activation)
    data = np.random.default_rng(0).standard_normal((16, 1, 4, 8, 8)).astype(np.float32)
    protected = ovrange.protect(model, data, algorithm="GlobalClipper", subset_size=16, holdout=0)
    info = ovrange.protection_info(protected)
    if activation == "PRelu":  # a flipped exponent of the Add's output stays far through PReLU: its guard sees it
        assert info.report["placement"]["residual"] == {
            "action": "dropped", "node": "residual", "covered_by": "act", "through": ["PRelu"],
            "why": info.report["placement"]["residual"]["why"]}
        assert set(info.nodes) == {"act", "conv/weight", "conv_b/weight"}
        far = data[:2].copy()
        far[:, 0, 1, 2, 3] = 2.0 ** 20  # the residual input far out: the activation's guard cuts it
        assert np.abs(run(protected, far)).max() < np.abs(run(model, far)).max() / 1000
    else:  # ReLU6 saturates a far value into its range: the Add keeps its own guard
        assert "residual" in info.nodes and "placement" not in info.report


def infinite_input() -> np.ndarray:
    x = calib(1)[0].copy()
    x[0, :, 3, 3] = np.inf  # conv_a's 3x3 windows around (3, 3) see +-Inf or Inf - Inf (NaN)
    return x[None]


@pytest.mark.parametrize("algorithm", ["RangeSupervision", "Ranger", "GlobalClipper"])
def test_non_finite_values_stay_non_finite_through_a_guard_with_keep(algorithm):
    model = pool_model(activation=True)
    kept = ovrange.protect(model, calib(), algorithm=algorithm, subset_size=16, nonfinite="keep")
    bounded = ovrange.protect(model, calib(), algorithm=algorithm, subset_size=16)  # the default: the fused guard
    original = run(model, infinite_input())
    assert not np.isfinite(original).all()  # the DUE a system can detect
    assert np.array_equal(np.isfinite(run(kept, infinite_input())), np.isfinite(original))
    assert np.isfinite(run(bounded, infinite_input())).all()  # a plausible value (campaigns count these)
    clean = calib(4, seed=2)
    # f32 rounding of the two kernels: a per-channel guard's unit domain spans its margin (beyond: zero)
    np.testing.assert_allclose(run(kept, clean), run(bounded, clean), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["RangeSupervision", "Ranger", "GlobalClipper"])
def test_nonfinite_option_is_checked_the_same_way_everywhere(algorithm):
    with pytest.raises(ConfigError, match="nonfinite.*must be one of keep, bound, zero"):
        ovrange.protect(pool_model(activation=True), calib(2), algorithm=algorithm, nonfinite="drop")


def test_cli_rejects_a_bad_nonfinite_value_in_one_line(tmp_path: Path):
    ov.save_model(pool_model(activation=True), str(tmp_path / "m.xml"), compress_to_fp16=False)
    np.save(tmp_path / "calib.npy", calib(4)[:, 0])
    done = subprocess.run([sys.executable, "-m", "ovrange", "protect", str(tmp_path / "m.xml"), "--data",
                           str(tmp_path / "calib.npy"), "-p", "nonfinite=nan", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "nonfinite" in done.stderr
    assert done.stderr.startswith("error:") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_fold_guard_is_the_identity_in_range_lands_far_values_at_zero_and_fuses():
    model = residual_model("PRelu")
    data = np.random.default_rng(0).standard_normal((16, 1, 4, 8, 8)).astype(np.float32)
    folded = ovrange.protect(model, data, algorithm="GlobalClipper", subset_size=16, holdout=0, per_channel=False,
                             beyond="fold")
    entry = ovrange.protection_info(folded).nodes["act"]
    assert entry["beyond"] == "fold" and entry["axis"] is None and entry["low"] < 0 < entry["high"]
    probe = protected_copy(residual_model("PRelu"), {"act": {**entry, "node": "bias"}}, "bound")
    x = np.zeros((1, 4, 8, 8), np.float32)
    inside = np.linspace(entry["low"], entry["high"], 64, dtype=np.float32).reshape(1, 1, 8, 8)
    far = np.array([1e30, -1e30, 2.0 ** 40, np.inf, -np.inf, np.nan], np.float32)
    x[0, 0], x[0, 1, 0, :6] = inside[0, 0], far
    near = np.linspace(entry["high"], 2 * entry["high"], 8, dtype=np.float32)  # just beyond: reflected back
    x[0, 2, 0] = near
    eye = protected_copy(_identity(), {"bias": {**entry, "node": "bias"}}, "bound")  # the guard on x + 0
    out = run(eye, x[None])[0]
    np.testing.assert_allclose(out[0], inside[0, 0], atol=1e-5 * max(abs(entry["high"]), abs(entry["low"])))
    np.testing.assert_array_equal(out[1, 0, :6], np.zeros(6, np.float32))  # far, +-Inf and NaN land at 0
    assert np.all(out[2, 0] >= entry["low"]) and np.all(out[2, 0] <= entry["high"])
    status = guard_status(probe)
    assert status and set(status.values()) == {"fused"}  # scale-shifts, Abs and Clamp: the conv's post-ops


def test_fold_bounds_on_one_side_of_zero_keep_it_under_the_margin():
    """A fold bound of a ReLU output gets the wide margin upwards only: 0 stays its low end (the shorter fold)."""
    relu = {"node": "a", "type": "Relu", "low": 0.0, "high": 2.0, "method": "max", "beyond": "fold"}
    grown = validate.with_margin({"a": relu})["a"]
    assert grown["low"] == 0.0 and grown["high"] == 2.0 + 2.0 * validate.ZERO_MARGIN


def _identity() -> ov.Model:
    x = ops.parameter([1, 4, 8, 8], np.float32, name="x")
    bias = ops.add(x, ops.constant(np.zeros((1, 4, 1, 1), np.float32)), name="bias")
    return ov.Model([ops.result(bias)], [x], "identity")
