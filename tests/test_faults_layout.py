"""The layout of the fault-injection package: imports flow one way, engines share one protocol, modules stay small,
and the fault-array type agrees with the fault records it is built from."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from ovrange.compare import Judge, SdcCriterion
from ovrange.faults.engines import Engine, make_engine
from ovrange.faults.faultlist import Fault, FaultArrays, FaultList, plan_faults
from ovrange.faults.formats import FORMATS
from ovrange.faults.sites import find_sites
from ovrange.faults.spec import CampaignSpec
from tests.test_faults_sites import SHAPES, tiny_lenet

PACKAGE = Path(__file__).resolve().parents[1] / "ovrange"
FLOW = ["spec", "sites", "faultlist", "engines", "executors", "outcomes", "result", "report"]


def imports(path: Path) -> set[str]:
    """The ovrange modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ovrange"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # ``from ovrange.faults import x``
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ovrange"))
    return found


def graph(folder: Path, prefix: str) -> dict[str, set[str]]:
    modules = {f"{prefix}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``edges``, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_fault_package_has_no_import_cycle():
    assert cycle(graph(PACKAGE / "faults", "ovrange.faults")) == []


def test_the_file_names_read_as_the_flow_and_arrows_point_down_it():
    edges = graph(PACKAGE / "faults", "ovrange.faults")
    names = [f"ovrange.faults.{stem}" for stem in FLOW]
    assert set(names) <= set(edges)
    for i, module in enumerate(names):  # no stage imports a later one (engines are never told about executors)
        later = set(names[i + 1:]) - {"ovrange.faults.outcomes"}  # engines return Outcomes
        assert not edges[module] & later, module


def test_the_comparator_knows_nothing_of_campaigns():
    assert not {m for m in imports(PACKAGE / "compare.py") if m.startswith("ovrange.faults")}


def test_no_module_of_the_fault_package_or_the_comparator_is_over_400_lines():
    files = [*(PACKAGE / "faults").glob("*.py"), PACKAGE / "compare.py"]
    sizes = {p.name: len(p.read_text().splitlines()) for p in files}
    assert max(sizes.values()) <= 400, sizes


@pytest.mark.parametrize("target, settings", [
    ("activations", {}),
    ("activations", {"error_rate": 1e-3}),
    ("weights", {}),
    ("weights", {"weight_mode": "parameter"}),
    ("weights", {"ber": 1e-4}),
])
def test_every_engine_implements_the_engine_protocol(target, settings):
    model = tiny_lenet()
    sites = find_sites(model, target, SHAPES)
    spec = CampaignSpec(target=target, batch_size=4, **settings)
    engine = make_engine(model, target, sites, SHAPES, spec, Judge(SdcCriterion("top1")), FORMATS["fp32"])
    assert isinstance(engine, Engine)
    assert engine.kind == target and engine.batch >= 1 and engine.description


def plan(faults: list[Fault], trials: int, sites, trial_inputs: tuple[int, ...] = ()) -> FaultList:
    return FaultList("weights", "fp32", tuple(sites), (0, 1, 2), tuple(faults), trials, 0, None, "",
                     trial_inputs, "bit", None)


def test_fault_arrays_hold_the_fault_records_field_by_field():
    sites = find_sites(tiny_lenet(), "weights", SHAPES)
    faults, _ = plan_faults(sites, np.arange(5), 50, tuple(range(32)), seed=2, fault_model="bits:3")
    arrays = plan(faults, 50, sites).arrays
    index = {s.name: i for i, s in enumerate(sites)}
    assert arrays.trial.tolist() == [f.trial for f in faults] and arrays.input.tolist() == [f.input for f in faults]
    assert arrays.site.tolist() == [index[f.site] for f in faults]
    assert arrays.element.tolist() == [f.element for f in faults] and arrays.mask.tolist() == [f.mask for f in faults]
    assert arrays.op.tolist() == [f.op for f in faults] and arrays.bits().tolist() == [f.bit for f in faults]


def test_fault_arrays_look_trials_up_in_any_order():
    sites = find_sites(tiny_lenet(), "weights", SHAPES)
    name = sites[0].name
    faults = [Fault(2, 1, name, 5, 1 << 3), Fault(0, 0, name, 7, 1 << 30, "set"), Fault(1, 2, name, 9, 3),
              Fault(1, 2, sites[1].name, 4, 1 << 31)]
    arrays = FaultArrays.of(tuple(faults), tuple(sites))
    one = arrays.take(np.array([0, 1, 2]))  # one fault per trial
    picked = one.single(np.array([2, 0]))
    assert picked.element.tolist() == [5, 7] and picked.op.tolist() == ["flip", "set"]
    assert len(one.single(np.zeros(0, np.int64))) == 0
    with pytest.raises(ValueError):
        one.single(np.array([3]))
    with pytest.raises(ValueError):
        one.take(np.zeros(0, np.int64)).single(np.array([0]))
    grouped = arrays.per_trial(np.array([1, 2, 5]))
    assert sorted(grouped) == [1, 2]
    assert grouped[1].element.tolist() == [9, 4] and grouped[1].site.tolist() == [0, 1]  # in the plan's order
    trials, rows = arrays.last()
    assert trials.tolist() == [0, 1, 2] and rows.tolist() == [1, 3, 0]
    assert FaultArrays.of((Fault(0, 0, "elsewhere", 0, 1),), tuple(sites)).site.tolist() == [-1]


def test_each_trial_has_its_input_from_its_faults_or_the_recorded_list():
    sites = find_sites(tiny_lenet(), "weights", SHAPES)
    name = sites[0].name
    faulted = plan([Fault(0, 2, name, 1, 1), Fault(2, 1, name, 1, 1)], 3, sites)
    assert faulted.trial_input.tolist() == [2, -1, 1]  # trial 1 has no fault and no recorded input
    rated = plan([Fault(0, 2, name, 1, 1)], 3, sites, trial_inputs=(2, 0, 1))
    assert rated.trial_input.tolist() == [2, 0, 1]
