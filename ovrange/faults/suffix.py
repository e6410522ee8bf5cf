"""Suffix-only execution of activation faults: only the part of the network after the fault site runs per trial.

The sites (in topological order) are split into segments. For a segment starting at op position ``p`` the
*suffix model* is the graph from ``p`` on, whose inputs are the *frontier*: every tensor computed before ``p`` and
read at or after it (the residual stream of a transformer block, say). The frontier of every segment is read once
per input, in the same inference that reads the fault-free values at the struck elements; each trial then runs
only its segment's suffix, with the fault written as in the whole model. On a 12-block ViT a trial runs about half
of the network on average.

Exactness is checked, not assumed: a cut is kept only if its suffix reproduces the whole model's outputs bit for bit,
fault-free and on the plan's first faults at every site it serves (OpenVINO may fuse across a cut differently);
trials of dropped cuts run on the whole model. The check is a sample, not a proof: on PP-OCRv4 det a few faulty
outputs still differed in their last bits (same outcomes), so suffixes run only when asked (``suffix="on"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino.passes import ConstantFolding, Manager

from ovrange.faults.execute import ActivationEngine, Outcomes, _chunks, _judge, _Trials
from ovrange.faults.model import apply_mask
from ovrange.faults.injectors import ScatterInjector, ValueProbe
from ovrange.faults.sites import Site, site_outputs, static_clone

TAG = "ovrange_fi_pos"
SEGMENTS = 12
CHECKED = 32  # faults per segment a cut is checked on, bit for bit against the whole model


@dataclass(frozen=True)
class Segment:
    start: int  # op position of the cut: the suffix runs ops at positions >= start
    sites: tuple[int, ...]  # indices of the campaign's sites that fall in this segment
    frontier: tuple[tuple[int, int], ...]  # (op position, output port) of the tensors crossing the cut


def prepared(model: ov.Model, sites: list[Site]) -> ov.Model:
    """A clone whose ops carry their topological position, and whose site ops are named by their unique site
    names (a suffix loses the ops before the cut, and with them the ``#k`` numbering of repeated names)."""
    base = model.clone()
    for position, node in enumerate(base.get_ordered_ops()):
        node.get_rt_info()[TAG] = position
    found = site_outputs(base, "activations")
    for site in sites:
        node, out = found[site.name]
        if out.get_index() == 0:
            node.set_friendly_name(site.name)
    return base


def position(node: ov.Node) -> int | None:
    info = node.get_rt_info()
    return int(info[TAG].astype(int)) if TAG in info else None


def folded_clone(base: ov.Model, shapes: list[tuple[int, ...]], batch: int) -> ov.Model:
    """Static clone with shape subgraphs folded: a ShapeOf before a cut must not become a suffix input."""
    clone = static_clone(base, shapes, batch=batch)
    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(clone)
    return clone


def plan_segments(base: ov.Model, sites: list[Site], shapes: list[tuple[int, ...]], count: int = SEGMENTS
                  ) -> list[Segment]:
    """Up to ``count`` segments of about equally many ops, each starting at a site."""
    clone = folded_clone(base, shapes, 1)
    found = site_outputs(clone, "activations")
    at = np.array([position(found[s.name][0]) for s in sites])
    starts = np.unique(at)
    wanted = np.linspace(starts[0], starts[-1] + 1, count + 1)[:-1]
    cuts = sorted({int(starts[np.searchsorted(starts, w)]) for w in wanted if np.searchsorted(starts, w) < len(starts)})
    bounds = [*cuts[1:], np.iinfo(np.int64).max]
    return [Segment(start, tuple(int(i) for i in np.nonzero((at >= start) & (at < stop))[0]),
                    frontier(clone, start)) for start, stop in zip(cuts, bounds)]


def _live(model: ov.Model) -> set[str]:
    live: set[str] = set()
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Parameter" or any(node.input_value(k).get_node().get_name() in live
                                                      for k in range(node.get_input_size())):
            live.add(node.get_name())
    return live


