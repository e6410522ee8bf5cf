"""Checksum (ABFT on MatMul/Convolution): what it encodes, zero false positives on clean data, exact recompute,
the other corrections, SDC removed in a campaign, and one-line errors for layers it cannot encode."""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

import ovrange
from ovrange.errors import ConfigError, ModelError
from ovrange.faults import inject
from ovrange.faults.injectors import ScatterInjector
from ovrange.faults.formats import flip
from ovrange.faults.sites import find_sites
from ovrange.passes.checksum import find_layers, flag_model, plan_of
from ovrange.passes.checksum_graph import encoded_sum, input_weights
from ovrange.runtime import compile_model
from tests.test_faults_cli import cli
from tests.test_faults_sites import SHAPES, images, tiny_lenet

LAYER_SITES = ["conv1", "conv1/bias", "conv2", "conv2/bias", "fc1", "fc1/bias", "fc2", "logits"]


def infer(model: ov.Model, x: np.ndarray) -> list[np.ndarray]:
    return [t.copy() for t in compile_model(model, "CPU").create_infer_request().infer([x]).to_tuple()]


@pytest.fixture(scope="module")
def protected() -> dict[str, ov.Model]:
    x = images(64, seed=1).astype(np.float32)
    return {mode: ovrange.protect(tiny_lenet(), x, algorithm="Checksum", subset_size=64, batch_size=16, **params)
            for mode, params in {"model": {}, "if": {"branch": "if"}, "select": {"branch": "select"},
                                 "zero": {"correction": "zero"},
                                 "clamp": {"correction": "clamp"}, "relative": {"tolerance": "relative"}}.items()}


def test_every_constant_weight_mac_layer_is_encoded_with_its_bias():
    layers, skipped = find_layers(tiny_lenet())
    assert [(layer.name, layer.bias) for layer in layers] == [("conv1", "conv1/bias"), ("conv2", "conv2/bias"),
                                                 ("fc1", "fc1/bias"), ("fc2", "logits")]
    assert skipped == {}


def test_layers_it_cannot_encode_are_model_errors():
    x = ops.parameter([-1, 4], ov.Type.f32, name="x")
    square = ops.matmul(ops.unsqueeze(x, ops.constant(np.int64(2))), ops.unsqueeze(x, ops.constant(np.int64(1))),
                        False, False, name="outer")  # no constant weights
    model = ov.Model([ops.result(square)], [x], "outer")
    with pytest.raises(ModelError, match="no MatMul/Convolution with constant weights"):
        find_layers(model)
    with pytest.raises(ModelError, match="cannot encode layer 'relu1'"):
        find_layers(tiny_lenet(), ["relu1"])
    with pytest.raises(ModelError, match="no layer named 'nope'"):
        find_layers(tiny_lenet(), ["conv1", "nope"])


def test_cli_checksum_on_a_layer_it_cannot_encode_is_one_line_and_writes_nothing(tmp_path, capsys):
    model = tmp_path / "tiny.xml"
    ov.save_model(tiny_lenet(), str(model), compress_to_fp16=False)
    np.save(tmp_path / "calib.npy", images(8))
    out = tmp_path / "out"
    code, _, err = cli(capsys, "protect", model, "--data", tmp_path / "calib.npy", "-a", "Checksum", "-p",
                       "layers=[relu1]", "-o", out, "-q")
    assert code != 0 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "relu1" in err and not (out.exists() and any(out.iterdir()))  # nothing written into it


@pytest.mark.parametrize("mode", ["model", "if", "select", "zero", "clamp", "relative"])
def test_clean_outputs_are_unchanged_and_nothing_is_flagged(protected, mode):
    x = images(200, seed=7).astype(np.float32)
    original = infer(tiny_lenet(), x)[0]
    ours = infer(protected[mode], x)[0]
    assert np.abs(ours - original).max() <= 1e-5 * np.abs(original).max()
    flags = infer(flag_model(tiny_lenet(), plan_of(protected[mode])), x)
    assert all(int(f.sum()) == 0 for f in flags)


def test_zero_false_positives_on_10000_clean_fashion_images(bundled):
    data = np.load(bundled["lenet"]["test_npz"])
    calib = np.load(bundled["lenet"]["calib_npz"])["x"]
    model = ovrange.modelio.read_model(bundled["lenet"]["xml"])
    protected = ovrange.protect(model, calib, algorithm="Checksum", subset_size=1000, batch_size=100)
    request = compile_model(flag_model(model, plan_of(protected)), "CPU").create_infer_request()
    x = data["x"].astype(np.float32)
    assert len(x) == 10000
    flagged = sum(int(np.sum(t)) for i in range(0, len(x), 500) for t in request.infer([x[i:i + 500]]).to_tuple())
    assert flagged == 0


