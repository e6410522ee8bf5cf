"""A stateful campaign against its replay without KV cache, on the bundled language model (fp32 export).

Runs ``inject`` (seed 0, ``--sdc generation:N``) on the held-out prompts, then replays every trial independently:
each step a fresh prefill of the prompt and the tokens generated so far, the fault at the same position
(``tests/test_llm_inject.py``: ``unrolled_outcomes``). Prints the per-trial agreement and both SDC rates with 95%
Wilson intervals. Activation faults are limited to the MLP tensors (``[1, T, features]``: positions on axis 1).

Usage: python benchmarks/llm_unrolled.py [--trials 60] [--tokens 8] [--prompts 20] [--targets activations,weights]
       [--bits all]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from ovrange.compare import SDC
from ovrange.faults.campaign import inject
from ovrange.faults.faultlist import FaultList
from ovrange.faults.metrics import wilson
from ovrange.faults.report import FAULTS_FILE
from tests.test_llm_inject import unrolled_outcomes

LLM = Path(__file__).resolve().parent.parent / "build" / "llm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--targets", default="activations,weights")
    parser.add_argument("--bits", default="all", help="e.g. exponent: more faults that change the text")
    args = parser.parse_args()
    xml = LLM / "fp32" / "openvino_model.xml"
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join((LLM / "prompts.txt").read_text().splitlines()[:args.prompts]) + "\n")
        for target in args.targets.split(","):
            folder = Path(tmp) / target
            result = inject(xml, prompts, target=target, trials=args.trials, seed=0, sdc=f"generation:{args.tokens}",
                            bits=args.bits, checkpoint_dir=folder, sites=["*mlp*"] if target == "activations" else None)
            plan = FaultList.load(folder / FAULTS_FILE)
            stateful = result.models[0].outcome
            replayed = unrolled_outcomes(xml, prompts, plan, args.tokens)
            rates = []
            for codes in (stateful, replayed):
                k = int((codes == SDC).sum())
                low, high = wilson(k, len(codes))
                rates.append(f"{k}/{len(codes)} = {k / len(codes):.1%} [{low:.1%}, {high:.1%}]")
            print(f"{target}: {int((stateful == replayed).sum())}/{len(stateful)} trials with the same outcome; SDC "
                  f"stateful {rates[0]}, replayed without KV cache {rates[1]}", flush=True)


if __name__ == "__main__":
    main()
