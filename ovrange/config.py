"""POT-style configuration files (JSON with comments, or YAML) -> typed settings.

The layout OpenVINO POT used runs unchanged::

    {
      "model": {"model_name": "lenet", "model": "lenet.xml", "weights": "lenet.bin"},
      "engine": {"type": "simplified", "data_source": "calib/", "layout": "NCHW"},
      "compression": {"algorithms": [{"name": "RangeSupervision",
                                      "params": {"stat_subset_size": 300, "stat_batch_size": 1}}]}
    }

Paths are relative to the config file. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ovrange.algorithms import PROTECTIONS, QUANTIZATIONS, AlgorithmConfig, schema
from ovrange.compare import SdcCriterion
from ovrange.errors import ConfigError
from ovrange.modelio import check_name
from ovrange.params import validate
from ovrange.validate import DEFAULT_HOLDOUT, check_fraction

ENGINE_TYPES = ("simplified",)


# POT chains: quantization steps that nncf runs before the protection (the registry: ovrange/algorithms.py).
QUANTIZATION_ALGORITHMS = tuple(QUANTIZATIONS)


@dataclass(frozen=True)
class ProtectConfig:
    """Everything ``ovrange protect`` needs, with paths resolved."""

    model_name: str | None = None
    model: Path | None = None
    weights: Path | None = None
    data_source: Path | None = None
    layout: str | None = None
    images: dict[str, Any] = field(default_factory=dict)  # engine.mean_values/scale_values/color_order/shape
    device: str = "CPU"
    algorithms: tuple[AlgorithmConfig, ...] = field(default_factory=lambda: (default_algorithm(),))
    source: Path | None = None
    holdout: float = DEFAULT_HOLDOUT  # compression.holdout: share of the calibration subset held out (0: off)
    sdc: str | None = None  # compression.sdc: the model's SDC criterion for the held-out check
    max_overhead: str | float | None = None  # compression.max_overhead: latency budget in percent (ovrange.budget)

    @property
    def algorithm(self) -> AlgorithmConfig:
        """The protection step (a chain lists quantization steps too: see :attr:`quantization`)."""
        return self.algorithms[self._protection_index]

    @property
    def quantization(self) -> tuple[AlgorithmConfig, ...]:
        """The quantization steps of a POT chain, in the order listed (they run before the protection)."""
        return tuple(a for a in self.algorithms if a.name in QUANTIZATION_ALGORITHMS)

    @property
    def _protection_index(self) -> int:
        return next((i for i, a in enumerate(self.algorithms) if a.name not in QUANTIZATION_ALGORITHMS), 0)

    def with_overrides(self, **params: Any) -> "ProtectConfig":
        """Apply command-line overrides (None means 'not given') to the protection step's parameters."""
        given = {key: value for key, value in params.items() if value is not None}
        if not given:
            return self
        algorithm = make_algorithm(self.algorithm.name, {**self.algorithm.params, **given}, "command line")
        index = self._protection_index
        return replace(self, algorithms=(*self.algorithms[:index], algorithm, *self.algorithms[index + 1:]))


def default_algorithm(name: str = "RangeSupervision") -> AlgorithmConfig:
    return make_algorithm(name, {}, "defaults")


