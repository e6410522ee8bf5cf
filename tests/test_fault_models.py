"""Fault models behind one seam: masks and operations exact against a pure-Python reference, drawn as specified,
applied exactly by the engines (single faults, weight faults, the activation error-rate cascade), and replayed
exactly from a saved fault list; bad fault models and rates are one-line errors."""

from __future__ import annotations

import struct

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from ovrange.errors import ConfigError
from ovrange.faults import inject
from ovrange.faults import rate_engine
from ovrange.faults.faultlist import Fault, FaultArrays, FaultList, plan_faults
from ovrange.faults.formats import FORMATS, apply_mask, parse_fault_model
from ovrange.faults.injectors import ScatterInjector, WeightFlip, WeightInjector
from ovrange.faults.linear import linear_layer
from ovrange.faults.rate_engine import cascade
from ovrange.faults.sites import find_sites, site_outputs, static_clone
from tests.test_faults_exact import assert_same_output, run
from tests.test_faults_sites import SHAPES, images, tiny_lenet

OPS = ("flip", "set", "clear")


def reference_fp32(value: float, mask: int, op: str) -> float:
    """Python ints on the IEEE pattern from ``struct``: independent of numpy views."""
    pattern = struct.unpack("<I", struct.pack("<f", value))[0]
    pattern = pattern ^ mask if op == "flip" else pattern | mask if op == "set" else pattern & ~mask & 0xFFFFFFFF
    return struct.unpack("<f", struct.pack("<I", pattern))[0]


def reference_fixed(value: float, mask: int, op: str, bits: int, frac: int) -> float:
    q = max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, round(value * (1 << frac))))  # round half to even
    pattern = q & ((1 << bits) - 1)
    pattern = pattern ^ mask if op == "flip" else pattern | mask if op == "set" else pattern & ~mask
    pattern &= (1 << bits) - 1
    signed = pattern - (1 << bits) if pattern >> (bits - 1) else pattern
    return signed / (1 << frac)


@pytest.mark.parametrize("fmt", ["fp32", "fixed32", "fixed16"])
@pytest.mark.parametrize("op", OPS)
def test_masks_match_a_pure_python_reference_in_every_format(fmt, op):
    rng = np.random.default_rng(1)
    form = FORMATS[fmt]
    values = (rng.standard_normal(400) * 50).astype(np.float32)
    model = parse_fault_model("bits:6" if op == "flip" else "word:0.75")
    masks = model.draw_masks(rng, 400, tuple(range(form.bits)), form)
    ours = apply_mask(values, masks, form, op)
    for v, m, o in zip(values.tolist(), masks.tolist(), ours.tolist()):
        if form.is_float:
            expected = reference_fp32(v, int(m), op)
        else:
            expected = reference_fixed(v, int(m), op, form.bits, form.frac)
        assert (np.isnan(o) and np.isnan(expected)) or np.float32(o) == np.float32(expected)
    per_value = apply_mask(values, masks, form, np.array([op] * 400))  # per-fault operations: the same
    assert np.array_equal(per_value.view(np.uint32), ours.view(np.uint32))


def test_fault_models_draw_what_they_promise():
    rng = np.random.default_rng(0)
    fp32, allowed = FORMATS["fp32"], tuple(range(23, 32))
    six = parse_fault_model("bits:6").draw_masks(rng, 2000, allowed, fp32)
    assert all(bin(int(m)).count("1") == 6 and int(m) >> 23 << 23 == int(m) for m in six)
    word = parse_fault_model("word:0.75").draw_masks(rng, 4000, tuple(range(32)), fp32)
    runs = [bin(int(m)).strip("0b") for m in word]
    assert all(set(r) == {"1"} for r in runs)  # one contiguous burst each
    widths = np.array([len(r) for r in runs])
    assert 5.0 < widths.mean() < 7.5  # 1 + 2 * 0.75 / 0.25 = 7 without the edges, fewer with them
    assert (widths == 1).mean() == pytest.approx(0.0625, abs=0.02)  # both neighbours stay: 0.25 * 0.25
    assert all(bin(int(m)).count("1") == 1 for m in parse_fault_model("word:0").draw_masks(rng, 100, allowed, fp32))
    assert all(int(m) == 0xFFFFFFFF for m in parse_fault_model("word:1").draw_masks(rng, 10, allowed, fp32))
    stuck = parse_fault_model("stuck-at-1")
    assert stuck.op == "set" and parse_fault_model("stuck-at-0").op == "clear" and str(stuck) == "stuck-at-1"
    assert str(parse_fault_model("WORD:0.75")) == "word:0.75" and str(parse_fault_model(None)) == "bit"


