"""Protection under a latency budget (docs/safety-case.md, "Protection under a latency budget"): on each model,
the full protection (GlobalClipper, or ``--algorithm``) against ``--max-overhead`` 1% and 0.3%.

For each model: the full protection's overhead and each budget's kept set's overhead, all measured the same way
(paired, interleaved sessions against the original, sessions added until the 95% interval is narrower than the
tightest budget or ``--steps`` steps of ``--time`` seconds), whether each budget is verified (the interval's upper
end within it); and, from an independent campaign on the held-out data (seed 1; the same faults on the original,
the full protection and both cut ones, ``inject --compare``; f32 exponent bits by default, where every SDC a range
guard removes comes from), the share of the full protection's SDC reduction each cut one keeps, with a 95%
paired-bootstrap interval over faults.

    PYTHONPATH=. python benchmarks/budget_acceptance.py [--trials 1500] [--bits 23-30] [--time 8] [--steps 4]
        [--models vit ppocr_rec face_landmark ppocr_cls ppocr_det] [--param per_channel=false] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from ovrange import data as data_mod
from ovrange.bench.benchmark import overhead_until
from ovrange.budget import within_budget
from ovrange.faults.campaign import inject
from ovrange.faults.metrics import MASKED, SDC
from ovrange.modelio import read_model
from ovrange.protect import protect

ZOO = "build/zoo"
MODELS = {  # model, calibration, held-out, SDC criterion, judged output, timing shape (the zoo manifest's)
    "vit": ("build/vit/fashion_vit.xml", "build/vit/calib.npz", "build/vit/test.npz", "top1", None, None),
    "ppocr_rec": (f"{ZOO}/ppocr_rec/ppocr_rec.xml", f"{ZOO}/ppocr_rec/calib.npz", f"{ZOO}/ppocr_rec/heldout.npz",
                  "tokens", None, {"x": [1, 3, 48, 320]}),
    "face_landmark": (f"{ZOO}/face_landmark/face_landmark.xml", f"{ZOO}/face_landmark/calib.npz",
                      f"{ZOO}/face_landmark/heldout.npz", "linf:0.05", "conv2d_21", None),
    "ppocr_cls": (f"{ZOO}/ppocr_cls/ppocr_cls.xml", f"{ZOO}/ppocr_cls/calib.npz", f"{ZOO}/ppocr_cls/heldout.npz",
                  "top1", None, {"x": [1, 3, 48, 192]}),
    "iris_landmark": (f"{ZOO}/iris_landmark/iris_landmark.xml", f"{ZOO}/iris_landmark/calib.npz",
                      f"{ZOO}/iris_landmark/heldout.npz", "linf:0.05", "output_eyes_contours_and_brows", None),
    "ppocr_det": (f"{ZOO}/ppocr_det/ppocr_det.xml", f"{ZOO}/ppocr_det/calib.npz", f"{ZOO}/ppocr_det/heldout.npz",
                  "boxes", None, {"x": [1, 3, 320, 320]}),
    "palm_detection_full": (f"{ZOO}/palm_detection_full/palm_detection_full.xml",
                            f"{ZOO}/palm_detection_full/calib.npz", f"{ZOO}/palm_detection_full/heldout.npz",
                            "linf:0.01", "Identity", None),
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


def run(name: str, args: argparse.Namespace) -> dict:
    path, calib, heldout, sdc, output, shapes = MODELS[name]
    model = read_model(path)
    calib_ds = data_mod.load(calib, model).dataset
    start = time.time()
    params = dict(p.split("=", 1) for p in args.param)
    params = {k: {"true": True, "false": False}.get(v, v) for k, v in params.items()}
    full = protect(model, calib_ds, algorithm=args.algorithm, subset_size=64 if ZOO in path else 300, sdc=sdc,
                   **params)
    timing = {"seconds": args.time, "sessions": 4, "steps": args.steps, "shapes": shapes}
    ratio, _ = overhead_until(model, full, min(BUDGETS), **timing)
    out = {"model": name, "algorithm": args.algorithm, "params": args.param, "sdc": sdc, "load": os.getloadavg(),
           "full_overhead": {"median": ratio.median - 1, "low": ratio.low - 1, "high": ratio.high - 1,
                             "sessions": ratio.rounds}, "budgets": []}
    cuts = []
    for budget in BUDGETS:
        cut, result = within_budget(model, full, calib_ds, budget, sdc=sdc, output=output, **timing)
        cuts.append(cut)
        record = result.to_json()
        out["guards"] = len(result.candidates)
        out["free"] = sum(1 for c in result.candidates if c.cost == 0)
        out["budgets"].append({"max_overhead": budget, "chosen": len(result.chosen), "verified": result.verified,
                               "overhead": record["overhead"], "timings": record["timings"],
                               "expected_kept_share": result.kept_share, "benefit_sdc": result.sdc_original,
                               "dropped_as_harmful": sorted({k for v in record["vetting"] for k in v["dropped"]}
                                                             - set(result.chosen))})
        print(name, budget, json.dumps(out["budgets"][-1]), flush=True)
    heldout_ds = data_mod.load(heldout, model).dataset
    campaign = inject(model, heldout_ds, compare=[full, *cuts], target="activations", trials=args.trials, seed=1,
                      sdc=sdc, output=output, bits=args.bits)
    outcomes = [m.outcome for m in campaign.models]
    rng = np.random.default_rng(0)
    out["sdc_counts"] = [int((o == SDC).sum()) for o in outcomes]
    out["failed_counts"] = [int((o != MASKED).sum()) for o in outcomes]  # SDC + DUE
    out["trials"], out["bits"] = args.trials, args.bits
    for entry, cut in zip(out["budgets"], outcomes[2:]):
        entry["kept_share"] = kept_share(outcomes[0], outcomes[1], cut, rng)
    out["seconds"] = time.time() - start
    print(json.dumps(out), flush=True)
    return out


def pct(x: dict | None) -> str:
    return "—" if x is None else f"{x['median']:+.2%} [{x['low']:+.2%}, {x['high']:+.2%}]"


def table(results: list[dict]) -> str:
    rows = ["| model | guards (free) | set | guards kept | overhead, paired (95%) | verified | SDC | SDC+DUE | kept "
            "share of the reduction (95%) | expected |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        counts, failed = r["sdc_counts"], r["failed_counts"]
        rows.append(f"| {r['model']} | {r['guards']} ({r['free']}) | full | {r['guards']} | {pct(r['full_overhead'])} "
                    f"| | {counts[0]} → {counts[1]} | {failed[0]} → {failed[1]} | 100% | |")
        for b, n, m in zip(r["budgets"], counts[2:], failed[2:]):
            share, expected = b["kept_share"], b["expected_kept_share"]
            rows.append(f"| | | {b['max_overhead']:.1%} | {b['chosen']} | {pct(b['overhead'])} | "
                        f"{'yes' if b['verified'] else 'no'} | {counts[0]} → {n} | {failed[0]} → {m} | "
                        f"{share['value']:.0%} "
                        f"[{share['low']:.0%}, {share['high']:.0%}] | "
                        f"{'—' if expected is None else f'{expected:.0%}'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["vit", "ppocr_rec", "face_landmark", "ppocr_cls"],
                        choices=list(MODELS))
    parser.add_argument("--trials", type=int, default=1500)
    parser.add_argument("--time", type=float, default=8.0, help="seconds of one timing step")
    parser.add_argument("--steps", type=int, default=4, help="timing steps at most per timed set")
    parser.add_argument("--algorithm", default="GlobalClipper")
    parser.add_argument("--param", action="append", default=[], help="NAME=VALUE: a parameter of the algorithm "
                        "(per_channel=false), as protect's -p")
    parser.add_argument("--bits", default="23-30", help="of the evaluation campaign (all: every bit)")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = []
    for name in args.models:
        results.append(run(name, args))
        if args.json:  # after every model: a stopped run keeps what it measured
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