def make_algorithm(name: str, params: dict[str, Any], where: str) -> AlgorithmConfig:
    """Validate ``params`` of algorithm ``name`` against its schema and fill defaults."""
    if name not in PROTECTIONS and name not in QUANTIZATION_ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r} in {where}; available: "
                          f"{', '.join([*PROTECTIONS, *QUANTIZATION_ALGORITHMS[:2]])}")
    params_schema, check = schema(name)
    return AlgorithmConfig(name, validate(name, params_schema, params, where, check))


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["bound=percentile", "percentile=99.9"]`` -> ``{"bound": "percentile", "percentile": 99.9}`` (YAML values)."""
    import yaml

    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--param {key}: cannot parse value {value!r}") from exc
    return parsed


# ---------------------------------------------------------------------------------------------------------------
# Files


def load_config(path: str | Path) -> ProtectConfig:
    """Read a POT-style JSON (comments allowed) or YAML config file."""
    path = Path(path)
    raw = read_mapping(path)
    return parse_config(raw, base_dir=path.parent, source=path)


MAX_DEPTH = 64  # nesting of a config or plan: POT's layout needs 5
MAX_YAML_NODES = 1_000_000  # YAML nodes once aliases are expanded (a 1 KB alias bomb expands to billions)


def read_mapping(path: str | Path, what: str = "config file", default: str = "json") -> dict[str, Any]:
    """The one config reader: a regular file of bounded size, UTF-8, parsed as JSON with comments (``.json``) or
    YAML (``.yaml``/``.yml``; other suffixes: ``default``), with nesting and YAML alias expansion bounded, into a
    dict; every problem is one ConfigError."""
    from ovrange.modelio import read_text

    path = Path(path)
    text = read_text(path, what, ConfigError)
    kind = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(path.suffix.lower(), default)
    try:
        raw = _load_yaml(text, path) if kind == "yaml" else _load_json(text, path)
    except RecursionError:
        raise ConfigError(f"{path} is nested deeper than the limit of {MAX_DEPTH} levels") from None
    check_depth(raw, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must contain a mapping at the top level")
    return raw


def _load_json(text: str, path: Path) -> Any:
    try:
        return json.loads(strip_json_comments(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON in {path} at line {exc.lineno}: {exc.msg}") from exc


def _load_yaml(text: str, path: Path) -> Any:
    """``yaml.safe_load`` that first measures the node graph: aliases make it a DAG whose expansion can be
    exponential in the file size, and anything that walks the result (validation, an error message) walks that
    expansion."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_size(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from exc
    finally:
        loader.dispose()


def _check_yaml_size(root: Any, path: Path) -> None:
    """Nodes and depth of the expanded document, counted on the shared graph (each node once, no recursion)."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            children = list(node.value) if isinstance(node, yaml.SequenceNode) else []
        if not children_done:
            if id(node) in size:
                continue
            if id(node) in open_nodes:
                raise ConfigError(f"{path} has a recursive YAML alias (a node that contains itself)")
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)
            continue
        open_nodes.discard(id(node))
        size[id(node)] = 1 + sum(size[id(child)] for child in children)
        depth[id(node)] = 1 + max((depth[id(child)] for child in children), default=0)
        if size[id(node)] > MAX_YAML_NODES:
            raise ConfigError(f"{path} expands to more than {MAX_YAML_NODES} YAML nodes (through aliases): the "
                              "limit")
        if depth[id(node)] > MAX_DEPTH:
            raise ConfigError(f"{path} is nested deeper than the limit of {MAX_DEPTH} levels")


def check_depth(value: Any, where: str, limit: int = MAX_DEPTH) -> None:
    """ConfigError when lists/dicts in ``value`` nest deeper than ``limit`` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level > limit:
                raise ConfigError(f"{where} is nested deeper than the limit of {limit} levels")
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))


_JSON_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/|[^"/,]+|.', re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*[}\]]")


def strip_json_comments(text: str) -> str:
    """Remove // and /* */ comments and trailing commas outside strings (POT configs used both)."""
    out = []
    for match in _JSON_TOKENS.finditer(text):
        token = match.group(0)
        if token.startswith("//") or token.startswith("/*"):
            out.append("\n" * token.count("\n"))  # keep line numbers right for error messages
        elif token == "," and _TRAILING_COMMA.match(text, match.start()):
            continue
        else:
            out.append(token)
    return "".join(out)


_SECTIONS = {
    "model": {"model_name": str, "model": str, "weights": str},
    "engine": {"type": str, "data_source": str, "layout": str, "device": str,
               # image-folder preprocessing (ovrange.images.ImageOptions): MO's mean/scale values, colour, static shape
               "mean_values": list, "scale_values": list, "color_order": str, "shape": (str, list)},
    "compression": {"target_device": str, "algorithms": list, "holdout": (int, float), "sdc": str,
                    "max_overhead": (str, int, float)},
}


