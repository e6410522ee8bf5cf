"""Which inserted guards the plugin fused, read from the compiled model's runtime graph.

Each runtime node lists, in ``originalLayersNames``, the model nodes it executes. An inserted guard listed together
with other layers was fused into them (a post-op of a Convolution, a Subgraph, an eltwise chain); listed alone, it
runs as its own kernel -- an extra pass over memory, and the first thing to look at when the overhead is not
negligible. Guards are the nodes the model's inserted-node record marks as ``guard`` (with their ``check`` helpers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import openvino as ov

from ovrange.graph import inserted_nodes


# Runtime layers that take guards as post-ops: a guard inside one is fused even when the plugin renamed the layer
# (it names a Convolution after a Multiply it folded into the weights).
HOSTS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "MVN", "Deconvolution")


@dataclass(frozen=True)
class ClampFusion:
    """Where one inserted guard (a Clamp, or the Minimum/Maximum pair of a per-channel bound) ended up at run time.

    ``status``: ``fused`` (it runs inside ``runtime_node``, a ``primitive`` kernel, with the layers ``fused_with``),
    ``standalone`` (a kernel of its own, or shared only with other guards), ``not found`` (the plugin removed it,
    or moved and renamed it, and no runtime node lists its consumer either) or ``unknown`` (the device's runtime
    model has no ``originalLayersNames``).
    """

    name: str
    status: str
    runtime_node: str | None = None
    layer_type: str | None = None
    fused_with: tuple[str, ...] = ()
    primitive: str | None = None


@dataclass(frozen=True)
class FusionReport:
    device: str
    clamps: tuple[ClampFusion, ...]

    def names(self, status: str) -> list[str]:
        return [c.name for c in self.clamps if c.status == status]

    @property
    def counts(self) -> dict[str, int]:
        return {status: len(self.names(status)) for status in ("fused", "standalone", "not found", "unknown")}

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "counts": self.counts, "clamps": [asdict(c) for c in self.clamps]}


def guards(model: ov.Model) -> dict[str, set[str]]:
    """Each guard a protection pass inserted -> the names of its nodes.

    A scalar bound is one Clamp; a per-channel bound is Minimum(Maximum(x)); Ranger's ``zero`` correction is a
    Select over comparisons. The members are the guard node and the ``check`` nodes behind it that feed it.
    """
    record = inserted_nodes(model)
    found: dict[str, set[str]] = {}
    for node in model.get_ordered_ops():
        name = node.get_friendly_name()
        if record.get(name) != "guard":
            continue
        members, stack = {name}, [node]
        while stack:
            for value in stack.pop().input_values():
                source = value.get_node()
                source_name = source.get_friendly_name()
                if record.get(source_name) == "check" and source_name not in members:
                    members.add(source_name)
                    stack.append(source)
        found[name] = members
    return found


def fusion_report(compiled: ov.CompiledModel, model: ov.Model, device: str = "") -> FusionReport:
    """Classify every guard of ``model`` (the model ``compiled`` was compiled from) from the runtime model."""
    groups = guards(model)
    member_of = {member: guard for guard, members in groups.items() for member in members}
    layers = {n.get_friendly_name() for n in model.get_ops() if n.get_type_name() != "Constant"} - set(member_of)
    hosts: dict[str, list[tuple[str, str, tuple[str, ...], str]]] = {guard: [] for guard in groups}
    # A plugin transformation can rewrite a guard together with its consumer into a node it names itself (the CPU
    # plugin's attention fusion on PP-OCRv4 rec: Clamp -> MatMul -> Softmax becomes "MatMul_123, Softmax_127,
    # ..."); the guard then still runs (a [0, 0] bound there changes the output), inside its consumer's node.
    consumers = _consumers(model, groups)
    absorbed: dict[str, list[tuple[str, str, tuple[str, ...], str]]] = {guard: [] for guard in groups}
    has_names = False
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        if "originalLayersNames" not in rt:
            continue
        has_names = True
        originals = tuple(n for n in rt["originalLayersNames"].astype(str).split(",") if n)
        layer_type = rt["layerType"].astype(str) if "layerType" in rt else node.get_type_name()
        real = tuple(n for n in originals if n in layers)  # names the plugin made up are not model layers
        primitive = _primitive(rt)
        for guard in {member_of[n] for n in originals if n in member_of}:
            hosts[guard].append((node.get_friendly_name(), layer_type, real, primitive))
        for guard, names in consumers.items():
            if names & set(real):
                absorbed[guard].append((node.get_friendly_name(), layer_type, tuple(sorted(names & set(real))),
                                        primitive))
    results = []
    for guard in groups:
        found = hosts[guard] or absorbed[guard]
        if not has_names:
            results.append(ClampFusion(guard, "unknown"))
        elif not found:
            results.append(ClampFusion(guard, "not found"))
        else:
            node, layer_type, real, primitive = max(found, key=lambda host: len(host[2]))
            fused = bool(real) or layer_type in HOSTS  # a conv renamed after a folded op still runs the guard inside
            results.append(ClampFusion(guard, "fused" if fused else "standalone", node, layer_type, real, primitive))
    return FusionReport(device, tuple(results))


def _consumers(model: ov.Model, groups: dict[str, set[str]]) -> dict[str, set[str]]:
    """Guard -> friendly names of the model layers that read its output."""
    found = {}
    for node in model.get_ordered_ops():
        if node.get_friendly_name() in groups:
            found[node.get_friendly_name()] = {target.get_node().get_friendly_name()
                                               for target in node.output(0).get_target_inputs()}
    return found


def _primitive(rt: Any) -> str:
    """The implementation the plugin chose for a runtime node (``primitiveType``: ``gemm_mlas``, ``brgemm_avx2``...)."""
    return rt["primitiveType"].astype(str) if "primitiveType" in rt else ""


def kernels(compiled: ov.CompiledModel, model: ov.Model) -> set[tuple[frozenset[str], str]]:
    """The model layers each runtime kernel of ``compiled`` (compiled from ``model``) executes, with the kernel's
    implementation, one pair per kernel (names the plugin made up are left out)."""
    layers = {n.get_friendly_name() for n in model.get_ops() if n.get_type_name() != "Constant"}
    found = set()
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        if "originalLayersNames" in rt:
            found.add((frozenset(n for n in rt["originalLayersNames"].astype(str).split(",") if n in layers),
                       _primitive(rt)))
    return found


def against_original(report: FusionReport, original: set[tuple[frozenset[str], str]]) -> FusionReport:
    """``report`` with each fused guard whose kernel runs other model layers, or the same layers with another
    implementation, than every kernel of the original model (``kernels`` of its compilation) marked ``changed``:
    the guard split or broke a fusion the original had (a guard inside attention stops the plugin's fused attention
    kernel), or its post-op made the plugin choose a slower implementation (on f32, a FullyConnected with a post-op
    runs as oneDNN brgemm instead of MLAS: docs/llm.md), so it is not free although it is fused."""
    return FusionReport(report.device, tuple(
        replace(c, status="changed") if c.status == "fused" and (frozenset(c.fused_with), c.primitive or "")
        not in original else c for c in report.clamps))
