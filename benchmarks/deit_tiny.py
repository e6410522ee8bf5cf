"""GlobalClipper's latency on a DeiT-Tiny-sized ViT (224x224, patch 16, 12 blocks, dim 192, 3 heads, MLP 768).

Random weights (latency does not depend on them), exported from PyTorch with ``openvino.convert_model`` like the
bundled ViT (scripts/build_vit.py): SDPA, MVN LayerNorm, Gelu. The script writes the original and one protected
IR per placement into ``--out`` and times each pair with ``ovrange benchmark`` (interleaved, paired), printing the
overhead and the fused/standalone guard counts::

    python benchmarks/deit_tiny.py --out /tmp/deit --time 60 \\
        --placement default --placement activation,norm,residual,attention,linear

A placement is ``default`` (GlobalClipper's defaults) or a comma-separated role list; ``:scalar`` at the end
uses one bound per tensor instead of per channel, ``:zero`` the explicit NaN filter, ``:edges`` guards on the
SDPA input edges (no hoisting), ``:noout`` no guard on the SDPA output; options combine (``:scalar+noout``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEIT_TINY = {"patch": 16, "dim": 192, "depth": 12, "heads": 3, "mlp": 768}
SHAPE = (3, 224, 224)


def build_original(out: Path) -> Path:
    import torch

    from ovrange.modelio import save_model
    from scripts.build_vit import convert, make_module

    path = out / "deit_tiny.xml"
    if not path.is_file():
        torch.manual_seed(0)
        module = make_module(image=SHAPE[1], channels=SHAPE[0], classes=1000, **DEIT_TINY).eval()
        for layer in module.modules():  # a trained LayerNorm's affine survives the export (an untrained one folds)
            if isinstance(layer, torch.nn.LayerNorm):
                torch.nn.init.normal_(layer.weight, 1.0, 0.1)
                torch.nn.init.normal_(layer.bias, 0.0, 0.1)
        save_model(convert(module, SHAPE), path)
    return path


def protect(original: Path, placement: str, out: Path, calib: int = 8) -> Path:
    import ovrange
    from ovrange.modelio import read_model

    roles, _, options = placement.partition(":")
    params = {} if roles == "default" else {"targets": roles.split(",")}
    if "scalar" in options:
        params["per_channel"] = False
    if "zero" in options:
        params["nonfinite"] = "zero"
    if "edges" in options:
        params["hoist"] = False
    if "noout" in options:
        params["attention_output"] = False
    data = np.random.default_rng(0).uniform(0, 255, (calib, *SHAPE)).astype(np.float32)
    protected = ovrange.protect(read_model(original), data, algorithm="GlobalClipper", subset_size=calib, **params)
    folder = out / placement.replace(",", "+").replace(":", "-")
    ovrange.save_protected(protected, folder, "deit_tiny", force=True)
    return folder / "deit_tiny.xml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ovrange-deit-tiny"))
    parser.add_argument("--placement", action="append", default=None)
    parser.add_argument("--time", type=float, default=60.0, help="seconds of timing per placement")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    original = build_original(args.out)
    for placement in args.placement or ["default"]:
        protected = protect(original, placement, args.out)
        report = protected.with_suffix(".bench.json")
        subprocess.run([sys.executable, "-m", "ovrange", "benchmark", str(original), str(protected), "--time",
                        str(args.time), "--json", str(report)], check=True, capture_output=True)
        result = json.loads(report.read_text())
        ratio, counts = result["latency_ratio"], result["fusion"]["counts"]
        print(f"{placement:50s} latency x{ratio['median']:.3f} [{ratio['low']:.3f}, {ratio['high']:.3f}]  "
              f"{result['original']['latency']['median_ms']:.2f} ms  guards fused {counts['fused']} standalone "
              f"{counts['standalone']} not found {counts['not found']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