def frontier(clone: ov.Model, start: int) -> tuple[tuple[int, int], ...]:
    """Outputs of live ops before ``start`` read by ops at or after it."""
    live, crossing = _live(clone), []
    for node in clone.get_ordered_ops():
        here = position(node)
        if node.get_name() not in live or here is None or here >= start:
            continue
        for out in node.outputs():
            if any((position(t.get_node()) or -1) >= start for t in out.get_target_inputs()):
                crossing.append((here, out.get_index()))
    return tuple(crossing)


def frontier_outputs(clone: ov.Model, keys: list[tuple[int, int]]) -> list[ov.Output]:
    nodes = {position(n): n for n in clone.get_ordered_ops() if position(n) is not None}
    return [nodes[p].output(port) for p, port in keys]


def suffix_model(base: ov.Model, shapes: list[tuple[int, ...]], batch: int, segment: Segment) -> ov.Model:
    """The ops from ``segment.start`` on, fed by Parameters in the order of ``segment.frontier`` (batch ``batch``)."""
    clone = folded_clone(base, shapes, batch)
    params = []
    for index, out in enumerate(frontier_outputs(clone, list(segment.frontier))):
        param = ops.parameter(out.get_partial_shape(), out.get_element_type(), name=f"ovrange_fi_frontier_{index}")
        for target in list(out.get_target_inputs()):
            if (position(target.get_node()) or -1) >= segment.start:
                target.replace_source_output(param.output(0))
        params.append(param)
    suffix = ov.Model(clone.get_results(), params, f"suffix_{segment.start}")
    suffix.validate_nodes_and_infer_types()
    return suffix


def batch_major(base: ov.Model, shapes: list[tuple[int, ...]], keys: tuple[tuple[int, int], ...]) -> bool:
    """Whether every frontier tensor has the batch as its first axis (rows can then be stacked per input)."""
    one, two = (frontier_outputs(folded_clone(base, shapes, b), list(keys)) for b in (1, 2))
    return all(a.get_partial_shape().is_static and list(a.get_shape())[0] == 1 and
               list(b.get_shape()) == [2, *list(a.get_shape())[1:]] for a, b in zip(one, two))


