"""Time to first token and time per output token of protected language models, through openvino-genai's LLMPipeline.

For each bundled export (fp32, int8) and each protection: ``ovrange protect`` on the calibration prompts (the
command a user runs), then :func:`ovrange.bench.llm.benchmark_llm` on the held-out prompts: the original, the
protected folder and a second pipeline of the original (the control: original vs original) generate the same prompt
greedily with a fixed number of new tokens, in alternating order, round after round. Prints the paired median
overheads with 95% intervals, the control's, and the fused-kernel counts of both compiled models.

Usage: python benchmarks/llm_latency.py [--seconds 300] [--tokens 32] [--precision f32]
       [--algorithms RangeSupervision] [--exports fp32,int8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from ovrange.bench.llm import benchmark_llm
from ovrange.text import read_prompts

LLM = Path(__file__).resolve().parent.parent / "build" / "llm"


def pct(ratio) -> str:
    return (f"{(ratio.median - 1) * 100:+.2f}% (95% CI {(ratio.low - 1) * 100:+.2f}% to "
            f"{(ratio.high - 1) * 100:+.2f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="timing per export and protection")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--algorithms", default="RangeSupervision")
    parser.add_argument("--exports", default="fp32,int8")
    args = parser.parse_args()
    prompts = read_prompts(LLM / "prompts.txt")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.exports.split(","):
            original = LLM / kind
            for algorithm in args.algorithms.split(","):
                out = Path(tmp) / f"{kind}_{algorithm}"
                done = subprocess.run([sys.executable, "-m", "ovrange", "protect", str(original / "openvino_model.xml"),
                                       "--data", str(LLM / "calib_prompts.txt"), "-a", algorithm, "-o", str(out),
                                       "--quiet"], capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(done.stderr.strip())
                result = benchmark_llm(original, out / f"openvino_model_{algorithm}", prompts,
                                       precision=args.precision, new_tokens=args.tokens, seconds=args.seconds,
                                       control=True)
                print(f"{kind:5} {algorithm:17} {result.rounds} rounds, {args.tokens} new tokens, "
                      f"precision {args.precision}; medians original TTFT {result.original.ttft_ms:.2f} ms "
                      f"TPOT {result.original.tpot_ms:.2f} ms, protected TTFT {result.protected.ttft_ms:.2f} ms "
                      f"TPOT {result.protected.tpot_ms:.2f} ms", flush=True)
                print(f"      TTFT overhead {pct(result.ttft_ratio)}; control {pct(result.control_ttft_ratio)}")
                print(f"      TPOT overhead {pct(result.tpot_ratio)}; control {pct(result.control_tpot_ratio)}")
                print(f"      kernels original {result.kernels['original']}, protected {result.kernels['protected']}",
                      flush=True)


if __name__ == "__main__":
    main()
