"""Fault lists on disk: a JSON-lines file, a header line then one fault per line, replayable exactly.

The header records what the faults refer to (target, number format, the sites with their shapes, the candidate
inputs and the data source), so a replay on another model can be checked before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ovrange.errors import ConfigError, ModelError
from ovrange.faults.model import Fault
from ovrange.faults.sites import Site
from ovrange.modelio import write_file_atomically

MAGIC = "ovrange-faults"
VERSION = 1


@dataclass(frozen=True)
class FaultList:
    """The full plan of a campaign: ``faults`` (grouped by ``trial``) over ``sites`` and input ``inputs``."""

    target: str
    number_format: str
    sites: tuple[Site, ...]
    inputs: tuple[int, ...]
    faults: tuple[Fault, ...]
    trials: int
    seed: int | None = None
    ber: float | None = None
    data: str = ""
    trial_inputs: tuple[int, ...] = ()  # bit-error-rate plans only: a trial may hold no fault but has an input

    def header(self) -> dict:
        return {"format": MAGIC, "version": VERSION, "target": self.target, "number_format": self.number_format,
                "trials": self.trials, "seed": self.seed, "ber": self.ber, "data": self.data,
                "inputs": list(self.inputs), "sites": [s.to_dict() for s in self.sites],
                "trial_inputs": list(self.trial_inputs)}

    def fingerprint(self) -> str:
        """A digest of the plan: a checkpoint only resumes the very campaign that wrote it."""
        digest = hashlib.sha256(json.dumps(self.header(), sort_keys=True).encode())
        for fault in self.faults:
            digest.update(f"{fault.trial},{fault.input},{fault.site},{fault.element},{fault.bit};".encode())
        return digest.hexdigest()[:16]

    def to_text(self) -> str:
        lines = [json.dumps(self.header(), separators=(",", ":"))]
        lines += [json.dumps([f.trial, f.input, f.site, f.element, f.bit], separators=(",", ":")) for f in self.faults]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_file_atomically(path, self.to_text())

    @classmethod
    def load(cls, path: str | Path) -> FaultList:
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read fault list {path}: {exc.strerror}") from exc
        try:
            header = json.loads(lines[0]) if lines else {}
            rows = [json.loads(line) for line in lines[1:] if line.strip()]
            if header.get("format") != MAGIC:
                raise ValueError("not an ovrange fault list")
            if header.get("version") != VERSION:
                raise ValueError(f"unsupported version {header.get('version')}")
            faults = tuple(Fault(int(r[0]), int(r[1]), str(r[2]), int(r[3]), int(r[4])) for r in rows)
            sites = tuple(Site(s["name"], s["op"], tuple(s["shape"]), s.get("format", "fp32")) for s in header["sites"])
            return cls(header["target"], header["number_format"], sites, tuple(header["inputs"]), faults,
                       int(header["trials"]), header.get("seed"), header.get("ber"), header.get("data", ""),
                       tuple(int(i) for i in header.get("trial_inputs", ())))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ConfigError(f"malformed fault list {path}: {exc}") from exc

    def check_sites(self, sites: list[Site], model_name: str) -> None:
        """Raise ModelError unless every site the faults strike exists in ``sites`` with the same shape."""
        theirs = {s.name: s for s in sites}
        for site in self.sites:
            if site.name not in theirs:
                raise ModelError(f"fault list site {site.name!r} does not exist in model {model_name}")
            if theirs[site.name].shape != site.shape:
                raise ModelError(f"fault list site {site.name!r} has shape {site.shape} but {model_name} has "
                                 f"{theirs[site.name].shape}")
