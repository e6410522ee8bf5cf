"""The placement pass: which guards it drops, and that the protected model computes exactly the same thing after,
fault-free and under every kind of fault ovrange injects (real OpenVINO CPU inference)."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.bench import fusion_report
from ovrange.faults.sites import ACTIVATION_OPS
from ovrange.passes.placement import DATA_MOVEMENT, optimize_placement
from ovrange.passes.guards import CLAMP_SUFFIX
from tests.models import record_guards
from ovrange.runtime import compile_model

HIGH = 2.0


def _conv(x, cin: int, cout: int, rng: np.random.Generator, name: str) -> ov.Node:
    w = ops.constant((rng.standard_normal((cout, cin, 3, 3)) * 0.5).astype(np.float32))
    return ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1], name=name)


def _guard(x, node_name: str, low: float = 0.0, high: float = HIGH) -> ov.Node:
    return ops.clamp(x, low, high, name=node_name + CLAMP_SUFFIX)


def ranger_like(concat_high: float = HIGH, reshape_high: float = HIGH, unguarded_branch: bool = False,
                add_before_reshape: bool = False) -> ov.Model:
    """Two guarded Conv->ReLU branches, Concat (guarded), MaxPool (guarded), Reshape (guarded), MatMul head."""
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, 3, 8, 8], np.float32, name="input")
    branches = []
    for i in range(2):
        relu = ops.relu(_conv(x, 3, 4, rng, f"conv{i}"), name=f"relu{i}")
        unguarded = unguarded_branch and i == 1
        branches.append(relu if unguarded else _guard(relu, f"relu{i}"))
    cat = _guard(ops.concat(branches, 1, name="cat"), "cat", high=concat_high)
    pool = ops.max_pool(cat, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], name="pool").output(0)
    pooled = _guard(pool, "pool")
    if add_before_reshape:
        pooled = ops.add(pooled, ops.constant(np.float32(0.5)), name="shift")
    flat = ops.reshape(pooled, ops.constant(np.array([0, -1], np.int64)), True, name="flat")
    head_in = _guard(flat, "flat", high=reshape_high)
    w = ops.constant((rng.standard_normal((8 * 4 * 4, 5)) * 0.2).astype(np.float32))
    logits = ops.matmul(head_in, w, False, False, name="logits")
    logits.output(0).get_tensor().set_names({"logits"})
    return record_guards(ov.Model([ops.result(logits)], [x], "ranger_like"))


def guard_names(model: ov.Model) -> set[str]:
    return {n.get_friendly_name() for n in model.get_ops() if n.get_friendly_name().endswith(CLAMP_SUFFIX)}


def run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return compile_model(model, "CPU", precision="f32")(x)[0]


def test_drops_guards_after_data_movement_and_keeps_the_rest():
    model = ranger_like()
    result = optimize_placement(model)
    assert result.modified
    assert set(result.removed) == {"cat" + CLAMP_SUFFIX, "flat" + CLAMP_SUFFIX}
    assert guard_names(result.model) == {"relu0" + CLAMP_SUFFIX, "relu1" + CLAMP_SUFFIX, "pool" + CLAMP_SUFFIX}
    assert len(guard_names(model)) == 5  # the input model is untouched
    assert result.model.output(0).get_names() == {"logits"}


@pytest.mark.parametrize("case, kwargs, kept", [
    ("upstream range wider than the guard", {"concat_high": 1.0}, "cat"),
    ("an input of the Concat is not guarded", {"unguarded_branch": True}, "cat"),
    ("a compute op (a fault site) on the path", {"add_before_reshape": True}, "flat"),
])
def test_keeps_a_guard_that_is_not_provably_redundant(case, kwargs, kept):
    result = optimize_placement(ranger_like(**kwargs))
    assert kept + CLAMP_SUFFIX in guard_names(result.model), case


def test_range_supervision_model_is_left_alone():
    model = ovrange.protect(ranger_like_unprotected(), np.random.default_rng(1).standard_normal((8, 3, 8, 8)),
                            subset_size=8)
    result = optimize_placement(model)
    assert not result.modified and result.removed == ()
    assert len(result.model.get_ops()) == len(model.get_ops())


def ranger_like_unprotected() -> ov.Model:
    model = ranger_like()
    for node in model.get_ordered_ops():
        if node.get_friendly_name().endswith(CLAMP_SUFFIX):
            for target in list(node.output(0).get_target_inputs()):
                target.replace_source_output(node.input_value(0))
    model.validate_nodes_and_infer_types()
    return ov.Model(model.get_results(), model.get_parameters(), "plain")


def test_guard_that_is_a_model_output_hands_back_its_names():
    x = ops.parameter([1, 4], np.float32, name="x")
    guarded = _guard(ops.relu(x, name="relu"), "relu")
    reshaped = ops.reshape(guarded, ops.constant(np.array([2, 2], np.int64)), False, name="rs")
    out = _guard(reshaped, "rs")
    out.output(0).get_tensor().set_names({"features"})
    result = optimize_placement(record_guards(ov.Model([ops.result(out)], [x], "out")))
    assert result.removed == ("rs" + CLAMP_SUFFIX,)
    assert result.model.output(0).get_names() == {"features"}
    assert result.model.output(0).get_node().input_value(0).get_node().get_friendly_name() == "rs"


def test_premise_data_movement_ops_are_not_fault_sites():
    # The proof needs this: no fault can strike between an upstream guard and the removed one.
    assert not set(DATA_MOVEMENT) & set(ACTIVATION_OPS)


def test_fault_free_outputs_are_bit_identical_also_far_outside_the_bounds():
    model = ranger_like()
    x = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32) * 50  # clamps do work here
    before, after = run(model, x), run(optimize_placement(model).model, x)
    assert np.array_equal(before.view(np.uint32), after.view(np.uint32))


def test_nan_inf_and_huge_inputs_give_bit_identical_outputs():
    """NaN and Inf reach the first guards (through the convolutions), so NaN handling is covered too."""
    model = ranger_like()
    x = np.random.default_rng(4).standard_normal((12, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0], x[1, 1, 2, 3], x[2, 2, 4, 4], x[3, 0, 7, 7] = np.nan, np.inf, -np.inf, 3e38
    before, after = run(model, x), run(optimize_placement(model).model, x)
    assert np.array_equal(before, after, equal_nan=True)


@pytest.mark.parametrize("target", ["activations", "weights"])
def test_every_fault_has_the_same_effect_after_the_pass(target):
    """ovrange's own injector replays the same faults (all 32 bits, so NaN and Inf values too) on both models:
    every trial must end with the same outcome and the same output deviation."""
    from ovrange.faults import inject

    model = ranger_like()
    placed = optimize_placement(model).model
    x = np.random.default_rng(5).standard_normal((32, 3, 8, 8)).astype(np.float32)
    result = inject(model, x, compare=placed, target=target, trials=1500, seed=0, inputs=16)
    first, second = result.models
    assert first.done.all() and second.done.all()
    assert np.array_equal(first.outcome, second.outcome)
    assert np.array_equal(first.deviation, second.deviation, equal_nan=True)
    assert np.count_nonzero(first.deviation > 0) > 100  # not vacuous: most faults did change the output


def test_the_plugin_runs_fewer_standalone_guards_after_the_pass():
    model = ranger_like()
    placed = optimize_placement(model).model
    before = fusion_report(compile_model(model, "CPU"), model)
    after = fusion_report(compile_model(placed, "CPU"), placed)
    assert before.names("standalone") >= ["cat" + CLAMP_SUFFIX]  # CPU cannot fuse a Clamp into a Concat
    assert "cat" + CLAMP_SUFFIX not in after.names("standalone")
    assert len(after.names("standalone")) < len(before.names("standalone"))
