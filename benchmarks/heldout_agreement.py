"""Clean-output agreement of protected zoo models on inputs neither calibration nor held-out validation saw.

For every readable zoo model (build/zoo/manifest.json) and protection, protect on calib.npz (default options, or
``--holdout 0`` for bounds without held-out validation), then compare protected and original on heldout.npz (never
seen by protect) under the model's criterion (on its ``sdc_output``) and ``linf:0.01`` (output 0, as
``ovrange evaluate`` judges it), with Wilson 95% intervals.

    PYTHONPATH=$PWD python benchmarks/heldout_agreement.py [--holdout 0.2] [--margin 1.0] [--models a,b]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ovrange import validate
from ovrange.compare import Judge, SdcCriterion
from ovrange.data import load
from ovrange.errors import OvrangeError
from ovrange.faults.metrics import wilson
from ovrange.modelio import read_model
from ovrange.protect import protect, protection_info
from ovrange.runtime import Runner
from ovrange import data as data_mod

ZOO = Path("build/zoo")


def outputs(model, dataset):
    runner = Runner(model, batch_size=1, batched_outputs=False)
    rows = [[o.copy() for o in out] for out, _ in runner.run(data_mod.batches(data_mod.subset(dataset, None)[0],
                                                                               model, 1))]
    return [np.stack([r[i] for r in rows]) for i in range(len(rows[0]))]


def share(judge, ref, out):
    codes, _, _ = judge.classify(ref[judge.output], out[judge.output])
    k, n = int((codes == 0).sum()), len(codes)
    low, high = wilson(k, n)
    return {"agree": k, "total": n, "rate": k / n, "ci95": [low, high]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--holdout", type=float, default=validate.DEFAULT_HOLDOUT)
    parser.add_argument("--margin", type=float, default=validate.MARGIN)
    parser.add_argument("--widen", type=float, default=validate.WIDEN)
    parser.add_argument("--models", default="")
    parser.add_argument("--algorithms", default="GlobalClipper,RangeSupervision")
    parser.add_argument("--json")
    args = parser.parse_args()
    validate.MARGIN, validate.WIDEN = args.margin, args.widen
    manifest = json.loads((ZOO / "manifest.json").read_text())
    chosen = set(filter(None, args.models.split(",")))
    results = []
    for entry in manifest["models"]:
        if not entry.get("readable") or (chosen and entry["name"] not in chosen):
            continue
        model = read_model(ZOO / entry["model"])
        calib = load(ZOO / entry["name"] / "calib.npz", model).dataset
        held = load(ZOO / entry["name"] / "heldout.npz", model).dataset
        ref = outputs(model, held)
        judges = [Judge.for_model(model, SdcCriterion.parse(entry["sdc"]), entry.get("sdc_output")),
                  Judge(SdcCriterion.parse("linf:0.01"), 0)]
        for algorithm in args.algorithms.split(","):
            try:
                protected = protect(model, calib, algorithm=algorithm, holdout=args.holdout)
            except OvrangeError as exc:
                print(f"{entry['name']:<20} {algorithm:<17} error: {exc}", flush=True)
                continue
            info = protection_info(protected)
            out = outputs(protected, held)
            row = {"model": entry["name"], "algorithm": algorithm, "holdout": args.holdout,
                   "margin": args.margin, "widen": args.widen,
                   "criterion": share(judges[0], ref, out), "linf": share(judges[1], ref, out),
                   "widened": info.report.get("heldout", {}).get("widened")}
            results.append(row)
            c, l = row["criterion"], row["linf"]
            print(f"{entry['name']:<20} {algorithm:<17} {entry['sdc']:<10} {c['rate']:.2%} "
                  f"[{c['ci95'][0]:.1%}, {c['ci95'][1]:.1%}]  linf:0.01 {l['rate']:.2%} "
                  f"[{l['ci95'][0]:.1%}, {l['ci95'][1]:.1%}]  widened {row['widened']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
