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

from ovrange.errors import ConfigError

ENGINE_TYPES = ("simplified",)


@dataclass(frozen=True)
class Param:
    """One algorithm parameter: its type, default, an optional check returning an error text, and its doc."""

    type: type | tuple[type, ...]
    default: Any
    check: Any = None  # Callable[[value], str | None]
    doc: str = ""


def one_of(*choices: str):
    """A Param check accepting only ``choices``."""
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0"


# Parameters common to every protection algorithm (POT's RangeSupervision had exactly these).
COMMON_PARAMS: dict[str, Param] = {
    "stat_subset_size": Param(int, 300, _positive),
    "stat_batch_size": Param(int, 1, _positive),
    "shuffle_data": Param(bool, False),
    "seed": Param(int, 0, _non_negative),
}

# Algorithm name -> the module that implements it. Each module defines ``PARAMS`` (its parameters beyond
# COMMON_PARAMS) and ``run(model, dataset, config, *, device, progress) -> PassResult`` (see ovrange/protect.py).
ALGORITHMS: dict[str, str] = {
    "RangeSupervision": "ovrange.passes.range_supervision",
    "Ranger": "ovrange.passes.ranger",
    "GradientSuppression": "ovrange.passes.gradient_suppression",
    "BoundedWeights": "ovrange.passes.bounded_weights",
    "GlobalClipper": "ovrange.passes.global_clipper",
}


def algorithm_module(name: str):
    """The module implementing algorithm ``name`` (imported on first use)."""
    import importlib

    return importlib.import_module(ALGORITHMS[name])


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str
    params: dict[str, Any]

    @property
    def subset_size(self) -> int:
        return self.params["stat_subset_size"]

    @property
    def batch_size(self) -> int:
        return self.params["stat_batch_size"]

    @property
    def shuffle(self) -> bool:
        return self.params["shuffle_data"]

    @property
    def seed(self) -> int:
        return self.params["seed"]


@dataclass(frozen=True)
class ProtectConfig:
    """Everything ``ovrange protect`` needs, with paths resolved."""

    model_name: str | None = None
    model: Path | None = None
    weights: Path | None = None
    data_source: Path | None = None
    layout: str | None = None
    device: str = "CPU"
    algorithms: tuple[AlgorithmConfig, ...] = field(default_factory=lambda: (default_algorithm(),))
    source: Path | None = None

    @property
    def algorithm(self) -> AlgorithmConfig:
        return self.algorithms[0]

    def with_overrides(self, **params: Any) -> "ProtectConfig":
        """Apply command-line overrides (None means 'not given') to the algorithm parameters."""
        given = {key: value for key, value in params.items() if value is not None}
        if not given:
            return self
        algorithm = make_algorithm(self.algorithm.name, {**self.algorithm.params, **given}, "command line")
        return replace(self, algorithms=(algorithm, *self.algorithms[1:]))


def default_algorithm(name: str = "RangeSupervision") -> AlgorithmConfig:
    return make_algorithm(name, {}, "defaults")


def make_algorithm(name: str, params: dict[str, Any], where: str) -> AlgorithmConfig:
    """Validate ``params`` of algorithm ``name`` against its schema and fill defaults."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r} in {where}; available: {', '.join(ALGORITHMS)}")
    schema = {**COMMON_PARAMS, **algorithm_module(name).PARAMS}
    values = {}
    for key, value in params.items():
        if key not in schema:
            raise ConfigError(f"unknown parameter {key!r} for {name} in {where}; known: {', '.join(schema)}")
        values[key] = _checked(f"{name}.params.{key}", value, schema[key], where)
    for key, spec in schema.items():
        values.setdefault(key, spec.default)
    check = getattr(algorithm_module(name), "check_params", None)
    problem = check(values) if check else None  # combinations of parameters
    if problem:
        raise ConfigError(f"{name} in {where}: {problem}")
    return AlgorithmConfig(name, values)


def _checked(key: str, value: Any, spec: Param, where: str) -> Any:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        wanted = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{key} in {where} must be {wanted}, got {type(value).__name__} {value!r}")
    problem = spec.check(value) if spec.check else None
    if problem:
        raise ConfigError(f"{key} in {where} {problem}, got {value!r}")
    return value


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
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = read_mapping(path)
    return parse_config(raw, base_dir=path.parent, source=path)


def read_mapping(path: Path) -> dict[str, Any]:
    """Parse a JSON-with-comments or YAML file into a dict, with a one-line error on syntax problems."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"invalid YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from exc
    else:
        try:
            raw = json.loads(strip_json_comments(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON in {path} at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must contain a mapping at the top level")
    return raw


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
    "engine": {"type": str, "data_source": str, "layout": str, "device": str},
    "compression": {"target_device": str, "algorithms": list},
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
                wanted = _SECTIONS[section][key].__name__
                raise ConfigError(f"{section}.{key} in {where} must be {wanted}, got {type(item).__name__}")
    model, engine, compression = (raw.get(k, {}) for k in ("model", "engine", "compression"))
    engine_type = engine.get("type", "simplified")
    if engine_type not in ENGINE_TYPES:
        raise ConfigError(f"engine.type {engine_type!r} in {where} is not supported; use 'simplified' "
                          "(accuracy_checker engines are not part of ovrange)")
    algorithms = tuple(_parse_algorithm(entry, i, where) for i, entry in enumerate(compression.get("algorithms", [])))
    if "algorithms" in compression and not algorithms:
        raise ConfigError(f"compression.algorithms in {where} is empty")

    def resolve(value: str | None) -> Path | None:
        return None if value is None else (base_dir / Path(value).expanduser())

    return ProtectConfig(
        model_name=model.get("model_name"),
        model=resolve(model.get("model")),
        weights=resolve(model.get("weights")),
        data_source=resolve(engine.get("data_source")),
        layout=engine.get("layout"),
        device=engine.get("device", compression.get("target_device", "CPU")).replace("ANY", "CPU"),
        algorithms=algorithms or (default_algorithm(),),
        source=source,
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
