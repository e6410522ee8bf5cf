"""Faults in quantized and compressed IRs: the stored integer (or f16) is flipped, and the injected run equals the
model recompiled with that Constant flipped; activation faults strike op outputs before their FakeQuantize."""

from __future__ import annotations

import logging

import numpy as np
import openvino as ov
import pytest

from ovrange.errors import ConfigError
from ovrange.faults.campaign import inject
from ovrange.faults.injectors import ScatterInjector, WeightFlip, WeightInjector
from ovrange.faults.formats import STORED_FORMATS, flip, parse_bits
from ovrange.faults.linear import linear_layer
from ovrange.faults.faultlist import plan_faults
from ovrange.faults.sites import find_sites, site_outputs, static_clone, weight_values
from ovrange.runtime import compile_model
from tests.test_faults_exact import assert_same_output, run
from tests.test_faults_sites import SHAPES, images, tiny_lenet


def _nncf():
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


def quantized(kind: str, tmp_path_factory) -> ov.Model:
    """tiny_lenet in one deployed form: nncf INT8 (FakeQuantize), compress_weights modes, or an FP16 IR."""
    model = tiny_lenet(batch=1)
    if kind == "fp16":
        path = tmp_path_factory.mktemp("fp16") / "m.xml"
        ov.save_model(model, str(path))  # compress_to_fp16 defaults to True, as ovc does
        return ov.Core().read_model(path)
    nncf = _nncf()
    if kind == "nncf_int8":
        x = images(64).astype(np.float32)
        return nncf.quantize(model, nncf.Dataset([x[i:i + 1] for i in range(64)]), subset_size=64)
    mode, options = {"int8_asym": ("INT8_ASYM", {}), "int8_sym": ("INT8_SYM", {}),
                     "int4_sym": ("INT4_SYM", {"group_size": 8, "all_layers": True}),
                     "int4_asym": ("INT4_ASYM", {"group_size": 8, "all_layers": True})}[kind]
    return nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode), **options)


KINDS = {"nncf_int8": {"int8"}, "int8_asym": {"uint8"}, "int8_sym": {"int8"}, "int4_sym": {"int4", "uint8"},
         "int4_asym": {"uint4", "uint8"}, "fp16": {"fp16"}}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, ov.Model]:
    return {kind: quantized(kind, tmp_path_factory) for kind in KINDS}


def test_weight_sites_say_how_the_memory_holds_them(models):
    for kind, formats in KINDS.items():
        sites = find_sites(models[kind], "weights")
        assert [s.name for s in sites] == ["conv1", "conv2", "fc1", "fc2"]
        assert {s.format for s in sites} == formats, kind
    int4 = {s.name: s for s in find_sites(models["int4_sym"], "weights")}
    assert int4["fc1"].shape == (16, 3, 8) and int4["fc1"].format == "int4"  # groups of 8 input channels


def recompiled_with_stored_flip(model: ov.Model, site: str, element: int, bit: int, fmt: str) -> ov.Model:
    """The reference: the stored Constant replaced by a copy, of the same element type, with the bit flipped."""
    clone = model.clone()
    _, source = site_outputs(clone, "weights")[site]
    constant = source.get_node() if source.get_node().get_type_name() == "Constant" else \
        source.get_node().input_value(0).get_node()  # fp16: Constant(f16) -> Convert
    values = weight_values(constant.output(0)).reshape(-1)
    values[element] = flip(values[element:element + 1], np.array([bit]), STORED_FORMATS[fmt])[0]
    element_type = constant.get_output_element_type(0)
    shape = constant.get_output_shape(0)
    data = values.astype(np.float16) if element_type == ov.Type.f16 else values.astype(np.int64)
    flipped = ov.op.Constant(element_type, shape, data.reshape(-1).tolist())
    for target in list(constant.output(0).get_target_inputs()):
        target.replace_source_output(flipped.output(0))
    return clone


def run_in_f32(model: ov.Model, x: np.ndarray) -> np.ndarray:
    """``model`` compiled without the CPU plugin's low-precision transformations: every layer computes in f32 on its
    decoded weights, as in the weights-as-inputs engine (Parameter weights are never given INT8 kernels). On a CPU
    without VNNI (AVX2 only, e.g. AMD EPYC) the INT8 convolution kernels add u8 x s8 products in pairs saturated
    to int16 (255 * 127 * 2 > 32767), so an NNCF INT8 model compiled as deployed differs from that arithmetic by
    up to 8% of the largest logit here, flipped or not (quantized with 7-bit weights, nncf's overflow_fix=enable,
    they agree to 1e-7)."""
    config = {"LP_TRANSFORMS_MODE": False}
    return compile_model(model, "CPU", precision="f32", config=config).create_infer_request().infer([x])[0].copy()


@pytest.mark.parametrize("kind, fmt", [("nncf_int8", "int8"), ("int8_asym", "uint8"), ("int8_sym", "int8"),
                                       ("int4_sym", "int4"), ("int4_asym", "uint4"), ("int4_asym", "uint8"),
                                       ("fp16", "fp16")])