class SuffixEngine(ActivationEngine):
    """An ActivationEngine that runs each trial from the latest exact cut before its site (whole models where no
    cut is exact, or where the model cannot batch or a frontier is not batch-major)."""

    def __init__(self, model, sites, shapes, spec, judge, config=None):
        self.base = prepared(model, sites)
        self.segments = [s for s in plan_segments(self.base, sites, shapes)
                         if batch_major(self.base, shapes, s.frontier)]
        super().__init__(self.base, sites, shapes, spec, judge, config)
        self.checked = False
        if not self.trash:
            self.segments = []
        self.suffixes = []
        self.later: list[np.ndarray] = []  # per segment: the sites at or after its cut
        for j, segment in enumerate(self.segments):
            later = np.array(sorted(i for seg in self.segments[j:] for i in seg.sites), np.int64)
            suffix = suffix_model(self.base, shapes, self.batch + 1, segment)
            self.suffixes.append(ScatterInjector(suffix, "activations", [sites[i].name for i in later],
                                                 [tuple(p.get_shape())[1:] for p in suffix.inputs],
                                                 self.batch, device=spec.device, config=config))
            self.later.append(later)
        self.description += f", suffix-only from {len(self.segments)} cuts"

    def _probe(self):
        keys = sorted({k for s in getattr(self, "segments", []) for k in s.frontier})
        if not self.trash or not keys:
            return super()._probe()
        self.keys = keys
        return ValueProbe(self.model, [s.name for s in self.sites], self.shapes, self.batch,
                          extra=lambda clone: frontier_outputs(clone, keys), device=self.spec.device,
                          config=self.config)

    def _frontier(self, j: int, inputs: np.ndarray, extras) -> list[np.ndarray]:
        return [np.concatenate([extras[int(i)][self.keys.index(k)] for i in inputs])
                for k in self.segments[j].frontier]

    def run(self, plan, pending, store, fmt) -> Outcomes:
        if self.suffixes and not self.checked:
            self._check(plan, store, fmt)
        return super().run(plan, pending, store, fmt)

    def _check(self, plan, store, fmt) -> None:
        """Check the cuts on the plan's first faults of each segment: the same trials wherever the engine runs,
        so every worker keeps the same cuts."""
        every = self.faults(plan, np.arange(plan.trials))[0]
        picks = np.concatenate([np.nonzero(np.isin(every, s.sites))[0][: CHECKED] for s in self.segments])
        site, element, mask, op, inputs = self.faults(plan, picks)
        used = np.unique(inputs)
        original, golden, extras = self._read(store, used, site, element, inputs)
        trial = _Trials(picks, site, element, inputs, apply_mask(original, mask, fmt, op))
        self._keep_exact(store, trial, golden or self._golden(store, used), extras)

    def _keep_exact(self, store, trial, golden, extras) -> None:
        """Keep the cuts whose suffix gives the whole model's outputs bit for bit, fault-free and on faults at
        every site the cut will serve (its segment and the later segments of dropped cuts): OpenVINO may fuse
        across a cut differently (e.g. fold a scaling Multiply into the next Convolution's weights)."""
        some = np.array(sorted(golden)[: self.batch])
        keep: list[int] = []
        for j in reversed(range(len(self.suffixes))):  # latest cut first: it decides what earlier cuts serve
            suffix = self.suffixes[j]
            outputs, _ = suffix.run(self._frontier(j, some, extras))
            same = np.array_equal(outputs[self.judge.output], np.stack([golden[int(i)] for i in some]))
            served = [i for seg in self.segments[j:keep[-1] if keep else None] for i in seg.sites]
            for part in _chunks(np.nonzero(np.isin(trial.site, served))[0], self.batch):
                if not same:
                    break
                local = np.searchsorted(self.later[j], trial.site[part])
                ours, _ = suffix.run(self._frontier(j, trial.inputs[part], extras), local, np.arange(len(part)),
                                     trial.element[part], trial.faulty[part])
                whole, _ = self.injector.run(store.batch(trial.inputs[part]), trial.site[part],
                                             np.arange(len(part)), trial.element[part], trial.faulty[part])
                same = np.array_equal(ours[self.judge.output], whole[self.judge.output], equal_nan=True)
            if same:
                keep.append(j)
        keep.reverse()
        self.segments = [self.segments[j] for j in keep]
        self.suffixes = [self.suffixes[j] for j in keep]
        self.later = [self.later[j] for j in keep]
        # per site: the latest kept segment whose cut is at or before it (-1: the whole model)
        self.route = np.full(len(self.sites), -1, np.int64)
        for j, later in enumerate(self.later):
            self.route[later] = j
        self.description = self.description.rsplit(", suffix-only", 1)[0] + \
            f", suffix-only from {len(self.segments)} bit-exact cuts"
        self.checked = True

    def _inject(self, store, trial, golden, extras) -> Outcomes:
        if not self.suffixes:
            return super()._inject(store, trial, golden, extras)
        route = self.route[trial.site]
        parts = [super()._inject(store, _subset(trial, route < 0), golden, extras)] if (route < 0).any() else []
        for j, suffix in enumerate(self.suffixes):
            local = np.searchsorted(self.later[j], trial.site)
            for part in _chunks(np.nonzero(route == j)[0], self.batch):
                outputs, _ = suffix.run(self._frontier(j, trial.inputs[part], extras), local[part],
                                        np.arange(len(part)), trial.element[part], trial.faulty[part])
                parts.append(_judge(self.judge, golden, trial.inputs[part], outputs[self.judge.output],
                                    trial.pending[part]))
        return Outcomes.concat(parts)


def _subset(trial, keep: np.ndarray):
    from dataclasses import fields, replace

    return replace(trial, **{f.name: getattr(trial, f.name)[keep] for f in fields(trial)})
