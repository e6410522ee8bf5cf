"""RangeSupervision end to end on real OpenVINO inference (tiny models built in code)."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

import ovrange
from ovrange.errors import ConfigError, ModelError
from ovrange.passes.guards import CLAMP_SUFFIX
from tests.models import SEVEN, activation_output_model, no_activation_model, seven_activation_model

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def protected(calib):
    return ovrange.protect(seven_activation_model(), calib, subset_size=40, holdout=0)  # POT's rule and form


def clamps(model: ov.Model) -> dict[str, ov.Node]:
    return {n.get_friendly_name(): n for n in model.get_ops() if n.get_type_name() == "Clamp"}


def test_each_activation_type_gets_exactly_one_clamp_with_observed_bounds(protected, calib):
    found = clamps(protected)
    assert sorted(found) == sorted(f"act_{kind}{CLAMP_SUFFIX}" for kind in SEVEN)
    # Observed bounds: the activation outputs of the original model over the same inputs, computed independently.
    original = seven_activation_model()
    probes = [n.output(0) for n in original.get_ordered_ops() if n.get_type_name() in SEVEN]
    probe_model = ov.Model([ov.opset13.result(p) for p in probes], original.get_parameters())
    compiled = ov.Core().compile_model(probe_model, "CPU", F32)
    values = [compiled(calib[i:i + 1]) for i in range(len(calib))]
    for index, output in enumerate(probes):
        name = output.get_node().get_friendly_name()
        observed = np.stack([v[index] for v in values])
        attrs = found[name + CLAMP_SUFFIX].get_attributes()
        assert attrs["min"] == float(observed.min())
        assert attrs["max"] == float(observed.max())
        clamp_input = found[name + CLAMP_SUFFIX].input_value(0).get_node()
        assert clamp_input.get_friendly_name() == name


def test_outputs_bit_identical_on_calibration_inputs(protected, calib):
    core = ov.Core()
    original = core.compile_model(seven_activation_model(), "CPU", F32)
    guarded = core.compile_model(protected, "CPU", F32)
    for sample in calib:
        assert np.array_equal(original(sample[None])[0], guarded(sample[None])[0])


def test_out_of_range_value_is_clamped():
    """The protective effect: a huge value reaching the activation is cut to the learned bound."""
    data = np.random.default_rng(3).standard_normal((20, 3, 6, 6)).astype(np.float32)
    protected = ovrange.protect(activation_output_model("Relu"), data)
    high = ovrange.protection_info(protected).bounds["act"].high
    spike = data[:1].copy()
    spike[0, :, 2, 2] = 1e6  # as if a bit flip had made one input value huge
    core = ov.Core()
    unbounded = core.compile_model(activation_output_model("Relu"), "CPU", F32)(spike)[0]
    bounded = core.compile_model(protected, "CPU", F32)(spike)[0]
    assert unbounded.max() > 1e4 * high
    assert bounded.max() == np.float32(high)
    assert np.array_equal(bounded, np.minimum(unbounded, np.float32(high)))


def test_input_model_is_not_modified(calib):
    model = seven_activation_model()
    before = len(model.get_ops())
    ovrange.protect(model, calib, subset_size=10)
    assert len(model.get_ops()) == before
    assert not clamps(model)


def test_output_tensor_names_move_to_the_clamp():
    model = activation_output_model("Relu")
    data = np.random.default_rng(3).standard_normal((5, 3, 6, 6)).astype(np.float32)
    protected = ovrange.protect(model, data, nonfinite="bound")  # POT's form: the guard is one Clamp
    assert protected.outputs[0].get_names() == {"features"}
    assert protected.outputs[0].get_node().input_value(0).get_node().get_type_name() == "Clamp"
    holders = [op.get_type_name() for op in protected.get_ops() if op.get_type_name() != "Result"
               for out in op.outputs() if "features" in out.get_names()]
    assert holders == ["Clamp"]


def test_bounds_survive_save_and_read(protected, tmp_path):
    path = ovrange.save_protected(protected, tmp_path / "out", "seven")
    reloaded = ov.Core().read_model(str(path / "seven.xml"))
    info = ovrange.protection_info(reloaded)
    assert info is not None and len(info.bounds) == 7
    assert info.bounds == ovrange.protection_info(protected).bounds
    # f32 weights kept (ov.save_model would compress to f16 by default)
    assert all(op.get_element_type() == ov.Type.f32 for op in reloaded.get_ops() if op.get_type_name() == "Constant"
               and op.get_element_type().is_real())


def test_batched_statistics_match_batch_one(calib):
    one = ovrange.protection_info(ovrange.protect(seven_activation_model(), calib, subset_size=40, batch_size=1))
    eight = ovrange.protection_info(ovrange.protect(seven_activation_model(), calib, subset_size=40, batch_size=8))
    for name, bound in one.bounds.items():
        assert bound.low == pytest.approx(eight.bounds[name].low, rel=1e-6, abs=1e-6)
        assert bound.high == pytest.approx(eight.bounds[name].high, rel=1e-6)


def test_shuffled_subset_is_seeded(calib):
    def bounds(seed):
        info = ovrange.protection_info(ovrange.protect(seven_activation_model(), calib, subset_size=5, shuffle=True,
                                                       seed=seed))
        return {k: (b.low, b.high) for k, b in info.bounds.items()}

    assert bounds(1) == bounds(1)
    assert bounds(1) != bounds(2)


def test_accepts_nncf_dataset(calib):
    nncf = pytest.importorskip("nncf", reason="nncf is part of the [test] extra")
    dataset = nncf.Dataset(list(calib), lambda item: item[None])
    via_nncf = ovrange.protection_info(ovrange.protect(seven_activation_model(), dataset, subset_size=40))
    direct = ovrange.protection_info(ovrange.protect(seven_activation_model(), calib, subset_size=40))
    assert via_nncf.bounds == direct.bounds


def test_model_without_activations_is_an_error():
    with pytest.raises(ModelError, match="no supported activations"):
        ovrange.protect(no_activation_model(), np.ones((2, 4), np.float32))


def test_protecting_twice_is_an_error(protected, calib):
    with pytest.raises(ModelError, match="already protected"):
        ovrange.protect(protected, calib)


@pytest.mark.parametrize("kwargs", [{"subset_size": 0}, {"batch_size": -1}, {"algorithm": "Nope"}])
def test_bad_parameters(kwargs, calib):
    with pytest.raises(ConfigError):
        ovrange.protect(seven_activation_model(), calib, **kwargs)


def test_the_guard_inserter_moves_tensor_names_and_records_every_node():
    from ovrange.graph import inserted_nodes
    from ovrange.passes.guards import Insertion

    x = ov.opset13.parameter([1, 4], np.float32, name="x")
    relu = ov.opset13.relu(x, name="relu")
    relu.output(0).get_tensor().set_names({"features"})
    side = ov.opset13.negative(relu, name="side")
    model = ov.Model([ov.opset13.result(relu), ov.opset13.result(side)], [x], "m")
    insertion = Insertion(model)
    guard = insertion.after(relu.output(0), lambda out: ov.opset13.clamp(
        ov.opset13.abs(out, name="relu/helper"), 0.0, 1.0, name="relu/guard"))
    assert insertion.done()
    assert model.output(0).get_names() == {"features"} and relu.output(0).get_names() == set()
    assert model.output(0).get_node().input_value(0).get_node().get_friendly_name() == "relu/guard"
    assert side.input_value(0).get_node().get_friendly_name() == "relu/guard"  # every consumer reads the guard
    assert inserted_nodes(model) == {"relu/helper": "check", "relu/guard": "guard"}
    # one consumer only, names left where they are (an input-edge guard)
    edge = Insertion(model)
    edge.after(guard.output(0), lambda out: ov.opset13.clamp(out, 0.0, 0.5, name="edge"), [side.input(0)],
               names=False)
    edge.done()
    assert model.output(0).get_names() == {"features"}
    assert model.output(0).get_node().input_value(0).get_node().get_friendly_name() == "relu/guard"
    assert side.input_value(0).get_node().get_friendly_name() == "edge"
    assert inserted_nodes(model)["edge"] == "guard"


def test_no_pass_imports_protect_or_another_pass():
    import ast
    import importlib.util

    from ovrange.passes import ALGORITHMS

    passes = set(ALGORITHMS.values())
    for name, module in ALGORITHMS.items():
        tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     for alias in node.names}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "ovrange.protect" not in imported, name
        assert not (imported & (passes - {module})), (name, imported & passes)
