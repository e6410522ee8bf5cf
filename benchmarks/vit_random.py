"""A DeiT-Tiny-sized ViT with random weights, for campaign benchmarks: 224x224 input, 16x16 patches, 12 blocks,
dim 192, 3 heads, MLP 768, 1000 classes (5.7M parameters). Built with torch and ``openvino.convert_model``, saved
in f32; nothing is downloaded. Attention is written out (MatMul, Softmax) as in most exported ViTs.

Usage: python benchmarks/vit_random.py OUT_DIR  (writes deit_tiny.xml/.bin and images.npz: 64 random inputs)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def vit(seed: int = 0, depth: int = 12, dim: int = 192, heads: int = 3, classes: int = 1000):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            n, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            attention = (q @ k.transpose(-2, -1) * (dim // heads) ** -0.5).softmax(-1)
            x = x + self.proj((attention @ v).transpose(1, 2).reshape(n, t, dim))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, 16, 16)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, 197, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.head(self.norm(self.blocks(x))[:, 0])

    torch.manual_seed(seed)
    return ViT().eval()


def build(out: Path, seed: int = 0, images: int = 64) -> tuple[Path, Path]:
    """Write ``deit_tiny.xml`` (f32, dynamic batch) and ``images.npz`` (``x``: random normal inputs) into ``out``."""
    import openvino as ov
    import torch

    out.mkdir(parents=True, exist_ok=True)
    xml, data = out / "deit_tiny.xml", out / "images.npz"
    if not xml.exists():
        model = ov.convert_model(vit(seed), example_input=torch.zeros(1, 3, 224, 224),
                                 input=[ov.PartialShape([-1, 3, 224, 224])])
        ov.save_model(model, str(xml), compress_to_fp16=False)
    if not data.exists():
        np.savez(data, x=np.random.default_rng(seed).standard_normal((images, 3, 224, 224)).astype(np.float32))
    return xml, data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    print(*build(parser.parse_args().out), sep="\n")
    sys.exit(0)