@pytest.mark.parametrize("spec, message", [("flip", "unknown fault model"), ("bits:0", "unknown fault model"),
                                           ("word:1.5", r"in \[0, 1\]"), ("word:-0.1", r"in \[0, 1\]")])
def test_bad_fault_models_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_fault_model(spec)


def test_single_bit_plans_are_unchanged_by_the_mask_seam():
    sites = find_sites(tiny_lenet(), "activations", SHAPES)
    faults, _ = plan_faults(sites, np.array([3, 7]), 500, (23, 30), seed=5)
    assert {f.mask for f in faults} == {1 << 23, 1 << 30} and {f.op for f in faults} == {"flip"}
    stuck, _ = plan_faults(sites, np.array([3, 7]), 500, (23, 30), seed=5, fault_model="stuck-at-0")
    assert [(f.site, f.element, f.mask) for f in stuck] == [(f.site, f.element, f.mask) for f in faults]
    assert {f.op for f in stuck} == {"clear"}


def test_multi_bit_and_stuck_at_weight_faults_equal_the_recompiled_constant():
    model = tiny_lenet()
    x = images(6).astype(np.float32)
    sites = find_sites(model, "weights")
    injector = WeightInjector(model, sites, SHAPES)
    index = {s.name: i for i, s in enumerate(sites)}
    struck = [s for s in sites if s.name != "fc1"]
    changed = 0
    for model_spec in ("bits:6", "word:0.75", "stuck-at-1", "stuck-at-0"):
        faults, _ = plan_faults(struck, np.arange(6), 6, tuple(range(20, 32)), seed=3, fault_model=model_spec)
        for fault in faults:
            ours = injector.run([x[fault.input:fault.input + 1]],
                                [WeightFlip(index[fault.site], fault.element, fault.mask, fault.op)])[0]
            clone = model.clone()
            node, source = site_outputs(clone, "weights")[fault.site]
            weights = source.get_node().get_data().copy()
            weights.reshape(-1)[fault.element] = apply_mask(weights.reshape(-1)[fault.element:fault.element + 1],
                                                            np.array([fault.mask]), op=fault.op)[0]
            node.input(1).replace_source_output(ops.constant(weights).output(0))
            reference = run(clone, x[fault.input:fault.input + 1])
            assert_same_output(ours, reference)
            changed += not np.allclose(ours, run(model, x[fault.input:fault.input + 1]))
    assert changed >= 6


def test_delta_engine_applies_masks_and_operations():
    model = tiny_lenet()
    x = images(8, seed=4).astype(np.float32)
    sites = find_sites(model, "weights")
    names = [s.name for s in sites]
    found = site_outputs(static_clone(model, SHAPES), "weights")
    layers = [linear_layer(*found[name]) for name in names]
    faults, _ = plan_faults(sites, np.arange(8), 8, tuple(range(24, 31)), seed=2, weighting="uniform",
                            fault_model="stuck-at-1")
    _, probes = ScatterInjector(model, "weights", names, SHAPES, 8, probe=True).run([x])
    for b, fault in enumerate(faults):
        s = names.index(fault.site)
        index, value = layers[s].faulty_slices(np.array([fault.element]), np.array([fault.mask], np.uint64),
                                               FORMATS["fp32"], probes[s][0][b:b + 1], probes[s][1][b:b + 1],
                                               np.array([fault.op]))
        out = probes[s][1][b].reshape(-1).copy()
        out[index[0]] = value[0]
        clone = model.clone()
        node, source = site_outputs(clone, "weights")[fault.site]
        weights = source.get_node().get_data().copy()
        weights.reshape(-1)[fault.element] = apply_mask(weights.reshape(-1)[fault.element:fault.element + 1],
                                                        np.array([fault.mask]), op="set")[0]
        node.input(1).replace_source_output(ops.constant(weights).output(0))
        head = ov.Model([ops.result(node.output(0))], list(clone.get_parameters()), "head")
        assert_same_output(out, run(head, x[b:b + 1]).reshape(-1))


