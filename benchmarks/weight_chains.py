"""Weight faults on MediaPipe's fp16 TFLite models: original vs GlobalClipper, every weighted layer a site.

Depthwise weights reach GroupConvolution through ``Constant(f16) -> Convert -> Transpose -> Reshape``; they are
fault sites and bounded like the others. Per model, through the command line: ``ovrange protect -a GlobalClipper``
(default options), then one seeded weight campaign on the held-out inputs with the protected model given with
``--compare`` (the same faults on both, stored fp16 values struck: ``--number-format auto``), SDC judged by the zoo
manifest's criterion. Also the .bin sizes (the fp16 weights stay fp16). Usage::

    python benchmarks/weight_chains.py [--trials 1000] [--seed 0] [--models face_landmark,pose_detection] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.zoo_baseline import campaign, log, protect  # noqa: E402
from ovrange.faults.metrics import wilson  # noqa: E402


FP16_EXPONENT = [str(b) for b in range(10, 15)]


def rate(counts: list[int]) -> str:
    k, n = counts
    if not n:
        return "-"
    low, high = wilson(k, n)
    return f"{100 * k / n:.2f}% [{100 * low:.2f}, {100 * high:.2f}] ({k}/{n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="face_landmark,pose_detection")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    zoo = ROOT / "build" / "zoo"
    entries = {e["name"]: e for e in json.loads((zoo / "manifest.json").read_text())["models"]}
    work = args.work or Path(tempfile.mkdtemp(prefix="weight_chains_"))
    for name in args.models.split(","):
        entry = entries[name]
        original = zoo / entry["model"]
        guarded = protect(original, zoo / entry["calib"]["file"], "GlobalClipper", work)
        if isinstance(guarded, str):
            log(f"{name}: protect failed: {guarded}")
            continue
        sizes = [original.with_suffix(".bin").stat().st_size, guarded.with_suffix(".bin").stat().st_size]
        found = campaign([original, guarded], zoo / entry["heldout"]["file"], "weights", entry["sdc"], args.trials,
                         args.seed, work, f"{name}_weights")
        if "error" in found:
            log(f"{name}: campaign failed: {found['error']}")
            continue
        result = json.loads((work / f"{name}_weights.json").read_text())
        sites = result["sites"]
        log(f"{name} ({entry['sdc']}, {len(sites)} weight sites, .bin {sizes[0] / 1e6:.2f} -> {sizes[1] / 1e6:.2f} MB)")
        for label, path in (("original", original), ("GlobalClipper", guarded)):
            counts = found[str(path)]
            per_bit = result["summary"]["models"][str(path)].get("per_bit", {})
            exponent = [sum(per_bit[b][key] for b in FP16_EXPONENT if b in per_bit) for key in ("k", "n")]
            log(f"  {label:14s} SDC {rate(counts['sdc'])}  DUE {rate(counts['due'])}  "
                f"SDC at fp16 exponent bits 10-14 {rate(exponent)}")


if __name__ == "__main__":
    main()