def test_injected_run_equals_the_model_recompiled_with_the_flipped_constant(models, kind, fmt):
    model = models[kind]
    sites = [s for s in find_sites(model, "weights") if s.format == fmt]
    injector = WeightInjector(model, sites, SHAPES, number_format=STORED_FORMATS[fmt])
    x = images(6, seed=2).astype(np.float32)
    bits = parse_bits("all", STORED_FORMATS[fmt])
    struck = [s for s in sites if s.name != "fc1"]  # fc1 mostly reads zeros (ReLU + pooling): faults mask
    faults, _ = plan_faults(struck, np.arange(6), 24, bits, seed=4, weighting="uniform")
    index = {s.name: i for i, s in enumerate(sites)}
    changed = 0
    for fault in faults:
        sample = x[fault.input:fault.input + 1]
        ours = injector.run([sample], [WeightFlip(index[fault.site], fault.element, fault.mask)])[0]
        reference = run_in_f32(recompiled_with_stored_flip(model, fault.site, fault.element, fault.bit, fmt), sample)
        assert_same_output(ours, reference)
        changed += not np.array_equal(ours, injector.run([sample])[0])
    assert changed >= 3
    for i in range(6):  # every flip was undone
        assert_same_output(injector.run([x[i:i + 1]])[0], run_in_f32(model, x[i:i + 1]))


def test_campaign_takes_the_format_from_the_model(models):
    x = images(40, seed=1).astype(np.float32)
    result = inject(models["nncf_int8"], x, target="weights", trials=60, inputs=10, seed=1)
    assert result.spec.number_format == "int8" and result.spec.bits == tuple(range(8))
    assert {s.format for s in result.sites} == {"int8"}
    fp16 = inject(models["fp16"], x, target="weights", trials=60, inputs=10, seed=1)
    assert fp16.spec.number_format == "fp16" and fp16.spec.bits == tuple(range(16))
    legacy = inject(models["fp16"], x, target="weights", trials=60, inputs=10, seed=1, number_format="fp32")
    assert legacy.spec.bits == tuple(range(32))  # fp32 asked for: the decompressed f32 value is struck


def test_mixed_formats_need_a_choice(models):
    x = images(20, seed=1).astype(np.float32)
    with pytest.raises(ConfigError, match=r"several formats \(uint4: 2 site\(s\), uint8: 2 site\(s\)\).*"
                                         "--number-format"):
        inject(models["int4_asym"], x, target="weights", trials=10, inputs=5)
    chosen = inject(models["int4_asym"], x, target="weights", trials=40, inputs=5, number_format="uint4")
    assert [s.name for s in chosen.sites] == ["fc1", "fc2"] and chosen.spec.bits == (0, 1, 2, 3)
    with pytest.raises(ConfigError, match="no weights .* stored as int8"):
        inject(models["int4_asym"], x, target="weights", trials=10, inputs=5, number_format="int8")


def test_activation_faults_strike_before_the_fakequantize(models):
    """Sites are op outputs; a FakeQuantize is never one. A huge value at relu1 saturates in the FakeQuantize
    that reads it: the run equals the run with the FakeQuantize's upper input bound written there instead."""
    model = models["nncf_int8"]
    sites = find_sites(model, "activations", SHAPES)
    assert "FakeQuantize" not in {s.op for s in sites}
    relu = site_outputs(model, "activations")["relu1"][1]
    fq = [t.get_node() for t in relu.get_target_inputs() if t.get_node().get_type_name() == "FakeQuantize"][0]
    high = float(np.max(fq.input_value(2).get_node().get_data()))
    injector = ScatterInjector(model, "activations", ["relu1"], SHAPES, 1)
    x = images(1, seed=3).astype(np.float32)
    one = np.zeros(1, np.int64)
    huge, _ = injector.run([x], one, one, np.array([7]), np.array([3.0e38], np.float32))
    saturated, _ = injector.run([x], one, one, np.array([7]), np.array([high], np.float32))
    assert np.array_equal(huge[0], saturated[0])


def test_protected_quantized_model_keeps_the_weight_sites(models):
    from ovrange.protect import protect

    x = images(32, seed=5).astype(np.float32)
    protected = protect(models["nncf_int8"], x, subset_size=32)
    ours = [(s.name, s.shape, s.format) for s in find_sites(models["nncf_int8"], "weights")]
    assert [(s.name, s.shape, s.format) for s in find_sites(protected, "weights")] == ours
    result = inject(models["nncf_int8"], x, compare=protected, target="weights", trials=80, inputs=8, seed=2)
    assert result.spec.number_format == "int8" and len(result.models) == 2