def faulty_run(model: ov.Model, x: np.ndarray, site: str, bit: int) -> tuple[np.ndarray, np.ndarray]:
    """(fault-free output, output with ``bit`` of element 3 of ``site`` flipped in every sample) of ``model``."""
    sites = [s.name for s in find_sites(model, "activations", SHAPES)]
    probe = ScatterInjector(model, "activations", [site], SHAPES, len(x), probe=True)
    _, probes = probe.run([x])
    value = probes[0][0].reshape(len(x), -1)[:, 3]
    injector = ScatterInjector(model, "activations", [site], SHAPES, len(x))
    golden, _ = injector.run([x])
    ours, _ = injector.run([x], np.zeros(len(x), np.int64), np.arange(len(x)), np.full(len(x), 3),
                           flip(value, np.full(len(x), bit)))
    assert site in sites
    return golden[0], ours[0]


@pytest.mark.parametrize("site", LAYER_SITES)
@pytest.mark.parametrize("mode", ["model", "if", "select"])
def test_recompute_restores_the_fault_free_output(protected, site, mode):
    x = images(8, seed=3).astype(np.float32)
    plain_golden, plain = faulty_run(tiny_lenet(), x, site, 30)
    assert not np.allclose(plain, plain_golden)  # the fault does damage without protection
    golden, ours = faulty_run(protected[mode], x, site, 30)
    # The recomputed layer is another kernel call on the same input: equal to f32 rounding (here bit for bit).
    assert np.abs(ours - golden).max() <= 1e-6 * np.abs(golden).max()
    assert (ours.argmax(1) == golden.argmax(1)).all()


def test_zero_and_clamp_corrections_at_the_logits(protected):
    x = images(8, seed=3).astype(np.float32)
    _, zeroed = faulty_run(protected["zero"], x, "logits", 30)
    assert (zeroed == 0).all()  # every sample's logits row was flagged and zeroed
    _, clamped = faulty_run(protected["clamp"], x, "logits", 30)
    check = plan_of(protected["clamp"])["checks"]["logits"]
    assert np.isfinite(clamped).all() and clamped.min() >= check["low"] and clamped.max() <= check["high"]


def test_a_campaign_at_the_mac_layers_loses_its_sdc_with_recompute():
    x = images(64, seed=3)
    y = infer(tiny_lenet(), x.astype(np.float32))[0].argmax(1)
    protected = ovrange.protect(tiny_lenet(), x.astype(np.float32), algorithm="Checksum", subset_size=64)
    result = inject(tiny_lenet(), x, labels=y, compare=[protected], trials=600, inputs=32, bits="27-31",
                    sites=LAYER_SITES, weighting="uniform", seed=2, batch_size=1)  # the If decides per batch
    before, after = result.rates(0)["sdc"], result.rates(1)["sdc"]
    assert before.k >= 40 and after.k == 0, (before, after)
    assert result.rates(1)["due"].k == 0


def test_campaigns_on_a_model_that_decides_per_batch_run_one_trial_per_inference(tmp_path, capsys):
    x = images(64, seed=3)
    protected = ovrange.protect(tiny_lenet(), x.astype(np.float32), algorithm="Checksum", subset_size=64)
    result = inject(tiny_lenet(), x, compare=[protected], trials=20, inputs=8, sites=LAYER_SITES, seed=2)
    assert result.spec.batch_size == 1  # not the default 64: the If would rescue a faulty trial's neighbours
    plain = inject(tiny_lenet(), x, trials=20, inputs=8, sites=LAYER_SITES, seed=2)
    assert plain.spec.batch_size == 64
    with pytest.raises(ConfigError, match="decides for its whole batch"):
        inject(tiny_lenet(), x, compare=[protected], trials=20, inputs=8, seed=2, batch_size=8)
    ov.save_model(protected, str(tmp_path / "p.xml"), compress_to_fp16=False)
    ov.save_model(tiny_lenet(), str(tmp_path / "m.xml"), compress_to_fp16=False)
    np.save(tmp_path / "x.npy", x)
    report = tmp_path / "report"
    code, _, err = cli(capsys, "inject", tmp_path / "m.xml", "--data", tmp_path / "x.npy", "--compare",
                       tmp_path / "p.xml", "--trials", "20", "--batch-size", "8", "--report", report)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--batch-size 1" in err, err
    assert not report.exists()
    code, _, err = cli(capsys, "inject", tmp_path / "m.xml", "--data", tmp_path / "x.npy", "--compare",
                       tmp_path / "p.xml", "--trials", "20", "--num-samples", "8", "--json", tmp_path / "r.json", "-q")
    assert code == 0, err  # no --batch-size: one trial per inference by itself
    assert json.loads((tmp_path / "r.json").read_text())["spec"]["batch_size"] == 1


