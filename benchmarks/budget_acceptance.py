"""Protection under a latency budget (docs/safety-case.md, "Protection under a latency budget"): on each model,
``--max-overhead`` 1% and 0.3% against the full protection (GlobalClipper, or ``--algorithm``).

For each budget: the chosen guards, the overhead ovrange measured for them (paired median, 95% interval over
sessions), and, from an independent campaign on the held-out data (another seed; the same faults on the original,
the full protection and both cut ones; f32 exponent bits by default, where every SDC a range guard removes comes
from), the share of the full protection's SDC reduction each cut one keeps, with a 95% paired-bootstrap interval
over faults.

    PYTHONPATH=. python benchmarks/budget_acceptance.py [--trials 1500] [--bits 23-30] [--models vit ppocr_rec
        palm_detection_full face_landmark] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ovrange import data as data_mod
from ovrange.budget import within_budget
from ovrange.faults.campaign import inject
from ovrange.faults.metrics import SDC
from ovrange.modelio import read_model
from ovrange.protect import protect

MODELS = {  # model, calibration, held-out, SDC criterion, judged output, timing shape
    "vit": ("build/vit/fashion_vit.xml", "build/vit/calib.npz", "build/vit/test.npz", "top1", None, None),
    "ppocr_rec": ("build/zoo/ppocr_rec/ppocr_rec.xml", "build/zoo/ppocr_rec/calib.npz",
                  "build/zoo/ppocr_rec/heldout.npz", "tokens", None, {"x": [1, 3, 48, 320]}),
    "palm_detection_full": ("build/zoo/palm_detection_full/palm_detection_full.xml",
                            "build/zoo/palm_detection_full/calib.npz", "build/zoo/palm_detection_full/heldout.npz",
                            "linf:0.01", "Identity", None),
    "face_landmark": ("build/zoo/face_landmark/face_landmark.xml", "build/zoo/face_landmark/calib.npz",
                      "build/zoo/face_landmark/heldout.npz", "linf:0.05", "conv2d_21", None),
}
BUDGETS = (0.01, 0.003)


def kept_share(orig: np.ndarray, full: np.ndarray, cut: np.ndarray, rng: np.random.Generator) -> dict:
    """(SDC_orig - SDC_cut) / (SDC_orig - SDC_full) on the same faults, with a 95% paired bootstrap interval."""
    o, f, c = (x == SDC for x in (orig, full, cut))
    point = (o.sum() - c.sum()) / max(o.sum() - f.sum(), 1)
    draws = []
    for _ in range(2000):
        i = rng.integers(0, len(o), len(o))
        denom = o[i].sum() - f[i].sum()
        if denom > 0:
            draws.append((o[i].sum() - c[i].sum()) / denom)
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    return {"value": float(point), "low": float(low), "high": float(high)}


def run(name: str, trials: int, seconds: float, algorithm: str, bits: str) -> dict:
    path, calib, heldout, sdc, output, shapes = MODELS[name]
    model = read_model(path)
    calib_ds = data_mod.load(calib, model).dataset
    start = time.time()
    full = protect(model, calib_ds, algorithm=algorithm, subset_size=64 if "zoo" in path else 300)
    out = {"model": name, "algorithm": algorithm, "sdc": sdc, "budgets": []}
    cuts = []
    for budget in BUDGETS:
        cut, result = within_budget(model, full, calib_ds, budget, sdc=sdc, output=output, seconds=seconds,
                                    shapes=shapes)
        cuts.append(cut)
        full_timing = result.timings[0]
        out["full_guards"], out["full_overhead"] = full_timing.guards, full_timing.__dict__
        out["budgets"].append({"max_overhead": budget, "chosen": len(result.chosen),
                               "overhead": None if result.overhead is None else result.overhead.__dict__,
                               "timings": [t.__dict__ for t in result.timings],
                               "expected_kept_share": result.kept_share, "benefit_sdc": result.sdc_original})
        print(name, budget, out["budgets"][-1], flush=True)
    heldout_ds = data_mod.load(heldout, model).dataset
    campaign = inject(model, heldout_ds, compare=[full, *cuts], target="activations", trials=trials, seed=1,
                      sdc=sdc, output=output, bits=bits)
    outcomes = [m.outcome for m in campaign.models]
    rng = np.random.default_rng(0)
    out["sdc_counts"] = [int((o == SDC).sum()) for o in outcomes]
    out["trials"], out["bits"] = trials, bits
    for entry, cut in zip(out["budgets"], outcomes[2:]):
        entry["kept_share"] = kept_share(outcomes[0], outcomes[1], cut, rng)
    out["seconds"] = time.time() - start
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--trials", type=int, default=1500)
    parser.add_argument("--time", type=float, default=8.0)
    parser.add_argument("--algorithm", default="GlobalClipper")
    parser.add_argument("--bits", default="23-30", help="of the evaluation campaign (all: every bit)")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = [run(name, args.trials, args.time, args.algorithm, args.bits) for name in args.models]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
