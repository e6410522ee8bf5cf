"""POT-style configs: JSON with comments and YAML, validation errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovrange.config import load_config, parse_config
from ovrange.errors import ConfigError

POT_KEYS = ("stat_subset_size", "stat_batch_size", "shuffle_data", "seed")

POT_JSON = """
/* A config as POT users wrote them: comments and all. */
{
    "model": {
        "model_name": "lenet",          // name of the result folder
        "model": "models/lenet.xml",
        "weights": "models/lenet.bin"
    },
    "engine": {
        "type": "simplified",
        "data_source": "calib",          /* folder of images */
        "layout": "NCHW"
    },
    "compression": {
        "target_device": "ANY",
        "algorithms": [
            {
                "name": "RangeSupervision",
                "params": {
                    "stat_subset_size": 300,
                    "stat_batch_size": 1,
                    "shuffle_data": false,
                    "seed": 0,
                }
            }
        ]
    }
}
"""


def test_pot_json_with_comments(tmp_path: Path):
    path = tmp_path / "cfg" / "pot.json"
    path.parent.mkdir()
    path.write_text(POT_JSON)
    cfg = load_config(path)
    assert cfg.model_name == "lenet"
    assert cfg.model == path.parent / "models/lenet.xml"
    assert cfg.weights == path.parent / "models/lenet.bin"
    assert cfg.data_source == path.parent / "calib"
    assert cfg.layout == "NCHW"
    assert cfg.device == "CPU"
    assert cfg.algorithm.name == "RangeSupervision"
    assert (cfg.algorithm.subset_size, cfg.algorithm.batch_size, cfg.algorithm.shuffle, cfg.algorithm.seed) == (
        300, 1, False, 0)


def test_yaml_equivalent(tmp_path: Path):
    path = tmp_path / "pot.yaml"
    path.write_text("model: {model: m.xml}\nengine: {data_source: imgs}\ncompression:\n  algorithms:\n"
                    "    - name: RangeSupervision\n      params: {stat_subset_size: 7, shuffle_data: true, seed: 3}\n")
    cfg = load_config(path)
    assert {k: cfg.algorithm.params[k] for k in POT_KEYS} == {"stat_subset_size": 7, "stat_batch_size": 1,
                                                              "shuffle_data": True, "seed": 3}
    assert cfg.model == tmp_path / "m.xml"


def test_defaults_match_pot():
    cfg = parse_config({})
    assert {k: cfg.algorithm.params[k] for k in POT_KEYS} == {"stat_subset_size": 300, "stat_batch_size": 1,
                                                              "shuffle_data": False, "seed": 0}


def test_overrides_are_validated():
    cfg = parse_config({}).with_overrides(stat_subset_size=20, stat_batch_size=None)
    assert cfg.algorithm.subset_size == 20 and cfg.algorithm.batch_size == 1
    with pytest.raises(ConfigError, match="stat_subset_size.*must be > 0"):
        cfg.with_overrides(stat_subset_size=0)


def algo(params: dict) -> dict:
    return {"compression": {"algorithms": [{"name": "RangeSupervision", "params": params}]}}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"modle": {}}, "unknown key 'modle'"),
        ({"engine": {"data_sources": "x"}}, r"unknown key engine.'data_sources'"),
        ({"engine": {"type": "accuracy_checker"}}, "not supported"),
        ({"model": {"model": 3}}, "model.model .* must be str"),
        (algo({"stat_subset_size": 0}), "stat_subset_size .*must be > 0"),
        (algo({"stat_subset_size": -5}), "must be > 0"),
        (algo({"stat_subset_size": "300"}), "stat_subset_size .*must be int, got str"),
        (algo({"stat_batch_size": 1.5}), "must be int, got float"),
        (algo({"shuffle_data": 1}), "must be bool"),
        (algo({"subset": 3}), "unknown parameter 'subset'"),
        ({"compression": {"algorithms": [{"name": "DefaultQuantization"}]}}, "no protection step"),
        ({"compression": {"algorithms": []}}, "empty"),
    ],
)
def test_invalid_configs_name_the_problem(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_bad_syntax_is_one_line(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('{"model": {\n  "model": "x.xml"\n')
    with pytest.raises(ConfigError, match=r"invalid JSON in .*bad.json at line \d+"):
        load_config(path)
    assert json.loads('{"a": 1}')  # plain JSON still parses
