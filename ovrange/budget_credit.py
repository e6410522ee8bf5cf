"""Which guards a budget campaign's trials credit or blame (:mod:`ovrange.budget`).

*Credit*: a fault's SDC that the full protection removed goes to the first guards the fault meets on its way to
the outputs (the guard of its site, else the nearest guards downstream, shared equally).

*Blame* (:func:`vet`): a subset of the guards is not the full protection with holes. A guard downstream of a site
whose own guard was cut meets that site's faults after a layer has mixed them: on the bundled ViT a flipped
exponent in a LayerNorm output reaches the next linear layer as a huge finite value that the unguarded model turns
into NaN (a DUE, detectable) and the lone guard after the linear layer clamps into range, every channel of the
token at its bound (a plausible wrong answer, an SDC). So each chosen set is replayed on the benefit campaign's
faults, and a guard whose net effect on those faults is worse than nothing (more trials it turns SDC than it
rescues, or more trials it turns SDC or DUE than it masks) is dropped, until the set is no worse than the
original in SDC and in SDC+DUE.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import openvino as ov

from ovrange.faults.metrics import MASKED, SDC
from ovrange.graph import inserted_nodes, node_ids

FREE = ("fused", "folded", "not found")  # cost nothing by the compiled graph: post-ops, folded weights, removed
VET_ROUNDS = 4  # replays of the benefit faults per chosen set at most; then the best sound one is kept


@dataclass(frozen=True)
class Candidate:
    """One guard (or Checksum check) of the full plan: what it stops, what it costs."""

    key: str  # the plan's target id
    fusion: str  # fused, folded (a weight guard), standalone, not found (removed by the plugin), changed (fused, but
    # its kernel differs from the original's), check (a Checksum check) or unknown (not a Clamp-style guard); the
    # last four are priced by timing
    elements: int  # per sample, of the guarded tensor
    sites: tuple[str, ...]  # fault sites credited to it
    removed: float  # SDCs of the benefit campaign it removes (credited share of the full protection's)
    cost: float  # estimated, in standalone-element units

    @property
    def ratio(self) -> float:
        return self.removed / self.cost if self.cost > 0 else math.inf if self.removed > 0 else 0.0


def _candidates(model: ov.Model, protected: ov.Model, guards: dict[str, dict], campaign, fusion,
                checks: bool = False) -> list[Candidate]:
    """Each guard with the SDCs it is credited with and its estimated cost; ``checks``: Checksum checks, each a
    computation of its own over the checked layer (never a post-op), priced by timing."""
    status = _fusion_by_key(protected, fusion)
    covers = _coverage(model, set(guards))
    removed = _removed_per_site(campaign)
    credit: dict[str, float] = {k: 0.0 for k in guards}
    sites: dict[str, list[str]] = {k: [] for k in guards}
    for site, net in removed.items():
        reached = covers.get(_node_of(site), ())
        for key in reached:
            credit[key] += net / len(reached)
            sites[key].append(site)
    elements = _elements(campaign)
    out = []
    for key, entry in guards.items():
        size = elements.get(_node_of(key), 1)
        # a guard of a stored weight clamps a constant, which the plugin folds at compile time
        kind = "check" if checks else "folded" if entry.get("role") == "weights" else status.get(_node_of(key),
                                                                                                   "unknown")
        out.append(Candidate(key, kind, size, tuple(sites[key]), max(credit[key], 0.0),
                             0.0 if kind in FREE else float(size)))
    return out


def _node_of(key: str) -> str:
    """The node id a target id sits after (``id:port`` and input-edge ``id>consumer:port`` ids)."""
    return re.sub(r":\d+$", "", key.split(">")[0])


def _elements(campaign) -> dict[str, int]:
    return {_node_of(s.name): s.size for s in campaign.sites}


def _removed_per_site(campaign) -> dict[str, float]:
    """Per site: SDCs on the original that the full protection removed, minus SDCs it added."""
    first, second = campaign.models[0], campaign.models[1]
    keep = first.done & second.done & (campaign.trial_site >= 0)
    net = (first.outcome[keep] == SDC).astype(np.int64) - (second.outcome[keep] == SDC).astype(np.int64)
    totals = np.bincount(campaign.trial_site[keep], weights=net, minlength=len(campaign.sites))
    return {s.name: float(totals[i]) for i, s in enumerate(campaign.sites) if totals[i]}


def _coverage(model: ov.Model, keys: set[str]) -> dict[str, tuple[str, ...]]:
    """Node id -> the guards a fault in its output meets first on its way to the outputs."""
    ids = {node.get_name(): node_id for node_id, node in node_ids(model)}
    guard_at: dict[str, list[str]] = {}
    for key in keys:
        guard_at.setdefault(_node_of(key), []).append(key)
    found: dict[str, tuple[str, ...]] = {}
    for node in reversed(model.get_ordered_ops()):  # consumers first: each node reuses its consumers' answers
        node_id = ids[node.get_name()]
        if node_id in guard_at:
            found[node_id] = tuple(sorted(guard_at[node_id]))
            continue
        reached: set[str] = set()
        for out in node.outputs():
            for target in out.get_target_inputs():
                reached.update(found.get(ids[target.get_node().get_name()], ()))
        found[node_id] = tuple(sorted(reached))
    return found


def _fusion_by_key(protected: ov.Model, fusion) -> dict[str, str]:
    """Plan key -> fusion status of its guard (the guard node reads the guarded tensor, through check nodes)."""
    inserted = inserted_nodes(protected)
    ids = {node.get_name(): node_id for node_id, node in node_ids(protected)}
    by_name = {c.name: c.status for c in fusion.clamps}
    out: dict[str, str] = {}
    for node in protected.get_ordered_ops():
        status = by_name.get(node.get_friendly_name())
        if status is None:
            continue
        stack, seen = [node], set()
        while stack:
            current = stack.pop()
            for value in current.input_values():
                source = value.get_node()
                if source.get_name() in seen:
                    continue
                seen.add(source.get_name())
                if source.get_friendly_name() in inserted:
                    stack.append(source)
                elif source.get_type_name() != "Constant":
                    key = ids[source.get_name()]
                    out[key] = _worse(out.get(key), status)
    return out


def _worse(a: str | None, b: str) -> str:
    order = ("not found", "fused", "unknown", "changed", "standalone")
    return b if a is None else max(a, b, key=order.index)


@dataclass(frozen=True)
class Vetting:
    """A chosen set replayed on the benefit campaign's faults: its SDC and SDC+DUE there (the original's beside
    them) and the guards found worse than nothing, dropped before the next replay."""

    guards: int
    sdc: int
    failed: int  # SDC + DUE
    sdc_original: int
    failed_original: int
    dropped: tuple[str, ...]

    def to_json(self) -> dict:
        return {**asdict(self), "dropped": list(self.dropped)}


def blame(keys: list[str], covers: dict[str, tuple[str, ...]], trial_nodes: list[str], original: np.ndarray,
          cut: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per chosen guard, on the same faults: (SDCs it rescued minus SDCs it caused, failures (SDC or DUE) it
    rescued minus failures it caused), each trial's change shared by the guards its fault meets first
    (``covers``: node id -> first guards, :func:`_coverage` over ``keys``; ``trial_nodes``: each trial's node)."""
    sdc = (original == SDC).astype(np.float64) - (cut == SDC)
    failed = (original != MASKED).astype(np.float64) - (cut != MASKED)
    nets = {k: [0.0, 0.0] for k in keys}
    for i in np.flatnonzero((sdc != 0) | (failed != 0)):
        met = covers.get(trial_nodes[i], ())
        for key in met:
            nets[key][0] += sdc[i] / len(met)
            nets[key][1] += failed[i] / len(met)
    return {k: (v[0], v[1]) for k, v in nets.items()}


