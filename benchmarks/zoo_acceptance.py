"""Acceptance 1 and 2 of the real-model zoo: the recommended protection against the original, same faults on both.

For every readable zoo model (``scripts/build_zoo.py``), through the command line as a user would run it:

1. ``ovrange protect MODEL --data calib.npz -a GlobalClipper`` (default options; ``--param KEY=VALUE`` adds
   algorithm parameters to every model, to measure a variant);
2. one seeded activation campaign and one seeded weight campaign on the held-out inputs, the protected model given
   with ``--compare`` (the same faults on both), SDC judged by the criterion the zoo manifest chose for the model;
3. ``ovrange evaluate`` on the held-out inputs (which the bounds never saw): agreement with the original under the
   model's criterion and at ``linf:0.01``;
4. with ``--time`` > 0, ``ovrange benchmark`` (interleaved rounds; a figure from a loaded machine is no acceptance
   measurement).

The table gives each rate with its Wilson 95% interval, the reductions (original / protected; ``∞`` when nothing is
left) and whether each acceptance point holds: activation SDC ≥ 8× lower for flips of exponent bits 27–30 and ≥ 3×
overall, weight SDC ≥ 10× lower, SDC+DUE lower than the original's (activations and weights), held-out agreement
≥ 99% on both criteria. Usage::

    python benchmarks/zoo_acceptance.py [--trials 3000] [--seed 0] [--models a,b] [--work DIR] [--time 0]
        [--param beyond=clamp]
    python benchmarks/zoo_acceptance.py --combine WORK [WORK ...]   # one table of several runs

Writes ``<work>/acceptance.json`` and ``<work>/acceptance.md`` after every model (a run can be read while it goes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from zoo_baseline import agreements, campaign, error_line, log, ovrange, overhead, pct, static_shape  # noqa: E402

from scripts.build_zoo import build_zoo  # noqa: E402

ALGORITHM = "GlobalClipper"
FACTORS = {"bits": 8.0, "activations": 3.0, "weights": 10.0}  # acceptance 1
AGREEMENT = 99.0  # acceptance 2, percent


def protect(model: Path, calib: Path, params: list[str], work: Path) -> Path | str:
    """The protected IR, or the error line."""
    extra = sum((["-p", p] for p in params), [])
    code, _, err = ovrange("protect", model, "--data", calib, "-a", ALGORITHM, *extra, "-o", work, "--force", "-q")
    return error_line(err) if code else work / f"{model.stem}_{ALGORITHM}" / f"{model.stem}.xml"


def measure(entry: dict[str, Any], zoo: Path, args: argparse.Namespace) -> dict[str, Any]:
    name, work = entry["name"], args.work / entry["name"]
    work.mkdir(parents=True, exist_ok=True)
    original, calib, heldout = zoo / entry["model"], zoo / entry["calib"]["file"], zoo / entry["heldout"]["file"]
    row: dict[str, Any] = {"name": name, "sdc": entry["sdc"]}
    log(f"{name}: protect")
    protected = protect(original, calib, args.param, work)
    if isinstance(protected, str):
        return {**row, "error": protected}
    for target in ("activations", "weights"):
        log(f"{name}: {args.trials} {target} faults")
        found = campaign([original, protected], heldout, target, entry["sdc"], args.trials, args.seed, work, target)
        row[target] = found if "error" in found else {"original": found[str(original)],
                                                     "protected": found[str(protected)]}
    row["agreement"] = {}
    for criterion in dict.fromkeys([entry["sdc"], "linf:0.01"]):
        log(f"{name}: held-out agreement at {criterion}")
        found = agreements([original, protected], heldout, criterion, entry["sdc_output"])
        row["agreement"][criterion] = agreement(found)
    if args.time > 0:
        log(f"{name}: benchmark")
        row["overhead"] = overhead(original, protected, args.time, static_shape(entry), work)
    return row


def agreement(found: dict[str, Any]) -> float | dict[str, Any]:
    """The protected model's agreement (percent) from :func:`zoo_baseline.agreements` (keyed ``path [output]``),
    or the error."""
    values = [v for k, v in found.items() if k != "error" and isinstance(v, float)]
    return values[0] if len(values) == 1 else found


def ratio(before: int, after: int) -> float:
    return float("inf") if after == 0 and before > 0 else (before / after if after else 1.0)


def factor(before: list[int], after: list[int]) -> str:
    r = ratio(before[0], after[0])
    return "∞" if r == float("inf") else f"{r:.1f}×"


def checks(row: dict[str, Any]) -> dict[str, bool]:
    """Each acceptance point for one model (False where a step failed)."""
    act, wgt = row.get("activations", {}), row.get("weights", {})
    ok = {}
    if "original" in act:
        o, p = act["original"], act["protected"]
        ok["bits 27-30 ≥ 8×"] = ratio(o["sdc_bits_27_30"][0], p["sdc_bits_27_30"][0]) >= FACTORS["bits"]
        ok["activations ≥ 3×"] = ratio(o["sdc"][0], p["sdc"][0]) >= FACTORS["activations"]
        ok["activation SDC+DUE lower"] = p["sdc"][0] + p["due"][0] < o["sdc"][0] + o["due"][0]
    if "original" in wgt:
        o, p = wgt["original"], wgt["protected"]
        ok["weights ≥ 10×"] = ratio(o["sdc"][0], p["sdc"][0]) >= FACTORS["weights"]
        ok["weight SDC+DUE lower"] = p["sdc"][0] + p["due"][0] < o["sdc"][0] + o["due"][0]
    agree = {k: agreement(v) if isinstance(v, dict) else v for k, v in row.get("agreement", {}).items()}
    ok["held-out ≥ 99%"] = bool(agree) and all(isinstance(v, float) and v >= AGREEMENT for v in agree.values())
    return ok


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "| model | SDC criterion | target | original SDC | protected SDC | reduction | bits 27–30 SDC: "
             "original → protected | SDC + DUE: original → protected |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for target in ("activations", "weights"):
            cell = row.get(target, {"error": row.get("error", "not run")})
            if "error" in cell:
                lines.append(f"| {row['name']} | {row['sdc']} | {target} | fails: `{cell['error'][:100]}` | | | | |")
                continue
            o, p = cell["original"], cell["protected"]
            lines.append(
                f"| {row['name']} | {row['sdc']} | {target} | {pct(*o['sdc'])} | {pct(*p['sdc'])} | "
                f"{factor(o['sdc'], p['sdc'])} | {o['sdc_bits_27_30'][0]} → {p['sdc_bits_27_30'][0]} of "
                f"{o['sdc_bits_27_30'][1]} ({factor(o['sdc_bits_27_30'], p['sdc_bits_27_30'])}) | "
                f"{pct(o['sdc'][0] + o['due'][0], o['sdc'][1])} → {pct(p['sdc'][0] + p['due'][0], p['sdc'][1])} |")
    lines += ["", "| model | held-out agreement (model's criterion) | held-out agreement (linf:0.01) | latency ratio "
              "| acceptance points that fail |", "|---|---|---|---|---|"]
    for row in rows:
        found = [agreement(v) if isinstance(v, dict) else v for v in row.get("agreement", {}).values()]
        agree = [f"{v:.2f}%" if isinstance(v, float) else f"fails: `{v.get('error', v)}`"[:100] for v in found] or ["—"]
        agree = agree * 2 if len(agree) == 1 else agree
        cost = row.get("overhead")
        cost_cell = ("not measured" if cost is None else f"fails: `{cost['error'][:80]}`" if "error" in cost else
                     f"{cost['median']:.3f}× [{cost['low']:.3f}, {cost['high']:.3f}]")
        failed = [k for k, v in checks(row).items() if not v]
        lines.append(f"| {row['name']} | {agree[0]} | {agree[1]} | {cost_cell} | {', '.join(failed) or 'none'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "build" / "zoo")
    parser.add_argument("--trials", type=int, default=3000, help="faults per campaign (default 3000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time", type=float, default=0.0, help="seconds of benchmark timing (default 0: none)")
    parser.add_argument("--models", default="", help="comma-separated zoo model names (default: all readable)")
    parser.add_argument("--param", action="append", default=[], help="GlobalClipper parameter KEY=VALUE")
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "zoo_acceptance")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="WORK",
                        help="print one table of the rows of several runs' acceptance.json (nothing is run)")
    args = parser.parse_args(argv)
    if args.combine:
        runs = [json.loads((work / "acceptance.json").read_text()) for work in args.combine]
        print(markdown([row for run in runs for row in run["rows"]], "; ".join(r["command"].strip() for r in runs)))
        return
    manifest = build_zoo(args.zoo)
    readable = {e["name"]: e for e in manifest["models"] if e["readable"]}
    wanted = list(filter(None, args.models.split(","))) or list(readable)
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/zoo_acceptance.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for name in wanted:
        rows.append(measure(readable[name], args.zoo, args))
        (args.work / "acceptance.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
        (args.work / "acceptance.md").write_text(markdown(rows, command.strip()))
        log(f"{name}: done")
    print((args.work / "acceptance.md").read_text())


if __name__ == "__main__":
    main()