@pytest.mark.parametrize("stride, pads, dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), (3, 1, 1)])
def test_whole_sample_conv_weights_give_the_sum_of_the_convolution(stride, pads, dilation):
    """sum over channels and pixels of conv(x, W) = sum(x * M): the per-sample check's encoding, against OpenVINO."""
    rng = np.random.default_rng(stride + 7 * pads + 31 * dilation)
    x = ops.parameter([-1, 3, 13, 11], ov.Type.f32, name="x")
    conv = ops.convolution(x, ops.constant(rng.standard_normal((5, 3, 3, 3)).astype(np.float32)), [stride] * 2,
                           [pads] * 2, [pads + 1] * 2, [dilation] * 2)
    values = rng.standard_normal((4, 3, 13, 11)).astype(np.float32)
    y = infer(ov.Model([ops.result(conv)], [x], "conv"), values)[0].astype(np.float64)
    ours = (values.astype(np.float64) * input_weights(conv)[None]).sum(axis=(1, 2, 3))
    assert np.allclose(ours, y.sum(axis=(1, 2, 3)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("gate", ["select", "if"])
def test_gradient_suppression_gated_by_checksum(gate):
    x = images(64, seed=1).astype(np.float32)
    always = ovrange.protect(tiny_lenet(), x, algorithm="GradientSuppression", subset_size=64)
    gated = ovrange.protect(tiny_lenet(), x, algorithm="GradientSuppression", subset_size=64, gate=gate)
    from ovrange.protect import protection_info

    extra = protection_info(gated).report
    assert extra["gated"] == ["relu1", "relu2", "relu3"] and extra["ungated"] == []
    clean = images(16, seed=9).astype(np.float32)
    # Without a detected error the gated model is the original, bit for bit (no suppression can misfire).
    ours, original = infer(gated, clean)[0], infer(tiny_lenet(), clean)[0]
    assert np.abs(ours - original).max() <= 1e-5 * np.abs(original).max()
    golden, faulty = faulty_run(gated, clean[:8], "conv1/bias", 30)
    _, always_faulty = faulty_run(always, clean[:8], "conv1/bias", 30)
    _, plain_faulty = faulty_run(tiny_lenet(), clean[:8], "conv1/bias", 30)
    assert not np.allclose(plain_faulty, golden)
    assert np.isfinite(faulty).all() and (faulty.argmax(1) == always_faulty.argmax(1)).all()
    if gate == "if":  # the check fired, so the whole suppression ran: the same output as always on
        assert np.allclose(faulty, always_faulty, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gate", ["select", "if"])
def test_a_fault_at_a_relu_output_opens_the_gate_through_the_relu_check(gate):
    """Seed 003's second detector: the MAC check before relu1 passes (its output is intact), the ReLU check fails
    (relu1's output differs from max(input, 0)), so the gated suppression runs as the always-on one does."""
    x = images(64, seed=1).astype(np.float32)
    always = ovrange.protect(tiny_lenet(), x, algorithm="GradientSuppression", subset_size=64)
    gated = ovrange.protect(tiny_lenet(), x, algorithm="GradientSuppression", subset_size=64, gate=gate)
    clean = images(8, seed=9).astype(np.float32)
    golden, faulty = faulty_run(gated, clean, "relu1", 30)
    _, always_faulty = faulty_run(always, clean, "relu1", 30)
    _, plain_faulty = faulty_run(tiny_lenet(), clean, "relu1", 30)
    assert not np.allclose(plain_faulty, golden) and (always_faulty.argmax(1) == golden.argmax(1)).all()
    assert np.allclose(faulty, always_faulty, rtol=1e-5, atol=1e-6)  # suppressed, as always on


@pytest.mark.parametrize("transpose_b", [False, True])
def test_a_matmul_check_encodes_its_weights_as_one_k_by_1_matmul(transpose_b):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 16) if transpose_b else (16, 24)).astype(np.float32)
    x = ops.parameter([-1, 5, 16], ov.Type.f32, name="x")
    mac = ops.matmul(x, ops.constant(w), False, transpose_b, name="fc")
    right = encoded_sum(mac, mac.input_value(0), "fc/encode")
    assert right.get_type_name() == "MatMul"  # one FullyConnected kernel, no Multiply + ReduceSum
    data = rng.standard_normal((3, 5, 16)).astype(np.float32)
    got = infer(ov.Model([ops.result(right)], [x], "encode"), data)[0]
    summed = w.astype(np.float64).sum(axis=0 if transpose_b else 1)
    np.testing.assert_allclose(got, data.astype(np.float64) @ summed[:, None], rtol=1e-5, atol=1e-5)