@pytest.mark.parametrize("kind, fmt", [("nncf_int8", "int8"), ("int4_asym", "uint4"), ("fp16", "fp16")])
def test_batched_corrections_equal_the_recompiled_model(models, kind, fmt):
    """The delta engine: the struck layer's output corrected by decode(q') - decode(q) times its input."""
    model = models[kind]
    sites = [s for s in find_sites(model, "weights") if s.format == fmt]
    names = [s.name for s in sites]
    found = site_outputs(static_clone(model, SHAPES), "weights")
    layers = [linear_layer(*found[name]) for name in names]
    assert all(layers)
    x = images(8, seed=6).astype(np.float32)
    bits = parse_bits("all", STORED_FORMATS[fmt])
    faults, _ = plan_faults(sites, np.arange(8), 8, bits, seed=7, weighting="uniform")
    _, probes = ScatterInjector(model, "weights", names, SHAPES, 8, probe=True).run([x])
    taps, batch_rows, elements, values = [], [], [], []
    for b, fault in enumerate(faults):  # fault b strikes input b
        s = names.index(fault.site)
        index, value = layers[s].faulty_slices(np.array([fault.element]), np.array([fault.mask], np.uint64),
                                               STORED_FORMATS[fmt], probes[s][0][b:b + 1], probes[s][1][b:b + 1])
        taps += [s] * index.shape[1]
        batch_rows += [b] * index.shape[1]
        elements.append(index[0])
        values.append(value[0])
    injector = ScatterInjector(model, "weights", names, SHAPES, 8)
    ours, _ = injector.run([x], np.array(taps), np.array(batch_rows), np.concatenate(elements), np.concatenate(values))
    for b, fault in enumerate(faults):
        reference = run(recompiled_with_stored_flip(model, fault.site, fault.element, fault.bit, fmt), x[b:b + 1])
        assert_same_output(ours[0][b:b + 1], reference)


def test_delta_and_parameter_engines_agree_on_a_quantized_model(models):
    x = images(40, seed=8).astype(np.float32)
    runs = [inject(models["nncf_int8"], x, target="weights", trials=150, inputs=10, seed=3, weight_mode=mode)
            for mode in ("delta", "parameter")]
    assert "corrections" in next(iter(runs[0].meta["engines"].values()))
    assert np.array_equal(runs[0].models[0].outcome, runs[1].models[0].outcome)
    assert np.array_equal(runs[0].models[0].top1, runs[1].models[0].top1)


def test_cli_inject_weights_on_a_saved_int8_ir_reports_the_format(models, tmp_path):
    import subprocess
    import sys

    ov.save_model(models["nncf_int8"], str(tmp_path / "q.xml"), compress_to_fp16=False)
    np.save(tmp_path / "x.npy", images(30, seed=9).astype(np.float32))
    result = subprocess.run([sys.executable, "-m", "ovrange", "inject", tmp_path / "q.xml", "--data",
                             tmp_path / "x.npy", "--target", "weights", "-n", "64", "--num-samples", "8",
                             "--report", tmp_path / "report", "--no-plots", "-q"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "in int8 values" in summary and "| fc2 | MatMul, int8 |" in summary
    mixed = tmp_path / "mixed.xml"
    ov.save_model(models["int4_asym"], str(mixed), compress_to_fp16=False)
    refused = subprocess.run([sys.executable, "-m", "ovrange", "inject", mixed, "--data", tmp_path / "x.npy",
                              "--target", "weights", "-n", "8", "-q"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--number-format uint4" in refused.stderr


def test_stored_formats_flip_the_pattern_the_memory_holds():
    f = STORED_FORMATS
    assert flip(np.array([3.0, -128.0, 127.0]), np.array([7, 7, 0]), f["int8"]).tolist() == [-125.0, 0.0, 126.0]
    assert flip(np.array([3.0, 255.0]), np.array([7, 0]), f["uint8"]).tolist() == [131.0, 254.0]
    assert flip(np.array([3.0, -8.0]), np.array([3, 3]), f["int4"]).tolist() == [-5.0, 0.0]
    assert flip(np.array([3.0, 15.0]), np.array([3, 0]), f["uint4"]).tolist() == [11.0, 14.0]
    half = flip(np.array([1.0, 0.5, 65504.0]), np.array([14, 15, 0]), f["fp16"])
    assert half[0] == np.inf and half[1] == -0.5 and half[2] == np.float32(np.float16(65472.0))
    assert parse_bits("exponent", f["fp16"]) == tuple(range(10, 15)) and parse_bits("sign", f["int8"]) == (7,)
    assert parse_bits("all", f["uint4"]) == (0, 1, 2, 3)
    with pytest.raises(ConfigError, match="outside 0..3 of int4"):
        parse_bits("5", f["int4"])


def test_bit_error_rate_mode_and_named_bits_on_stored_formats(models):
    x = images(20, seed=4).astype(np.float32)
    result = inject(models["nncf_int8"], x, target="weights", trials=20, inputs=5, ber=2e-3, seed=1)
    assert result.spec.number_format == "int8" and int(result.faults_per_trial.sum()) > 20  # several flips per trial
    assert all(run.done.all() for run in result.models)
    signs = inject(models["nncf_int8"], x, target="weights", trials=20, inputs=5, bits="sign")
    assert signs.spec.bits == (7,)  # named groups under auto are taken in the model's format
    exponent = inject(models["fp16"], x, target="weights", trials=20, inputs=5, bits="exponent")
    assert exponent.spec.bits == tuple(range(10, 15))
    with pytest.raises(ConfigError, match="outside 0..7 of int8"):
        inject(models["nncf_int8"], x, target="weights", trials=5, inputs=5, bits="12")
