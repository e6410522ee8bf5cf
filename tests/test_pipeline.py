"""The protection pipeline: node identity that survives repeated names, saved plans, one statistics loop, the
inserted-node record (real OpenVINO inference throughout; references computed independently with numpy)."""

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
from ovrange.errors import ConfigError
from ovrange.faults.sites import find_sites
from ovrange.graph import inserted_nodes
from ovrange.runtime import Runner, compile_model
from ovrange.stats import StatRequest, collect
from ovrange.targets import find_targets


def twin_relu_model() -> ov.Model:
    """x -> Conv -> Relu "act" -> Conv -> Relu "act" -> output: two activations with one friendly name.

    The second convolution scales by 3, so the two Relus have clearly different ranges."""
    x = ops.parameter([-1, 2, 6, 6], np.float32, name="x")
    w1 = ops.constant(np.array([[[[1.0]], [[-1.0]]], [[[0.5]], [[0.5]]]], np.float32))
    h = ops.relu(ops.convolution(x, w1, [1, 1], [0, 0], [0, 0], [1, 1], name="conv"), name="act")
    w2 = ops.constant(np.array([[[[3.0]], [[0.0]]], [[[0.0]], [[-3.0]]]], np.float32))
    h = ops.relu(ops.convolution(h, w2, [1, 1], [0, 0], [0, 0], [1, 1], name="conv"), name="act")
    h.output(0).get_tensor().set_names({"y"})
    return ov.Model([ops.result(h)], [x], "twins")


def branch_model() -> ov.Model:
    """Two branches whose activations share a name, added together."""
    x = ops.parameter([-1, 4], np.float32, name="x")
    a = ops.relu(ops.multiply(x, ops.constant(np.float32(2.0)), name="scale"), name="branch/act")
    b = ops.relu(ops.multiply(x, ops.constant(np.float32(-5.0)), name="scale"), name="branch/act")
    out = ops.add(a, b, name="sum")
    out.output(0).get_tensor().set_names({"y"})
    return ov.Model([ops.result(out)], [x], "branches")