def vet(keys: list[str], replay: Callable[[list[str]], np.ndarray], original: np.ndarray, trial_nodes: list[str],
        covers_of: Callable[[set[str]], dict[str, tuple[str, ...]]]) -> tuple[list[str], list[Vetting]]:
    """``keys`` cut to a set no worse than no guard on the benefit faults: ``replay(keys)`` gives the set's
    outcome per trial (``original``: the unguarded model's). Guards with a negative net (:func:`blame`) are
    dropped; a set worse in total with none to blame loses its guard of least net benefit. When the rounds run
    out, the replayed set with the fewest SDCs (then SDC+DUE) among those no worse than no guard is kept (the
    blame of one guard is counted on a few faults: a set far better than no guard is not thrown away for it).
    Returns the kept keys (in their order) and a record per replay, the kept set's last."""
    sdc_original, failed_original = int(np.sum(original == SDC)), int(np.sum(original != MASKED))
    records: list[Vetting] = []
    sound: list[tuple[int, int, list[str]]] = []  # replayed sets no worse than no guard
    for _ in range(VET_ROUNDS):
        if not keys:
            break
        cut = replay(keys)
        sdc, failed = int(np.sum(cut == SDC)), int(np.sum(cut != MASKED))
        nets = blame(keys, covers_of(set(keys)), trial_nodes, original, cut)
        worse = [k for k in keys if min(nets[k]) < 0]
        if sdc <= sdc_original and failed <= failed_original:
            if not worse:
                records.append(Vetting(len(keys), sdc, failed, sdc_original, failed_original, ()))
                return keys, records
            sound.append((sdc, failed, keys))
        if not worse:
            worse = [min(keys, key=lambda k: (min(nets[k]), sum(nets[k])))]
        records.append(Vetting(len(keys), sdc, failed, sdc_original, failed_original, tuple(worse)))
        keys = [k for k in keys if k not in set(worse)]
    if not sound:
        return [], records
    sdc, failed, keys = min(sound, key=lambda s: (s[0], s[1], -len(s[2])))
    records.append(Vetting(len(keys), sdc, failed, sdc_original, failed_original, ()))
    return keys, records


def trial_nodes(campaign) -> list[str]:
    """Each trial's faulted node id ('' for a multi-fault trial)."""
    names = [_node_of(s.name) for s in campaign.sites]
    return [names[s] if s >= 0 else "" for s in campaign.trial_site.tolist()]
