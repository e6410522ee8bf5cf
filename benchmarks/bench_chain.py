"""Wall time of the POT chain [DefaultQuantization, RangeSupervision] against ``nncf.quantize`` alone, on the same
model and calibration subset (goal: the protection step adds at most 20%). Interleaved rounds, paired medians.

Contenders, each from the same in-memory model and samples:
  nncf      ``nncf.quantize(model, nncf.Dataset(samples), subset_size=N)``, what a user calls by hand (its
            progress bar silenced, as ovrange silences it);
  quantize  ovrange's DefaultQuantization step alone (the same nncf call behind config checks and a quiet log);
  chain     ``ovrange.protect.run_chain``: the step, then RangeSupervision calibrated on the same N samples.

Usage: python benchmarks/bench_chain.py [--model build/default/fashion_lenet.xml] [--data build/default/calib.npz]
                                        [--subset-size 300] [--rounds 9] [--protect-batch 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ovrange.config import parse_config  # noqa: E402
from ovrange.modelio import read_model  # noqa: E402
from ovrange.protect import run_chain  # noqa: E402
from ovrange.quantize import apply  # noqa: E402
from ovrange.timing import interleaved, paired_ratio  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "build/default/fashion_lenet.xml")
    parser.add_argument("--data", type=Path, default=REPO / "build/default/calib.npz")
    parser.add_argument("--subset-size", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--protect-batch", type=int, default=1, help="RangeSupervision's stat_batch_size")
    args = parser.parse_args()
    import nncf  # imported once, before timing

    nncf.set_log_level(logging.ERROR)
    model = read_model(args.model)
    samples = np.load(args.data)["x"][:args.subset_size].astype(np.float32)
    n = len(samples)
    config = parse_config({"compression": {"algorithms": [
        {"name": "DefaultQuantization", "params": {"stat_subset_size": n}},
        {"name": "RangeSupervision", "params": {"stat_subset_size": n, "stat_batch_size": args.protect_batch}}]}})

    def nncf_alone() -> None:  # quiet as ovrange runs it: drawing nncf's progress bar is not quantizing
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            nncf.quantize(model.clone(), nncf.Dataset([samples[i:i + 1] for i in range(n)]), subset_size=n)

    contenders = {"nncf": nncf_alone, "quantize": lambda: apply(model, samples, config.quantization[0]),
                  "chain": lambda: run_chain(model, samples, config.algorithms)}
    times = interleaved(contenders, rounds=args.rounds)
    for name, values in times.items():
        print(f"{name:9s} median {np.median(values):.3f} s over {len(values)} rounds")
    print(f"quantize / nncf: {paired_ratio(times['nncf'], times['quantize'])}")
    print(f"chain / nncf:    {paired_ratio(times['nncf'], times['chain'])}   (goal <= 1.20)")
    print(f"chain / quantize: {paired_ratio(times['quantize'], times['chain'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