def chain() -> ov.Model:
    """x -> *3 -> +1 -> Relu -> *0.5: every step exact in f32 numpy, so a cascade has a bit-exact reference."""
    x = ops.parameter([-1, 2, 5], ov.Type.f32, name="x")
    a = ops.multiply(x, ops.constant(np.float32(3.0)), name="a")
    b = ops.add(a, ops.constant(np.float32(1.0)), name="b")
    c = ops.relu(b, name="c")
    d = ops.multiply(c, ops.constant(np.float32(0.5)), name="d")
    return ov.Model([ops.result(d)], [x], "chain")


def numpy_cascade(x: np.ndarray, faults: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    steps = [("a", lambda v: v * np.float32(3)), ("b", lambda v: v + np.float32(1)),
             ("c", lambda v: np.maximum(v, np.float32(0))), ("d", lambda v: v * np.float32(0.5))]
    v = x.reshape(-1).astype(np.float32)
    for name, step in steps:
        v = step(v).astype(np.float32)
        if name in faults:
            element, mask, op = faults[name]
            v[element] = apply_mask(v[element], mask, op=op)
    return v.reshape(x.shape)


def test_activation_error_rate_cascade_is_bit_exact_against_numpy():
    model = chain()
    shapes = [(2, 5)]
    sites = find_sites(model, "activations", shapes)
    assert [s.name for s in sites] == ["a", "b", "c", "d"]
    x = np.random.default_rng(0).uniform(-2, 2, (4, 2, 5)).astype(np.float32)
    faults, _ = plan_faults(sites, np.arange(4), 4, tuple(range(32)), seed=1, fault_model="bits:3",
                            error_rate=0.3)
    assert len({f.site for f in faults}) >= 3 and len(faults) >= 8
    injector = ScatterInjector(model, "activations", [s.name for s in sites], shapes, 4, probe=True)
    per_row = [FaultArrays.of(tuple(f for f in faults if f.trial == t), tuple(sites)) for t in range(4)]
    ours = cascade(injector, [x], per_row, FORMATS["fp32"])[0]  # row t carries trial t's faults
    for t in range(4):
        mine = [f for f in faults if f.trial == t]
        by_site = {name: (np.array([f.element for f in mine if f.site == name], np.int64),
                          np.array([f.mask for f in mine if f.site == name], np.uint64), "flip")
                   for name in {f.site for f in mine}}
        expected = numpy_cascade(x[t], by_site)
        assert np.array_equal(ours[t].view(np.uint32), expected.view(np.uint32))


def test_error_rate_campaigns_replay_exactly_from_the_saved_fault_list(tmp_path):
    x = images(40, seed=3)
    y = run(tiny_lenet(), x.astype(np.float32)).argmax(1)
    settings = dict(labels=y, trials=60, seed=4, inputs=10, batch_size=16)
    first = inject(tiny_lenet(), x, error_rate=2e-3, fault_model="word:0.75", checkpoint_dir=tmp_path / "a",
                   **settings)
    saved = FaultList.load(tmp_path / "a" / "faults.jsonl")
    assert saved.fault_model == "word:0.75" and saved.error_rate == 2e-3 and len(saved.faults) > 60
    assert any(bin(f.mask).count("1") > 1 for f in saved.faults)
    again = inject(tiny_lenet(), x, replay=tmp_path / "a" / "faults.jsonl", **settings)
    assert np.array_equal(first.models[0].outcome, again.models[0].outcome)
    assert np.array_equal(first.models[0].deviation, again.models[0].deviation, equal_nan=True)
    assert again.spec.fault_model == "word:0.75" and again.spec.error_rate == 2e-3
    assert (first.models[0].outcome != 0).any()  # the faults did something
    single = inject(tiny_lenet(), x, fault_model="stuck-at-1", bits="30", checkpoint_dir=tmp_path / "b", **settings)
    replayed = inject(tiny_lenet(), x, replay=tmp_path / "b" / "faults.jsonl", **settings)
    assert np.array_equal(single.models[0].outcome, replayed.models[0].outcome)


def test_the_error_rate_engine_compiles_once_for_all_its_shards(monkeypatch):
    built = []

    def counted(*args, **kwargs):
        built.append(args[0])
        return ScatterInjector(*args, **kwargs)

    monkeypatch.setattr(rate_engine, "ScatterInjector", counted)
    x = images(40, seed=3)
    y = run(tiny_lenet(), x.astype(np.float32)).argmax(1)
    settings = dict(labels=y, trials=60, seed=4, inputs=10, batch_size=8, lanes=1, error_rate=2e-3)
    sharded = inject(tiny_lenet(), x, shard_size=16, **settings)  # 4 shards
    assert len(built) == 1
    whole = inject(tiny_lenet(), x, shard_size=64, **settings)
    assert np.array_equal(sharded.models[0].outcome, whole.models[0].outcome)
    assert np.array_equal(sharded.models[0].deviation, whole.models[0].deviation, equal_nan=True)
    assert (whole.models[0].outcome != 0).any()  # the faults did something


def test_version_one_fault_lists_still_load(tmp_path):
    sites = find_sites(tiny_lenet(), "activations", SHAPES)
    header = FaultList("activations", "fp32", tuple(sites), (0,), (), 1).header()
    header["version"] = 1
    import json

    path = tmp_path / "v1.jsonl"
    path.write_text(json.dumps(header) + "\n" + json.dumps([0, 0, "conv1", 3, 30]) + "\n")
    loaded = FaultList.load(path)
    assert loaded.faults == (Fault(0, 0, "conv1", 3, 1 << 30),) and loaded.fault_model == "bit"


def test_many_fixed_point_weight_faults_in_one_inference_equal_the_recompiled_constant():
    model = tiny_lenet()
    x = images(2).astype(np.float32)
    sites = find_sites(model, "weights")
    fmt = FORMATS["fixed16"]
    injector = WeightInjector(model, sites, SHAPES, number_format=fmt)
    faults, _ = plan_faults(sites, np.arange(2), 1, tuple(range(16)), seed=4, error_rate=0.05, fault_model="bits:3",
                            fmt=fmt)
    assert len(faults) > 20 and len({f.site for f in faults}) >= 3
    index = {s.name: i for i, s in enumerate(sites)}
    ours = injector.run([x[faults[0].input:faults[0].input + 1]],
                        [WeightFlip(index[f.site], f.element, f.mask, f.op) for f in faults])[0]
    clone = model.clone()
    found = site_outputs(clone, "weights")
    for site in {f.site for f in faults}:
        node, source = found[site]
        weights = source.get_node().get_data().copy().reshape(-1)
        mine = [f for f in faults if f.site == site]
        where = np.array([f.element for f in mine])
        weights[where] = apply_mask(weights[where], np.array([f.mask for f in mine]), fmt)
        node.input(1).replace_source_output(ops.constant(weights.reshape(source.get_shape())).output(0))
    assert_same_output(ours, run(clone, x[faults[0].input:faults[0].input + 1]))
    golden = injector.run([x[faults[0].input:faults[0].input + 1]])[0]  # every value restored
    assert_same_output(golden, run(model, x[faults[0].input:faults[0].input + 1]))