def parse_config(raw: dict[str, Any], base_dir: Path = Path("."), source: Path | None = None) -> ProtectConfig:
    """Validate a POT-layout mapping; relative paths are resolved against ``base_dir``."""
    where = str(source) if source else "config"
    for section, value in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown key {section!r} in {where}; known: {', '.join(_SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{section!r} in {where} must be a mapping, got {type(value).__name__}")
        for key, item in value.items():
            if key not in _SECTIONS[section]:
                raise ConfigError(f"unknown key {section}.{key!r} in {where}; known: {', '.join(_SECTIONS[section])}")
            if not isinstance(item, _SECTIONS[section][key]):
                kinds = _SECTIONS[section][key]
                wanted = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
                raise ConfigError(f"{section}.{key} in {where} must be {wanted}, got {type(item).__name__}")
    model, engine, compression = (raw.get(k, {}) for k in ("model", "engine", "compression"))
    if "model_name" in model:  # it names the result folder and files: a name, never a path
        check_name(model["model_name"], f"model.model_name in {where}")
    engine_type = engine.get("type", "simplified")
    if engine_type not in ENGINE_TYPES:
        raise ConfigError(f"engine.type {engine_type!r} in {where} is not supported; use 'simplified' "
                          "(accuracy_checker engines are not part of ovrange)")
    algorithms = tuple(_parse_algorithm(_with_target_device(entry, compression), i, where)
                       for i, entry in enumerate(compression.get("algorithms", [])))
    if "algorithms" in compression and not algorithms:
        raise ConfigError(f"compression.algorithms in {where} is empty")
    _check_chain(algorithms, where)
    holdout = check_fraction(compression.get("holdout", DEFAULT_HOLDOUT), f"compression.holdout in {where}")
    if "sdc" in compression:
        SdcCriterion.parse(compression["sdc"])  # a bad criterion fails when the config is read

    def resolve(value: str | None) -> Path | None:
        return None if value is None else (base_dir / Path(value).expanduser())

    return ProtectConfig(
        model_name=model.get("model_name"),
        model=resolve(model.get("model")),
        weights=resolve(model.get("weights")),
        data_source=resolve(engine.get("data_source")),
        layout=engine.get("layout"),
        images={k: engine[k] for k in ("mean_values", "scale_values", "color_order", "shape") if k in engine},
        device=engine.get("device", compression.get("target_device", "CPU")).replace("ANY", "CPU"),
        algorithms=algorithms or (default_algorithm(),),
        source=source,
        holdout=holdout,
        sdc=compression.get("sdc"),
        max_overhead=compression.get("max_overhead"),
    )


def _parse_algorithm(entry: Any, index: int, where: str) -> AlgorithmConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"compression.algorithms[{index}] in {where} must be a mapping")
    unknown = set(entry) - {"name", "params"}
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in compression.algorithms[{index}] in {where}")
    if not isinstance(entry.get("name"), str):
        raise ConfigError(f"compression.algorithms[{index}].name in {where} must be a string")
    params = entry.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"compression.algorithms[{index}].params in {where} must be a mapping")
    return make_algorithm(entry["name"], params, where)


def _with_target_device(entry: Any, compression: dict[str, Any]) -> Any:
    """POT put ``target_device`` beside the algorithms; DefaultQuantization takes it unless its params set one."""
    if (isinstance(entry, dict) and entry.get("name") == "DefaultQuantization" and "target_device" in compression
            and isinstance(entry.get("params", {}), dict) and "target_device" not in entry.get("params", {})):
        return {**entry, "params": {**entry.get("params", {}), "target_device": compression["target_device"]}}
    return entry


def _check_chain(algorithms: tuple[AlgorithmConfig, ...], where: str) -> None:
    """A POT chain: any quantization steps, and exactly one protection (the quantization steps run first)."""
    protections = [a.name for a in algorithms if a.name not in QUANTIZATION_ALGORITHMS]
    if algorithms and not protections:
        raise ConfigError(f"compression.algorithms in {where} has no protection step; add one of "
                          f"{', '.join(PROTECTIONS)} after {algorithms[-1].name}")
    if len(protections) > 1:
        raise ConfigError(f"compression.algorithms in {where} lists {len(protections)} protections "
                          f"({', '.join(protections)}); a chain holds one")
