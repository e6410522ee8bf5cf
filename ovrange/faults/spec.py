"""Campaign settings: one typed record, validated once, loadable from a YAML/JSON file.

A config file holds the same settings as the command line (``model``, ``compare``, ``data``, ``target``,
``trials``, ``seed``, ``bits``...); paths are relative to the file; options given on the command line win.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ovrange.compare import SdcCriterion
from ovrange.errors import ConfigError
from ovrange.faults.formats import TARGETS, parse_bits, parse_fault_model, parse_format

WEIGHT_MODES = ("auto", "delta", "parameter")  # how weight faults run: see ovrange.faults.engines
FILE_KEYS = ("model", "compare", "data", "json", "report", "replay")
RUN_KEYS = ("workers", "ray_address", "shard_size", "lanes")  # where a campaign runs: never part of its result
# Per-trial arrays take about 40 bytes a trial: 10 million trials hold 400 MB before any inference.
LIMITS = {"trials": 10_000_000, "inputs": 1_000_000, "batch_size": 65_536, "memory": 1 << 20}


@dataclass(frozen=True)
class CampaignSpec:
    """Every setting of a campaign. ``bits`` is the parsed tuple of allowed bit positions."""

    target: str = "activations"
    trials: int = 1000
    seed: int = 0
    bits: tuple[int, ...] = tuple(range(32))
    number_format: str = "auto"  # from the model: how its weights are stored (fp32 for activations)
    ber: float | None = None
    inputs: int = 100
    batch_size: int = 64
    sites: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    weighting: str = "elements"
    sdc: SdcCriterion = field(default_factory=SdcCriterion)
    output: str | None = None
    device: str = "CPU"
    weight_mode: str = "auto"
    margin: float | None = None  # statistical stopping: SDC interval half-width to reach (ovrange.faults.stopping)
    confidence: float = 0.95
    memory: int = 2048  # MB the batch-sized injection/probe buffers may hold (above the model): batches shrink to fit
    fault_model: str = "bit"
    error_rate: float | None = None

    @classmethod
    def create(cls, **settings: Any) -> CampaignSpec:
        """Build and validate from loose values (strings from a CLI or a file); None means 'default'."""
        settings = {k.replace("-", "_"): v for k, v in settings.items() if v is not None}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown campaign setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        fmt = parse_format(str(settings.get("number_format", "auto")))
        if "bits" in settings:
            settings["bits"] = parse_bits(settings["bits"], fmt)
        else:
            settings["bits"] = parse_bits("all", fmt)
        if "fault_model" in settings:
            settings["fault_model"] = str(parse_fault_model(settings["fault_model"]))
        if "sdc" in settings and not isinstance(settings["sdc"], SdcCriterion):
            settings["sdc"] = SdcCriterion.parse(settings["sdc"])
        for key in ("sites", "exclude"):
            if key in settings:
                value = settings[key]
                settings[key] = tuple([value] if isinstance(value, str) else value)
        spec = cls(**settings)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.target not in (*TARGETS, "kv"):
            raise ConfigError(f"unknown target {self.target!r}; use activations, weights or kv (a stateful language "
                              "model's KV cache)")
        for name in ("trials", "inputs", "batch_size", "memory"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value > LIMITS[name]:
                raise ConfigError(f"{name} {value} is more than the limit of {LIMITS[name]}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"seed must be an integer from 0 to 2**63-1, got {self.seed!r}")
        if self.weight_mode not in WEIGHT_MODES:
            raise ConfigError(f"unknown weight_mode {self.weight_mode!r}; use {', '.join(WEIGHT_MODES)}")
        if self.weighting not in ("elements", "uniform"):
            raise ConfigError(f"unknown site weighting {self.weighting!r}; use elements or uniform")
        if self.ber is not None:
            if self.target != "weights":
                raise ConfigError("bit-error-rate mode (ber) applies to weights only")
            if not 0 < self.ber < 1:
                raise ConfigError(f"ber must be in (0, 1), got {self.ber}")
        if self.margin is not None and not (isinstance(self.margin, (int, float)) and 0 < self.margin < 0.5):
            raise ConfigError(f"margin must be in (0, 0.5), got {self.margin!r}")
        if not (isinstance(self.confidence, (int, float)) and 0 < self.confidence < 1):
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence!r}")
        fault_model = parse_fault_model(self.fault_model)
        fault_model.check(self.bits)
        if self.error_rate is not None:
            if not 0 < self.error_rate < 1:
                raise ConfigError(f"error_rate must be in (0, 1), got {self.error_rate}")
            if self.ber is not None:
                raise ConfigError("give ber (per bit) or error_rate (per value), not both")
        if self.ber is not None and fault_model.kind != "bit":
            raise ConfigError(f"ber flips single bits; use error_rate with fault model {fault_model}")
        fmt = parse_format(self.number_format)
        bad = [b for b in self.bits if not 0 <= b < fmt.bits]
        if bad:
            raise ConfigError(f"bit position(s) {bad} outside 0..{fmt.bits - 1} of {fmt.name}")

    def with_overrides(self, **settings: Any) -> CampaignSpec:
        merged = {**self.to_dict(), **{k: v for k, v in settings.items() if v is not None}}
        return CampaignSpec.create(**merged)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bits"] = list(self.bits)
        data["sites"], data["exclude"] = list(self.sites), list(self.exclude)
        data["sdc"] = str(self.sdc)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CampaignSpec:
        retired = ("suffix",)  # a setting some saved results record and campaigns ignore: they still load
        return cls.create(**{k: v for k, v in data.items() if k not in retired})


def load_file(path: str | Path) -> tuple[CampaignSpec, dict[str, Any]]:
    """Read a YAML/JSON campaign file: (settings, file entries such as model/compare/data/json/report, and where it
    runs: workers/ray_address/shard_size/lanes)."""
    from ovrange.config import read_mapping  # the one config reader: bounded, JSON with comments or YAML

    path = Path(path)
    raw = read_mapping(path, "config", default="yaml")
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    files = {k: raw.pop(k) for k in FILE_KEYS if k in raw}
    run = {k: raw.pop(k) for k in RUN_KEYS if k in raw}
    for key, value in files.items():  # paths are relative to the config file, as in protect configs
        values = value if key == "compare" and isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{key} in {path} must be a path string" + (" or a list of them" if key == "compare"
                                                                           else ""))
        resolved = [Path(os.path.normpath(path.parent / v)) for v in values]
        files[key] = resolved if key == "compare" else resolved[0]
    for key, value in run.items():
        if key == "ray_address" and not isinstance(value, str):
            raise ConfigError(f"ray_address in {path} must be HOST:PORT or auto, got {value!r}")
        if key != "ray_address" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{key} in {path} must be a positive integer, got {value!r}")
    return CampaignSpec.create(**raw), {**files, **run}
