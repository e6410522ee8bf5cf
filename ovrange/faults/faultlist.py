"""The fault list: the Fault record, the seeded plan of a campaign, and its JSON-lines file (replayable exactly).

The header records what the faults refer to (target, number format, fault model, rates, the sites with their
shapes, the candidate inputs and the data source), so a replay on another model can be checked before anything
runs. A row is ``[trial, input, site, element, mask]`` (plus the operation when it is not ``flip``, and then the
step of a language model's generation the fault strikes, when it has one); version-1 lists (one ``bit`` per row)
still load, as single-bit masks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np

from ovrange.errors import ConfigError, ModelError
from ovrange.faults.formats import FORMATS, OPS, FaultModel, NumberFormat, parse_fault_model, parse_format
from ovrange.faults.sites import Site
from ovrange.outputs import write_file_atomically

MAGIC = "ovrange-faults"
VERSION = 2


@dataclass(frozen=True)
class Fault:
    """One corrupted value in one trial. A trial has one fault (Ranger's model) or several (error-rate modes).

    ``site`` is the node friendly name (the layer for weights; the producer, with ``:port`` when port > 0, for
    activations); ``element`` is the flat index into the weight tensor, or into one sample's output tensor;
    ``input`` is the index of the input sample in the dataset; ``mask`` the bits ``op`` acts on. ``step``: for a
    stateful language model (:mod:`ovrange.faults.stateful`), the inference of the generation the fault strikes (0:
    the prefill, k: decode step k; a KV-cache fault strikes the state step k left); -1: every step (a weight).
    """

    trial: int
    input: int
    site: str
    element: int
    mask: int
    op: str = "flip"
    step: int = -1

    @property
    def bit(self) -> int:
        """The most significant bit of the mask (the one that dominates the damage; the bit of a single flip)."""
        return int(self.mask).bit_length() - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Fault:
        try:
            return cls(int(data["trial"]), int(data["input"]), str(data["site"]), int(data["element"]),
                       int(data["mask"]), str(data.get("op", "flip")), int(data.get("step", -1)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed fault record {data!r}") from exc


@dataclass(frozen=True)
class FaultArrays:
    """The faults of a plan as parallel numpy arrays, one row per fault, in the plan's order: what engines index.

    ``site`` is the index of the fault's site in the plan's sites (-1: not one of them).
    """

    trial: np.ndarray  # int64
    input: np.ndarray  # int64
    site: np.ndarray  # int64
    element: np.ndarray  # int64
    mask: np.ndarray  # uint64 (masks of up to 32 bits)
    op: np.ndarray  # str: flip, set or clear
    step: np.ndarray  # int64: the generation step of a stateful language model's fault (-1: none)

    @classmethod
    def of(cls, faults: tuple[Fault, ...], sites: tuple[Site, ...]) -> FaultArrays:
        index = {site.name: i for i, site in enumerate(sites)}
        return cls(np.array([f.trial for f in faults], np.int64), np.array([f.input for f in faults], np.int64),
                   np.array([index.get(f.site, -1) for f in faults], np.int64),
                   np.array([f.element for f in faults], np.int64), np.array([f.mask for f in faults], np.uint64),
                   np.array([f.op for f in faults], "<U5"), np.array([f.step for f in faults], np.int64))

    def __len__(self) -> int:
        return len(self.trial)

    def take(self, rows: np.ndarray) -> FaultArrays:
        return FaultArrays(*(getattr(self, f.name)[rows] for f in fields(self)))

    def single(self, trials: np.ndarray) -> FaultArrays:
        """The one fault of each trial of ``trials``, in that order (a one-fault-per-trial plan)."""
        order = np.argsort(self.trial, kind="stable")
        if not len(order):
            rows = np.zeros(0, np.int64)
        else:
            rows = order[np.minimum(np.searchsorted(self.trial[order], trials), len(order) - 1)]
        if not np.array_equal(self.trial[rows], trials):
            raise ValueError("a trial of a one-fault-per-trial plan has no fault")
        return self.take(rows)

    def per_trial(self, trials: np.ndarray) -> dict[int, FaultArrays]:
        """The faults of each trial of ``trials`` that has any, in the plan's order."""
        wanted = np.isin(self.trial, trials)
        order = np.flatnonzero(wanted)
        order = order[np.argsort(self.trial[order], kind="stable")]
        found, starts = np.unique(self.trial[order], return_index=True)
        return {int(t): self.take(order[a:b]) for t, a, b in zip(found, starts, [*starts[1:], len(order)])}

    def last(self) -> tuple[np.ndarray, np.ndarray]:
        """(trials, rows): each trial that has faults once, with the row of its last fault."""
        trials, from_end = np.unique(self.trial[::-1], return_index=True)
        return trials, len(self.trial) - 1 - from_end

    def bits(self) -> np.ndarray:
        """The most significant bit of each mask (:attr:`Fault.bit`)."""
        return np.frexp(self.mask.astype(np.float64))[1].astype(np.int64) - 1  # exact: masks have <= 32 bits


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
    trial_inputs: tuple[int, ...] = ()  # error-rate plans only: a trial may hold no fault but has an input
    fault_model: str = "bit"
    error_rate: float | None = None  # per-element probability (activations per inference, or weights)

    @cached_property
    def arrays(self) -> FaultArrays:
        """The faults as arrays, built once per plan (a shard looks its trials up instead of scanning the list)."""
        return FaultArrays.of(self.faults, self.sites)

    @cached_property
    def trial_input(self) -> np.ndarray:
        """The input of every trial (-1: none): its faults' input, or the recorded one of an error-rate plan."""
        inputs = np.full(self.trials, -1, np.int64)
        trials, rows = self.arrays.last()
        inside = (trials >= 0) & (trials < self.trials)
        inputs[trials[inside]] = self.arrays.input[rows[inside]]
        if self.trial_inputs:
            inputs[:] = self.trial_inputs
        return inputs

    def header(self) -> dict:
        return {"format": MAGIC, "version": VERSION, "target": self.target, "number_format": self.number_format,
                "trials": self.trials, "seed": self.seed, "ber": self.ber, "data": self.data,
                "inputs": list(self.inputs), "sites": [s.to_dict() for s in self.sites],
                "trial_inputs": list(self.trial_inputs), "fault_model": self.fault_model,
                "error_rate": self.error_rate}

    def fingerprint(self) -> str:
        """A digest of the plan: a checkpoint only resumes the very campaign that wrote it."""
        digest = hashlib.sha256(json.dumps(self.header(), sort_keys=True).encode())
        for fault in self.faults:
            step = f",{fault.step}" if fault.step >= 0 else ""
            digest.update(f"{fault.trial},{fault.input},{fault.site},{fault.element},{fault.mask},{fault.op}{step};"
                          .encode())
        return digest.hexdigest()[:16]

    def to_text(self) -> str:
        lines = [json.dumps(self.header(), separators=(",", ":"))]
        lines += [json.dumps(_row(f), separators=(",", ":")) for f in self.faults]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_file_atomically(path, self.to_text(), force=True)  # part of a checkpoint folder

    @classmethod
    def load(cls, path: str | Path) -> FaultList:
        from ovrange.modelio import check_regular_file

        path = check_regular_file(path, "fault list", ConfigError)  # a FIFO would block the read forever
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read fault list {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"malformed fault list {path}: binary data, not an ovrange fault list") from exc
        try:
            header = json.loads(lines[0]) if lines else {}
            rows = [json.loads(line) for line in lines[1:] if line.strip()]
            if header.get("format") != MAGIC:
                raise ValueError("not an ovrange fault list")
            version = header.get("version")
            if version not in (1, VERSION):
                raise ValueError(f"unsupported version {version}")
            faults = tuple(_fault(r, version) for r in rows)
            sites = tuple(Site(s["name"], s["op"], tuple(s["shape"]), s.get("format", "fp32")) for s in header["sites"])
            plan = cls(header["target"], header["number_format"], sites, tuple(header["inputs"]), faults,
                       int(header["trials"]), header.get("seed"), header.get("ber"), header.get("data", ""),
                       tuple(int(i) for i in header.get("trial_inputs", ())), header.get("fault_model", "bit"),
                       header.get("error_rate"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ConfigError(f"malformed fault list {path}: {exc}") from exc
        plan.validate(str(path))
        return plan

    def validate(self, source: str = "fault list") -> None:
        """Raise ConfigError unless every fault names a listed site, an element inside it, a bit of the number
        format and a trial of the plan (a hand-edited list must fail here, not deep inside an engine)."""
        bits = parse_format(self.number_format).bits
        sizes = {site.name: site.size for site in self.sites}
        for fault in self.faults:
            problem = _problem(fault, sizes, bits, self.trials)
            if problem:
                raise ConfigError(f"{source}: fault of trial {fault.trial} on {fault.site!r}: {problem}")

    def bits(self) -> tuple[int, ...]:
        """The bit positions the faults strike (what a replayed campaign reports, whatever its options said)."""
        return tuple(sorted({b for fault in self.faults for b in range(int(fault.mask).bit_length())
                             if fault.mask >> b & 1}))

    def check_sites(self, sites: list[Site], model_name: str) -> None:
        """Raise ModelError unless every site the faults strike exists in ``sites`` with the same shape."""
        theirs = {s.name: s for s in sites}
        for site in self.sites:
            if site.name not in theirs:
                raise ModelError(f"fault list site {site.name!r} does not exist in model {model_name}")
            if theirs[site.name].shape != site.shape:
                raise ModelError(f"fault list site {site.name!r} has shape {site.shape} but {model_name} has "
                                 f"{theirs[site.name].shape}")


def _problem(fault: Fault, sizes: dict[str, int], bits: int, trials: int) -> str:
    """What is wrong with one fault of a plan, or ''."""
    if fault.site not in sizes:
        return "the site is not in the fault list's header"
    if not 0 <= fault.element < sizes[fault.site]:
        return f"element {fault.element} is outside 0..{sizes[fault.site] - 1}"
    if not 0 < fault.mask < (1 << bits):
        return f"mask {fault.mask:#x} is not a non-empty mask of bits 0..{bits - 1}"
    if not 0 <= fault.trial < trials:
        return f"trial {fault.trial} is outside 0..{trials - 1}"
    if fault.input < 0:
        return f"input {fault.input} is negative"
    if fault.step < -1:
        return f"step {fault.step} is negative"
    return ""


def _row(fault: Fault) -> list:
    row = [fault.trial, fault.input, fault.site, fault.element, fault.mask]
    if fault.step >= 0:
        return [*row, fault.op, fault.step]
    return row if fault.op == "flip" else [*row, fault.op]


def _fault(row: list, version: int) -> Fault:
    if version == 1:  # [trial, input, site, element, bit]
        return Fault(int(row[0]), int(row[1]), str(row[2]), int(row[3]), 1 << int(row[4]))
    if int(row[4]) <= 0 or (len(row) > 5 and row[5] not in OPS):
        raise ValueError(f"bad mask or operation in row {row}")
    op = str(row[5]) if len(row) > 5 else "flip"
    return Fault(int(row[0]), int(row[1]), str(row[2]), int(row[3]), int(row[4]), op, int(row[6]) if len(row) > 6 else -1)


def plan_faults(sites: list[Site], inputs: np.ndarray, trials: int, bits: tuple[int, ...], seed: int,
                weighting: str = "elements", ber: float | None = None, fault_model: FaultModel | str = "bit",
                fmt: NumberFormat = FORMATS["fp32"], error_rate: float | None = None) -> tuple[list[Fault], np.ndarray]:
    """The whole fault list and each trial's input, drawn up front from ``seed`` (replayable, same for all models).

    Single-fault mode: per trial a site (in proportion to its element count, or uniformly), an element, a mask
    drawn by ``fault_model`` from ``bits`` and an input from ``inputs``. Bit-error-rate mode (``ber``): per trial
    every allowed bit of every site flips with probability ``ber`` (a binomial count per site, then distinct
    positions; the bits of one element make one fault). Error-rate mode (``error_rate``): per trial every element
    of every site is struck with probability ``error_rate``, each with a mask drawn by ``fault_model``. In both
    rate modes a trial may have no fault.
    """
    model = parse_fault_model(fault_model)
    model.check(bits)
    rng = np.random.default_rng(seed)
    trial_inputs = rng.choice(np.asarray(inputs), size=trials)
    if ber is not None:
        return _plan_ber(sites, trial_inputs, bits, rng, ber), trial_inputs
    if error_rate is not None:
        return _plan_rate(sites, trial_inputs, bits, rng, error_rate, model, fmt), trial_inputs
    sizes = np.array([s.size for s in sites], dtype=np.float64)
    p = sizes / sizes.sum() if weighting == "elements" else np.full(len(sites), 1.0 / len(sites))
    site_idx = rng.choice(len(sites), size=trials, p=p)
    elements = np.minimum((rng.random(trials) * sizes[site_idx]).astype(np.int64), sizes[site_idx].astype(np.int64) - 1)
    masks = model.draw_masks(rng, trials, bits, fmt)
    faults = [Fault(t, int(trial_inputs[t]), sites[site_idx[t]].name, int(elements[t]), int(masks[t]), model.op)
              for t in range(trials)]
    return faults, trial_inputs


def _plan_ber(sites: list[Site], inputs: np.ndarray, bits: tuple[int, ...], rng: np.random.Generator,
              ber: float) -> list[Fault]:
    faults = []
    for trial, input_index in enumerate(inputs):
        for site in sites:
            population = site.size * len(bits)
            count = min(int(rng.binomial(population, ber)), population)
            if not count:
                continue
            slots = np.sort(rng.choice(population, size=count, replace=False))
            masks: dict[int, int] = {}  # slots are sorted: the bits of one element are adjacent
            for slot in slots:
                element = int(slot // len(bits))
                masks[element] = masks.get(element, 0) | (1 << int(bits[slot % len(bits)]))
            faults += [Fault(trial, int(input_index), site.name, element, mask) for element, mask in masks.items()]
    return faults


def _plan_rate(sites: list[Site], inputs: np.ndarray, bits: tuple[int, ...], rng: np.random.Generator,
               rate: float, model: FaultModel, fmt: NumberFormat) -> list[Fault]:
    faults = []
    for trial, input_index in enumerate(inputs):
        for site in sites:
            count = int(rng.binomial(site.size, rate))
            if not count:
                continue
            elements = np.sort(rng.choice(site.size, size=count, replace=False))
            masks = model.draw_masks(rng, count, bits, fmt)
            faults += [Fault(trial, int(input_index), site.name, int(e), int(m), model.op)
                       for e, m in zip(elements, masks)]
    return faults
