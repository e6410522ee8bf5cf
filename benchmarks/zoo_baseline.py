"""What today's ovrange does on the real-model zoo: original vs RangeSupervision vs GlobalClipper.

For every readable zoo model (``scripts/build_zoo.py``, built here if missing), through the command line as a user
would run it:

1. ``ovrange protect MODEL --data calib.npz -a ALGORITHM`` (default options);
2. one seeded activation campaign and one seeded weight campaign on the held-out inputs, the protected models
   given with ``--compare`` so that every model sees the same faults, SDC judged by the criterion the zoo manifest
   chose for the model; when a joint campaign is refused, the models that can run together run together and the
   others alone with the same seed (marked in the table);
3. ``ovrange evaluate`` on the held-out inputs: how often each protected model agrees with the original, under the
   model's criterion and under ``linf:0.01``;
4. ``ovrange benchmark`` latency overhead of each protected model (interleaved rounds, 95% interval).

A step that fails is reported with its ``error:`` line. Usage::

    python benchmarks/zoo_baseline.py [--trials 1000] [--seed 0] [--time 10] [--models a,b] [--work DIR]

Writes ``<work>/baseline.json`` and ``<work>/baseline.md`` (the tables of docs/zoo.md) and prints progress.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ovrange.faults.metrics import wilson  # noqa: E402
from scripts.build_zoo import build_zoo  # noqa: E402

ALGORITHMS = ("RangeSupervision", "GlobalClipper")
EXPONENT_BITS = ("27", "28", "29", "30")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ovrange(*args: Any, timeout: float = 6 * 3600) -> tuple[int, str, str]:
    """Run ``python -m ovrange ARGS`` with this tree's package; (exit code, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "failed")


def protect(model: Path, calib: Path, algorithm: str, work: Path) -> Path | str:
    """The protected IR, or the error line."""
    code, _, err = ovrange("protect", model, "--data", calib, "-a", algorithm, "-o", work, "--force", "-q")
    if code:
        return error_line(err)
    return work / f"{model.stem}_{algorithm}" / f"{model.stem}.xml"


def _summarize(result: dict[str, Any], path: str) -> dict[str, Any]:
    summary = result["summary"]["models"][path]
    per_bit = summary.get("per_bit", {})
    exp = [per_bit[b] for b in EXPONENT_BITS if b in per_bit]
    outcomes = next(m["outcomes"] for m in result["models"] if m["name"] == path)
    return {"sdc": [summary["sdc"]["k"], summary["sdc"]["n"]], "due": [summary["due"]["k"], summary["due"]["n"]],
            "sdc_bits_27_30": [sum(b["k"] for b in exp), sum(b["n"] for b in exp)], "outcomes": outcomes}


def campaign(models: list[Path], data: Path, target: str, sdc: str, trials: int, seed: int, work: Path,
             tag: str) -> dict[str, Any]:
    """One campaign over ``models`` (the first is the reference): per model its counts, or ``error``."""
    out = work / f"{tag}.json"
    args = ["inject", models[0], *sum((["--compare", m] for m in models[1:]), []), "--data", data, "--target", target,
            "--trials", trials, "--seed", seed, "--sdc", sdc, "--json", out, "--force", "-q"]
    code, _, err = ovrange(*args)
    if code:
        return {"error": error_line(err)}
    result = json.loads(out.read_text())
    return {str(m): _summarize(result, str(m)) for m in models}


def campaigns(original: Path, protected: dict[str, Path], data: Path, target: str, sdc: str, trials: int,
              seed: int, work: Path) -> dict[str, Any]:
    """Per model label (``original`` and the algorithms): counts or an error; jointly when ovrange accepts it."""
    labels = {str(original): "original", **{str(p): a for a, p in protected.items()}}
    joint = campaign([original, *protected.values()], data, target, sdc, trials, seed, work, f"{target}_all")
    if "error" not in joint:
        return {labels[k]: v for k, v in joint.items()}
    log(f"  joint {target} campaign refused ({joint['error']}); models run apart")
    found: dict[str, Any] = {"joint_error": joint["error"]}
    for path, label in labels.items():
        alone = campaign([Path(path)], data, target, sdc, trials, seed, work, f"{target}_{label}")
        found[label] = alone.get(path, alone) | ({"separate": True} if "error" not in alone else {})
    return found


