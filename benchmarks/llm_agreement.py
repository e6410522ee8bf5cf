"""Greedy-text agreement of protected language models with their originals, through openvino-genai's LLMPipeline.

For each bundled export (fp32, int8) and each protection: ``ovrange protect`` on the calibration prompts (the
command a user runs), then the original's and the protected folder's greedy text for every held-out prompt
through ``LLMPipeline`` (in f32, and with the plugin's default precision as users run it), and ``ovrange evaluate
--sdc generation:N``. Prints agreements with 95% Wilson intervals and guard counts.

Usage: python benchmarks/llm_agreement.py [--prompts 100] [--tokens 32] [--algorithms RangeSupervision,GlobalClipper]
       [--exports fp32,int8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ovrange.faults.metrics import wilson

LLM = Path(__file__).resolve().parent.parent / "build" / "llm"


def greedy_texts(folder: Path, prompts: list[str], tokens: int, f32: bool) -> list[str]:
    import openvino_genai

    config = {"INFERENCE_PRECISION_HINT": "f32"} if f32 else {}
    pipe = openvino_genai.LLMPipeline(str(folder), "CPU", **config)
    generation = openvino_genai.GenerationConfig()
    generation.max_new_tokens, generation.do_sample = tokens, False
    return [str(pipe.generate(prompt, generation)) for prompt in prompts]


def ovrange(*args: object) -> str:
    done = subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr.strip())
    return done.stdout


def share(same: int, total: int) -> str:
    low, high = wilson(same, total)
    return f"{same}/{total} ({same / total:.0%}, 95% CI {low:.0%}-{high:.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--algorithms", default="RangeSupervision,GlobalClipper")
    parser.add_argument("--exports", default="fp32,int8")
    args = parser.parse_args()
    held = (LLM / "prompts.txt").read_text().splitlines()[: args.prompts]
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "prompts.txt"
        subset.write_text("\n".join(held) + "\n")
        for kind in args.exports.split(","):
            original = LLM / kind
            references = {f32: greedy_texts(original, held, args.tokens, f32) for f32 in (True, False)}
            for algorithm in args.algorithms.split(","):
                out = Path(tmp) / f"{kind}_{algorithm}"
                ovrange("protect", original / "openvino_model.xml", "--data", LLM / "calib_prompts.txt",
                        "-a", algorithm, "-o", out, "--quiet")
                folder = out / f"openvino_model_{algorithm}"
                guards = len(json.loads((folder / "bounds.json").read_text())["nodes"])
                line = [f"{kind:5} {algorithm:17} guards {guards:3}"]
                for f32 in (True, False):
                    texts = greedy_texts(folder, held, args.tokens, f32)
                    same = sum(a == b for a, b in zip(references[f32], texts))
                    line.append(f"LLMPipeline {'f32' if f32 else 'default'}: {share(same, len(held))}")
                evaluated = ovrange("evaluate", original / "openvino_model.xml", folder / "openvino_model.xml",
                                    "--data", subset, "--sdc", f"generation:{args.tokens}").splitlines()[-1]
                line.append("evaluate: " + evaluated.split("agrees with openvino_model.xml on ")[-1])
                print("; ".join(line), flush=True)


if __name__ == "__main__":
    main()
