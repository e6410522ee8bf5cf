"""Fault campaigns on the bundled language model: SDC and DUE of generations, original vs protected.

Protects the fp32 export (``ovrange protect`` on the 120 calibration prompts: RangeSupervision, the default, and
GlobalClipper), then runs ``ovrange inject`` with ``--sdc generation:N`` on the held-out prompts, the same faults
on the original and each protected model (``--compare``), for each target (weights, activations, kv). Prints each model's SDC and DUE
rates with 95% Wilson intervals; each campaign's report folder is kept under ``--out``.

Usage: python benchmarks/llm_campaign.py [--trials 500] [--tokens 16] [--targets weights,activations,kv]
       [--out /tmp/llm_campaign] [--export fp32] [--algorithms RangeSupervision,GlobalClipper] [--lanes N]
       [--bits all]

``--bits`` (as ``inject --bits``: ``23-31``, ``0-22``, ``27-30``...) runs one stratum of the bit positions: the
report folder is then ``report_<export>_<target>_bits<bits>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LLM = Path(__file__).resolve().parent.parent / "build" / "llm"


def ovrange(*args: object) -> str:
    done = subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr.strip())
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--targets", default="weights,activations,kv")
    parser.add_argument("--export", default="fp32")
    parser.add_argument("--out", type=Path, default=Path("/tmp/llm_campaign"))
    parser.add_argument("--algorithms", default="RangeSupervision,GlobalClipper")
    parser.add_argument("--lanes", type=int, default=0, help="inject --lanes (0: its default)")
    parser.add_argument("--bits", default="all", help="inject --bits: the bit positions struck")
    args = parser.parse_args()
    original = LLM / args.export / "openvino_model.xml"
    protected = []
    for algorithm in args.algorithms.split(","):
        folder = args.out / f"openvino_model_{algorithm}"
        if not (folder / "openvino_model.xml").is_file():
            ovrange("protect", original, "--data", LLM / "calib_prompts.txt", "-o", args.out, "-a", algorithm, "-q")
        protected.append(folder / "openvino_model.xml")
    for target in args.targets.split(","):
        report = args.out / f"report_{args.export}_{target}{'' if args.bits == 'all' else '_bits' + args.bits}"
        started = time.perf_counter()
        compare = [arg for folder in protected for arg in ("--compare", folder)]
        lanes = ["--lanes", args.lanes] if args.lanes else []
        ovrange("inject", original, *compare, "--data", LLM / "prompts.txt", "--target", target, "--trials",
                args.trials, "--sdc", f"generation:{args.tokens}", "--seed", 0, "--report", report, "--force", "-q",
                "--bits", args.bits, *lanes)
        summary = json.loads((report / "result.json").read_text())["summary"]
        print(f"{args.export} {target}: {args.trials} faults (bits {args.bits}), generation:{args.tokens}, "
              f"{time.perf_counter() - started:.0f} s")
        for name, rates in summary["models"].items():
            sdc, due = rates["sdc"], rates["due"]
            print(f"  {Path(name).parent.name or name}: SDC {sdc['k']}/{sdc['n']} = {sdc['rate']:.2%} "
                  f"[{sdc['low']:.2%}, {sdc['high']:.2%}], DUE {due['k']}/{due['n']} = {due['rate']:.2%} "
                  f"[{due['low']:.2%}, {due['high']:.2%}]", flush=True)
        for comparison in summary.get("comparisons", []):
            reduction = comparison["sdc_reduction"]
            print(f"  {Path(comparison['models'][1]).parent.name}: SDC reduction "
                  f"{'inf' if reduction['ratio'] is None else format(reduction['ratio'], '.1f')}x (at least "
                  f"{reduction['at_least']:.1f}x from the intervals), DUEs turned silent: "
                  f"{comparison['due_turned_silent']}", flush=True)


if __name__ == "__main__":
    main()
