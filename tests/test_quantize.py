"""POT chains (DefaultQuantization / WeightCompression by nncf, then a protection) on the bundled models."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from ovrange import data as data_mod
from ovrange.config import parse_config
from ovrange.errors import ConfigError, ModelError
from ovrange.evaluate import predict, top1
from ovrange.faults.sites import find_sites
from ovrange.protect import chain_name, protection_info, run_chain
from ovrange.quantize import apply, quantization_info, quantized_form

REPO = Path(__file__).resolve().parent.parent
CHAIN = [{"name": "DefaultQuantization", "params": {"stat_subset_size": 300}},
         {"name": "RangeSupervision", "params": {"stat_subset_size": 300}}]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def op_counts(model: ov.Model) -> Counter:
    return Counter(node.get_type_name() for node in model.get_ops())


def accuracy(model: ov.Model, test: dict) -> float:
    return float((top1(predict(model, test["x"], batch_size=500)) == test["y"]).mean())


@pytest.mark.parametrize("arch", ["lenet", "seven"])
def test_default_quantization_then_range_supervision_within_one_point(bundled, arch):
    paths = bundled[arch]
    model = ov.Core().read_model(paths["xml"])
    config = parse_config({"compression": {"algorithms": CHAIN}})
    dataset = data_mod.load(paths["calib_dir"], model).dataset
    protected = run_chain(model, dataset, config.algorithms)
    counts = op_counts(protected)
    assert counts["FakeQuantize"] > 0 and counts["Clamp"] == len(protection_info(protected).nodes) > 0
    assert {s.format for s in find_sites(protected, "weights")} == {"int8"}
    assert [step["algorithm"] for step in quantization_info(protected)] == ["DefaultQuantization"]
    assert quantized_form(model) is None  # the input model was not touched
    test = dict(np.load(paths["test_npz"]))
    assert abs(accuracy(protected, test) - accuracy(model, test)) <= 0.01


@pytest.mark.parametrize("mode, params, formats", [
    ("INT8_ASYM", {}, {"uint8"}),
    ("INT8_SYM", {}, {"int8"}),
    ("INT4_SYM", {"group_size": 4, "all_layers": True}, {"int4", "uint8"}),  # convolutions stay INT8
    ("INT4_ASYM", {"group_size": 4}, {"uint4", "uint8"}),  # first and last layers stay INT8 (nncf's backup)
])
def test_weight_compression_modes_store_their_format(bundled, mode, params, formats):
    model = ov.Core().read_model(bundled["lenet"]["xml"])
    config = parse_config({"compression": {"algorithms": [
        {"name": "WeightCompression", "params": {"mode": mode, **params}}, {"name": "RangeSupervision"}]}})
    compressed = apply(model, None, config.quantization[0])
    assert {s.format for s in find_sites(compressed, "weights")} == formats
    assert quantized_form(model) is None and quantized_form(compressed) is not None


@pytest.mark.parametrize("algorithms, message", [
    ([{"name": "DefaultQuantization", "params": {"preset": "fastest"}}, {"name": "RangeSupervision"}],
     "preset .* must be one of performance, mixed"),
    ([{"name": "AccuracyAwareQuantization"}, {"name": "RangeSupervision"}],
     "needs a validation function .* nncf.quantize_with_accuracy_control"),
    ([{"name": "WeightCompression", "params": {"mode": "INT4_SYM", "group_size": 0}}, {"name": "RangeSupervision"}],
     "group_size .* must be -1"),
    ([{"name": "WeightCompression", "params": {"group_size": 64}}, {"name": "RangeSupervision"}],
     "group_size and ratio apply to INT4 modes only"),
    ([{"name": "WeightCompression", "params": {"mode": "INT5"}}, {"name": "RangeSupervision"}], "mode .* one of"),
    ([{"name": "DefaultQuantization", "params": {"ignored": {"scope": "conv"}}}, {"name": "RangeSupervision"}],
     "lists of strings"),
    ([{"name": "DefaultQuantization"}], "no protection step"),
    ([{"name": "RangeSupervision"}, {"name": "Ranger"}], "a chain holds one"),
])
def test_bad_chains_are_one_line_config_errors(algorithms, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config({"compression": {"algorithms": algorithms}})
    assert "\n" not in str(info.value)


def test_quantizing_a_quantized_model_is_refused(bundled):
    model = ov.Core().read_model(bundled["lenet"]["xml"])
    step = parse_config({"compression": {"algorithms": [{"name": "WeightCompression"},
                                                        {"name": "RangeSupervision"}]}}).quantization[0]
    with pytest.raises(ModelError, match=r"already quantized \(u8 weights\)"):
        apply(apply(model, None, step), None, step)


def test_group_size_that_does_not_divide_the_channels_is_a_config_error(bundled):
    model = ov.Core().read_model(bundled["lenet"]["xml"])
    step = parse_config({"compression": {"algorithms": [
        {"name": "WeightCompression", "params": {"mode": "INT4_SYM", "group_size": 16}},
        {"name": "RangeSupervision"}]}}).quantization[0]
    with pytest.raises(ConfigError, match="group_size 16 does not divide .*channel size: 120") as info:
        apply(model, None, step)
    assert "\n" not in str(info.value)


def test_chain_order_and_folder_name():
    config = parse_config({"compression": {"algorithms": [
        {"name": "RangeSupervision"}, {"name": "WeightCompression"}, {"name": "DefaultQuantization"}]}})
    assert chain_name(config.algorithms) == "WeightCompression_DefaultQuantization_RangeSupervision"
    assert config.algorithm.name == "RangeSupervision"
    assert config.with_overrides(stat_subset_size=7).algorithm.subset_size == 7
    assert config.with_overrides(stat_subset_size=7).quantization == config.quantization


def test_pot_chain_config_runs_unchanged_from_the_cli(bundled, tmp_path):
    result = run_cli("protect", "--config", REPO / "configs/fashion_lenet_int8.json", "-o", tmp_path, "-q")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "fashion_lenet_DefaultQuantization_RangeSupervision"
    assert sorted(p.name for p in out.iterdir()) == ["bounds.json", "fashion_lenet.bin", "fashion_lenet.xml"]
    saved = ov.Core().read_model(out / "fashion_lenet.xml")
    counts = op_counts(saved)
    assert counts["FakeQuantize"] == 5 and counts["Clamp"] == 4
    assert {s.format for s in find_sites(saved, "weights")} == {"int8"}  # stored as i8 in the IR
    assert json.loads((out / "bounds.json").read_text())["algorithm"] == "RangeSupervision"


def test_bad_chain_writes_nothing(bundled, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"model": str(bundled["lenet"]["xml"])},
                                  "engine": {"data_source": str(bundled["lenet"]["calib_dir"])},
                                  "compression": {"algorithms": [
                                      {"name": "WeightCompression", "params": {"mode": "INT4_ASYM", "group_size": 7}},
                                      {"name": "RangeSupervision"}]}}))
    result = run_cli("protect", "--config", config, "-o", tmp_path / "out", "-q")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: WeightCompression group_size 7")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nncf_is_imported_only_by_quantization_steps(bundled):
    code = ("import sys, numpy as np, openvino as ov; from ovrange.cli import app; from ovrange.protect import protect; "
            f"m = ov.Core().read_model({str(bundled['lenet']['xml'])!r}); "
            "protect(m, np.zeros((4, 1, 28, 28), np.float32)); print('nncf' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