def agreements(models: list[Path], data: Path, sdc: str, output: str) -> dict[str, Any]:
    """Held-out agreement (%) of each protected model with the original on output ``output``, or the error line."""
    code, out, err = ovrange("evaluate", *models, "--data", data, "--sdc", sdc, "--output-name", output,
                             "--batch-size", 1, "-q")
    if code:
        return {"error": error_line(err)}
    found = {}
    for line in out.splitlines():
        match = re.match(r"(.+?): agrees with .* on ([\d.]+)%", line.strip())
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def overhead(original: Path, protected: Path, seconds: float, shape: str | None, work: Path) -> dict[str, Any]:
    out = work / f"bench_{protected.parent.name}.json"
    code, _, err = ovrange("benchmark", original, protected, "--time", seconds, "--json", out,
                           *(["--shape", shape] if shape else []))
    if code:
        return {"error": error_line(err)}
    result = json.loads(out.read_text())
    ratio = result["latency_ratio"]
    return {"median": ratio["median"], "low": ratio["low"], "high": ratio["high"],
            "fusion": result.get("fusion", {}).get("counts", {})}


def static_shape(entry: dict[str, Any]) -> str | None:
    """A benchmark_app shape for models with dynamic inputs (one sample of the held-out set, batch 1)."""
    if all("?" not in p["shape"] for p in entry["inputs"]):
        return None
    dims = entry["heldout"]["arrays"][entry["inputs"][0]["name"]][1:]
    return "[" + ",".join(map(str, [1, *dims])) + "]"


def measure(entry: dict[str, Any], zoo: Path, args: argparse.Namespace) -> dict[str, Any]:
    name, work = entry["name"], args.work / entry["name"]
    work.mkdir(parents=True, exist_ok=True)
    original, calib, heldout = zoo / entry["model"], zoo / entry["calib"]["file"], zoo / entry["heldout"]["file"]
    row: dict[str, Any] = {"name": name, "sdc": entry["sdc"], "protect": {}}
    protected: dict[str, Path] = {}
    for algorithm in ALGORITHMS:
        log(f"{name}: protect {algorithm}")
        result = protect(original, calib, algorithm, work)
        row["protect"][algorithm] = str(result)
        if isinstance(result, Path):
            protected[algorithm] = result
    for target in ("activations", "weights"):
        log(f"{name}: {args.trials} {target} faults")
        row[target] = campaigns(original, protected, heldout, target, entry["sdc"], args.trials, args.seed, work)
    labels = {str(p): a for a, p in protected.items()}
    for criterion in dict.fromkeys([entry["sdc"], "linf:0.01"]):
        log(f"{name}: held-out agreement at {criterion}")
        found = agreements([original, *protected.values()], heldout, criterion, entry["sdc_output"])
        row.setdefault("agreement", {})[criterion] = {labels.get(k, k): v for k, v in found.items()}
    row["overhead"] = {}
    for algorithm, path in protected.items():
        log(f"{name}: benchmark {algorithm}")
        row["overhead"][algorithm] = overhead(original, path, args.time, static_shape(entry), work)
    return row


# ---------------------------------------------------------------------------------------------------------------
# Tables


def pct(k: int, n: int) -> str:
    if n == 0:
        return "—"
    low, high = wilson(k, n)
    return f"{100 * k / n:.2f}% [{100 * low:.2f}, {100 * high:.2f}]"


def rate_cell(cell: dict[str, Any], key: str) -> str:
    if "error" in cell:
        return "fails: `" + cell["error"][:110] + "`"
    if key == "sdc+due":
        k, n = cell["sdc"][0] + cell["due"][0], cell["sdc"][1]
    else:
        k, n = cell[key]
    return pct(k, n) + (" (own faults)" if cell.get("separate") else "")