def data(shape, n=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def infer(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return compile_model(model, "CPU", precision="f32").create_infer_request().infer([x])[0].copy()


def clamps(model: ov.Model) -> dict[str, tuple[float, float]]:
    return {op.get_friendly_name(): (op.get_attributes()["min"], op.get_attributes()["max"])
            for op in model.get_ordered_ops() if op.get_type_name() == "Clamp"}


def test_two_nodes_with_one_name_each_get_their_own_guard_and_bounds():
    model, x = twin_relu_model(), data((2, 6, 6))
    protected = ovrange.protect(model, x, subset_size=40, holdout=0)  # POT's rule: the observed bounds, Clamps
    info = ovrange.protection_info(protected)
    assert set(info.nodes) == {"act", "act#2"}  # unique ids in bounds.json
    assert {n["name"] for n in info.nodes.values()} == {"act"}  # the friendly name is kept for reports
    # Independent reference: the two activations computed with numpy.
    first = np.maximum(0, np.stack([x[:, 0] - x[:, 1], 0.5 * x[:, 0] + 0.5 * x[:, 1]], 1))
    second = np.maximum(0, np.stack([3 * first[:, 0], -3 * first[:, 1]], 1))
    assert info.nodes["act"]["high"] == pytest.approx(first.max(), rel=1e-6)
    assert info.nodes["act#2"]["high"] == pytest.approx(second.max(), rel=1e-6)
    guards = clamps(protected)
    assert guards == {"act/min_max_Clamp": (0.0, pytest.approx(first.max(), rel=1e-6)),
                      "act#2/min_max_Clamp": (0.0, pytest.approx(second.max(), rel=1e-6))}
    # Each Clamp sits right after its own Relu.
    for op in protected.get_ordered_ops():
        if op.get_type_name() == "Clamp":
            assert op.input_value(0).get_node().get_type_name() == "Relu"
    assert np.array_equal(infer(protected, x), infer(model, x))  # bit-identical on the calibration data


def test_activations_repeated_by_name_across_branches():
    model, x = branch_model(), data((4,))
    protected = ovrange.protect(model, x, subset_size=40, holdout=0)  # POT's rule: the observed bounds
    info = ovrange.protection_info(protected)
    assert set(info.nodes) == {"branch/act", "branch/act#2"}
    highs = sorted(node["high"] for node in info.nodes.values())
    assert highs == pytest.approx(sorted([(2 * x).max(), (-5 * x).max()]), rel=1e-6)
    assert np.array_equal(infer(protected, x), infer(model, x))


def test_every_inserted_node_is_recorded_and_never_a_fault_site():
    model, x = twin_relu_model(), data((2, 6, 6))
    for algorithm, params in (("Ranger", {"correction": "zero"}), ("Ranger", {"per_channel": True}),
                              ("GradientSuppression", {})):
        protected = ovrange.protect(model, x, algorithm=algorithm, subset_size=40, **params)
        record = inserted_nodes(protected)
        original = {op.get_friendly_name() for op in model.get_ops()}
        added = {op.get_friendly_name() for op in protected.get_ops()
                 if op.get_friendly_name() not in original and op.get_type_name() != "Constant"}
        assert added == set(record), algorithm  # the record holds exactly the non-constant nodes added
        guarded = ovrange.protection_info(protected).nodes  # GradientSuppression leaves the model output alone
        assert sorted(name for name, role in record.items() if role == "guard") == sorted(
            f"{key}/{suffix}" for key in guarded
            for suffix in [{"Ranger": "range_zero" if params.get("correction") else "min_max_Clamp",
                            "GradientSuppression": "gradient_suppression"}[algorithm]])
        sites = {s.name for s in find_sites(protected, "activations", [(2, 6, 6)])}
        assert sites == {s.name for s in find_sites(model, "activations", [(2, 6, 6)])}


def test_a_saved_plan_reapplies_to_the_same_ir(tmp_path: Path):
    model, x = twin_relu_model(), data((2, 6, 6))
    protected = ovrange.protect(model, x, algorithm="Ranger", subset_size=40, per_channel=True)
    ovrange.save_protected(protected, tmp_path / "first", "twins")
    plan = ovrange.load_plan(tmp_path / "first" / "bounds.json")
    again = ovrange.protect(model, plan=plan)  # no data
    assert ovrange.protection_info(again).nodes == ovrange.protection_info(protected).nodes
    assert np.array_equal(infer(again, x * 3), infer(protected, x * 3))  # outside the bounds too
    assert inserted_nodes(again) == inserted_nodes(protected)


def test_a_plan_that_does_not_fit_is_an_error():
    model, x = twin_relu_model(), data((2, 6, 6))
    plan = ovrange.protection_info(ovrange.protect(model, x, subset_size=40))
    with pytest.raises(ConfigError, match="has no node 'act'"):
        ovrange.protect(branch_model(), plan=plan)
    per_channel = ovrange.protection_info(ovrange.protect(model, x, algorithm="Ranger", subset_size=40,
                                                          per_channel=True))
    other = twin_relu_model()
    other.reshape({other.inputs[0]: ov.PartialShape([-1, 2, 6, 6])})
    assert ovrange.protect(other, plan=per_channel) is not None  # same channels: fits


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_bounds_reproduces_a_result_and_refuses_a_mismatch(tmp_path: Path):
    ov.save_model(twin_relu_model(), tmp_path / "twins.xml", compress_to_fp16=False)
    ov.save_model(branch_model(), tmp_path / "other.xml", compress_to_fp16=False)
    x = data((2, 6, 6))
    np.save(tmp_path / "calib.npy", x)
    first = run_cli("protect", "twins.xml", "--data", "calib.npy", "-a", "Ranger", "-o", "a", "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "act#2 (act)" in first.stdout  # the per-node report shows the friendly name beside the id
    bounds = tmp_path / "a" / "twins_Ranger" / "bounds.json"
    again = run_cli("protect", "twins.xml", "--bounds", bounds, "-o", "b", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    core = ov.Core()
    a, b = (core.read_model(tmp_path / d / "twins_Ranger" / "twins.xml") for d in ("a", "b"))
    assert clamps(a) == clamps(b) and len(clamps(a)) == 2
    assert np.array_equal(infer(a, x * 4), infer(b, x * 4))
    assert json.loads(bounds.read_text())["nodes"] == ovrange.protection_info(b).nodes
    bad = run_cli("protect", "other.xml", "--bounds", bounds, "-o", "c", cwd=tmp_path)
    assert bad.returncode != 0 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
    assert "Traceback" not in bad.stderr and not (tmp_path / "c").exists()
    garbage = tmp_path / "garbage.json"
    garbage.write_text("[1, 2")
    bad = run_cli("protect", "twins.xml", "--bounds", garbage, "-o", "d", cwd=tmp_path)
    assert bad.returncode != 0 and bad.stderr.startswith("error: ") and not (tmp_path / "d").exists()


def test_one_loop_serves_min_max_histograms_and_moments():
    model, x = twin_relu_model(), data((2, 6, 6), n=30)
    reference = np.maximum(0, np.stack([x[:, 0] - x[:, 1], 0.5 * x[:, 0] + 0.5 * x[:, 1]], 1))
    wanted = [StatRequest("act"), StatRequest("act", axis=1), StatRequest("act", "histogram", None, 16),
              StatRequest("act", "moments", None, neighbour_axis=1)]
    stats = collect(model, x, wanted, subset_size=None, batch_size=7)
    assert stats.samples == 30
    assert float(stats[wanted[0]].high) == pytest.approx(reference.max(), rel=1e-6)
    assert stats[wanted[1]].high == pytest.approx(reference.max(axis=(0, 2, 3)), rel=1e-6)
    counts = stats[wanted[2]].counts
    expected = np.histogram(reference, bins=16, range=(reference.min(), reference.max()))[0]
    assert counts.sum() == reference.size and np.abs(counts[0] - expected).max() <= 2  # f32 vs f64 bin edges
    diffs = reference - np.roll(reference, 1, axis=1)
    moments = stats[wanted[3]]
    assert moments.count.sum() == diffs.size and moments.high[0] == pytest.approx(diffs.max(), rel=1e-5)
    assert moments.std[0] == pytest.approx(diffs.std(), rel=1e-4)


def test_per_channel_bounds_on_the_feature_axis_of_a_sequence_with_dynamic_length():
    x = ops.parameter([-1, -1, 6], np.float32, name="tokens")
    w = ops.constant(np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32))
    out = ops.relu(ops.matmul(x, w, False, False, name="fc"), name="fc_act")
    model = ov.Model([ops.result(out)], [x], "seq")
    assert [t.feature_axis for t in find_targets(model) if t.id == "fc_act"] == [2]
    calib = [np.random.default_rng(i).normal(size=(1, 3 + i, 6)).astype(np.float32) for i in range(8)]
    protected = ovrange.protect(model, calib, algorithm="Ranger", subset_size=8, per_channel=True)
    bound = ovrange.protection_info(protected).nodes["fc_act"]
    assert bound["axis"] == 2 and len(bound["high"]) == 5
    reference = np.concatenate([np.maximum(0, c @ w.get_data()).reshape(-1, 5) for c in calib])
    assert bound["high"] == pytest.approx(reference.max(axis=0), rel=1e-6)
    for sample in calib:
        assert np.array_equal(infer(protected, sample), infer(model, sample))


def test_runner_refuses_outputs_that_lose_the_batch_axis():
    x = ops.parameter([-1, 3], np.float32, name="x")
    total = ops.reduce_sum(x, ops.constant(np.array([0, 1], np.int64)), keep_dims=False)
    model = ov.Model([ops.result(total)], [x], "sum")
    with pytest.raises(ovrange.OvrangeError, match="do not keep the batch axis"):  # before any inference
        Runner(model, batch_size=4)
    assert Runner(model, batch_size=4, batched_outputs=False).infer([np.ones((4, 3), np.float32)])[0] == 12


def test_a_config_with_two_protections_is_refused_not_half_run():
    from ovrange.config import parse_config

    raw = {"compression": {"algorithms": [{"name": "Ranger"}, {"name": "BoundedWeights"}]}}
    with pytest.raises(ConfigError, match="lists 2 protections"):
        parse_config(raw)