def turned(original: dict[str, Any], protected: dict[str, Any]) -> str:
    """Trials whose fault the original showed as a DUE and the protected model as an SDC."""
    if "outcomes" not in original or "outcomes" not in protected or protected.get("separate"):
        return "—"
    pairs = zip(original["outcomes"], protected["outcomes"])
    return f"{sum(a == 'd' and b == 's' for a, b in pairs)} of {original['outcomes'].count('d')}"


def markdown(rows: list[dict[str, Any]], unreadable: list[dict[str, Any]], command: str) -> str:
    labels = ("original", *ALGORITHMS)
    lines = [f"Command: `{command}`", ""]
    for target in ("activations", "weights"):
        lines += [f"### {target.capitalize()}", "",
                  "| model | SDC criterion | model variant | SDC | SDC of the flips of bits 27–30 | SDC + DUE | "
                  "original's DUEs now SDC |", "|---|---|---|---|---|---|---|"]
        for row in rows:
            result = row[target]
            for label in labels:
                cell = result.get(label) or {"error": row["protect"].get(label, "not run")}
                cells = ([rate_cell(cell, "sdc"), "", "", ""] if "error" in cell else
                         [rate_cell(cell, key) for key in ("sdc", "sdc_bits_27_30", "sdc+due")]
                         + [turned(result.get("original", {}), cell) if label != "original" else "—"])
                lines.append(f"| {row['name']} | {row['sdc']} | {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Clean outputs and cost", "",
              "| model | protection | held-out agreement (model's criterion) | held-out agreement (linf:0.01) | "
              "latency ratio [95% interval] | Clamps fused / standalone |", "|---|---|---|---|---|---|"]
    for row in rows:
        for algorithm in ALGORITHMS:
            status = row["protect"][algorithm]
            if not status.endswith(".xml"):
                lines.append(f"| {row['name']} | {algorithm} | protect fails: `{status[:110]}` | | | |")
                continue
            agree = []
            for criterion, found in row["agreement"].items():
                agree.append(f"fails: `{found['error'][:90]}`" if "error" in found else
                             f"{found.get(algorithm, float('nan')):.2f}%")
            if len(agree) == 1:
                agree.append(agree[0])
            cost = row["overhead"][algorithm]
            fusion = cost.get("fusion", {})
            cost_cell = (f"fails: `{cost['error'][:90]}`" if "error" in cost else
                         f"{cost['median']:.3f}× [{cost['low']:.3f}, {cost['high']:.3f}]")
            lines.append(f"| {row['name']} | {algorithm} | {agree[0]} | {agree[1]} | {cost_cell} | "
                         f"{fusion.get('fused', '—')} / {fusion.get('standalone', '—')} |")
    lines += ["", "Not readable by OpenVINO: " + "; ".join(f"{e['name']} ({e['reason']})" for e in unreadable)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "build" / "zoo")
    parser.add_argument("--trials", type=int, default=1000, help="faults per campaign (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time", type=float, default=10.0, help="seconds of benchmark timing per pair")
    parser.add_argument("--models", default="", help="comma-separated zoo model names (default: all readable)")
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "zoo_baseline")
    args = parser.parse_args(argv)
    manifest = build_zoo(args.zoo)
    wanted = list(filter(None, args.models.split(",")))  # measured in this order
    readable = {e["name"]: e for e in manifest["models"] if e["readable"]}
    entries = [readable[name] for name in wanted if name in readable] if wanted else list(readable.values())
    unreadable = [e for e in manifest["models"] if not e["readable"]]
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/zoo_baseline.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for entry in entries:
        rows.append(measure(entry, args.zoo, args))
        (args.work / "baseline.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
        (args.work / "baseline.md").write_text(markdown(rows, unreadable, command.strip()))
        log(f"{entry['name']}: done")
    print((args.work / "baseline.md").read_text())


if __name__ == "__main__":
    main()
